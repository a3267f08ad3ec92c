// `npm run check:deploy`: the deployment files are checked without a cluster or a Docker
// engine, offline, in a few seconds:
//
// - Kubernetes: each kustomization under deploy/k8s/overlays (and the base) is built by a
//   small kustomize subset (resources, components, namespace, images, JSON 6902 patches,
//   `$patch: delete`), every object is validated against the Kubernetes 1.27 OpenAPI
//   schemas of `kubernetes-models`, and Vouch's own rules are checked: every service has a
//   Deployment with ≥ 2 replicas, readiness on /readyz, liveness on /healthz, resources,
//   a non-root read-only container, no service links (they would clash with *_PORT), a
//   Service, an autoscaling/v2 HPA and a PodDisruptionBudget selecting its pods, every
//   ConfigMap/Secret key it reads exists, and every variable it sets is one the code reads.
// - docker-compose.yml: every process and data store is there with a health check, every
//   `depends_on` waits on a health check, peer URLs name a compose service on its port,
//   every variable a Vouch process is given is one the code reads;
//   `docker compose config -q` (or docker-compose v1) runs too when it is installed.
// - Dockerfile: multi-stage on Node 24, production dependencies, non-root, HEALTHCHECK, the
//   files it copies exist, and `npm run build:server` exists.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { DEFAULT_PORTS, type ServiceName } from "../services/kit/config.js";

type Obj = Record<string, any>;
const problems: string[] = [];
const notes: string[] = [];
const fail = (where: string, what: string) => problems.push(`${where}: ${what}`);

const started = performance.now();
const VOUCH_SERVICES = ["auth", "promotion", "voucher", "provider", "edge"] as const;
const OPTIONAL_SERVICES = ["provider-sim"] as const;

// ---------------------------------------------------------------------------------------
// A kustomize subset, enough for deploy/k8s (anything else it meets is an error, so the
// manifests cannot silently rely on a feature this check does not understand).

const KNOWN_KUSTOMIZATION_FIELDS = new Set(["apiVersion", "kind", "resources", "components", "namespace", "images", "patches"]);

function readYamlDocs(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(file, "utf8"), { merge: true });
  const out: Obj[] = [];
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
    const value = doc.toJS({ maxAliasCount: 100 });
    if (value !== null && value !== undefined) out.push(value as Obj);
  }
  return out;
}

function kustomizationFile(dir: string): string | undefined {
  return ["kustomization.yaml", "kustomization.yml", "Kustomization"].map((f) => join(dir, f)).find(existsSync);
}

function build(dir: string, expectKind: "Kustomization" | "Component" = "Kustomization"): Obj[] {
  const file = kustomizationFile(dir);
  if (!file) throw new Error(`${dir}: no kustomization.yaml`);
  const k = parseYaml(readFileSync(file, "utf8")) as Obj;
  const where = relative(process.cwd(), file);
  if ((k.kind ?? "Kustomization") !== expectKind) fail(where, `kind must be ${expectKind}`);
  for (const key of Object.keys(k)) if (!KNOWN_KUSTOMIZATION_FIELDS.has(key)) fail(where, `field "${key}" is not understood by scripts/check-deploy.ts`);

  let objects: Obj[] = [];
  for (const res of (k.resources ?? []) as string[]) {
    const path = join(dir, res);
    if (!existsSync(path)) {
      fail(where, `resource ${res} does not exist`);
      continue;
    }
    objects.push(...(statSync(path).isDirectory() ? build(path) : readYamlDocs(path)));
  }
  for (const comp of (k.components ?? []) as string[]) {
    const path = join(dir, comp);
    if (!existsSync(path)) {
      fail(where, `component ${comp} does not exist`);
      continue;
    }
    objects = applyComponent(path, objects);
  }
  objects = applyPatches(where, dir, k.patches ?? [], objects);
  for (const image of (k.images ?? []) as Obj[]) setImages(objects, image);
  if (k.namespace) for (const o of objects) if (o.kind !== "Namespace") o.metadata = { ...o.metadata, namespace: k.namespace };
  return objects;
}

