// `npm run gen:docs`: everything derived from the contracts for people and other languages:
//
// - docs/api.md, the API reference, rendered from the protos' own comments (buf builds the
//   workspace into an image with source info, as JSON; nothing is parsed by hand);
// - sdk/descriptor/vouch.binpb, the FileDescriptorSet of every Vouch proto with its imports
//   and comments (`grpcurl -protoset`, gateways, SDK generators in other languages).
//
// `npm run check:docs` fails when either differs from what this script would write now.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const API_DOC = "docs/api.md";
export const DESCRIPTOR = "sdk/descriptor/vouch.binpb";
const BUF = join("node_modules", ".bin", "buf");

// The parts of google.protobuf.FileDescriptorProto's JSON form that the reference uses.
interface Location { path?: number[]; leadingComments?: string; trailingComments?: string }
interface FieldJson { name: string; number: number; label?: string; type: string; typeName?: string; oneofIndex?: number; proto3Optional?: boolean; jsonName?: string; options?: { deprecated?: boolean } }
interface MessageJson { name: string; field?: FieldJson[]; nestedType?: MessageJson[]; enumType?: EnumJson[]; oneofDecl?: { name: string }[]; options?: { mapEntry?: boolean; deprecated?: boolean } }
interface EnumJson { name: string; value?: { name: string; number: number; options?: { deprecated?: boolean } }[] }
interface MethodJson { name: string; inputType: string; outputType: string; clientStreaming?: boolean; serverStreaming?: boolean; options?: Record<string, unknown> }
interface ServiceJson { name: string; method?: MethodJson[] }
interface FileJson { name: string; package: string; messageType?: MessageJson[]; enumType?: EnumJson[]; service?: ServiceJson[]; sourceCodeInfo?: { location?: Location[] } }

/** Our packages, in reading order: the services first, then what they share. */
const PACKAGE_ORDER = ["vouch.auth.v1", "vouch.promotion.v1", "vouch.voucher.v1", "vouch.provider.v1", "vouch.events.v1", "vouch.type.v1", "vouch.options.v1"];

export function bufImage(): FileJson[] {
  const json = execFileSync(BUF, ["build", "-o", "-#format=json"], { maxBuffer: 64 * 1024 * 1024, encoding: "utf8" });
  return (JSON.parse(json) as { file: FileJson[] }).file;
}

/** The binary FileDescriptorSet, as buf writes it. */
export function buildDescriptor(): Buffer {
  const dir = mkdtempSync(join(tmpdir(), "vouch-descriptor-"));
  try {
    const out = join(dir, "vouch.binpb");
    execFileSync(BUF, ["build", "--as-file-descriptor-set", "-o", out], { stdio: ["ignore", "ignore", "inherit"] });
    return readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const anchor = (fullName: string) => fullName.replace(/^\./, "").toLowerCase().replace(/[^a-z0-9]+/g, "-");

/** A comment as markdown: the common indent removed, blank lines kept. */
function block(comment: string | undefined): string {
  if (!comment) return "";
  const lines = comment.replace(/\s+$/, "").split("\n").map((l) => l.replace(/\s+$/, ""));
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => l.match(/^ */)![0].length));
  return lines.map((l) => l.slice(Number.isFinite(indent) ? indent : 0)).join("\n").trim();
}

/** A comment inside a table cell: one line, paragraphs separated by <br>. */
function cell(comment: string | undefined): string {
  return block(comment)
    .split(/\n\s*\n/)
    .map((p) => p.replace(/\s*\n\s*/g, " "))
    .join("<br>")
    .replace(/\|/g, "\\|");
}

