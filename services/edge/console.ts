// Serves the console's static build (web/dist). Vite names every asset after its content
// hash, so assets are cached for a year; index.html is revalidated so a deploy shows at once.
// Paths without a file extension are the console's own routes: they get index.html.
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, sep } from "node:path";
import { sendHttp, type HttpRoute } from "../kit/server.js";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".txt": "text/plain; charset=utf-8",
  ".woff2": "font/woff2",
  ".map": "application/json",
};

const NOT_BUILT = "The console is not built. Run `npm run build` (or `npm start`, which builds it when missing).\n";

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** The file under `root` that `urlPath` names, or undefined when it would leave `root`. */
export function resolveInside(root: string, urlPath: string): string | undefined {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return undefined;
  }
  if (decoded.includes("\0")) return undefined;
  const path = normalize(join(root, decoded));
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep) ? path : undefined;
}

export function consoleRoute(root: string): HttpRoute {
  return {
    method: "GET",
    path: "/*",
    async handle(req, res) {
      const urlPath = (req.url ?? "/").split("?")[0];
      const index = join(root, "index.html");
      if (!(await isFile(index))) {
        sendHttp(res, 503, "text/plain; charset=utf-8", NOT_BUILT);
        return;
      }
      let file = urlPath === "/" ? index : resolveInside(root, urlPath);
      if (!file) {
        sendHttp(res, 400, "text/plain; charset=utf-8", "bad path\n");
        return;
      }
      if (!(await isFile(file))) {
        if (extname(urlPath) !== "") {
          sendHttp(res, 404, "text/plain; charset=utf-8", "not found\n");
          return;
        }
        file = index; // a console route such as /books/123
      }
      const body = await readFile(file);
      const immutable = file.startsWith(join(root, "assets") + sep);
      sendHttp(res, 200, TYPES[extname(file)] ?? "application/octet-stream", req.method === "HEAD" ? "" : body, {
        "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache",
        "content-length": String(body.length),
      });
    },
  };
}