function applyComponent(dir: string, objects: Obj[]): Obj[] {
  const file = kustomizationFile(dir)!;
  const c = parseYaml(readFileSync(file, "utf8")) as Obj;
  const where = relative(process.cwd(), file);
  if (c.kind !== "Component") fail(where, "kind must be Component");
  for (const key of Object.keys(c)) if (!KNOWN_KUSTOMIZATION_FIELDS.has(key)) fail(where, `field "${key}" is not understood by scripts/check-deploy.ts`);
  const own = ((c.resources ?? []) as string[]).flatMap((r) => readYamlDocs(join(dir, r)));
  let all = applyPatches(where, dir, c.patches ?? [], [...objects, ...own]);
  for (const image of (c.images ?? []) as Obj[]) setImages(all, image);
  return all;
}

function matches(target: Obj, o: Obj): boolean {
  return (!target.kind || target.kind === o.kind) && (!target.name || target.name === o.metadata?.name);
}

function applyPatches(where: string, dir: string, patches: Obj[], objects: Obj[]): Obj[] {
  for (const p of patches) {
    const text: string = p.patch ?? readFileSync(join(dir, p.path), "utf8");
    const target: Obj = p.target ?? {};
    const parsed = parseYaml(text);
    const hits = objects.filter((o) => matches(target, o));
    if (hits.length === 0) {
      fail(where, `patch target ${JSON.stringify(target)} matches nothing`);
      continue;
    }
    if (Array.isArray(parsed)) {
      for (const o of hits) for (const op of parsed) jsonPatch(where, o, op);
    } else if (parsed?.$patch === "delete") {
      objects = objects.filter((o) => !hits.includes(o));
    } else {
      fail(where, "only JSON 6902 patches (a list of ops) and `$patch: delete` are supported here");
    }
  }
  return objects;
}

function jsonPatch(where: string, o: Obj, op: Obj) {
  const keys = String(op.path).split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
  const last = keys.pop()!;
  let node: any = o;
  for (const key of keys) {
    node = node?.[key];
    if (node === undefined) return fail(where, `patch path ${op.path} does not exist in ${o.kind}/${o.metadata?.name}`);
  }
  if (op.op === "replace" || op.op === "remove") {
    if (!(last in node)) return fail(where, `patch ${op.op} ${op.path}: nothing there in ${o.kind}/${o.metadata?.name}`);
  }
  if (op.op === "remove") Array.isArray(node) ? node.splice(Number(last), 1) : delete node[last];
  else if (op.op === "add" && Array.isArray(node)) node.splice(last === "-" ? node.length : Number(last), 0, op.value);
  else if (op.op === "add" || op.op === "replace") node[last] = op.value;
  else fail(where, `patch op ${op.op} is not supported here`);
}

function podSpecs(o: Obj): Obj[] {
  const spec = o.spec?.template?.spec ?? o.spec?.jobTemplate?.spec?.template?.spec;
  return spec ? [spec] : [];
}

function setImages(objects: Obj[], image: Obj) {
  for (const spec of objects.flatMap(podSpecs)) {
    for (const c of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
      const [name, tag] = splitImage(c.image);
      if (name !== image.name) continue;
      c.image = `${image.newName ?? name}${image.digest ? `@${image.digest}` : `:${image.newTag ?? tag ?? "latest"}`}`;
    }
  }
}

function splitImage(ref: string): [string, string | undefined] {
  const at = ref.lastIndexOf(":");
  return at > ref.lastIndexOf("/") ? [ref.slice(0, at), ref.slice(at + 1)] : [ref, undefined];
}

// ---------------------------------------------------------------------------------------
// Schema validation with kubernetes-models (its precompiled OpenAPI validators).

async function validateSchema(where: string, o: Obj) {
  if (typeof o.apiVersion !== "string" || typeof o.kind !== "string") return fail(where, "object without apiVersion/kind");
  let mod: Obj;
  try {
    mod = await import(`kubernetes-models/${o.apiVersion}`);
  } catch {
    return fail(where, `${o.kind}: unknown apiVersion ${o.apiVersion}`);
  }
  const Model = mod[o.kind];
  if (typeof Model !== "function") return fail(where, `unknown kind ${o.apiVersion} ${o.kind}`);
  try {
    new Model(o).validate();
  } catch (err) {
    const details = (err as { errors?: { instancePath: string; message: string }[] }).errors;
    const text = details?.map((e) => `${e.instancePath} ${e.message}`).join("; ") ?? String(err);
    fail(where, `${o.kind}/${o.metadata?.name} does not match the Kubernetes schema: ${text}`);
  }
}

