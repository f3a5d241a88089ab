import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import Ajv from "ajv";
import draft7 from "ajv/dist/refs/json-schema-draft-07.json";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";
import { Job } from "kubernetes-models/batch/v1/Job";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Pod } from "kubernetes-models/v1/Pod";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Service } from "kubernetes-models/v1/Service";
import * as YAML from "yaml";
import { loadConfig, parseSharedTier } from "../../src/config";
import { ROOT, startServer } from "../helpers/server";

const DEPLOY = path.join(ROOT, "deploy");
const read = (...p: string[]) => fs.readFileSync(path.join(DEPLOY, ...p), "utf8");
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

describe("Kubernetes manifests", () => {
  const dir = path.join(DEPLOY, "kubernetes");
  const kustomization = YAML.parse(read("kubernetes", "kustomization.yaml"));
  const docs: Any[] = (kustomization.resources as string[]).flatMap((f) =>
    YAML.parseAllDocuments(fs.readFileSync(path.join(dir, f), "utf8")).map((d) => d.toJS()),
  );
  const byKind = (kind: string) => docs.filter((d) => d.kind === kind);
  const models: Record<string, new (data: Any) => { validate(): void }> = {
    Deployment,
    ConfigMap,
    PersistentVolumeClaim,
    Service,
  };

  it("lists every manifest in the kustomization, each valid against the Kubernetes schemas", () => {
    const files = fs.readdirSync(dir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml");
    expect([...kustomization.resources].sort()).toEqual(files.sort());
    expect(docs.map((d) => d.kind).sort()).toEqual([
      "ConfigMap",
      "Deployment",
      "PersistentVolumeClaim",
      "PersistentVolumeClaim",
      "Service",
    ]);
    for (const doc of docs) expect(() => new models[doc.kind](doc).validate()).not.toThrow();
    // The validator catches what a typo would produce.
    const broken = structuredClone(byKind("Deployment")[0]);
    broken.spec.template.spec.containers[0].startupProbe.grpc.port = "grpc";
    expect(() => new Deployment(broken).validate()).toThrow();
  });

  it("configures kvpark through an environment that its option parser accepts", () => {
    const data = byKind("ConfigMap")[0].data as Record<string, string>;
    const config = loadConfig([], data);
    expect(config).toMatchObject({
      host: "0.0.0.0",
      port: 50051,
      dataDir: "/data",
      metricsPort: 9464,
      metricsHost: "0.0.0.0",
      telemetry: "auto",
    });
    expect(data.OTEL_EXPORTER_OTLP_ENDPOINT).toMatch(/^http:\/\/[\w.-]+:4317$/);
    expect(data.OTEL_EXPORTER_OTLP_PROTOCOL).toBe("grpc");
  });

  it("has a model loader pod, valid, on the models volume the Deployment mounts", () => {
    const pod = YAML.parse(fs.readFileSync(path.join(dir, "model-loader", "pod.yaml"), "utf8"));
    expect(() => new Pod(pod).validate()).not.toThrow();
    expect(pod.spec.volumes).toEqual([
      { name: "models", persistentVolumeClaim: { claimName: "kvpark-models" } },
    ]);
    expect(pod.spec.containers[0].volumeMounts).toEqual([{ name: "models", mountPath: "/models" }]);
  });

  it("wires probes, ports, volumes and the Service to the container", () => {
    const d = byKind("Deployment")[0];
    const pod = d.spec.template.spec;
    const c = pod.containers[0];
    expect(d.spec.selector.matchLabels).toEqual(d.spec.template.metadata.labels);
    expect(d.spec.strategy.type).toBe("Recreate");
    expect(c.envFrom).toEqual([{ configMapRef: { name: byKind("ConfigMap")[0].metadata.name } }]);
    const ports = Object.fromEntries(c.ports.map((p: Any) => [p.name, p.containerPort]));
    expect(ports).toEqual({ grpc: 50051, metrics: 9464 });
    expect(c.startupProbe.grpc).toEqual({ port: 50051, service: "kvpark.v1.InferenceService" });
    expect(c.readinessProbe.grpc).toEqual({ port: 50051, service: "kvpark.v1.InferenceService" });
    expect(c.livenessProbe.tcpSocket).toEqual({ port: 50051 });
    const claim = pod.volumes.find((v: Any) => v.name === "data").persistentVolumeClaim.claimName;
    expect(claim).toBe(byKind("PersistentVolumeClaim")[0].metadata.name);
    expect(c.volumeMounts).toContainEqual({ name: "data", mountPath: "/data" });
    // Real models come from their own volume, read-only at /models.
    const models = pod.volumes.find((v: Any) => v.name === "models").persistentVolumeClaim;
    expect(models).toEqual({ claimName: "kvpark-models", readOnly: true });
    expect(byKind("PersistentVolumeClaim").map((p) => p.metadata.name)).toEqual([
      "kvpark-data",
      "kvpark-models",
    ]);
    expect(c.volumeMounts).toContainEqual({ name: "models", mountPath: "/models", readOnly: true });
    // The grace period covers kvpark's own shutdown grace, so SIGTERM never cuts the telemetry flush.
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
      Number(byKind("ConfigMap")[0].data.KVPARK_SHUTDOWN_GRACE_MS) + 5000,
    );
    const svc = byKind("Service")[0];
    expect(svc.spec.selector).toEqual(d.spec.template.metadata.labels);
    expect(svc.spec.ports.map((p: Any) => [p.port, p.targetPort])).toEqual([
      [50051, "grpc"],
      [9464, "metrics"],
    ]);
  });
});

