// Redemptions: search by code, user or order; roll one back with a reason.
import { useState } from "react";
import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useQueryClient } from "@tanstack/react-query";
import { RedemptionState, RedemptionStateSchema, VoucherService, type Redemption } from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { Dialog, Empty, ErrorNote, Field, Loading, enumLabel, money, newRequestId, when } from "../ui.js";

export function Redemptions() {
  const [filter, setFilter] = useState({ code: "", userId: "", orderReference: "" });
  const [applied, setApplied] = useState(filter);
  const list = useQuery(VoucherService.method.listRedemptions, { ...applied, pageSize: 50 });
  const [rollback, setRollback] = useState<Redemption>();
  return (
    <section>
      <h1>Redemptions</h1>
      <form className="card row" aria-label="Search redemptions" onSubmit={(e) => (e.preventDefault(), setApplied({ ...filter, code: filter.code.trim().toUpperCase() }))}>
        <Field label="Code" value={filter.code} onChange={(e) => setFilter({ ...filter, code: e.target.value })} />
        <Field label="User id" value={filter.userId} onChange={(e) => setFilter({ ...filter, userId: e.target.value })} />
        <Field label="Order reference" value={filter.orderReference} onChange={(e) => setFilter({ ...filter, orderReference: e.target.value })} />
        <button type="submit">Search</button>
      </form>
      {list.isPending ? (
        <Loading what="Loading redemptions" />
      ) : list.error ? (
        <ErrorNote error={list.error} />
      ) : list.data.redemptions.length === 0 ? (
        <Empty>No redemptions match.</Empty>
      ) : (
        <table>
          <thead><tr><th>Code</th><th>Order</th><th>Amount</th><th>Discount</th><th>When</th><th>State</th><th /></tr></thead>
          <tbody>
            {list.data.redemptions.map((r) => (
              <tr key={r.id}>
                <td><code>{r.code}</code></td>
                <td>{r.orderReference}</td>
                <td>{money(r.orderAmount)}</td>
                <td>{money(r.discountAmount)}</td>
                <td>{when(r.redeemTime)}</td>
                <td>{enumLabel(RedemptionStateSchema, r.state)}{r.rollbackReason && ` (${r.rollbackReason})`}</td>
                <td>{r.state === RedemptionState.REDEEMED && <button type="button" onClick={() => setRollback(r)}>Roll back</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {rollback && <RollbackDialog redemption={rollback} onClose={() => setRollback(undefined)} />}
    </section>
  );
}

function RollbackDialog({ redemption, onClose }: { redemption: Redemption; onClose: () => void }) {
  const queryClient = useQueryClient();
  const [reason, setReason] = useState("");
  const [requestId] = useState(newRequestId);
  const rollback = useMutation(VoucherService.method.rollbackRedemption, {
    onSuccess: () => {
      void queryClient.invalidateQueries();
      onClose();
    },
  });
  return (
    <Dialog title={`Roll back ${redemption.code}`} onClose={onClose}>
      <form onSubmit={(e) => (e.preventDefault(), rollback.mutate({ redemptionId: redemption.id, reason, requestId }))}>
        <p>The voucher's use (and the customer's per-user limit) is given back.</p>
        <Field label="Reason" required value={reason} onChange={(e) => setReason(e.target.value)} />
        <ErrorNote error={rollback.error} />
        <button type="submit" className="danger" disabled={rollback.isPending}>Roll back</button>
      </form>
    </Dialog>
  );
}
