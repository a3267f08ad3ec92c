// The ER diagrams of docs/data-model.md, from the real migrations: each service's
// migrations (plus the kit's event tables) run in a throwaway database on the local
// Postgres (DATABASE_URL), the resulting schemas are read back from the catalog (columns,
// primary, unique and foreign keys), and each becomes a mermaid erDiagram. The text between
// the GENERATED markers of docs/data-model.md is replaced; the prose around it is kept.
//
//   npm run gen:docs          rewrites it (with docs/api.md and the SDK descriptor)
//   npm run check:docs        fails when it is stale
import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Migration } from "kysely";
import pg from "pg";
import { createDb } from "../services/kit/db.js";
import { outboxMigration } from "../services/kit/events/outbox.js";
import { idempotencyMigration } from "../services/kit/idempotency.js";
import { createLogger } from "../services/kit/log.js";
import { runMigrations } from "../services/kit/migrate.js";
import { createTestDatabase } from "../services/kit/testing.js";

export const DATA_MODEL_DOC = "docs/data-model.md";
const BEGIN = "<!-- BEGIN GENERATED ER DIAGRAMS: scripts/gen-data-model.ts -->";
const END = "<!-- END GENERATED ER DIAGRAMS -->";

interface Column { table: string; column: string; type: string; nullable: boolean }
interface Constraint { table: string; kind: "p" | "u" | "f"; columns: string[]; refTable?: string }

async function loadMigrations(): Promise<[string, Record<string, Migration>][]> {
  const { authMigrations } = await import("../services/auth/store/schema.js");
  const { promotionMigrations } = await import("../services/promotion/store/schema.js");
  const { voucherMigrations } = await import("../services/voucher/store/schema.js");
  const { providerMigrations } = await import("../services/provider/store/schema.js");
  return [
    ["auth", authMigrations],
    ["promotion", promotionMigrations],
    ["voucher", voucherMigrations],
    ["provider", providerMigrations],
  ];
}

async function readSchema(client: pg.Client, schema: string): Promise<{ columns: Column[]; constraints: Constraint[] }> {
  const columns = await client.query<{ table: string; column: string; type: string; nullable: boolean }>(
    `SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
        AND c.relname NOT LIKE 'kysely_%'
      ORDER BY c.relname, a.attnum`,
    [schema],
  );
  const constraints = await client.query<{ table: string; kind: "p" | "u" | "f"; columns: string[]; ref_table: string | null }>(
    `SELECT c.relname AS table, k.contype AS kind, r.relname AS ref_table,
            array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i)::text[] AS columns
       FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_class r ON r.oid = k.confrelid
      WHERE n.nspname = $1 AND k.contype IN ('p', 'u', 'f') AND c.relname NOT LIKE 'kysely_%'
      UNION ALL
     SELECT c.relname, 'u', NULL,
            array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY u(n, o) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.n ORDER BY u.o)::text[]
       FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND i.indisunique AND NOT i.indisprimary AND i.indpred IS NULL AND 0 <> ALL (i.indkey::int2[])
        AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
      ORDER BY 1, 2, 4`,
    [schema],
  );
  return {
    columns: columns.rows,
    constraints: constraints.rows.map((r) => ({ table: r.table, kind: r.kind, columns: r.columns, refTable: r.ref_table ?? undefined })),
  };
}

/** Mermaid's erDiagram attribute types are single words. */
const mermaidType = (t: string) => t.replace(/\(.*\)/, "").replace(/ with(out)? time zone/, (m) => (m.includes("out") ? "" : "tz")).replace(/\[\]$/, "_array").replace(/[^A-Za-z0-9_]+/g, "_");