describe("Kubernetes overlay with a shared tier on a Redis Cluster", () => {
  const dir = path.join(DEPLOY, "kubernetes", "shared-tier");
  const kustomization = YAML.parse(read("kubernetes", "shared-tier", "kustomization.yaml"));
  const docs: Any[] = YAML.parseAllDocuments(read("kubernetes", "shared-tier", "redis-cluster.yaml")).map(
    (d) => d.toJS(),
  );
  const byKind = (kind: string) => docs.filter((d) => d.kind === kind);

  it("adds a valid three-master Redis Cluster to the base and points kvpark at its seeds", () => {
    expect(kustomization.resources).toEqual(["../", "redis-cluster.yaml"]);
    const models: Record<string, new (data: Any) => { validate(): void }> = { Service, StatefulSet, Job };
    expect(docs.map((d) => d.kind)).toEqual(["Service", "StatefulSet", "Job"]);
    for (const doc of docs) expect(() => new models[doc.kind](doc).validate()).not.toThrow();
    const set = byKind("StatefulSet")[0];
    const svc = byKind("Service")[0];
    expect(set.spec.serviceName).toBe(svc.metadata.name);
    expect(svc.spec.clusterIP).toBe("None");
    expect(set.spec.selector.matchLabels).toEqual(set.spec.template.metadata.labels);
    const redis = set.spec.template.spec.containers[0].command.join(" ");
    for (const flag of [
      "--cluster-enabled yes",
      "--maxmemory-policy allkeys-lru",
      '--save ""',
      "--appendonly no",
    ])
      expect(redis).toContain(flag);
    // The patch's environment parses, and names every master of the StatefulSet as a seed.
    const patch = YAML.parse(fs.readFileSync(path.join(dir, kustomization.patches[0].path), "utf8"));
    const base = YAML.parse(read("kubernetes", "configmap.yaml"));
    expect(patch.metadata.name).toBe(base.metadata.name);
    const config = loadConfig([], { ...base.data, ...patch.data });
    const seeds = Array.from(
      { length: set.spec.replicas },
      (_, i) => `redis://${set.metadata.name}-${i}.${svc.metadata.name}:6379`,
    );
    expect(parseSharedTier(config.sharedTier).urls).toEqual(seeds);
    const create = byKind("Job")[0].spec.template.spec.containers[0].command.join(" ");
    for (const seed of seeds) expect(create).toContain(seed.slice("redis://".length));
  });
});