// ---------------------------------------------------------------------------------------
// Vouch's rules for the built manifests.

const selects = (selector: Obj | undefined, labels: Obj | undefined) =>
  !!selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

/**
 * Every configuration key the code reads, to catch misspelt keys in the ConfigMap, a
 * container's env and compose's environment. Tests are left out: a test that sets a name
 * nothing reads must not make it look read.
 */
const knownEnvNames = (() => {
  const names = new Set<string>(["SERVICE"]); // read by the image's entrypoint (Dockerfile)
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) {
        if (name !== "test") walk(path);
      }
      else if (name.endsWith(".ts")) for (const m of readFileSync(path, "utf8").matchAll(/\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b(?:HOST|PORT)\b/g)) names.add(m[0]);
    }
  };
  walk("services");
  // Built from service names in services/kit/config.ts (`${NAME}_URL`, `${NAME}_PORT`).
  for (const name of Object.keys(DEFAULT_PORTS)) for (const suffix of ["URL", "PORT"]) names.add(`${name.toUpperCase().replace("-", "_")}_${suffix}`);
  return names;
})();

function checkVouchRules(where: string, objects: Obj[], requireOptional: boolean) {
  const byKind = (kind: string) => objects.filter((o) => o.kind === kind);
  const configMaps = new Map(byKind("ConfigMap").map((o) => [o.metadata.name, o]));
  const secrets = new Map(byKind("Secret").map((o) => [o.metadata.name, o]));
  const external = new Set<string>();

  for (const cm of configMaps.values()) {
    if (cm.metadata?.labels?.["app.kubernetes.io/part-of"] !== "vouch") continue;
    for (const key of Object.keys(cm.data ?? {})) if (!knownEnvNames.has(key)) fail(where, `ConfigMap ${cm.metadata.name}: ${key} is not read by any service`);
  }

  const deployments = byKind("Deployment").filter((d) => d.metadata?.labels?.["app.kubernetes.io/part-of"] === "vouch");
  const wanted = [...VOUCH_SERVICES, ...(requireOptional ? OPTIONAL_SERVICES : [])];
  for (const name of wanted) if (!deployments.some((d) => d.metadata.name === name)) fail(where, `no Deployment for ${name}`);

  for (const d of deployments) {
    const name: string = d.metadata.name;
    const at = `${where} Deployment/${name}`;
    const optional = (OPTIONAL_SERVICES as readonly string[]).includes(name);
    const pod = d.spec?.template;
    const labels = pod?.metadata?.labels;
    if (!selects(d.spec?.selector?.matchLabels, labels)) fail(at, "selector does not select its own pod template");
    if (!optional && !(d.spec?.replicas >= 2)) fail(at, "needs at least 2 replicas");
    const spec = pod?.spec ?? {};
    if (spec.enableServiceLinks !== false) fail(at, "set enableServiceLinks: false (service links inject AUTH_PORT=tcp://… and the like)");
    if (spec.securityContext?.runAsNonRoot !== true) fail(at, "pod securityContext.runAsNonRoot must be true");
    for (const c of spec.containers ?? []) {
      const cat = `${at} container ${c.name}`;
      const sc = c.securityContext ?? {};
      if (sc.readOnlyRootFilesystem !== true) fail(cat, "readOnlyRootFilesystem must be true");
      if (sc.allowPrivilegeEscalation !== false) fail(cat, "allowPrivilegeEscalation must be false");
      if (!c.resources?.requests?.cpu || !c.resources?.requests?.memory || !c.resources?.limits?.memory) fail(cat, "needs cpu and memory requests and a memory limit");
      const portNames = new Set((c.ports ?? []).map((p: Obj) => p.name));
      const probe = (kind: string, path: string) => {
        const get = c[kind]?.httpGet;
        if (get?.path !== path) fail(cat, `${kind} must GET ${path}`);
        else if (typeof get.port === "string" && !portNames.has(get.port)) fail(cat, `${kind} port ${get.port} is not a container port`);
      };
      probe("readinessProbe", "/readyz");
      probe("livenessProbe", "/healthz");
      const env = new Map<string, Obj>((c.env ?? []).map((e: Obj) => [e.name, e]));
      const service = env.get("SERVICE")?.value;
      if (service !== name) fail(cat, `SERVICE must be "${name}" (got ${service})`);
      else if (!existsSync(join("services", service, "main.ts"))) fail(cat, `services/${service}/main.ts does not exist`);
      const port = Number(env.get("PORT")?.value);
      if (port !== DEFAULT_PORTS[name as ServiceName]) fail(cat, `PORT should be ${DEFAULT_PORTS[name as ServiceName]} (the port peers use)`);
      if (!(c.ports ?? []).some((p: Obj) => p.containerPort === port)) fail(cat, `containerPort ${port} is not declared`);
      for (const ref of c.envFrom ?? []) {
        if (ref.configMapRef && !configMaps.has(ref.configMapRef.name)) fail(cat, `envFrom ConfigMap ${ref.configMapRef.name} is not in the build`);
        if (ref.secretRef && !secrets.has(ref.secretRef.name)) external.add(ref.secretRef.name);
      }
      for (const e of env.values()) {
        if (!knownEnvNames.has(e.name)) fail(cat, `env ${e.name} is not read by any service`);
        const cmRef = e.valueFrom?.configMapKeyRef;
        const secRef = e.valueFrom?.secretKeyRef;
        if (cmRef && !(cmRef.key in (configMaps.get(cmRef.name)?.data ?? {}))) fail(cat, `env ${e.name}: ConfigMap ${cmRef.name} has no key ${cmRef.key}`);
        if (secRef) {
          const secret = secrets.get(secRef.name);
          if (!secret) external.add(secRef.name);
          else if (!secRef.optional && !(secRef.key in { ...secret.data, ...secret.stringData })) fail(cat, `env ${e.name}: Secret ${secRef.name} has no key ${secRef.key}`);
        }
      }
    }

    const svc = byKind("Service").find((s) => selects(s.spec?.selector, labels));
    if (!svc) fail(at, "no Service selects its pods");
    else {
      const containerPorts = (spec.containers ?? []).flatMap((c: Obj) => c.ports ?? []);
      for (const p of svc.spec.ports ?? []) {
        const ok = containerPorts.some((cp: Obj) => cp.name === p.targetPort || cp.containerPort === p.targetPort);
        if (!ok) fail(at, `Service ${svc.metadata.name} targetPort ${p.targetPort} is not a container port`);
      }
      if (svc.metadata.name !== name) fail(at, `its Service should be named ${name} (the host peers use)`);
    }
    if (optional) continue;
    const hpa = byKind("HorizontalPodAutoscaler").find((h) => h.spec?.scaleTargetRef?.kind === "Deployment" && h.spec.scaleTargetRef.name === name);
    if (!hpa) fail(at, "no HorizontalPodAutoscaler");
    else {
      if (hpa.apiVersion !== "autoscaling/v2") fail(at, "the HPA must be autoscaling/v2");
      if (!(hpa.spec.minReplicas >= 2)) fail(at, "HPA minReplicas must be at least 2");
      if (!(hpa.spec.maxReplicas >= hpa.spec.minReplicas)) fail(at, "HPA maxReplicas below minReplicas");
    }
    const pdb = byKind("PodDisruptionBudget").find((p) => selects(p.spec?.selector?.matchLabels, labels));
    if (!pdb) fail(at, "no PodDisruptionBudget selects its pods");
  }
  for (const name of external) notes.push(`${where}: Secret ${name} is not in the build (expected from the cluster's secret store)`);
}

