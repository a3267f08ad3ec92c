// The life of a code request, as data. Every change of state in the store is one of the
// named moves below, applied as a conditional UPDATE (`… WHERE state IN (from)`), so two
// racing moves (an inline answer and a callback, a callback and the expiry sweep, two
// replicas) cannot both win: each request reaches exactly one final state, once.
//
//   pending ──acknowledge──▶ acknowledged ──callback──▶ succeeded | late_succeeded ──deliver──▶ delivered
//      │  └────────────inline code──────────────────────▶ succeeded | late_succeeded      └──undeliverable──▶ failed
//      └──unreachable (bounded retries, deadline)──▶ failed
//                           acknowledged ──no callback by the deadline──▶ expired
export type RequestState = "pending" | "acknowledged" | "succeeded" | "late_succeeded" | "delivered" | "failed" | "expired";
export type Channel = "web" | "sms";
export type ProviderStatus = "success" | "late_success";

export const FINAL_STATES: readonly RequestState[] = ["delivered", "failed", "expired"];
export const isFinal = (state: RequestState) => FINAL_STATES.includes(state);

/** Every edge of the graph above; a move outside it is a bug. */
export const EDGES: Readonly<Record<RequestState, readonly RequestState[]>> = {
  pending: ["acknowledged", "succeeded", "late_succeeded", "failed"],
  acknowledged: ["succeeded", "late_succeeded", "expired"],
  succeeded: ["delivered", "failed"],
  late_succeeded: ["delivered", "failed"],
  delivered: [],
  failed: [],
  expired: [],
};

export interface Move {
  from: readonly RequestState[];
  to: readonly RequestState[];
}

/** The moves the service makes, each a conditional update in the store. */
export const MOVES = {
  /** The provider promised a callback and gave its challenge. */
  acknowledge: { from: ["pending"], to: ["acknowledged"] },
  /** The provider answered the call with the code (also after an acknowledgement, on a retried call). */
  receiveInline: { from: ["pending", "acknowledged"], to: ["succeeded", "late_succeeded"] },
  /** A verified callback: only an acknowledged request has a challenge to verify against. */
  receiveCallback: { from: ["acknowledged"], to: ["succeeded", "late_succeeded"] },
  deliver: { from: ["succeeded", "late_succeeded"], to: ["delivered"] },
  /** Bounded retries used up, a refused answer, or still unanswered at the deadline. */
  failUnreachable: { from: ["pending"], to: ["failed"] },
  /** The code could not be delivered on its channel. */
  failUndeliverable: { from: ["succeeded", "late_succeeded"], to: ["failed"] },
  /** Acknowledged but never called back by the deadline. */
  expire: { from: ["acknowledged"], to: ["expired"] },
} as const satisfies Record<string, Move>;

export const stateForStatus = (status: ProviderStatus): "succeeded" | "late_succeeded" =>
  status === "late_success" ? "late_succeeded" : "succeeded";

/** What the customer reads about a request in each state. */
export const STATUS_MESSAGES = {
  pending: "Your request is being processed, within 30 seconds",
  acknowledged: "Your request is being processed, within 30 seconds",
  succeeded: "Thank you for using our services, your voucher code is ready.",
  late_succeeded: "Thank you for your patience, your voucher code is ready.",
  failedUnreachable: "Sorry, we could not get your voucher code from our provider. Please try again later.",
  failedUndeliverable: "Sorry, we could not send your voucher code. It is kept for your phone number.",
  expired: "Sorry, your voucher code did not arrive in time. Please try again.",
} as const;

/** SMS texts: the code itself, or why it is not coming. */
export const smsText = {
  code: (code: string, status: ProviderStatus) =>
    `Vouch: your voucher code is ${code}. ${status === "late_success" ? "Thank you for your patience." : "Thank you for using our services."}`,
  failed: () => "Vouch: sorry, we could not get your voucher code. Please try again later.",
  expired: () => "Vouch: sorry, your voucher code did not arrive in time. Please try again.",
};