function erDiagram(columns: Column[], constraints: Constraint[], include: (table: string) => boolean): string {
  const lines = ["```mermaid", "erDiagram"];
  const tables = [...new Set(columns.map((c) => c.table))].filter(include);
  for (const c of constraints) {
    if (c.kind !== "f" || !include(c.table) || !c.refTable || !include(c.refTable)) continue;
    const unique = constraints.some((u) => (u.kind === "u" || u.kind === "p") && u.table === c.table && u.columns.join() === c.columns.join());
    const optional = c.columns.some((col) => columns.find((x) => x.table === c.table && x.column === col)?.nullable);
    lines.push(`  ${c.refTable} ${optional ? "|o" : "||"}--${unique ? "o|" : "o{"} ${c.table} : "${c.columns.join(", ")}"`);
  }
  for (const table of tables) {
    lines.push(`  ${table} {`);
    for (const col of columns.filter((c) => c.table === table)) {
      const keys: string[] = [];
      const has = (kind: Constraint["kind"], single = false) =>
        constraints.some((k) => k.table === table && k.kind === kind && k.columns.includes(col.column) && (!single || k.columns.length === 1));
      if (has("p")) keys.push("PK");
      if (has("f")) keys.push("FK");
      if (has("u", true)) keys.push("UK");
      const note = col.nullable ? ' "nullable"' : "";
      lines.push(`    ${mermaidType(col.type)} ${col.column}${keys.length ? ` ${keys.join(", ")}` : ""}${note}`);
    }
    lines.push("  }");
  }
  lines.push("```");
  return lines.join("\n");
}

export async function renderErDiagrams(): Promise<string> {
  const log = createLogger("gen-data-model", "silent");
  const db = await createTestDatabase("er_docs");
  const out: string[] = [BEGIN, ""];
  try {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      // The kit's tables (events: outbox, inbox, dead letters…; request ids) are in the
      // schemas of the services that use them, the same everywhere: drawn once.
      const kitMigrations = { "0000_events": outboxMigration, "0000_idempotency": idempotencyMigration };
      const kit = createDb({ url: db.url, schema: "kit", log, max: 1 });
      try {
        await runMigrations(kit, { schema: "kit", migrations: kitMigrations, log });
      } finally {
        await kit.destroy();
      }
      const kitTables = await readSchema(client, "kit");
      const KIT_TABLES = new Set(kitTables.columns.map((c) => c.table));
      for (const [schema, migrations] of await loadMigrations()) {
        const kysely = createDb({ url: db.url, schema, log, max: 1 });
        try {
          // As startPlatform does: the kit's tables first (unless the service lists them itself).
          const own = Object.values(migrations);
          const kitFirst = Object.fromEntries(Object.entries(kitMigrations).filter(([, m]) => !own.includes(m)));
          await runMigrations(kysely, { schema, migrations: { ...kitFirst, ...migrations }, log });
        } finally {
          await kysely.destroy();
        }
        const { columns, constraints } = await readSchema(client, schema);
        const multiKeys = constraints.filter((k) => k.kind === "u" && k.columns.length > 1 && !KIT_TABLES.has(k.table));
        out.push(`### Schema \`${schema}\``, "", erDiagram(columns, constraints, (t) => !KIT_TABLES.has(t)), "");
        if (multiKeys.length) {
          out.push("Unique together: " + multiKeys.map((k) => `\`${k.table} (${k.columns.join(", ")})\``).join(", ") + ".", "");
        }
      }
      out.push("### Kit tables (in the schemas above)", "", erDiagram(kitTables.columns, kitTables.constraints, () => true), "");
    } finally {
      await client.end();
    }
  } finally {
    await db.drop();
  }
  out.push(END);
  return out.join("\n");
}

/** docs/data-model.md with its generated part replaced by `generated`. */
export function spliceDataModel(doc: string, generated: string): string {
  const a = doc.indexOf(BEGIN);
  const b = doc.indexOf(END);
  if (a < 0 || b < a) throw new Error(`${DATA_MODEL_DOC} lacks the markers ${BEGIN} … ${END}`);
  return doc.slice(0, a) + generated + doc.slice(b + END.length);
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const doc = spliceDataModel(readFileSync(DATA_MODEL_DOC, "utf8"), await renderErDiagrams());
  writeFileSync(DATA_MODEL_DOC, doc);
  console.log(`wrote the ER diagrams of ${DATA_MODEL_DOC}`);
}