async function checkKubernetes(): Promise<number> {
  const root = join("deploy", "k8s");
  const targets = [join(root, "base"), ...readdirSync(join(root, "overlays")).map((o) => join(root, "overlays", o))];
  let count = 0;
  for (const dir of targets) {
    const where = relative(process.cwd(), dir);
    let objects: Obj[];
    try {
      objects = build(dir);
    } catch (err) {
      fail(where, (err as Error).message);
      continue;
    }
    const seen = new Set<string>();
    for (const o of objects) {
      const id = `${o.kind}/${o.metadata?.namespace ?? ""}/${o.metadata?.name}`;
      if (seen.has(id)) fail(where, `duplicate ${o.kind} ${o.metadata?.name}`);
      seen.add(id);
      await validateSchema(where, o);
    }
    const usesSim = objects.some((o) => o.kind === "Deployment" && o.metadata?.name === "provider-sim");
    checkVouchRules(where, objects, usesSim);
    count += objects.length;
  }
  return count;
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml

function checkCompose() {
  const where = "docker-compose.yml";
  const compose = parseYaml(readFileSync(where, "utf8"), { merge: true }) as Obj;
  const services: Obj = compose.services ?? {};
  const dataStores: Record<string, number> = { postgres: 5432, redis: 6379, nats: 4222 };
  for (const name of [...Object.keys(dataStores), ...VOUCH_SERVICES, ...OPTIONAL_SERVICES]) if (!services[name]) fail(where, `service ${name} is missing`);
  const portOf = (name: string): number | undefined => {
    if (name in dataStores) return dataStores[name];
    const env = services[name]?.environment ?? {};
    const own = env[`${name.toUpperCase().replace("-", "_")}_PORT`] ?? env.PORT;
    return own !== undefined ? Number(own) : DEFAULT_PORTS[name as ServiceName];
  };
  for (const [name, svc] of Object.entries<Obj>(services)) {
    const at = `${where} ${name}`;
    if (!svc.healthcheck?.test) fail(at, "needs a healthcheck");
    const deps = svc.depends_on ?? {};
    if (Array.isArray(deps)) fail(at, "depends_on must use conditions (service_healthy)");
    else
      for (const [dep, cond] of Object.entries<Obj>(deps)) {
        if (!services[dep]) fail(at, `depends_on ${dep}, which does not exist`);
        else if (cond?.condition !== "service_healthy") fail(at, `depends_on ${dep} must wait for service_healthy`);
        else if (!services[dep].healthcheck) fail(at, `depends_on ${dep}, which has no healthcheck`);
      }
    const env: Obj = svc.environment ?? {};
    if (Array.isArray(env)) {
      fail(at, "environment must be a map");
      continue;
    }
    if ((VOUCH_SERVICES as readonly string[]).includes(name) || (OPTIONAL_SERVICES as readonly string[]).includes(name)) {
      if (env.SERVICE !== name) fail(at, `SERVICE must be "${name}"`);
      for (const key of Object.keys(env)) if (!knownEnvNames.has(key)) fail(at, `environment ${key} is not read by any service`);
      if (!svc.build && !svc.image) fail(at, "needs build or image");
      if (env.HOST !== "0.0.0.0") fail(at, "HOST must be 0.0.0.0 inside a container");
      if (svc.environment && name !== "provider-sim") {
        for (const store of ["postgres", "redis", "nats"]) if (name !== "edge" && !deps[store]) fail(at, `should depend on ${store}`);
      }
    }
    for (const [key, value] of Object.entries(env)) {
      if (!key.endsWith("_URL") || typeof value !== "string" || !/^(https?|nats|redis|postgres):\/\//.test(value)) continue;
      const url = new URL(value);
      const host = url.hostname;
      if (!services[host]) {
        fail(at, `${key}=${value}: ${host} is not a compose service`);
        continue;
      }
      const port = Number(url.port || { http: 80, https: 443, nats: 4222, redis: 6379, postgres: 5432 }[url.protocol.slice(0, -1)]);
      if (portOf(host) !== port) fail(at, `${key}=${value}: ${host} listens on ${portOf(host)}, not ${port}`);
    }
  }
  const nats = services.nats;
  const natsArgs = [nats?.command ?? []].flat().join(" ");
  if (!/(-js|--jetstream)\b/.test(natsArgs) || !/(-sd|--store_dir)\s+\/data/.test(natsArgs)) fail(`${where} nats`, "must run JetStream with its store in /data");
  if (!(nats?.volumes ?? []).some((v: string) => String(v).endsWith(":/data"))) fail(`${where} nats`, "the JetStream store /data must be on a volume");

  // The real thing, where it is installed (`docker compose config` needs no engine).
  const tries: [string, string[]][] = [["docker", ["compose"]], ["docker-compose", []]];
  for (const [cmd, prefix] of tries) {
    const installed = spawnSync(cmd, [...prefix, "version"], { encoding: "utf8", timeout: 10_000 });
    if (installed.error || installed.status !== 0) continue;
    const args = [...prefix, "config", "-q"];
    const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });
    if (r.status !== 0) fail(where, `${cmd} ${args.join(" ")} failed: ${(r.stderr || r.stdout).trim()}`);
    else notes.push(`${cmd} ${args.join(" ")}: ok`);
    return;
  }
  notes.push("docker compose is not installed: checked docker-compose.yml's structure only");
}