export function renderApiDocs(files: FileJson[]): string {
  const ours = files.filter((f) => f.package.startsWith("vouch."));
  const known = new Set<string>();
  const mapEntries = new Map<string, MessageJson>();
  for (const f of ours) {
    const walk = (prefix: string, messages: MessageJson[] = [], enums: EnumJson[] = []) => {
      for (const e of enums) known.add(`${prefix}.${e.name}`);
      for (const m of messages) {
        const name = `${prefix}.${m.name}`;
        if (m.options?.mapEntry) mapEntries.set(`.${name}`, m);
        else known.add(name);
        walk(name, m.nestedType, m.enumType);
      }
    };
    walk(f.package, f.messageType, f.enumType);
  }
  const typeRef = (typeName: string): string => {
    const name = typeName.replace(/^\./, "");
    return known.has(name) ? `[${name.split(".").pop()}](#${anchor(name)})` : `\`${name}\``;
  };
  const fieldType = (field: FieldJson): string => {
    const entry = field.typeName ? mapEntries.get(field.typeName) : undefined;
    if (entry) {
      const [k, v] = entry.field!;
      return `map<${fieldType(k)}, ${fieldType(v)}>`;
    }
    const base = field.typeName ? typeRef(field.typeName) : `\`${field.type.replace(/^TYPE_/, "").toLowerCase()}\``;
    if (field.label === "LABEL_REPEATED") return `repeated ${base}`;
    if (field.proto3Optional) return `optional ${base}`;
    return base;
  };

  const out: string[] = [];
  out.push("# API reference", "");
  out.push("<!-- Generated by scripts/gen-api-docs.ts (`npm run gen:docs`) from the comments in proto/. Do not edit: `npm test` fails when this file is stale. -->", "");
  out.push(
    "Every Vouch service speaks gRPC, Connect and gRPC-Web on one port (README, \"Processes\"). " +
      "Rpcs declare who may call them (`access`: PUBLIC, AUTHENTICATED, ADMIN, SERVICE); read-only rpcs are " +
      "`NO_SIDE_EFFECTS`, so Connect clients may call them with HTTP GET. Errors carry `google.rpc.ErrorInfo` " +
      "with a stable `reason`. The same contracts as a descriptor set: `sdk/descriptor/vouch.binpb`.",
    "",
  );
  const byPackage = new Map<string, FileJson[]>();
  for (const f of ours) byPackage.set(f.package, [...(byPackage.get(f.package) ?? []), f]);
  const packages = [...byPackage.keys()].sort((a, b) => (PACKAGE_ORDER.indexOf(a) + 1 || 99) - (PACKAGE_ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));

  out.push("## Contents", "");
  for (const pkg of packages) {
    const services = byPackage.get(pkg)!.flatMap((f) => f.service ?? []).map((s) => `[${s.name}](#${anchor(`${pkg}.${s.name}`)})`);
    out.push(`- [${pkg}](#${anchor(pkg)})${services.length ? `: ${services.join(", ")}` : ""}`);
  }
  out.push("");

  for (const pkg of packages) {
    out.push(`<a id="${anchor(pkg)}"></a>`, "", `## ${pkg}`, "");
    for (const f of byPackage.get(pkg)!.sort((a, b) => a.name.localeCompare(b.name))) {
      const comments = new Map<string, Location>();
      for (const loc of f.sourceCodeInfo?.location ?? []) if (loc.path) comments.set(loc.path.join(","), loc);
      const lead = (path: number[]) => comments.get(path.join(","))?.leadingComments;
      const both = (path: number[]) => {
        const loc = comments.get(path.join(","));
        return [loc?.leadingComments, loc?.trailingComments].filter(Boolean).join("\n\n");
      };
      out.push(`File \`proto/${f.name}\``, "");

      (f.service ?? []).forEach((s, si) => {
        const full = `${pkg}.${s.name}`;
        out.push(`<a id="${anchor(full)}"></a>`, "", `### ${s.name}`, "", block(lead([6, si])), "");
        out.push("| rpc | request | response | access | side effects |", "|---|---|---|---|---|");
        (s.method ?? []).forEach((m) => {
          const access = String(m.options?.["[vouch.options.v1.access]"] ?? "ACCESS_AUTHENTICATED").replace(/^ACCESS_/, "");
          const effects = m.options?.idempotencyLevel === "NO_SIDE_EFFECTS" ? "none (GET)" : m.options?.idempotencyLevel === "IDEMPOTENT" ? "idempotent" : "yes";
          const stream = (on: boolean | undefined, t: string) => `${on ? "stream " : ""}${typeRef(t)}`;
          out.push(`| [${m.name}](#${anchor(`${full}.${m.name}`)}) | ${stream(m.clientStreaming, m.inputType)} | ${stream(m.serverStreaming, m.outputType)} | ${access} | ${effects} |`);
        });
        out.push("");
        (s.method ?? []).forEach((m, mi) => {
          out.push(`<a id="${anchor(`${full}.${m.name}`)}"></a>`, "", `#### ${s.name}.${m.name}`, "");
          out.push(`\`rpc ${m.name}(${m.clientStreaming ? "stream " : ""}${m.inputType.split(".").pop()}) returns (${m.serverStreaming ? "stream " : ""}${m.outputType.split(".").pop()})\``, "");
          const text = block(lead([6, si, 2, mi]));
          if (text) out.push(text, "");
        });
      });

      const renderEnum = (e: EnumJson, path: number[], prefix: string) => {
        const full = `${prefix}.${e.name}`;
        out.push(`<a id="${anchor(full)}"></a>`, "", `### ${full.slice(pkg.length + 1)} (enum)`, "");
        const text = block(lead(path));
        if (text) out.push(text, "");
        out.push("| value | number | meaning |", "|---|---|---|");
        (e.value ?? []).forEach((v, vi) => out.push(`| \`${v.name}\` | ${v.number} | ${v.options?.deprecated ? "**Deprecated.** " : ""}${cell(both([...path, 2, vi]))} |`));
        out.push("");
      };
      const renderMessage = (m: MessageJson, path: number[], prefix: string) => {
        if (m.options?.mapEntry) return;
        const full = `${prefix}.${m.name}`;
        out.push(`<a id="${anchor(full)}"></a>`, "", `### ${full.slice(pkg.length + 1)}`, "");
        const text = block(lead(path));
        if (text) out.push(text, "");
        if (m.field?.length) {
          out.push("| field | type | description |", "|---|---|---|");
          m.field.forEach((field, fi) => {
            const oneof = field.oneofIndex !== undefined && !field.proto3Optional ? `One of \`${m.oneofDecl![field.oneofIndex].name}\`. ` : "";
            out.push(`| \`${field.name}\` = ${field.number} | ${fieldType(field)} | ${field.options?.deprecated ? "**Deprecated.** " : ""}${oneof}${cell(both([...path, 2, fi]))} |`);
          });
          out.push("");
        } else {
          out.push("_No fields._", "");
        }
        (m.enumType ?? []).forEach((e, ei) => renderEnum(e, [...path, 4, ei], full));
        (m.nestedType ?? []).forEach((n, ni) => renderMessage(n, [...path, 3, ni], full));
      };
      (f.messageType ?? []).forEach((m, mi) => renderMessage(m, [4, mi], pkg));
      (f.enumType ?? []).forEach((e, ei) => renderEnum(e, [5, ei], pkg));
    }
  }
  return out.join("\n").replace(/\n{3,}/g, "\n\n").trimEnd() + "\n";
}

const isEntryPoint = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isEntryPoint) {
  const doc = renderApiDocs(bufImage());
  mkdirSync(dirname(API_DOC), { recursive: true });
  writeFileSync(API_DOC, doc);
  mkdirSync(dirname(DESCRIPTOR), { recursive: true });
  const descriptor = buildDescriptor();
  writeFileSync(DESCRIPTOR, descriptor);
  console.log(`wrote ${API_DOC} (${doc.split("\n").length} lines) and ${DESCRIPTOR} (${descriptor.length} bytes)`);
}
