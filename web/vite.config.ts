// The console's build: `npm run build` writes web/dist, which the edge serves. No React
// plugin is needed for a production build: esbuild compiles JSX itself (the plugin adds
// only fast refresh for `vite dev`). The generated contracts live in ../gen.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

export default defineConfig({
  root,
  base: "/",
  esbuild: { jsx: "automatic" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // The edge's CSP allows no inline script: keep every module in a file.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    rollupOptions: {
      onwarn(warning, warn) {
        // React Server Components' "use client" markers mean nothing in a client-only bundle.
        if (warning.code === "MODULE_LEVEL_DIRECTIVE") return;
        warn(warning);
      },
    },
  },
  server: {
    fs: { allow: [fileURLToPath(new URL("..", import.meta.url))] },
    // `vite dev` (port 5173) calls the edge, which allows this origin by default (EDGE_CORS_ORIGINS).
    port: 5173,
  },
});
