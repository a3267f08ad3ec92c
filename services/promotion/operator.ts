// The mobile operator that credits a phone number. The service talks to it through this
// interface only; `createSimulatedOperator` stands in for a real operator's API (dev,
// tests, demos). A real adapter must be idempotent by `orderId`: the saga calls it again
// after a crash or a timeout, and a retried call must not credit the phone twice.
import { createHash } from "node:crypto";
import type { Money } from "./domain/model.js";

export type OperatorResult = { kind: "credited"; reference: string } | { kind: "refused"; message: string };

export interface TopUpOperator {
  /** Credits `amount` to `phoneNumber` for order `orderId`, once per order id. Throws when the operator cannot be reached (retried). */
  topUp(input: { orderId: string; phoneNumber: string; amount: Money }): Promise<OperatorResult>;
}

export interface SimulatedOperator extends TopUpOperator {
  /** Phone numbers credited, in order, once per order (what a real operator's ledger would show). */
  readonly credits: { orderId: string; phoneNumber: string; amount: Money; reference: string }[];
}

/** Credits every number but the refused ones; the same order always gets the same reference. */
export function createSimulatedOperator(opts: { refuse?: Iterable<string> } = {}): SimulatedOperator {
  const refuse = new Set(opts.refuse ?? []);
  const credited = new Map<string, string>();
  const credits: SimulatedOperator["credits"] = [];
  return {
    credits,
    async topUp({ orderId, phoneNumber, amount }) {
      if (refuse.has(phoneNumber)) return { kind: "refused", message: `the operator refused to top up ${phoneNumber}` };
      let reference = credited.get(orderId);
      if (!reference) {
        reference = `SIMOP-${createHash("sha256").update(orderId).digest("hex").slice(0, 12).toUpperCase()}`;
        credited.set(orderId, reference);
        credits.push({ orderId, phoneNumber, amount, reference });
      }
      return { kind: "credited", reference };
    },
  };
}
