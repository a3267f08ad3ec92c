// Voucher books: create one (live pattern preview and odds check), watch its codes being
// generated, then search its codes, show a QR, export CSV, import a list, generate more.
import { useEffect, useState, type FormEvent } from "react";
import { createClient } from "@connectrpc/connect";
import { useMutation, useQuery, useTransport } from "@connectrpc/connect-query";
import { useQueryClient } from "@tanstack/react-query";
import {
  BookState,
  BookStateSchema,
  GenerationJobState,
  VoucherService,
  VoucherStateSchema,
  type GenerationJob,
  type Voucher,
} from "../../../gen/vouch/voucher/v1/voucher_pb.js";
import { Link } from "../App.js";
import { navigate, usePath } from "../router.js";
import { Dialog, Empty, ErrorNote, Field, Loading, Progress, bytesToDataUrl, discount, enumLabel, newRequestId, when } from "../ui.js";

export function Books() {
  const path = usePath();
  const id = path.startsWith("/books/") ? decodeURIComponent(path.slice("/books/".length)) : "";
  return id ? <BookDetail bookId={id} /> : <BookList />;
}

function BookList() {
  const books = useQuery(VoucherService.method.listBooks, { pageSize: 100 });
  return (
    <section>
      <h1>Voucher books</h1>
      <CreateBook />
      <h2>All books</h2>
      {books.isPending ? (
        <Loading what="Loading books" />
      ) : books.error ? (
        <ErrorNote error={books.error} />
      ) : books.data.books.length === 0 ? (
        <Empty>No books yet.</Empty>
      ) : (
        <table>
          <thead>
            <tr><th>Name</th><th>Pattern</th><th>Discount</th><th>Codes</th><th>State</th></tr>
          </thead>
          <tbody>
            {books.data.books.map((b) => (
              <tr key={b.id}>
                <td><Link to={`/books/${b.id}`}>{b.name}</Link></td>
                <td><code>{b.codePattern}</code></td>
                <td>{discount(b.discount)}</td>
                <td>{b.codeCount.toLocaleString()}</td>
                <td>{enumLabel(BookStateSchema, b.state)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** The value after the user stopped typing for `ms`, so previews do not run per keystroke. */
function useDebounced<T>(value: T, ms = 300): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setV(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return v;
}

function PatternPreview({ pattern, count, bookId }: { pattern: string; count: number; bookId?: string }) {
  const input = useDebounced({ codePattern: pattern, codeCount: count, sampleCount: 3, bookId: bookId ?? "" });
  const preview = useQuery(VoucherService.method.previewPattern, input, { enabled: input.codePattern.length > 0 && input.codeCount > 0 });
  if (!input.codePattern) return null;
  if (preview.isPending) return <Loading what="Checking the pattern" />;
  if (preview.error) return <ErrorNote error={preview.error} />;
  const p = preview.data;
  return (
    <div className={p.acceptable ? "preview ok" : "preview bad"} aria-live="polite" data-testid="pattern-preview">
      <div>
        Examples: {p.samples.map((s) => <code key={s}>{s}</code>)}
      </div>
      <div>
        {p.acceptable ? "✓ Odds are fine" : "✗ Too many codes for this pattern"} — {p.explanation}
      </div>
      <small>
        {p.spaceSize.toExponential(2)} possible codes · {p.entropyBits.toFixed(1)} bits · fill {(p.fillRatio * 100).toPrecision(2)}% (at most {(p.maxFillRatio * 100).toPrecision(2)}%)
      </small>
    </div>
  );
}

function CreateBook() {
  const queryClient = useQueryClient();
  const [form, setForm] = useState({ name: "", pattern: "SUMMER-****-****", percent: "10", maxAmount: "", currency: "VND", count: "1000" });
  const [requestId, setRequestId] = useState(newRequestId);
  const create = useMutation(VoucherService.method.createBook, {
    onSuccess: () => {
      setRequestId(newRequestId());
      void queryClient.invalidateQueries();
    },
  });
  const set = (k: keyof typeof form) => (e: { target: { value: string } }) => setForm({ ...form, [k]: e.target.value });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    create.mutate({
      requestId,
      initialCodeCount: Number(form.count),
      book: {
        name: form.name,
        codePattern: form.pattern,
        discount: { kind: { case: "percentOff", value: { basisPoints: Math.round(Number(form.percent) * 100), maxAmount: form.maxAmount ? { minorUnits: BigInt(form.maxAmount), currencyCode: form.currency } : undefined } } },
      },
    });
  };
  return (
    <form onSubmit={submit} aria-label="Create a book" className="card">
      <h2>New book</h2>
      <div className="row">
        <Field label="Book name" required value={form.name} onChange={set("name")} />
        <Field label="Number of codes" type="number" min={0} required value={form.count} onChange={set("count")} />
      </div>
      <div className="row">
        <Field label="Code pattern" required value={form.pattern} onChange={set("pattern")} hint="* is a random character; other characters are kept." />
        <Field label="Discount (%)" type="number" min={1} max={100} step="0.01" required value={form.percent} onChange={set("percent")} />
        <Field label="Maximum discount (minor units)" type="number" min={0} value={form.maxAmount} onChange={set("maxAmount")} />
      </div>
      <PatternPreview pattern={form.pattern} count={Number(form.count) || 0} />
      <ErrorNote error={create.error} />
      <button type="submit" disabled={create.isPending}>{create.isPending ? "Creating…" : "Create book"}</button>
      {create.data?.book && (
        <div role="status">
          <p>
            Created <Link to={`/books/${create.data.book.id}`}>{create.data.book.name}</Link>.
          </p>
          {create.data.generationJob && <GenerationProgress job={create.data.generationJob} />}
        </div>
      )}
    </form>
  );
}

/** Follows a generation job through the server stream until it ends. */
function GenerationProgress({ job: initial }: { job: GenerationJob }) {
  const transport = useTransport();
  const queryClient = useQueryClient();
  const [job, setJob] = useState(initial);
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    const abort = new AbortController();
    const voucher = createClient(VoucherService, transport);
    (async () => {
      try {
        for await (const update of voucher.watchGenerationJob({ generationJobId: initial.id }, { signal: abort.signal })) {
          if (update.generationJob) setJob(update.generationJob);
        }
        void queryClient.invalidateQueries();
      } catch (err) {
        if (!abort.signal.aborted) setError(err);
      }
    })();
    return () => abort.abort();
  }, [initial.id, transport, queryClient]);
  const done = job.state === GenerationJobState.SUCCEEDED;
  return (
    <div className="card" data-testid="generation">
      <h3>Generating codes</h3>
      <Progress value={job.generatedCount} max={job.requestedCount} label="Codes generated" />
      <p>
        {done ? "Done." : job.state === GenerationJobState.FAILED ? `Failed: ${job.failureMessage}` : job.state === GenerationJobState.QUEUED ? "Queued…" : "Running…"}
      </p>
      <ErrorNote error={error} />
    </div>
  );
}

function BookDetail({ bookId }: { bookId: string }) {
  const queryClient = useQueryClient();
  const book = useQuery(VoucherService.method.getBook, { bookId });
  const stats = useQuery(VoucherService.method.getBookStats, { bookId }, { refetchInterval: 5_000 });
  const onSuccess = () => queryClient.invalidateQueries();
  const activate = useMutation(VoucherService.method.activateBook, { onSuccess });
  const pause = useMutation(VoucherService.method.pauseBook, { onSuccess });
  if (book.isPending) return <Loading what="Loading the book" />;
  if (book.error) return <ErrorNote error={book.error} />;
  const b = book.data.book!;
  const s = stats.data?.stats;
  return (
    <section>
      <p><a href="/books" onClick={(e) => (e.preventDefault(), navigate("/books"))}>← All books</a></p>
      <h1>{b.name}</h1>
      <p>
        <code>{b.codePattern}</code> · {discount(b.discount)} · {enumLabel(BookStateSchema, b.state)} · created {when(b.createTime)}
      </p>
      <div className="actions">
        {b.state !== BookState.ACTIVE && b.state !== BookState.ARCHIVED && <button type="button" onClick={() => activate.mutate({ bookId })}>Activate</button>}
        {b.state === BookState.ACTIVE && <button type="button" onClick={() => pause.mutate({ bookId })}>Pause</button>}
        <ExportCsv bookId={bookId} name={b.name} />
      </div>
      <ErrorNote error={activate.error ?? pause.error} />
      {s && (
        <dl className="stats">
          <dt>Total</dt><dd>{s.totalCount.toLocaleString()}</dd>
          <dt>Free</dt><dd>{s.freeCount.toLocaleString()}</dd>
          <dt>Assigned</dt><dd>{s.assignedCount.toLocaleString()}</dd>
          <dt>Redeemed</dt><dd>{s.redeemedCount.toLocaleString()}</dd>
          <dt>Imported</dt><dd>{s.importedCount.toLocaleString()}</dd>
        </dl>
      )}
      <CodeSearch bookId={bookId} />
      <div className="row">
        <GenerateMore bookId={bookId} />
        <ImportCodes bookId={bookId} />
      </div>
    </section>
  );
}

function CodeSearch({ bookId }: { bookId: string }) {
  const [prefix, setPrefix] = useState("");
  const query = useDebounced(prefix.trim().toUpperCase());
  const codes = useQuery(VoucherService.method.listVouchers, { bookId, codePrefix: query, pageSize: 20 });
  const [qr, setQr] = useState<Voucher>();
  return (
    <div className="card">
      <h2>Codes</h2>
      <Field label="Search codes by prefix" type="search" value={prefix} onChange={(e) => setPrefix(e.target.value)} />
      {codes.isPending ? (
        <Loading what="Searching" />
      ) : codes.error ? (
        <ErrorNote error={codes.error} />
      ) : codes.data.vouchers.length === 0 ? (
        <Empty>No codes match.</Empty>
      ) : (
        <table>
          <thead><tr><th>Code</th><th>State</th><th>Owner</th><th>Uses</th><th /></tr></thead>
          <tbody>
            {codes.data.vouchers.map((v) => (
              <tr key={v.id} data-testid="code-row">
                <td><code>{v.code}</code></td>
                <td>{enumLabel(VoucherStateSchema, v.state)}</td>
                <td>{v.ownerUserId || "—"}</td>
                <td>{v.useCount} / {v.maxUses}</td>
                <td><button type="button" onClick={() => setQr(v)}>QR</button></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {qr && <QrDialog voucher={qr} onClose={() => setQr(undefined)} />}
    </div>
  );
}

export function QrDialog({ voucher, onClose }: { voucher: Voucher; onClose: () => void }) {
  const qr = useQuery(VoucherService.method.getVoucherQrCode, { voucherId: voucher.id, sizePx: 256 });
  return (
    <Dialog title={`QR code for ${voucher.code}`} onClose={onClose}>
      {qr.isPending ? (
        <Loading what="Drawing the QR code" />
      ) : qr.error ? (
        <ErrorNote error={qr.error} />
      ) : (
        <img className="qr" alt={`QR code of voucher ${voucher.code}`} src={bytesToDataUrl(qr.data.png, "image/png")} width={256} height={256} />
      )}
      <p><code>{voucher.code}</code></p>
    </Dialog>
  );
}

function ExportCsv({ bookId, name }: { bookId: string; name: string }) {
  const transport = useTransport();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>();
  const run = async () => {
    setBusy(true);
    setError(undefined);
    try {
      const parts: BlobPart[] = [];
      for await (const chunk of createClient(VoucherService, transport).exportCodes({ bookId })) parts.push(new Uint8Array(chunk.csv));
      const url = URL.createObjectURL(new Blob(parts, { type: "text/csv" }));
      const a = document.createElement("a");
      a.href = url;
      a.download = `${name.replace(/[^\w-]+/g, "_") || "codes"}.csv`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" onClick={run} disabled={busy}>{busy ? "Exporting…" : "Export CSV"}</button>
      <ErrorNote error={error} />
    </>
  );
}

function GenerateMore({ bookId }: { bookId: string }) {
  const [count, setCount] = useState("1000");
  const [requestId, setRequestId] = useState(newRequestId);
  const generate = useMutation(VoucherService.method.generateCodes, { onSuccess: () => setRequestId(newRequestId()) });
  return (
    <form className="card" aria-label="Generate more codes" onSubmit={(e) => (e.preventDefault(), generate.mutate({ bookId, codeCount: Number(count), requestId }))}>
      <h2>Generate more</h2>
      <Field label="How many codes" type="number" min={1} value={count} onChange={(e) => setCount(e.target.value)} />
      <ErrorNote error={generate.error} />
      <button type="submit" disabled={generate.isPending}>Generate</button>
      {generate.data?.generationJob && <GenerationProgress job={generate.data.generationJob} />}
    </form>
  );
}

function ImportCodes({ bookId }: { bookId: string }) {
  const queryClient = useQueryClient();
  const [text, setText] = useState("");
  const [requestId, setRequestId] = useState(newRequestId);
  const importCodes = useMutation(VoucherService.method.importCodes, {
    onSuccess: () => {
      setRequestId(newRequestId());
      void queryClient.invalidateQueries();
    },
  });
  const codes = text.split(/[\s,;]+/).map((c) => c.trim()).filter(Boolean);
  return (
    <form className="card" aria-label="Import codes" onSubmit={(e) => (e.preventDefault(), importCodes.mutate({ bookId, codes, requestId }))}>
      <h2>Import a list</h2>
      <label htmlFor="import-codes">Codes (one per line, or comma-separated)</label>
      <textarea id="import-codes" rows={5} value={text} onChange={(e) => setText(e.target.value)} />
      <ErrorNote error={importCodes.error} />
      <button type="submit" disabled={importCodes.isPending || codes.length === 0}>Import {codes.length || ""} codes</button>
      {importCodes.data && (
        <p role="status">
          Imported {importCodes.data.importedCount}.{importCodes.data.duplicateCodes.length > 0 && ` Already present: ${importCodes.data.duplicateCodes.join(", ")}.`}
        </p>
      )}
    </form>
  );
}
