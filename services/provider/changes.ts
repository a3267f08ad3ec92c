// Tells WatchCodeRequest streams that their request changed, whichever replica changed it:
// one dedicated Postgres session per replica LISTENs to the trigger's NOTIFY (see
// store/schema.ts) and wakes the local watchers of that id. If the session drops, it is
// re-opened and every watcher is woken once (it may have missed a change); watchers also
// re-read on a slow timer, so a lost notification costs latency, never correctness.
import pg from "pg";
import type { Logger } from "../kit/log.js";
import { CHANGES_CHANNEL } from "./store/schema.js";

export interface ChangeFeed {
  /** Calls `onChange` whenever request `id` changes state; returns the unsubscribe. */
  subscribe(id: string, onChange: () => void): () => void;
  stop(): Promise<void>;
}

export function startChangeFeed(opts: { databaseUrl: string; log: Logger }): ChangeFeed {
  const log = opts.log.child({ component: "change-feed" });
  const watchers = new Map<string, Set<() => void>>();
  let stopping = false;
  let client: pg.Client | undefined;
  let retryTimer: NodeJS.Timeout | undefined;

  const wakeAll = () => {
    for (const set of watchers.values()) for (const fn of set) fn();
  };

  async function listen(failures = 0): Promise<void> {
    if (stopping) return;
    const c = new pg.Client({ connectionString: opts.databaseUrl, application_name: "vouch-provider-changes" });
    const lost = (err?: unknown) => {
      if (client !== c) return;
      client = undefined;
      void c.end().catch(() => {});
      if (stopping) return;
      log.warn({ err }, "change feed connection lost; reconnecting");
      retryTimer = setTimeout(() => void listen(failures + 1), Math.min(5_000, 100 * 2 ** Math.min(failures, 6)));
    };
    c.on("error", lost);
    c.on("end", () => lost());
    c.on("notification", (n) => {
      if (n.channel !== CHANGES_CHANNEL || !n.payload) return;
      for (const fn of watchers.get(n.payload) ?? []) fn();
    });
    client = c;
    try {
      await c.connect();
      await c.query(`LISTEN ${CHANGES_CHANNEL}`);
      if (failures > 0) wakeAll();
    } catch (err) {
      lost(err);
    }
  }
  const started = listen();

  return {
    subscribe(id, onChange) {
      let set = watchers.get(id);
      if (!set) watchers.set(id, (set = new Set()));
      set.add(onChange);
      return () => {
        set!.delete(onChange);
        if (set!.size === 0 && watchers.get(id) === set) watchers.delete(id);
      };
    },
    async stop() {
      stopping = true;
      clearTimeout(retryTimer);
      await started;
      const c = client;
      client = undefined;
      await c?.end().catch(() => {});
    },
  };
}
