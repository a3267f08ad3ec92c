// The NATS connection and the one JetStream stream every event lives in.
import {
  connect,
  DiscardPolicy,
  Events,
  nanos,
  NatsError,
  RetentionPolicy,
  StorageType,
  type NatsConnection,
  type StreamConfig,
} from "nats";
import type { Logger } from "../log.js";

export interface ConnectNatsOptions {
  /** Connection name shown by the server (`nats server report connections`). */
  name?: string;
  /** Pause between reconnect attempts (default 2 s). Tests shorten it. */
  reconnectTimeWaitMs?: number;
}

/**
 * Connects and stays connected: reconnects forever, and if the server is down at start the
 * returned promise waits for it rather than failing the process.
 */
export async function connectNats(url: string, log: Logger, opts: ConnectNatsOptions = {}): Promise<NatsConnection> {
  const name = opts.name ?? String(log.bindings().service ?? "vouch");
  const nc = await connect({
    servers: url,
    name,
    maxReconnectAttempts: -1,
    waitOnFirstConnect: true,
    reconnectTimeWait: opts.reconnectTimeWaitMs ?? 2_000,
  });
  log.info({ server: nc.getServer(), connectionName: name }, "nats connected");
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === Events.Disconnect) log.warn({ server: s.data }, "nats disconnected");
      else if (s.type === Events.Reconnect) log.info({ server: s.data }, "nats reconnected");
      else if (s.type === Events.Error) log.warn({ err: s.data }, "nats async error");
    }
  })().catch(() => {});
  return nc;
}

export interface EnsureStreamOptions {
  name: string;
  /** First subject token; the stream captures `<subjectPrefix>.>`. */
  subjectPrefix: string;
  /** Window in which a repeated Nats-Msg-Id is dropped by the broker (default 2 min). */
  duplicateWindowMs?: number;
}

export const DEFAULT_DUPLICATE_WINDOW_MS = 120_000;

const STREAM_NOT_FOUND = 10059;
const STREAM_NAME_IN_USE = 10058;

export function jsErrorCode(err: unknown): number | undefined {
  return err instanceof NatsError ? err.api_error?.err_code : undefined;
}

/** Creates the stream, or brings an existing one to this configuration. Idempotent; safe to race. */
export async function ensureStream(nc: NatsConnection, opts: EnsureStreamOptions): Promise<void> {
  const jsm = await nc.jetstreamManager();
  const want = {
    subjects: [`${opts.subjectPrefix}.>`],
    duplicate_window: nanos(opts.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS),
  } satisfies Partial<StreamConfig>;
  for (let attempt = 0; ; attempt++) {
    try {
      const info = await jsm.streams.info(opts.name);
      const have = info.config;
      if (have.duplicate_window !== want.duplicate_window || have.subjects.join(" ") !== want.subjects.join(" ")) {
        await jsm.streams.update(opts.name, { ...have, ...want });
      }
      return;
    } catch (err) {
      if (jsErrorCode(err) !== STREAM_NOT_FOUND) throw err;
    }
    try {
      await jsm.streams.add({
        name: opts.name,
        ...want,
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        discard: DiscardPolicy.Old,
        num_replicas: 1,
      });
      return;
    } catch (err) {
      // Another replica created it between our info and add: go round and compare configs.
      if (jsErrorCode(err) !== STREAM_NAME_IN_USE || attempt > 2) throw err;
    }
  }
}

/** The subject dead letters of `consumer` are parked on (inside the same stream). */
export function deadLetterSubject(subjectPrefix: string, consumer: string): string {
  return `${subjectPrefix}.deadletter.${consumer}`;
}
