// Small building blocks shared by every screen: labelled fields, errors, loading and empty
// states, a progress bar, SVG bar charts, a dialog, and formatting of contract types.
import { useEffect, useId, useRef, type InputHTMLAttributes, type ReactNode, type SelectHTMLAttributes } from "react";
import type { DescEnum } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Discount } from "../../gen/vouch/type/v1/discount_pb.js";
import type { Money } from "../../gen/vouch/type/v1/money_pb.js";
import { readableError } from "./errors.js";

export function Field({ label, hint, ...input }: { label: string; hint?: ReactNode } & InputHTMLAttributes<HTMLInputElement>) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <input id={id} {...input} />
      {hint && <small className="hint">{hint}</small>}
    </div>
  );
}

export function SelectField({ label, options, ...select }: { label: string; options: [string, string][] } & SelectHTMLAttributes<HTMLSelectElement>) {
  const id = useId();
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <select id={id} {...select}>
        {options.map(([value, text]) => (
          <option key={value} value={value}>{text}</option>
        ))}
      </select>
    </div>
  );
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  const e = readableError(error);
  return (
    <div className="error" role="alert">
      <strong>{e.title}</strong>
      {e.fields.length > 0 && (
        <ul>
          {e.fields.map((f) => (
            <li key={f.field}>
              <code>{f.field}</code>: {f.description}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export const Loading = ({ what = "Loading" }: { what?: string }) => <p className="muted" role="status">{what}…</p>;
export const Empty = ({ children }: { children: ReactNode }) => <p className="empty">{children}</p>;

export function Progress({ value, max, label }: { value: number; max: number; label: string }) {
  const pct = max > 0 ? Math.floor((value / max) * 100) : 0;
  return (
    <div className="progress">
      <progress value={value} max={Math.max(1, max)} aria-label={label} />
      <span data-testid="progress-text">
        {value.toLocaleString()} / {max.toLocaleString()} ({pct}%)
      </span>
    </div>
  );
}

const COLORS = ["#2f6fde", "#f29d38", "#2aa876", "#c0392b"];

/** Grouped vertical bars, one group per label; plain SVG with a legend and a text alternative. */
export function Bars({ title, series, data }: { title: string; series: string[]; data: { label: string; values: number[] }[] }) {
  const max = Math.max(1, ...data.flatMap((d) => d.values));
  const groupW = 24 * series.length + 16;
  const width = Math.max(240, data.length * groupW + 40);
  const height = 160;
  return (
    <figure className="chart">
      <figcaption>{title}</figcaption>
      <svg width={width} height={height + 40} role="img" aria-label={`${title}: ${data.map((d) => `${d.label} ${d.values.join("/")}`).join(", ")}`}>
        {data.map((d, i) =>
          d.values.map((v, j) => {
            const h = (v / max) * height;
            return (
              <rect key={`${i}-${j}`} x={30 + i * groupW + j * 24} y={height - h + 5} width={20} height={h} fill={COLORS[j % COLORS.length]}>
                <title>{`${d.label} – ${series[j]}: ${v}`}</title>
              </rect>
            );
          }),
        )}
        {data.map((d, i) => (
          <text key={d.label + i} x={30 + i * groupW} y={height + 22} fontSize="11">
            {d.label.length > 14 ? d.label.slice(0, 13) + "…" : d.label}
          </text>
        ))}
        <text x={0} y={14} fontSize="10">{max}</text>
        <line x1={28} x2={width} y1={height + 5} y2={height + 5} stroke="#999" />
      </svg>
      <div className="legend">
        {series.map((s, j) => (
          <span key={s}>
            <i style={{ background: COLORS[j % COLORS.length] }} /> {s}
          </span>
        ))}
      </div>
    </figure>
  );
}

export function Dialog({ title, onClose, children }: { title: string; onClose: () => void; children: ReactNode }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    ref.current?.focus();
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);
  return (
    <div className="backdrop" onClick={onClose}>
      <div className="dialog" role="dialog" aria-modal="true" aria-label={title} tabIndex={-1} ref={ref} onClick={(e) => e.stopPropagation()}>
        <header>
          <h3>{title}</h3>
          <button type="button" onClick={onClose} aria-label="Close">×</button>
        </header>
        {children}
      </div>
    </div>
  );
}

// ── formatting ─────────────────────────────────────────────────────────────────────────

export function money(m: Money | undefined): string {
  if (!m) return "—";
  const digits = m.currencyCode === "VND" || m.currencyCode === "JPY" ? 0 : 2;
  const value = Number(m.minorUnits) / 10 ** digits;
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: m.currencyCode || "VND" }).format(value);
  } catch {
    return `${value} ${m.currencyCode}`;
  }
}

export function discount(d: Discount | undefined): string {
  switch (d?.kind.case) {
    case "percentOff": {
      const pct = `${d.kind.value.basisPoints / 100}% off`;
      return d.kind.value.maxAmount ? `${pct} (up to ${money(d.kind.value.maxAmount)})` : pct;
    }
    case "amountOff":
      return `${money(d.kind.value)} off`;
    default:
      return "—";
  }
}

export const when = (t: Timestamp | undefined) => (t ? timestampDate(t).toLocaleString() : "—");

/** `CAMPAIGN_STATE_ACTIVE` → `Active`. */
export function enumLabel(e: DescEnum, value: number): string {
  const v = e.values.find((x) => x.number === value);
  if (!v) return String(value);
  const text = v.localName.replace(/_/g, " ").toLowerCase(); // localName drops the enum's prefix
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export const newRequestId = () => crypto.randomUUID();

export function bytesToDataUrl(bytes: Uint8Array, type: string): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return `data:${type};base64,${btoa(binary)}`;
}