// ---------------------------------------------------------------------------------------
// Dockerfile

function checkDockerfile() {
  const where = "Dockerfile";
  const text = readFileSync(where, "utf8").replace(/\\\n/g, " ");
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const froms = lines.filter((l) => /^FROM\s/i.test(l));
  if (froms.length < 2) fail(where, "must be multi-stage");
  if (!/node:24[\w.-]*/.test(text)) fail(where, "must build on Node 24 (node:24-…)");
  const lastStage = lines.slice(lines.lastIndexOf(froms[froms.length - 1]));
  const user = lastStage.filter((l) => /^USER\s/i.test(l)).pop();
  if (!user || /^USER\s+(root|0)\b/i.test(user)) fail(where, "the final stage must switch to a non-root USER");
  if (!lastStage.some((l) => /^HEALTHCHECK\s/i.test(l))) fail(where, "the final stage needs a HEALTHCHECK");
  if (!/npm ci[^\n]*--omit=dev/.test(text)) fail(where, "the runtime needs production dependencies only (npm ci --omit=dev)");
  if (/tsx/.test(lastStage.join("\n"))) fail(where, "the runtime runs compiled JavaScript, not tsx");
  for (const l of lines.filter((l) => /^COPY\s/i.test(l) && !/--from=/.test(l))) {
    const parts = l.split(/\s+/).slice(1).filter((p) => !p.startsWith("--"));
    for (const src of parts.slice(0, -1)) if (src !== "." && !existsSync(src)) fail(where, `COPY source ${src} does not exist`);
  }
  const scripts = JSON.parse(readFileSync("package.json", "utf8")).scripts ?? {};
  for (const m of text.matchAll(/npm run ([\w:-]+)/g)) {
    if (m[1] === "build:web" || m[1] === "build") continue; // the console's builds are optional: the Dockerfile tests for them
    if (!scripts[m[1]]) fail(where, `runs npm run ${m[1]}, which package.json does not define`);
  }
  const build = JSON.parse(readFileSync("tsconfig.build.json", "utf8").replace(/^\s*\/\/.*$/gm, "")) as Obj;
  for (const name of [...VOUCH_SERVICES, ...OPTIONAL_SERVICES]) {
    if (!(build.include as string[]).some((inc) => join("services", name).startsWith(inc))) fail("tsconfig.build.json", `does not compile services/${name}`);
  }
  const entry = readFileSync(join(dirname(where), "deploy", "docker", "entrypoint.sh"), "utf8");
  for (const name of [...VOUCH_SERVICES, ...OPTIONAL_SERVICES]) if (!entry.includes(name)) fail("deploy/docker/entrypoint.sh", `does not accept ${name}`);
}

const objects = await checkKubernetes();
checkCompose();
checkDockerfile();
for (const n of notes) console.log(`note: ${n}`);
if (problems.length) {
  console.error(`deploy check failed (${problems.length}):\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(`deploy: ${objects} Kubernetes objects valid, docker-compose.yml and Dockerfile consistent (${Math.round(performance.now() - started)} ms)`);
