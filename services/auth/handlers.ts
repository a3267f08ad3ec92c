// The AuthService rpcs: protocol in, domain call, protocol out. Access policies (public,
// authenticated, admin) are declared in auth.proto and enforced by the shared interceptor
// before any of these run.
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  AuthService,
  JwkSchema,
  Role,
  SigningKeySchema,
  SigningKeyState,
  UserSchema,
  type SigningKey,
  type User,
} from "../../gen/vouch/auth/v1/auth_pb.js";
import { clientIpKey, requireCaller } from "../kit/context.js";
import { invalidArgument, permissionDenied } from "../kit/errors.js";
import { requestIdViolation } from "../kit/idempotency.js";
import { decodePageToken, page, pageSize } from "../kit/paging.js";
import type { Accounts, SessionTokens, UserRow } from "./accounts.js";
import type { KeyInfo, KeyRing, KeyState } from "./keys.js";

export interface AuthHandlerDeps {
  accounts: Accounts;
  keys: KeyRing;
}

const ROLE_OF: Record<string, Role> = { CUSTOMER: Role.CUSTOMER, ADMIN: Role.ADMIN, SERVICE: Role.SERVICE };
const STATE_OF: Record<KeyState, SigningKeyState> = {
  published: SigningKeyState.PUBLISHED,
  active: SigningKeyState.ACTIVE,
  retiring: SigningKeyState.RETIRING,
  retired: SigningKeyState.RETIRED,
};

const ts = (d: Date | null | undefined) => (d ? timestampFromDate(d) : undefined);

export function userToProto(u: UserRow): User {
  return create(UserSchema, {
    id: u.id,
    fullName: u.fullName,
    username: u.username,
    email: u.email,
    phoneNumber: u.phoneNumber,
    birthday: u.birthday ?? "",
    roles: u.roles.map((r) => ROLE_OF[r]).filter((r) => r !== undefined),
    createTime: ts(u.createdAt),
    updateTime: ts(u.updatedAt),
    firstLoginTime: ts(u.firstLoginAt),
    lastLoginTime: ts(u.lastLoginAt),
  });
}

function keyToProto(k: KeyInfo): SigningKey {
  return create(SigningKeySchema, {
    kid: k.kid,
    algorithm: k.algorithm,
    state: STATE_OF[k.state],
    createTime: ts(k.createdAt),
    activateTime: ts(k.activatedAt),
    retireTime: ts(k.retireAt),
  });
}

function sessionToProto(s: SessionTokens) {
  return {
    accessToken: s.access.token,
    accessTokenExpireTime: ts(s.access.expiresAt),
    refreshToken: s.refreshToken,
    refreshTokenExpireTime: ts(s.refreshExpiresAt),
  };
}

/** Role changes and key rotation need a person's ADMIN role: a service token (which passes admin rpcs) may not. */
function requireHumanAdmin(ctx: HandlerContext) {
  if (!requireCaller(ctx).roles.includes("ADMIN")) {
    throw permissionDenied("ADMIN_REQUIRED", "this rpc requires the ADMIN role of a person, not a service token");
  }
}

function grantableRole(role: Role): "ADMIN" {
  if (role === Role.UNSPECIFIED) throw invalidArgument([{ field: "role", reason: "ROLE_REQUIRED", description: "is required" }]);
  if (role !== Role.ADMIN) {
    throw invalidArgument([{ field: "role", reason: "ROLE_NOT_GRANTABLE", description: "only ROLE_ADMIN can be granted or revoked" }]);
  }
  return "ADMIN";
}

type ProfileFields = Partial<Pick<User, "fullName" | "username" | "email" | "phoneNumber" | "birthday">>;

const profileInput = (u: ProfileFields | undefined) => ({
  fullName: u?.fullName ?? "",
  username: u?.username ?? "",
  email: u?.email ?? "",
  phoneNumber: u?.phoneNumber ?? "",
  birthday: u?.birthday ?? "",
});

