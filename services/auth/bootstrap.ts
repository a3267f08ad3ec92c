// The first admin, from the environment (AUTH_ADMIN_*), created on the first start of a
// platform that has none. Idempotent across restarts and replicas: once any admin exists
// nothing happens, whatever the variables say (change admins with GrantRole/RevokeRole).
import type { Kysely } from "kysely";
import type { Logger } from "../kit/log.js";
import { validateRegistration } from "./domain/profile.js";
import { hashPassword } from "./passwords.js";
import type { AdminBootstrap } from "./settings.js";
import type { AuthDB } from "./store/schema.js";
import { countUsersWithRole, insertUser, withRoleLock } from "./store/users.js";

export type BootstrapOutcome = "created" | "admin-exists" | "not-configured";

export async function bootstrapAdmin(db: Kysely<AuthDB>, admin: AdminBootstrap | undefined, log: Logger): Promise<BootstrapOutcome> {
  if ((await countUsersWithRole(db, "ADMIN")) > 0) return "admin-exists";
  if (!admin) {
    log.warn("no admin account exists; set AUTH_ADMIN_PASSWORD (and AUTH_ADMIN_USERNAME, AUTH_ADMIN_EMAIL, AUTH_ADMIN_PHONE) to create one at start");
    return "not-configured";
  }
  const validated = validateRegistration({ ...admin, birthday: "" });
  if (!validated.ok) {
    // A misconfiguration must stop the start, not leave a platform nobody can administer.
    const problems = validated.violations.map((v) => `${v.field}: ${v.description}`).join("; ");
    throw new Error(`AUTH_ADMIN_* do not describe a valid account: ${problems}`);
  }
  const passwordHash = await hashPassword(admin.password);
  // The same lock as role changes: two replicas starting together create one admin.
  return withRoleLock(db, async (trx) => {
    if ((await countUsersWithRole(trx, "ADMIN")) > 0) return "admin-exists" as const;
    try {
      const user = await insertUser(trx, validated.value, passwordHash, ["CUSTOMER", "ADMIN"]);
      log.info({ userId: user.id, username: user.username }, "admin account bootstrapped from AUTH_ADMIN_*");
      return "created" as const;
    } catch (err) {
      // Never promote an existing account: whoever registered that identifier first is not
      // necessarily the operator.
      throw new Error(
        `cannot bootstrap the admin: ${err instanceof Error ? err.message : String(err)}; choose other AUTH_ADMIN_* identifiers or grant ADMIN by hand`,
        { cause: err },
      );
    }
  });
}