describe("compose stack", () => {
  const compose = YAML.parse(read("compose.yaml"));
  const collector = YAML.parse(read("otel-collector.yaml"));
  const tempo = YAML.parse(read("tempo.yaml"));
  const prometheus = YAML.parse(read("prometheus.yaml"));
  const datasources = YAML.parse(read("grafana", "provisioning", "datasources", "datasources.yaml"));
  const providers = YAML.parse(read("grafana", "provisioning", "dashboards", "dashboards.yaml"));

  it("is valid against the Compose specification's schema", () => {
    const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
    ajv.addMetaSchema(draft7, "https://json-schema.org/draft-07/schema");
    const validate = ajv.compile(
      JSON.parse(fs.readFileSync(path.join(__dirname, "schema", "compose-spec.json"), "utf8")),
    );
    expect([validate(compose), validate.errors]).toEqual([true, null]);
    expect(validate({ services: { kvpark: { image: "x", restart_policy: "always" } } })).toBe(false);
  });

  it("runs kvpark, the Collector, Tempo, Prometheus and Grafana, with every mounted file present", () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      "grafana",
      "kvpark",
      "otel-collector",
      "prometheus",
      "redis",
      "tempo",
    ]);
    for (const [name, svc] of Object.entries<Any>(compose.services)) {
      for (const dep of svc.depends_on ?? []) expect([name, dep in compose.services]).toEqual([name, true]);
      for (const volume of svc.volumes ?? []) {
        const source = String(volume).split(":")[0];
        if (source.startsWith("."))
          expect([source, fs.existsSync(path.join(DEPLOY, source))]).toEqual([source, true]);
        else expect(compose.volumes).toHaveProperty(source);
      }
    }
    expect(compose.services.kvpark.build).toEqual({ context: "..", dockerfile: "deploy/Dockerfile" });
    expect(compose.services.kvpark.volumes).toContain("kvpark-data:/data");
  });

  it("wires kvpark -> Collector -> Tempo and Prometheus -> Grafana at matching addresses", () => {
    // Compose's ${VAR:-default} with the variable unset: the default.
    const env = Object.fromEntries(
      Object.entries<string>(compose.services.kvpark.environment).map(([k, v]) => [
        k,
        String(v).replace(/\$\{\w+:-([^}]*)\}/g, "$1"),
      ]),
    );
    expect(loadConfig([], env)).toMatchObject({ model: "small", sharedTier: "redis://redis:6379" });
    expect(compose.services.kvpark.depends_on).toContain("redis");
    expect(compose.services.redis.command).toEqual(
      expect.arrayContaining(["--maxmemory-policy", "allkeys-lru", "--save", ""]),
    );
    expect(compose.services.kvpark.environment.KVPARK_MODEL).toBe("${KVPARK_MODEL:-small}");
    expect(compose.services.kvpark.volumes).toContain("./models:/models:ro");
    expect(env.OTEL_EXPORTER_OTLP_ENDPOINT).toBe("http://otel-collector:4317");
    expect(env.OTEL_EXPORTER_OTLP_PROTOCOL).toBe("grpc");
    expect(collector.receivers.otlp.protocols.grpc.endpoint).toBe("0.0.0.0:4317");
    // Every pipeline refers to components the file defines.
    for (const pipeline of Object.values<Any>(collector.service.pipelines)) {
      for (const r of pipeline.receivers) expect(collector.receivers).toHaveProperty([r]);
      for (const p of pipeline.processors ?? []) expect(collector.processors).toHaveProperty([p]);
      for (const e of pipeline.exporters) expect(collector.exporters).toHaveProperty([e]);
    }
    expect(collector.service.pipelines.traces.exporters).toEqual(["otlp/tempo"]);
    expect(collector.exporters["otlp/tempo"].endpoint).toBe("tempo:4317");
    expect(tempo.distributor.receivers.otlp.protocols.grpc.endpoint).toBe("0.0.0.0:4317");
    expect(collector.service.pipelines.metrics.exporters).toEqual(["prometheus"]);
    const promPort = collector.exporters.prometheus.endpoint.split(":")[1];
    expect(
      prometheus.scrape_configs.flatMap((s: Any) => s.static_configs.flatMap((c: Any) => c.targets)),
    ).toContain(`otel-collector:${promPort}`);
    expect(compose.services.prometheus.command).toContain("--web.enable-remote-write-receiver");
    expect(tempo.metrics_generator.storage.remote_write[0].url).toBe("http://prometheus:9090/api/v1/write");
    expect(tempo.overrides.defaults.metrics_generator.processors).toEqual([
      "service-graphs",
      "span-metrics",
      "local-blocks",
    ]);
    const ds = Object.fromEntries(datasources.datasources.map((d: Any) => [d.uid, [d.type, d.url]]));
    expect(ds).toEqual({
      prometheus: ["prometheus", "http://prometheus:9090"],
      tempo: ["tempo", `http://tempo:${tempo.server.http_listen_port}`],
    });
    const mount = compose.services.grafana.volumes.find((v: string) => v.startsWith("./grafana/dashboards:"));
    expect(mount.split(":")[1]).toBe(providers.providers[0].options.path);
  });
});

describe("container image", () => {
  const dockerfile = read("Dockerfile");
  const setup = fs.readFileSync(path.join(ROOT, "scripts", "setup.sh"), "utf8");

  it("builds on Debian with the packages setup.sh needs, and keeps the SSD tier on a volume", () => {
    expect(dockerfile.match(/^FROM (\S+)/gm)).toEqual([
      "FROM node:20-bookworm-slim",
      "FROM node:20-bookworm-slim",
    ]);
    const needed = /^packages=\(([^)]*)\)/m.exec(setup)![1].split(/\s+/).filter(Boolean);
    const installs = [...dockerfile.matchAll(/apt-get install[^\n]*\\\n\s*([^\n\\]+)/g)].map((m) =>
      m[1].trim().split(/\s+/),
    );
    expect(installs[0].sort()).toEqual([...needed].sort());
    expect(installs[1].sort()).toEqual(["libopenblas0", "liblapack3", "libxxhash0", "libjemalloc2"].sort());
    expect(dockerfile).toMatch(/bash scripts\/setup\.sh/);
    expect(dockerfile).toMatch(/^VOLUME \["\/data"\]$/m);
    expect(dockerfile).toMatch(/KVPARK_DATA_DIR=\/data/);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", "dist\/src\/cli\.js", "serve"\]$/m);
    expect(fs.existsSync(path.join(DEPLOY, "Dockerfile.dockerignore"))).toBe(true);
  });

  it("has a HEALTHCHECK that reports a running server healthy", async () => {
    const cmd: string[] = JSON.parse(/^\s*CMD (\[.*\])$/m.exec(dockerfile)![1]);
    const server = await startServer();
    try {
      const run = (port: number) =>
        spawnSync(cmd[0] === "node" ? process.execPath : cmd[0], cmd.slice(1), {
          env: { ...process.env, KVPARK_PORT: String(port) },
          timeout: 10_000,
        }).status;
      expect(run(server.port)).toBe(0);
      await server.stop();
      expect(run(server.port)).toBe(1);
    } finally {
      await server.stop();
    }
  });
});
