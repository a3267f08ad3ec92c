// The event plumbing every service uses: see ARCHITECTURE.md § Events.
export { connectNats, ensureStream, deadLetterSubject, DEFAULT_DUPLICATE_WINDOW_MS } from "./stream.js";
export type { ConnectNatsOptions, EnsureStreamOptions } from "./stream.js";
export { outboxMigration, enqueueEvent, outboxRow, OUTBOX_CHANNEL, EVENT_TYPE_HEADER } from "./outbox.js";
export type { EnqueueEventInput, OutboxRow, EventTables, OutboxTable, InboxTable, DeadLetterTable, EventDeferralTable } from "./outbox.js";
export { startOutboxRelay } from "./relay.js";
export type { OutboxRelay, OutboxRelayOptions } from "./relay.js";
export { startConsumer, retryLater, RetryLater } from "./consumer.js";
export type { ConsumerOptions, EventConsumer, EventMeta } from "./consumer.js";
