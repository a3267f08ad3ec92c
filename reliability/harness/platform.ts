// A whole private Vouch for one test file: its own Postgres cluster, Redis and NATS (so
// faults touch nobody else), two replicas of every service, provider-sim, real users from
// the real auth service, and the database handle the invariants are checked through.
import { randomInt, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { AuthService } from "../../gen/vouch/auth/v1/auth_pb.js";
import { BookState, VoucherService } from "../../gen/vouch/voucher/v1/voucher_pb.js";
import { DiscountSchema } from "../../gen/vouch/type/v1/discount_pb.js";
import { startCluster, type Cluster, type ClusterOptions, type ServiceKind } from "./cluster.js";
import { startPrivateNats, startPrivatePostgres, startPrivateRedis, type PrivateNats, type PrivatePostgres, type PrivateRedis } from "./infra.js";
import { openSql, type Sql } from "./invariants.js";
import { waitFor } from "./util.js";

export interface User {
  id: string;
  username: string;
  password: string;
  phoneNumber: string;
}

export interface Platform {
  pg: PrivatePostgres;
  redis: PrivateRedis;
  nats: PrivateNats;
  cluster: Cluster;
  sql: Sql;
  /** `{ headers: { authorization } }` for the bootstrap admin (logged in once, cached). */
  admin(): Promise<{ headers: { authorization: string } }>;
  /** Registers a customer through auth (replica chosen round-robin). */
  register(prefix?: string): Promise<User>;
  login(user: Pick<User, "username" | "password">, replica?: number): Promise<{ accessToken: string; refreshToken: string }>;
  auth(i?: number): Client<typeof AuthService>;
  voucher(i: number): Client<typeof VoucherService>;
  /** A book of `codes` generated codes with `usesPerCode`, activated. */
  createActiveBook(opts: { codes: number; usesPerCode?: number; prefix?: string }): Promise<{ bookId: string }>;
  /** Stops every process, removes every directory. */
  dispose(): Promise<void>;
}

let phoneSeq = randomInt(1_000_000);
/** A valid Vietnamese mobile number, different on every call of this process. */
export function newPhone(): string {
  phoneSeq = (phoneSeq + 7_919) % 10_000_000;
  return `+8490${String(phoneSeq).padStart(7, "0")}`;
}

export async function startPlatform(opts: Omit<ClusterOptions, "backing"> & { env?: Record<string, string> } = {}): Promise<Platform> {
  const pg = await startPrivatePostgres();
  const redis = await startPrivateRedis().catch(async (err) => {
    await pg.dispose();
    throw err;
  });
  const nats = await startPrivateNats().catch(async (err) => {
    await redis.dispose();
    await pg.dispose();
    throw err;
  });
  const disposeBacking = async () => {
    await nats.dispose().catch(() => {});
    await redis.dispose().catch(() => {});
    await pg.dispose().catch(() => {});
  };
  let cluster: Cluster;
  try {
    cluster = await startCluster({
      ...opts,
      backing: { databaseUrl: pg.url, redisUrl: redis.url, natsUrl: nats.url, stream: "VOUCH", subjectPrefix: "vouch", redisKeyPrefix: "vouch:" },
    });
  } catch (err) {
    await disposeBacking();
    throw err;
  }
  const sql = openSql(pg.url);
  let adminHeaders: Promise<{ headers: { authorization: string } }> | undefined;
  let rr = 0;

  const auth = (i = 0) => cluster.client(AuthService, cluster.replicas.auth[i % cluster.replicas.auth.length]);
  const voucher = (i: number) => cluster.client(VoucherService, cluster.replicas.voucher[i % cluster.replicas.voucher.length]);
  const login: Platform["login"] = async (user, replica = rr++) => {
    const res = await auth(replica).login({ identifier: user.username, password: user.password });
    return { accessToken: res.accessToken, refreshToken: res.refreshToken };
  };

  const platform: Platform = {
    pg,
    redis,
    nats,
    cluster,
    sql,
    admin() {
      adminHeaders ??= auth(0)
        .login({ identifier: "admin", password: cluster.adminPassword })
        .then((r) => ({ headers: { authorization: `Bearer ${r.accessToken}` } }));
      return adminHeaders;
    },
    async register(prefix = "rel") {
      const tag = randomUUID().replace(/-/g, "").slice(0, 12);
      const user = { username: `${prefix}${tag}`, password: `correct horse ${tag} staple`, phoneNumber: newPhone() };
      const res = await auth(rr++).register({ fullName: `Reliability ${tag}`, username: user.username, email: `${user.username}@reliability.test`, phoneNumber: user.phoneNumber, password: user.password });
      return { ...user, id: res.user!.id };
    },
    login,
    auth,
    voucher,
    async createActiveBook({ codes, usesPerCode = 1, prefix = "RL" }) {
      const admin = await platform.admin();
      const v = voucher(0);
      const res = await v.createBook({
        book: {
          name: `reliability ${prefix}`,
          discount: create(DiscountSchema, { kind: { case: "percentOff", value: { basisPoints: 1000, maxAmount: { minorUnits: 50_000n, currencyCode: "VND" } } } }),
          codePattern: `${prefix}-****-****-****`,
          usesPerCode,
        },
        initialCodeCount: codes,
        requestId: randomUUID(),
      }, admin);
      const bookId = res.book!.id;
      await waitFor(`${codes} codes generated in book ${bookId}`, async () => {
        const b = await v.getBook({ bookId }, admin);
        return b.book!.codeCount >= BigInt(codes);
      }, 120_000, 250);
      const activated = await v.activateBook({ bookId }, admin);
      if (activated.book?.state !== BookState.ACTIVE) throw new Error(`book ${bookId} not active`);
      return { bookId };
    },
    async dispose() {
      await cluster.dispose().catch(() => {});
      await sql.end().catch(() => {});
      await disposeBacking();
    },
  };
  return platform;
}

/** The replica of `kind` an attempt goes to: operations alternate, retries move on. */
export const pick = (kind: ServiceKind, op: number, attempt: number, cluster: Cluster) =>
  cluster.replicas[kind][(op + attempt) % cluster.replicas[kind].length];