export function createAuthHandlers({ accounts, keys }: AuthHandlerDeps): ServiceImpl<typeof AuthService> {
  return {
    async register(req, ctx) {
      const user = await accounts.register({ ...profileInput(req), password: req.password, requestId: req.requestId }, ctx.values.get(clientIpKey));
      return { user: userToProto(user) };
    },

    async login(req, ctx) {
      const result = await accounts.login(req.identifier, req.password, ctx.values.get(clientIpKey));
      return { ...sessionToProto(result), user: userToProto(result.user), firstLogin: result.firstLogin };
    },

    async refreshToken(req) {
      return sessionToProto(await accounts.refresh(req.refreshToken));
    },

    async logout(req) {
      await accounts.logout(req.refreshToken);
      return {};
    },

    async changePassword(req, ctx) {
      const caller = requireCaller(ctx);
      return sessionToProto(await accounts.changePassword(caller.subject, req.currentPassword, req.newPassword, ctx.values.get(clientIpKey)));
    },

    async getMe(_req, ctx) {
      return { user: userToProto(await accounts.getUser(requireCaller(ctx).subject)) };
    },

    async updateMe(req, ctx) {
      const caller = requireCaller(ctx);
      const user = await accounts.updateProfile(caller.subject, req.updateMask?.paths ?? [], profileInput(req.user));
      return { user: userToProto(user) };
    },

    getJwks() {
      return { keys: keys.jwks().map((k) => create(JwkSchema, { ...k, y: "" })) };
    },

    async listSigningKeys(req) {
      const limit = pageSize(req.pageSize);
      const after = decodePageToken<string>(req.pageToken, "keys");
      const rows = await keys.list(after, limit + 1);
      const { items, next } = page(rows, limit, "keys", (last) => last.kid);
      return { signingKeys: items.map(keyToProto), nextPageToken: next };
    },

    async rotateSigningKey(req, ctx) {
      requireHumanAdmin(ctx);
      const badRequestId = requestIdViolation(req.requestId);
      if (badRequestId) throw invalidArgument([badRequestId]);
      const { newKey, previousKey } = await keys.rotate(req.requestId);
      return { newKey: keyToProto(newKey), previousKey: previousKey && keyToProto(previousKey) };
    },

    async issueServiceToken(req) {
      const token = await accounts.issueServiceToken(req.clientId, req.clientSecret);
      return { accessToken: token.token, accessTokenExpireTime: ts(token.expiresAt) };
    },

    async listUsers(req) {
      if ([...req.query].length > 200) {
        throw invalidArgument([{ field: "query", reason: "QUERY_TOO_LONG", description: "must be at most 200 characters" }]);
      }
      const limit = pageSize(req.pageSize);
      const query = req.query.trim().toLowerCase();
      const role = req.role === Role.UNSPECIFIED ? undefined : Role[req.role];
      const filters = { query, role };
      const beforeId = decodePageToken<string>(req.pageToken, filters);
      const rows = await accounts.searchUsers({ query, role, beforeId, limit: limit + 1 });
      const { items, next } = page(rows, limit, filters, (last) => last.id);
      return { users: items.map(userToProto), nextPageToken: next };
    },

    async getUser(req) {
      return { user: userToProto(await accounts.getUser(req.userId)) };
    },

    async grantRole(req, ctx) {
      requireHumanAdmin(ctx);
      grantableRole(req.role);
      return { user: userToProto(await accounts.grantAdmin(req.userId)) };
    },

    async revokeRole(req, ctx) {
      requireHumanAdmin(ctx);
      grantableRole(req.role);
      return { user: userToProto(await accounts.revokeAdmin(req.userId)) };
    },
  };
}

export function authRoutes(deps: AuthHandlerDeps) {
  const impl = createAuthHandlers(deps);
  return (router: ConnectRouter) => router.service(AuthService, impl);
}
