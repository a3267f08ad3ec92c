// Campaigns: create a first-login campaign, watch its slots fill, pause or end it.
import { useState, type FormEvent } from "react";
import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useQueryClient } from "@tanstack/react-query";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CampaignState, CampaignStateSchema, CampaignType, PromotionService, type Campaign } from "../../../gen/vouch/promotion/v1/promotion_pb.js";
import { Empty, ErrorNote, Field, Loading, Progress, discount, enumLabel, newRequestId } from "../ui.js";

export function Campaigns() {
  const campaigns = useQuery(PromotionService.method.listCampaigns, { pageSize: 50 }, { refetchInterval: 2_000 });
  return (
    <section>
      <h1>Campaigns</h1>
      <CreateCampaign />
      <h2>All campaigns</h2>
      {campaigns.isPending ? (
        <Loading what="Loading campaigns" />
      ) : campaigns.error ? (
        <ErrorNote error={campaigns.error} />
      ) : campaigns.data.campaigns.length === 0 ? (
        <Empty>No campaigns yet.</Empty>
      ) : (
        <table>
          <thead>
            <tr><th>Name</th><th>Type</th><th>Voucher</th><th>State</th><th>Slots taken</th><th>Actions</th></tr>
          </thead>
          <tbody>
            {campaigns.data.campaigns.map((c) => <CampaignRow key={c.id} campaign={c} />)}
          </tbody>
        </table>
      )}
    </section>
  );
}

function CampaignRow({ campaign: c }: { campaign: Campaign }) {
  const queryClient = useQueryClient();
  const onSuccess = () => queryClient.invalidateQueries();
  const activate = useMutation(PromotionService.method.activateCampaign, { onSuccess });
  const pause = useMutation(PromotionService.method.pauseCampaign, { onSuccess });
  const end = useMutation(PromotionService.method.endCampaign, { onSuccess });
  const error = activate.error ?? pause.error ?? end.error;
  return (
    <tr data-testid="campaign-row">
      <td>{c.name}</td>
      <td>{c.type === CampaignType.FIRST_LOGIN ? "First login" : "Claim"}</td>
      <td>{discount(c.voucherTerms?.discount)}</td>
      <td>{enumLabel(CampaignStateSchema, c.state)}</td>
      <td><Progress value={c.grantedCount} max={c.quota} label={`Slots taken in ${c.name}`} /></td>
      <td className="actions">
        {(c.state === CampaignState.DRAFT || c.state === CampaignState.PAUSED) && (
          <button type="button" onClick={() => activate.mutate({ campaignId: c.id })}>Activate</button>
        )}
        {c.state === CampaignState.ACTIVE && <button type="button" onClick={() => pause.mutate({ campaignId: c.id })}>Pause</button>}
        {c.state !== CampaignState.ENDED && (
          <button type="button" className="danger" onClick={() => confirm(`End ${c.name}? This cannot be undone.`) && end.mutate({ campaignId: c.id })}>End</button>
        )}
        <ErrorNote error={error} />
      </td>
    </tr>
  );
}

function CreateCampaign() {
  const queryClient = useQueryClient();
  const [form, setForm] = useState({ name: "", quota: "100", percent: "30", maxAmount: "50000", currency: "VND", pattern: "WELCOME-****-****", validityDays: "30", activate: true });
  const [requestId, setRequestId] = useState(newRequestId);
  const create = useMutation(PromotionService.method.createCampaign);
  const activate = useMutation(PromotionService.method.activateCampaign);
  const [created, setCreated] = useState<Campaign>();
  const set = (k: keyof typeof form) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const res = await create.mutateAsync({
      requestId,
      campaign: {
        name: form.name,
        type: CampaignType.FIRST_LOGIN,
        quota: Number(form.quota),
        startTime: timestampFromDate(new Date()),
        voucherTerms: {
          discount: { kind: { case: "percentOff", value: { basisPoints: Math.round(Number(form.percent) * 100), maxAmount: form.maxAmount ? { minorUnits: BigInt(form.maxAmount), currencyCode: form.currency } : undefined } } },
          codePattern: form.pattern,
          validityDays: Number(form.validityDays),
        },
      },
    }).catch(() => undefined);
    if (!res?.campaign) return;
    let campaign = res.campaign;
    if (form.activate && campaign.state !== CampaignState.ACTIVE) {
      campaign = (await activate.mutateAsync({ campaignId: campaign.id }).catch(() => undefined))?.campaign ?? campaign;
    }
    setCreated(campaign);
    setRequestId(newRequestId());
    void queryClient.invalidateQueries();
  };
  return (
    <form onSubmit={submit} aria-label="Create a first-login campaign" className="card">
      <h2>New first-login campaign</h2>
      <p className="muted">The first people to log in for the first time each get a voucher, until the quota is reached.</p>
      <div className="row">
        <Field label="Campaign name" required value={form.name} onChange={set("name")} />
        <Field label="Quota (people)" type="number" min={1} required value={form.quota} onChange={set("quota")} />
      </div>
      <div className="row">
        <Field label="Discount (%)" type="number" min={1} max={100} step="0.01" required value={form.percent} onChange={set("percent")} />
        <Field label="Maximum discount (minor units)" type="number" min={0} value={form.maxAmount} onChange={set("maxAmount")} />
        <Field label="Currency" maxLength={3} value={form.currency} onChange={set("currency")} />
      </div>
      <div className="row">
        <Field label="Voucher code pattern" required value={form.pattern} onChange={set("pattern")} hint="* is a random character." />
        <Field label="Voucher valid for (days)" type="number" min={1} value={form.validityDays} onChange={set("validityDays")} />
      </div>
      <label className="check">
        <input type="checkbox" checked={form.activate} onChange={(e) => setForm({ ...form, activate: e.target.checked })} /> Activate now
      </label>
      <ErrorNote error={create.error ?? activate.error} />
      <button type="submit" disabled={create.isPending || activate.isPending}>{create.isPending ? "Creating…" : "Create campaign"}</button>
      {created && <p role="status">Created “{created.name}” ({enumLabel(CampaignStateSchema, created.state)}).</p>}
    </form>
  );
}
