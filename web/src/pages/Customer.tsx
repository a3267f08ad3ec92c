// The customer's page: their vouchers (a first-login voucher appears here within seconds),
// each with a QR code, and buying a code from the provider, watched until it arrives.
import { useEffect, useState, type FormEvent } from "react";
import { createClient } from "@connectrpc/connect";
import { useMutation, useQuery, useTransport } from "@connectrpc/connect-query";
import { CodeRequestState, CodeRequestStateSchema, ProviderService, type CodeRequest } from "../../../gen/vouch/provider/v1/provider_pb.js";
import { DeliveryChannel } from "../../../gen/vouch/type/v1/provider_code_pb.js";
import { VoucherService, VoucherStateSchema, type Voucher } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { session } from "../session.js";
import { Empty, ErrorNote, Field, Loading, SelectField, discount, enumLabel, newRequestId, when } from "../ui.js";
import { QrDialog } from "./Books.js";

export function CustomerHome() {
  const s = session.get();
  return (
    <section>
      <h1>Hello, {s?.user.fullName || s?.user.username}</h1>
      {s?.firstLogin && <p role="status">Welcome to Vouch! If a first-login promotion is running, your voucher appears below in a moment.</p>}
      <MyVouchers />
      <BuyCode defaultPhone={s?.user.phoneNumber ?? ""} />
    </section>
  );
}

function MyVouchers() {
  // Polled: a first-login voucher is issued asynchronously (an event, then the promotion service).
  const vouchers = useQuery(VoucherService.method.listMyVouchers, { pageSize: 50 }, { refetchInterval: 2_000 });
  const [qr, setQr] = useState<Voucher>();
  return (
    <div className="card">
      <h2>My vouchers</h2>
      {vouchers.isPending ? (
        <Loading what="Loading your vouchers" />
      ) : vouchers.error ? (
        <ErrorNote error={vouchers.error} />
      ) : vouchers.data.vouchers.length === 0 ? (
        <Empty>You have no vouchers yet.</Empty>
      ) : (
        <ul className="vouchers">
          {vouchers.data.vouchers.map((v) => (
            <li key={v.id} data-testid="my-voucher">
              <strong>{discount(v.discount)}</strong> <code>{v.code}</code> · {v.bookName} · {enumLabel(VoucherStateSchema, v.state)} · expires {when(v.expireTime)}{" "}
              <button type="button" onClick={() => setQr(v)}>Show QR</button>
            </li>
          ))}
        </ul>
      )}
      {qr && <QrDialog voucher={qr} onClose={() => setQr(undefined)} />}
    </div>
  );
}

const FINAL = new Set([CodeRequestState.DELIVERED, CodeRequestState.FAILED, CodeRequestState.EXPIRED]);

function BuyCode({ defaultPhone }: { defaultPhone: string }) {
  const [phone, setPhone] = useState(defaultPhone);
  const [channel, setChannel] = useState(String(DeliveryChannel.WEB));
  const request = useMutation(ProviderService.method.requestCode);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    request.mutate({ phoneNumber: phone, channel: Number(channel), requestId: newRequestId() });
  };
  return (
    <form className="card" aria-label="Request a provider code" onSubmit={submit}>
      <h2>Get a top-up code</h2>
      <div className="row">
        <Field label="Phone number" type="tel" required value={phone} onChange={(e) => setPhone(e.target.value)} />
        <SelectField label="Deliver by" options={[[String(DeliveryChannel.WEB), "On this page"], [String(DeliveryChannel.SMS), "SMS"]]} value={channel} onChange={(e) => setChannel(e.target.value)} />
      </div>
      <ErrorNote error={request.error} />
      <button type="submit" disabled={request.isPending}>Request code</button>
      {request.data?.codeRequest && <WatchRequest key={request.data.codeRequest.id} initial={request.data.codeRequest} />}
    </form>
  );
}

function WatchRequest({ initial }: { initial: CodeRequest }) {
  const transport = useTransport();
  const [req, setReq] = useState(initial);
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      try {
        for await (const u of createClient(ProviderService, transport).watchCodeRequest({ codeRequestId: initial.id }, { signal: abort.signal })) {
          if (u.codeRequest) setReq(u.codeRequest);
        }
      } catch (err) {
        if (!abort.signal.aborted) setError(err);
      }
    })();
    return () => abort.abort();
  }, [initial.id, transport]);
  return (
    <div aria-live="polite" data-testid="code-request">
      <p>
        {enumLabel(CodeRequestStateSchema, req.state)} — {req.statusMessage || (FINAL.has(req.state) ? "" : "Your request is being processed, within 30 seconds.")}
      </p>
      {req.code && (
        <p>
          Your code: <code className="big">{req.code}</code>
        </p>
      )}
      <ErrorNote error={error} />
    </div>
  );
}
