/**
 * kubernetes/: no cluster runs here, so the manifests are checked by what can be checked for
 * real. The Kubernetes API's schema (kubernetes-models, Kubernetes 1.27's OpenAPI: types,
 * required fields, enums, quantities) and, since that schema lets unknown fields through, the
 * models' TypeScript types under tsc's excess-property check (a misspelt field fails); the
 * restricted Pod Security Standard's container settings; and every command line in them (the
 * Job, the init container, the service started through `-- COMMAND`, the readiness probe) run
 * as the kubelet would run it: the shipped executable, the Secret's variables with the URL
 * pointed at a test server, the ConfigMap's files where the volume mounts them.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigMap, Secret } from "kubernetes-models/v1";
import { Deployment } from "kubernetes-models/apps/v1";
import { Job } from "kubernetes-models/batch/v1";
import { EXIT, parseConfig } from "../init-database.ts";
import type { Cluster } from "./cluster.ts";
import { buildExecutables, type Executables } from "./executable.ts";
import { cleanEnv, ROOT, useCluster } from "./helpers.ts";

type Manifest = Record<string, any>;
const DIR = join(ROOT, "kubernetes");
const files = readdirSync(DIR).filter((name) => name.endsWith(".yaml")).sort();
const manifests: { file: string; doc: Manifest }[] = files.flatMap((file) => {
  const parsed = Bun.YAML.parse(readFileSync(join(DIR, file), "utf8")) as Manifest | Manifest[];
  return (Array.isArray(parsed) ? parsed : [parsed]).map((doc) => ({ file, doc }));
});
const MODELS: Record<string, { model: new (data: any) => { validate(): void }; type: string; module: string }> = {
  "v1/Secret": { model: Secret, type: "ISecret", module: "kubernetes-models/v1/Secret" },
  "v1/ConfigMap": { model: ConfigMap, type: "IConfigMap", module: "kubernetes-models/v1/ConfigMap" },
  "batch/v1/Job": { model: Job, type: "IJob", module: "kubernetes-models/batch/v1/Job" },
  "apps/v1/Deployment": { model: Deployment, type: "IDeployment", module: "kubernetes-models/apps/v1/Deployment" },
};
const one = (kind: string): Manifest => {
  const found = manifests.filter((entry) => entry.doc.kind === kind);
  expect(found).toHaveLength(1);
  return found[0]!.doc;
};
const podSpecs = () => [one("Job").spec.template.spec, one("Deployment").spec.template.spec];
const containersOf = (spec: Manifest): Manifest[] => [...(spec.initContainers ?? []), ...spec.containers];

const temps: string[] = [];
afterAll(() => temps.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

describe("the Kubernetes API's schema", () => {
  test("holds a Secret, a ConfigMap, a Job and a Deployment, each valid", () => {
    expect(manifests.map(({ doc }) => `${doc.apiVersion}/${doc.kind}`).sort()).toEqual(Object.keys(MODELS).sort());
    for (const { file, doc } of manifests) {
      const entry = MODELS[`${doc.apiVersion}/${doc.kind}`];
      expect(entry, file).toBeDefined();
      expect(() => new entry!.model(doc).validate(), file).not.toThrow();
    }
  });

  test("the schema check does refuse what the API refuses (a wrong type, an unknown enum value)", () => {
    const job = structuredClone(one("Job"));
    job.spec.template.spec.restartPolicy = "Sometimes";
    expect(() => new Job(job).validate()).toThrow(/restartPolicy/);
    const deployment = structuredClone(one("Deployment"));
    deployment.spec.replicas = "three";
    expect(() => new Deployment(deployment).validate()).toThrow(/replicas/);
  });

  test("no unknown or misspelt field: every manifest type-checks as the model's type (tsc's excess-property check)", () => {
    const project = mkdtempSync(join(ROOT, ".kubernetes-types-"));
    temps.push(project);
    const source = (docs: Manifest[]) => [
      ...Object.values(MODELS).map(({ type, module }) => `import type { ${type} } from "${module}";`),
      ...docs.map((doc, index) => `export const doc${index}: ${MODELS[`${doc.apiVersion}/${doc.kind}`]!.type} = ${JSON.stringify(doc, null, 2)};`),
    ].join("\n");
    const tsc = (text: string) => {
      writeFileSync(join(project, "manifests.ts"), text);
      writeFileSync(join(project, "tsconfig.json"), JSON.stringify({ compilerOptions: { strict: true, noEmit: true, skipLibCheck: true, module: "Preserve", moduleResolution: "bundler", target: "ESNext" }, include: ["manifests.ts"] }));
      const run = Bun.spawnSync([join(ROOT, "node_modules", ".bin", "tsc"), "-p", project], { cwd: project });
      return { code: run.exitCode, output: run.stdout.toString() + run.stderr.toString() };
    };
    const docs = manifests.map(({ doc }) => doc);
    expect(tsc(source(docs))).toEqual({ code: 0, output: "" });
    // The control: one misspelt field in a container is refused.
    const misspelt = structuredClone(docs);
    const job = misspelt.find((doc) => doc.kind === "Job")!;
    job.spec.template.spec.containers[0].imagePullPolicyy = "Always";
    const refused = tsc(source(misspelt));
    expect(refused.code).not.toBe(0);
    expect(refused.output).toContain("imagePullPolicyy");
  });
});

describe("the restricted Pod Security Standard, and what the issue asks of each object", () => {
  test("every container: non-root, read-only root filesystem, all capabilities dropped, no privilege escalation, RuntimeDefault seccomp, resources", () => {
    for (const spec of podSpecs()) {
      expect(spec.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: "RuntimeDefault" } });
      expect(spec.securityContext.runAsUser).toBeGreaterThan(0);
      expect(spec.automountServiceAccountToken).toBe(false);
      for (const container of containersOf(spec)) {
        expect(container.securityContext, container.name).toEqual({
          runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true,
          capabilities: { drop: ["ALL"] }, seccompProfile: { type: "RuntimeDefault" },
        });
        for (const kind of ["requests", "limits"]) expect(Object.keys(container.resources[kind]).sort(), container.name).toEqual(["cpu", "memory"]);
        // Credentials only from the Secret: no literal value in the manifest.
        expect(container.env, container.name).toBeUndefined();
        expect(container.envFrom, container.name).toEqual([{ secretRef: { name: one("Secret").metadata.name } }]);
      }
    }
  });

  test("the Job gives up: backoffLimit and an activeDeadlineSeconds longer than the kit's own --timeout", () => {
    const job = one("Job");
    expect(job.spec.backoffLimit).toBeGreaterThan(0);
    const command: string[] = job.spec.template.spec.containers[0].command;
    expect(job.spec.activeDeadlineSeconds).toBeGreaterThan(Number(command[command.indexOf("--timeout") + 1]));
    expect(job.spec.template.spec.restartPolicy).toBe("Never");
  });

  test("the example Secret holds no real credentials, and its URL is one the kit reads", () => {
    const secret = one("Secret");
    expect(secret.data).toBeUndefined();
    const config = parseConfig({}, secret.stringData);
    expect(config.password).toStartWith("REPLACE-WITH");
    expect(config.sslmode).toBe("require");
  });
});

describe("every command line, run for real", () => {
  let cluster: Cluster;
  let built: Executables;
  let work: string;
  let migrations: string;
  let service: string;
  useCluster({ database: "app", password: "k8s-Pa55:word" }, (made) => {
    cluster = made.cluster;
    work = made.dir;
  });
  beforeAll(() => {
    built = buildExecutables();
    temps.push(built.dir);
    // The ConfigMap's keys as files, as its volume mounts them.
    migrations = join(work, "migrations");
    mkdirSync(migrations);
    for (const [name, sql] of Object.entries(one("ConfigMap").data as Record<string, string>)) writeFileSync(join(migrations, name), sql);
    // A stand-in for your service: says it is up with its arguments, stops on SIGTERM.
    const script = join(work, "service.ts");
    writeFileSync(script, `process.on("SIGTERM", () => { console.log("your-service stopping"); process.exit(0); });\nconsole.log("your-service up: " + process.argv.slice(2).join(" "));\nsetInterval(() => {}, 1000);\n`);
    service = join(work, "your-service");
    writeFileSync(service, `#!/bin/sh\nexec "${process.execPath}" "${script}" "$@"\n`, { mode: 0o755 });
  });

  /** A container's command as the kubelet starts it: the image's paths mapped to here, the Secret's variables with the URL of the test server. */
  function start(command: string[]) {
    const paths: Record<string, string> = {
      "/usr/local/bin/init-database": built.initDatabase,
      "/usr/local/bin/your-service": service,
      "/migrations": migrations,
    };
    const secret = one("Secret").stringData as Record<string, string>;
    const env = cleanEnv({ ...secret, DATABASE_URL: cluster.url() });
    const child = Bun.spawn(command.map((arg) => paths[arg] ?? arg), { env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const output = { stdout: "", stderr: "" };
    const listeners: (() => void)[] = [];
    const pump = async (stream: ReadableStream<Uint8Array>, key: "stdout" | "stderr") => {
      const decoder = new TextDecoder();
      for await (const chunk of stream) {
        output[key] += decoder.decode(chunk, { stream: true });
        listeners.forEach((listener) => listener());
      }
    };
    const ended = Promise.all([child.exited, pump(child.stdout, "stdout"), pump(child.stderr, "stderr")]).then(([code]) => {
      clearTimeout(killer);
      return { code, ...output };
    });
    const seen = (text: string) => output.stdout.includes(text) || output.stderr.includes(text);
    return {
      child,
      /** Resolves once the process has printed `text` (stdout or stderr); rejects if it ends first. */
      printed: (text: string) => Promise.race([
        new Promise<void>((resolve) => (seen(text) ? resolve() : listeners.push(() => seen(text) && resolve()))),
        ended.then((end) => { throw new Error(`${command.join(" ")} ended (exit ${end.code}) without printing "${text}":\n${end.stderr}`); }),
      ]),
      ended,
    };
  }

  test("the pod waits for the Job's migrations, the probe follows them, and the kit starts and stops the service", async () => {
    const deployment = one("Deployment").spec.template.spec;
    const [initContainer] = deployment.initContainers;
    const [main] = deployment.containers;
    const probe: string[] = main.readinessProbe.exec.command;
    const jobCommand: string[] = one("Job").spec.template.spec.containers[0].command;

    // Before the Job: the init container waits, the probe says not ready (exit 1).
    const waiting = start(initContainer.command);
    await waiting.printed("waiting for the schema");
    const before = await start(probe).ended;
    expect(before.code).toBe(EXIT.schemaFailed);

    // The Job applies them; the init container ends; the probe passes.
    const job = await start(jobCommand).ended;
    expect([job.code, job.stderr]).toEqual([EXIT.ok, expect.stringContaining("applied: 002_orders.sql")]);
    const waited = await waiting.ended;
    expect([waited.code, waited.stdout]).toEqual([EXIT.ok, expect.stringContaining("schema at head")]);
    expect((await start(probe).ended).code).toBe(EXIT.ok);

    // The service container: the kit checks, then runs the service in its place; the kubelet's SIGTERM reaches it.
    const serving = start(main.command);
    await serving.printed("your-service up: --port 8080");
    expect((await start(probe).ended).code).toBe(EXIT.ok);
    serving.child.kill("SIGTERM");
    const stopped = await serving.ended;
    expect(stopped.stdout).toContain("your-service stopping");
    expect(stopped.code).toBe(0);
    expect(await cluster.query("select name from schema_migrations order by name")).toEqual([{ name: "001_accounts.sql" }, { name: "002_orders.sql" }]);
  });
});
