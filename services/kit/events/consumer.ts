// Durable, idempotent event consumers.
//
// Every message runs in one Postgres transaction that first records (consumer, event id)
// in the inbox and then applies the handler's effect: a redelivery of an event whose
// transaction committed (crash before ack, lost ack, a duplicate published past the
// broker's dedupe window) finds its inbox row and is acked without running the handler.
// A failing handler leaves nothing behind (the transaction rolls back) and the message is
// retried with backoff; after maxDeliver deliveries (many more when the failure is an
// outage rather than the event's fault), or at once if it cannot even be decoded, it is parked: stored in dead_letters, published on `<prefix>.deadletter.<consumer>`,
// counted in `vouch_dead_letters_total`, and terminated so the consumer moves on.
//
// A handler that cannot act yet through no fault of the event (a dependency it guards with
// a circuit breaker is open, say) throws `retryLater(ms)`: the message is handed back to be
// redelivered after `ms`, quietly, and that delivery is not counted against the dead-letter
// budget (the deferrals are counted in `event_deferrals`, in the transaction-free path).
import { fromBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { sql, type Kysely, type Transaction } from "kysely";
import {
  AckPolicy,
  ConsumerEvents,
  DeliverPolicy,
  headers as natsHeaders,
  nanos,
  type ConsumerConfig,
  type ConsumerMessages,
  type JsMsg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from "nats";
import type { Registry } from "prom-client";
import { assertIdentifier, prepared } from "../db.js";
import { isTransient } from "../errors.js";
import { newId } from "../ids.js";
import { withConsumerSpan } from "../tracing.js";
import type { Logger } from "../log.js";
import { counter, histogram, LATENCY_BUCKETS } from "./metrics.js";
import { EVENT_TYPE_HEADER, type EventTables } from "./outbox.js";
import { deadLetterSubject, jsErrorCode } from "./stream.js";

export interface EventMeta {
  /** Nats-Msg-Id (the producer's outbox id), or `<stream>:<sequence>` if the publisher set none. */
  eventId: string;
  /** Relative subject, e.g. `auth.user_logged_in`. */
  subject: string;
  /** 1 on first delivery. */
  deliveryCount: number;
}

/** Thrown by a handler: "hand this event back and deliver it again in `delayMs`"; not a failure. */
export class RetryLater extends Error {
  constructor(
    readonly delayMs: number,
    message = "the handler asked to retry later",
  ) {
    super(message);
    this.name = "RetryLater";
  }
}

/** `throw retryLater(ms)` from a handler to have the event redelivered in `ms` without counting a failure. */
export function retryLater(delayMs: number, message?: string): RetryLater {
  return new RetryLater(Math.max(0, Math.round(delayMs)), message);
}

export interface ConsumerOptions<Desc extends DescMessage, DB> {
  nc: NatsConnection;
  stream: string;
  /** Durable consumer name, also the inbox's `consumer` key: never rename one in place. */
  durable: string;
  /** Relative subject filter, wildcards allowed: `auth.user_logged_in`, `provider.>`. */
  filterSubject: string;
  /** The stream's subject prefix (default: read from the stream's `<prefix>.>` subject). */
  subjectPrefix?: string;
  schema: Desc;
  db: Kysely<DB>;
  /** Schema holding this service's inbox and dead_letters tables. */
  schemaName: string;
  /**
   * Applies the event's effect inside `trx`; throw to have the event retried. Nothing follows
   * the handler in its transaction, so without batches (batchSize 1) it may mark its last
   * statement `lastInTransaction` (kit/db) to take COMMIT along.
   */
  handle: (trx: Transaction<DB>, event: MessageShape<Desc>, meta: EventMeta) => Promise<void>;
  /**
   * false for a handler that runs for long (a generation job of minutes) and is idempotent
   * by itself: it then runs outside any transaction (its `trx` is the pool, `db`), and the
   * inbox row is written after it returns, so no transaction stays open — holding back
   * vacuum and a pool connection — for the whole run. Default true.
   */
  transactional?: boolean;
  /** Deliveries before a message whose handler keeps failing is parked (default 5). */
  maxDeliver?: number;
  /**
   * Deliveries before a message is parked even though its failures were transient
   * (database or peer unreachable; see `isTransient`), and the server-side delivery limit.
   * Default 200: with the 15 s backoff that rides out outages of most of an hour.
   */
  maxTransientDeliveries?: number;
  /**
   * Deliveries a message may spend on `retryLater` on top of maxTransientDeliveries
   * (default 0). They raise the server-side delivery limit, which is also what eventually
   * parks a message whose process keeps dying while handling it, so set it only for a
   * consumer whose handler defers.
   */
  maxDeferrals?: number;
  /** Delay before redelivery n+1 after a failure of delivery n; the last entry repeats. */
  backoffMs?: number[];
  /** How long a delivery may go unacknowledged before the server redelivers it (default 30 s). */
  ackWaitMs?: number;
  /** Messages handled at once (default 1). Each holds a pool connection while it runs. */
  concurrency?: number;
  /**
   * Most events handled in one transaction when several are waiting (default 1: each its own).
   * A batch is one BEGIN, one inbox insert for all and one COMMIT around every handler's
   * statements, run one after the other, so a burst costs those round trips once per batch
   * instead of once per event. For handlers whose effect is a few statements on rows of their
   * own. If any handler of a batch throws (or the commit fails) nothing of the batch is kept
   * and each of its events is handled again alone, exactly as with batchSize 1 — so a handler
   * with an effect outside the database (an SMS sent) may repeat it: at least once, as after a
   * crash. A batch never waits to fill up: it takes what has arrived. At most
   * concurrency / batchSize transactions (rounded up) run at once, so a trickle of events is
   * handled one transaction after another and a burst in few, full ones.
   */
  batchSize?: number;
  log: Logger;
  registry: Registry;
}

export interface EventConsumer {
  /** Stops pulling, finishes the messages being handled, hands unstarted ones back to the server. */
  stop(): Promise<void>;
}

const CONSUMER_NOT_FOUND = 10014;
const DURABLE_NAME = /^[A-Za-z0-9_-]+$/;
const RELATIVE_FILTER = /^([a-z0-9_]+|\*)(\.([a-z0-9_]+|\*))*(\.>)?$|^>$/;

export async function startConsumer<Desc extends DescMessage, DB = any>(
  opts: ConsumerOptions<Desc, DB>,
): Promise<EventConsumer> {
  const { nc, stream, durable } = opts;
  if (!DURABLE_NAME.test(durable)) throw new Error(`consumer name "${durable}" must match ${DURABLE_NAME}`);
  if (!RELATIVE_FILTER.test(opts.filterSubject)) {
    throw new Error(`filterSubject "${opts.filterSubject}" must be relative to the stream prefix, e.g. auth.user_logged_in`);
  }
  const schemaName = assertIdentifier(opts.schemaName, "schema");
  const maxDeliver = opts.maxDeliver ?? 5;
  if (!Number.isInteger(maxDeliver) || maxDeliver < 1) throw new Error("maxDeliver must be a positive integer");
  const maxTransientDeliveries = Math.max(maxDeliver, opts.maxTransientDeliveries ?? 200);
  const maxDeferrals = Math.max(0, opts.maxDeferrals ?? 0);
  const backoffMs = opts.backoffMs?.length ? opts.backoffMs : [200, 1_000, 5_000, 15_000];
  const ackWaitMs = opts.ackWaitMs ?? 30_000;
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const batchSize = opts.transactional === false ? 1 : Math.max(1, Math.min(concurrency, opts.batchSize ?? 1));
  const parallelBatches = Math.ceil(concurrency / batchSize);
  const log = opts.log.child({ component: "consumer", consumer: durable });
  const tables = (opts.db as unknown as Kysely<EventTables>).withSchema(schemaName);
  const js = nc.jetstream();
  const jsm = await nc.jetstreamManager();

  const subjectPrefix = opts.subjectPrefix ?? (await streamPrefix());
  const deadLetters = counter(opts.registry, "vouch_dead_letters_total", "Events parked as dead letters, by consumer.", ["consumer"]);
  const consumed = counter(opts.registry, "vouch_events_consumed_total", "Event deliveries by consumer and outcome (processed, duplicate, retried, deferred, dead_lettered).", ["consumer", "outcome"]);
  const handleSeconds = histogram(opts.registry, "vouch_event_handle_seconds", "Time to handle one event delivery, transaction included.", ["consumer"], LATENCY_BUCKETS);

  await ensureConsumer();

  async function streamPrefix(): Promise<string> {
    const info = await jsm.streams.info(stream);
    const subject = info.config.subjects.find((s) => s.endsWith(".>"));
    if (!subject) throw new Error(`stream ${stream} has no "<prefix>.>" subject; pass subjectPrefix`);
    return subject.slice(0, -2);
  }

  async function ensureConsumer() {
    // Server-side backoff governs redelivery after an ack timeout (a crash mid-handler);
    // it replaces ack_wait per delivery, so it never goes below ack_wait or a slow but
    // healthy handler would see its message redelivered under its feet.
    const serverBackoff = backoffMs.slice(0, maxDeliver - 1).map((ms) => nanos(Math.max(ms, ackWaitMs)));
    const want = {
      filter_subject: `${subjectPrefix}.${opts.filterSubject}`,
      max_deliver: maxTransientDeliveries + maxDeferrals,
      ack_wait: nanos(ackWaitMs),
      backoff: serverBackoff.length ? serverBackoff : undefined,
    };
    try {
      const { config: have } = await jsm.consumers.info(stream, durable);
      const same =
        have.filter_subject === want.filter_subject &&
        have.max_deliver === want.max_deliver &&
        have.ack_wait === want.ack_wait &&
        (have.backoff ?? []).join() === (want.backoff ?? []).join();
      if (!same) {
        await jsm.consumers.update(stream, durable, want);
        log.info(want, "consumer configuration updated");
      }
      return;
    } catch (err) {
      if (jsErrorCode(err) !== CONSUMER_NOT_FOUND) throw err;
    }
    const config: Partial<ConsumerConfig> = {
      ...want,
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
    };
    // Adding with an identical configuration is idempotent, so replicas may race here.
    await jsm.consumers.add(stream, config);
  }

  const relativeSubject = (subject: string) =>
    subject.startsWith(`${subjectPrefix}.`) ? subject.slice(subjectPrefix.length + 1) : subject;
  const backoffFor = (deliveryCount: number) => backoffMs[Math.min(deliveryCount - 1, backoffMs.length - 1)];

  /**
   * Stores and publishes a dead letter, as one unit: the row commits only if the publish
   * got its PubAck. Idempotent per (consumer, event id) in the table and, through the
   * Nats-Msg-Id, on the subject.
   */
  async function park(letter: { eventId: string; subject: string; data: Uint8Array; headers?: MsgHdrs; deliveries: number; error: string }) {
    const inserted = await tables.transaction().execute(async (trx) => {
      const row = await trx
        .insertInto("dead_letters")
        .values({
          id: newId(),
          consumer: durable,
          event_id: letter.eventId,
          subject: relativeSubject(letter.subject),
          payload: letter.data,
          error: letter.error,
          deliveries: letter.deliveries,
        })
        .onConflict((oc) => oc.columns(["consumer", "event_id"]).doNothing())
        .returning("id")
        .executeTakeFirst();
      const h = natsHeaders();
      const eventType = letter.headers?.get(EVENT_TYPE_HEADER);
      if (eventType) h.set(EVENT_TYPE_HEADER, eventType);
      h.set("Vouch-Event-Id", letter.eventId);
      h.set("Vouch-Consumer", durable);
      h.set("Vouch-Original-Subject", letter.subject);
      h.set("Vouch-Deliveries", String(letter.deliveries));
      h.set("Vouch-Error", letter.error.replace(/[\r\n]+/g, " ").slice(0, 1024));
      await js.publish(deadLetterSubject(subjectPrefix, durable), letter.data, {
        msgID: `deadletter.${durable}.${letter.eventId}`,
        headers: h,
      });
      await trx.deleteFrom("event_deferrals").where("consumer", "=", durable).where("event_id", "=", letter.eventId).execute();
      return Boolean(row);
    });
    if (inserted) {
      deadLetters.inc({ consumer: durable });
      log.error({ eventId: letter.eventId, subject: letter.subject, deliveries: letter.deliveries, error: letter.error }, "event parked as dead letter");
    }
  }

  /** ack/nak/term are fire-and-forget; on a closed connection they throw, and then the server redelivers anyway. */
  function reply(m: JsMsg, what: "ack" | "nak" | "term" | "working", delayMs?: number) {
    try {
      if (what === "ack") m.ack();
      else if (what === "term") m.term();
      else if (what === "working") m.working();
      else m.nak(delayMs);
    } catch (err) {
      log.warn({ err, seq: m.seq, reply: what }, "cannot answer the server; the message will be redelivered");
    }
  }

  async function handleMessage(m: JsMsg) {
    const started = performance.now();
    const eventId = m.headers?.get("Nats-Msg-Id") || `${stream}:${m.info.streamSequence}`;
    const deliveryCount = m.info.deliveryCount;
    const meta: EventMeta = { eventId, subject: relativeSubject(m.subject), deliveryCount };
    const letter = (error: string) => ({ eventId, subject: m.subject, data: m.data, headers: m.headers, deliveries: deliveryCount, error });

    let event: MessageShape<Desc>;
    try {
      event = fromBinary(opts.schema, m.data);
    } catch (err) {
      // Retrying cannot make bytes decodable: park at once.
      await parkAndTerm(m, letter(`cannot decode ${opts.schema.typeName}: ${errorText(err)}`));
      return;
    }

    // Keep the delivery ours while a slow handler runs.
    const heartbeat = setInterval(() => reply(m, "working"), Math.max(100, ackWaitMs / 3));
    let outcome: "processed" | "duplicate";
    try {
      outcome = await (opts.transactional === false ? handleOutsideTransaction(event, meta) : handleInTransaction(event, meta));
    } catch (err) {
      if (err instanceof RetryLater) {
        await defer(m, eventId, err);
        return;
      }
      // An outage (Postgres restarting, a peer service down) is not the event's fault:
      // it is retried far longer than a handler that rejects the event itself. Deliveries
      // the handler deferred with retryLater are not failures.
      const limit = isTransient(err) ? maxTransientDeliveries : maxDeliver;
      const failures = deliveryCount - (deliveryCount > 1 ? await deferralsOf(eventId) : 0);
      if (failures >= limit) {
        await parkAndTerm(m, letter(errorText(err)));
      } else {
        const delay = backoffFor(deliveryCount);
        log.warn({ err, eventId, subject: m.subject, deliveryCount, retryInMs: delay }, "event handler failed; will retry");
        reply(m, "nak", delay);
        consumed.inc({ consumer: durable, outcome: "retried" });
      }
      return;
    } finally {
      clearInterval(heartbeat);
      handleSeconds.observe({ consumer: durable }, (performance.now() - started) / 1000);
    }
    // Committed: from here on a redelivery finds the inbox row, so a lost ack is harmless.
    reply(m, "ack");
    consumed.inc({ consumer: durable, outcome });
    if (outcome === "duplicate") log.debug({ eventId }, "event already processed; acked without handling");
  }

  const events = (db: Kysely<DB>) => (db as unknown as Kysely<EventTables>).withSchema(schemaName);
  // Prepared (one fixed text per consumer): every event of every consumer runs one of them.
  const inbox = sql.table(`${schemaName}.inbox`);
  /** Claims the event for this consumer: false when it was processed before. */
  const recordInInbox = async (db: Kysely<DB>, eventId: string) =>
    (
      await prepared(sql`INSERT INTO ${inbox} (consumer, event_id) VALUES (${durable}, ${eventId}) ON CONFLICT DO NOTHING RETURNING event_id`).execute(db)
    ).rows.length > 0;
  /** Only a redelivered event can have been deferred before. */
  const forgetDeferrals = async (db: Kysely<DB>, meta: EventMeta) => {
    if (meta.deliveryCount > 1) await events(db).deleteFrom("event_deferrals").where("consumer", "=", durable).where("event_id", "=", meta.eventId).execute();
  };

  /** The inbox row, the handler's effect and the deferral count in one transaction. */
  function handleInTransaction(event: MessageShape<Desc>, meta: EventMeta): Promise<"processed" | "duplicate"> {
    return opts.db.transaction().execute(async (trx) => {
      if (!(await recordInInbox(trx, meta.eventId))) return "duplicate";
      await forgetDeferrals(trx, meta);
      await opts.handle(trx, event, meta); // may end the transaction (lastInTransaction)
      return "processed";
    });
  }

  /** `transactional: false`: look in the inbox, run the handler on the pool, then record it. */
  async function handleOutsideTransaction(event: MessageShape<Desc>, meta: EventMeta): Promise<"processed" | "duplicate"> {
    const seen = await tables.selectFrom("inbox").select("event_id").where("consumer", "=", durable).where("event_id", "=", meta.eventId).executeTakeFirst();
    if (seen) return "duplicate";
    await opts.handle(opts.db as unknown as Transaction<DB>, event, meta);
    await recordInInbox(opts.db, meta.eventId);
    await forgetDeferrals(opts.db, meta);
    return "processed";
  }

  /** Claims many events at once: the ids not processed before. */
  async function recordManyInInbox(trx: Transaction<DB>, eventIds: string[]): Promise<Set<string>> {
    const { rows } = await prepared(sql<{ event_id: string }>`
      INSERT INTO ${inbox} (consumer, event_id) SELECT ${durable}, unnest(${eventIds}::text[])
      ON CONFLICT DO NOTHING RETURNING event_id`).execute(trx);
    return new Set(rows.map((r) => r.event_id));
  }

  /**
   * A batch in one transaction. False when it did not commit (a handler threw, an event could
   * not be decoded, the database failed): then nothing of it happened and nothing was answered.
   */
  async function handleTogether(batch: JsMsg[]): Promise<boolean> {
    const started = performance.now();
    const items: { m: JsMsg; meta: EventMeta; event: MessageShape<Desc> }[] = [];
    for (const m of batch) {
      const eventId = m.headers?.get("Nats-Msg-Id") || `${stream}:${m.info.streamSequence}`;
      const meta: EventMeta = { eventId, subject: relativeSubject(m.subject), deliveryCount: m.info.deliveryCount };
      let event: MessageShape<Desc>;
      try {
        event = fromBinary(opts.schema, m.data);
      } catch {
        return false; // parked on its own
      }
      items.push({ m, meta, event });
    }
    const heartbeat = setInterval(() => batch.forEach((m) => reply(m, "working")), Math.max(100, ackWaitMs / 3));
    try {
      const outcomes = await opts.db.transaction().execute(async (trx) => {
        const fresh = await recordManyInInbox(trx, [...new Set(items.map((it) => it.meta.eventId))]);
        const done: ("processed" | "duplicate")[] = [];
        for (const { m, meta, event } of items) {
          // delete: the same event twice in one batch is handled once.
          if (!fresh.delete(meta.eventId)) {
            done.push("duplicate");
            continue;
          }
          await forgetDeferrals(trx, meta);
          await withConsumerSpan(durable, meta.subject, m.headers, () => opts.handle(trx, event, meta));
          done.push("processed");
        }
        return done;
      });
      items.forEach(({ m }, i) => {
        reply(m, "ack");
        consumed.inc({ consumer: durable, outcome: outcomes[i] });
      });
      return true;
    } catch (err) {
      log.debug({ err, events: batch.length }, "a batch of events did not commit; handling each on its own");
      return false;
    } finally {
      clearInterval(heartbeat);
      const seconds = (performance.now() - started) / 1000;
      for (let i = 0; i < batch.length; i++) handleSeconds.observe({ consumer: durable }, seconds);
    }
  }

  /** Each delivery joins the trace of the change that produced the event. */
  const handleAlone = (m: JsMsg) => withConsumerSpan(durable, relativeSubject(m.subject), m.headers, () => handleMessage(m));

  async function handleBatch(batch: JsMsg[]): Promise<void> {
    if (batch.length > 1 && (await handleTogether(batch))) return;
    await Promise.all(batch.map(handleAlone));
  }

  /** Counts a deferral and hands the message back; if the count cannot be stored, the nak still goes. */
  async function defer(m: JsMsg, eventId: string, request: RetryLater) {
    try {
      await tables
        .insertInto("event_deferrals")
        .values({ consumer: durable, event_id: eventId, deferrals: 1 })
        .onConflict((oc) => oc.columns(["consumer", "event_id"]).doUpdateSet((eb) => ({ deferrals: eb("event_deferrals.deferrals", "+", 1), updated_at: new Date() })))
        .execute();
    } catch (err) {
      log.warn({ err, eventId }, "cannot count a deferred delivery; it will count as a failure");
    }
    reply(m, "nak", request.delayMs);
    consumed.inc({ consumer: durable, outcome: "deferred" });
    log.debug({ eventId, retryInMs: request.delayMs, reason: request.message }, "event deferred by its handler");
  }

  async function deferralsOf(eventId: string): Promise<number> {
    try {
      const row = await tables
        .selectFrom("event_deferrals")
        .select("deferrals")
        .where("consumer", "=", durable)
        .where("event_id", "=", eventId)
        .executeTakeFirst();
      return row?.deferrals ?? 0;
    } catch {
      return 0; // Postgres unreachable: count every delivery, the safe side
    }
  }

  async function parkAndTerm(m: JsMsg, l: Parameters<typeof park>[0]) {
    try {
      await park(l);
      reply(m, "term");
      consumed.inc({ consumer: durable, outcome: "dead_lettered" });
    } catch (err) {
      // Could not store it (Postgres or NATS down): let the server redeliver. If this was
      // the last delivery, the max-deliveries advisory below parks it later.
      log.error({ err, eventId: l.eventId }, "cannot park dead letter; leaving it for redelivery");
      reply(m, "nak", backoffMs[backoffMs.length - 1]);
    }
  }

  /** Handlers, and parkings started by advisories, still running; stop() waits for both. */
  const inflight = new Set<Promise<void>>();
  const parking = new Set<Promise<void>>();

  // A message whose last delivery was never answered (the process died or hung while
  // handling it) is dropped by the server with only an advisory to say so: park it from
  // there. One replica per consumer gets each advisory (queue group).
  const advisories: Subscription = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${stream}.${durable}`, {
    queue: `vouch-deadletter-${durable}`,
    callback: (err, msg) => {
      if (err) return;
      const p: Promise<void> = parkExhausted(msg.data)
        .catch((e) => log.error({ err: e }, "cannot park an event that exhausted its deliveries"))
        .finally(() => parking.delete(p));
      parking.add(p);
    },
  });

  async function parkExhausted(data: Uint8Array) {
    const advisory = JSON.parse(new TextDecoder().decode(data)) as { stream_seq: number; deliveries: number };
    const stored = await jsm.streams.getMessage(stream, { seq: advisory.stream_seq });
    const eventId = stored.header?.get("Nats-Msg-Id") || `${stream}:${stored.seq}`;
    const done = await tables
      .selectFrom("inbox")
      .select("event_id")
      .where("consumer", "=", durable)
      .where("event_id", "=", eventId)
      .executeTakeFirst();
    if (done) return; // its effect committed; only the ack was lost
    await park({
      eventId,
      subject: stored.subject,
      data: stored.data,
      headers: stored.header,
      deliveries: advisory.deliveries,
      error: "delivery limit reached without an answer from the handler (process crashed or hung)",
    });
  }

  // Pull loop: at most `concurrency` messages are pulled and not yet finished, so none sit
  // in a local buffer while their ack_wait runs out. Messages that arrive together (before
  // the next turn of the event loop) are cut into batches of at most batchSize.
  let stopping = false;
  let messages: ConsumerMessages | undefined;
  let freeSlot: (() => void) | undefined;
  let unfinished = 0;
  const waiting: JsMsg[] = [];
  let flushing: NodeJS.Immediate | undefined;

  function flush() {
    flushing = undefined;
    while (waiting.length > 0 && inflight.size < parallelBatches) {
      const batch = waiting.splice(0, batchSize);
      const p: Promise<void> = handleBatch(batch)
        .catch((err) => log.error({ err }, "unexpected error handling events"))
        .finally(() => {
          inflight.delete(p);
          unfinished -= batch.length;
          flush(); // what came in meanwhile
          freeSlot?.();
        });
      inflight.add(p);
    }
  }

  async function pull() {
    while (!stopping) {
      try {
        const consumer = await js.consumers.get(stream, durable);
        messages = await consumer.consume({ max_messages: concurrency });
        // close() settles only once the iterator below has run dry, so it is never awaited here.
        if (stopping) void messages.close().catch(() => {}); // stop() came while we were subscribing
        void watch(messages).catch(() => {});
        for await (const m of messages) {
          if (stopping) {
            reply(m, "nak");
            continue;
          }
          while (unfinished >= concurrency) await new Promise<void>((r) => (freeSlot = r));
          unfinished++;
          waiting.push(m);
          if (batchSize === 1) flush();
          else flushing ??= setImmediate(flush);
        }
        if (!stopping) throw new Error("message iterator ended");
      } catch (err) {
        if (stopping) break;
        log.warn({ err }, "consumer pull failed; restarting in 1 s");
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }

  async function watch(iter: ConsumerMessages) {
    for await (const s of await iter.status()) {
      if (s.type === ConsumerEvents.HeartbeatsMissed || s.type === ConsumerEvents.ConsumerNotFound || s.type === ConsumerEvents.StreamNotFound || s.type === ConsumerEvents.ConsumerDeleted) {
        log.warn({ status: s.type, data: s.data }, "consumer status");
      }
    }
  }

  const pulling = pull();
  log.debug({ stream, filterSubject: opts.filterSubject }, "consumer started");

  let stopped: Promise<void> | undefined;
  return {
    stop() {
      stopped ??= (async () => {
        stopping = true;
        void messages?.close().catch(() => {});
        await pulling;
        clearImmediate(flushing);
        flush(); // what was pulled is handled, not dropped
        while (inflight.size > 0) await Promise.race(inflight);
        await Promise.all([...parking]);
        if (!nc.isClosed()) await advisories.drain().catch(() => {});
        log.debug("consumer stopped");
      })();
      return stopped;
    },
  };
}

function errorText(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}
