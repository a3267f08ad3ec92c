// Codes bought from the outside provider: their state, and a retry for failed ones.
import { useState } from "react";
import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useQueryClient } from "@tanstack/react-query";
import { CodeRequestState, CodeRequestStateSchema, ProviderService, type CodeRequest } from "../../../gen/vouch/provider/v1/provider_pb.js";
import { Empty, ErrorNote, Loading, SelectField, enumLabel, newRequestId, when } from "../ui.js";

const STATES: [string, string][] = [["0", "Any state"], ...CodeRequestStateSchema.values.filter((v) => v.number !== 0).map((v) => [String(v.number), enumLabel(CodeRequestStateSchema, v.number)] as [string, string])];

export function ProviderRequests() {
  const [state, setState] = useState("0");
  const list = useQuery(ProviderService.method.listCodeRequests, { state: Number(state), pageSize: 50 }, { refetchInterval: 3_000 });
  return (
    <section>
      <h1>Provider requests</h1>
      <SelectField label="State" options={STATES} value={state} onChange={(e) => setState(e.target.value)} />
      {list.isPending ? (
        <Loading what="Loading requests" />
      ) : list.error ? (
        <ErrorNote error={list.error} />
      ) : list.data.codeRequests.length === 0 ? (
        <Empty>No requests.</Empty>
      ) : (
        <table>
          <thead><tr><th>Phone</th><th>Channel</th><th>State</th><th>Code</th><th>Created</th><th>Message</th><th /></tr></thead>
          <tbody>{list.data.codeRequests.map((r) => <RequestRow key={r.id} request={r} />)}</tbody>
        </table>
      )}
    </section>
  );
}

function RequestRow({ request: r }: { request: CodeRequest }) {
  const queryClient = useQueryClient();
  const retry = useMutation(ProviderService.method.retryCodeRequest, { onSuccess: () => queryClient.invalidateQueries() });
  return (
    <tr>
      <td>{r.phoneNumber}</td>
      <td>{r.channel === 2 ? "SMS" : "Web"}</td>
      <td>{enumLabel(CodeRequestStateSchema, r.state)}</td>
      <td>{r.code ? <code>{r.code}</code> : "—"}</td>
      <td>{when(r.createTime)}</td>
      <td>{r.failureMessage || r.statusMessage}</td>
      <td>
        {r.state === CodeRequestState.FAILED && (
          <button type="button" disabled={retry.isPending} onClick={() => retry.mutate({ codeRequestId: r.id, requestId: newRequestId() })}>Retry</button>
        )}
        <ErrorNote error={retry.error} />
      </td>
    </tr>
  );
}
