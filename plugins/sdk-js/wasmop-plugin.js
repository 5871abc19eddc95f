// Write wasmop plugins in JavaScript (contract wasmop:plugin@0.3.0).
//
// Built and tested with componentize-qjs 0.4.5 (`--sync`: the host does not enable
// component-model async), the QuickJS engine that `jco componentize --backend qjs` also uses.
// Plain ES module with no imports, so it also runs under Node for unit tests.
//
// It hides what the bindings make you discover by trial:
//   * objects cross as JSON strings: you get and return plain objects;
//   * `option<string>` arrives as `null` on QuickJS but `undefined` on StarlingMonkey
//     (componentize-js): settings are normalised to `null` or the parsed JSON;
//   * verdicts are variants `{tag, val}`: `allow()`, `deny(msg)`, `mutate(obj)` build them, as
//     `byName(...)` / `byLabels(...)` build the selectors of `related`; an enum is its WIT case
//     name (`"same-namespace"`), and a malformed value traps the guest instead of throwing;
//   * an exception escaping an export traps the guest (the host reports a crash):
//     `policy()` turns it into a deny naming the error (fail closed), `operator()` into
//     `invalid`, and both log the stack at debug level (WASMOP_LOG=debug) through the logger
//     given to `setLog` — QuickJS has no `console`, so without it the stack goes nowhere:
//         import { log } from "wasmop:plugin/host@0.3.0";   // the contract's only import
//         setLog(log);
//   * a `result` error must be *thrown* as its payload (`{tag: "invalid", val}` for reconcile,
//     a string for convert): `invalid(msg)` / `retry(msg)` throw the right thing.
//
//   import { policy, allow, deny, podSpecs } from "./wasmop-plugin.js";
//   export const reviewer = policy({
//     name: "my-policy", version: "0.1.0", appliesTo: ["apps/v1/Deployment"],
//     review(parent, child, settings) { return allow(); },
//   });

/** `"apps/v1/Deployment"`, `"v1/ConfigMap"` (core group) or `{group, version, kind}` → a WIT gvk. */
export function gvk(spec) {
  if (typeof spec === "object") return { group: spec.group ?? "", version: spec.version, kind: spec.kind };
  const parts = String(spec).split("/");
  if (parts.length === 2) parts.unshift("");
  if (parts.length !== 3) throw new TypeError(`${spec} is not group/version/Kind (or version/Kind)`);
  const [group, version, kind] = parts;
  return { group, version, kind };
}

/** Settings as the host passes them (a string, or null/undefined for none) → parsed JSON, the raw string, or null. */
export function settingsOf(raw) {
  if (raw == null || raw === "") return null;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** `KeyError`-style text of anything thrown: `TypeError: cannot read properties of undefined`. */
export function describe(err) {
  if (err instanceof Error) return err.message ? `${err.name}: ${err.message}` : err.name;
  if (typeof err === "string") return err;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

// Where log lines go: the host's `log` import once the plugin calls setLog(log), else `console`
// where the engine has one (Node, StarlingMonkey), else nowhere (QuickJS has no console).
let logger = null;

/** Sends the helper's (and your) log lines to `fn(level, message)`, normally the host's `log` import. */
export function setLog(fn) {
  logger = fn;
}

/** One line into the host's log: level is "trace", "debug", "info", "warn" or "error". */
export function log(level, message) {
  if (logger) logger(level, String(message));
  else globalThis.console?.error?.(`[${level}] ${message}`);
}

function logError(err) {
  // The host keeps 100 lines / 64 KiB of plugin log per call: keep it short.
  const text = err instanceof Error && err.stack ? `${describe(err)}\n${err.stack}` : describe(err);
  try {
    log("debug", text.split("\n").slice(0, 20).join("\n"));
  } catch {
    // logging must never turn a handled error into a crash
  }
}

// ---------------------------------------------------------------------------------------------
// Policies.

/** Apply the child as it is. */
export const allow = () => ({ tag: "allow" });
/** Refuse the child; say why and what to change. */
export const deny = (message) => ({ tag: "deny", val: String(message) });
/** Apply this object instead (same apiVersion, kind, name and namespace). */
export const mutate = (obj) => ({ tag: "mutate", val: typeof obj === "string" ? obj : JSON.stringify(obj) });

/**
 * The `reviewer` export of a policy plugin:
 * `export const reviewer = policy({name, version, appliesTo, review(parent, child, settings)})`.
 * `review` gets parsed objects and returns `allow()`, `deny(msg)` or `mutate(obj)`; a throw
 * (or any other return value) denies the child with the error's text.
 */
export function policy({ name, version, appliesTo = [], review }) {
  return {
    metadata() {
      return { name, version, appliesTo: appliesTo.map(gvk) };
    },
    review(parent, child, settings) {
      try {
        const verdict = review(JSON.parse(parent), JSON.parse(child), settingsOf(settings));
        if (!verdict || !["allow", "deny", "mutate"].includes(verdict.tag)) {
          throw new TypeError(`review must return allow(), deny(msg) or mutate(obj), not ${describe(verdict)}`);
        }
        return verdict;
      } catch (err) {
        logError(err);
        return deny(`policy ${name} failed: ${describe(err)}`);
      }
    },
  };
}

/** Every pod spec in a workload: Pod, Deployment/StatefulSet/DaemonSet/ReplicaSet/Job, CronJob. */
export function podSpecs(obj) {
  const spec = obj?.spec;
  if (!spec) return [];
  if (obj.kind === "Pod") return [spec];
  if (spec.jobTemplate) return [spec.jobTemplate?.spec?.template?.spec].filter(Boolean);
  return [spec.template?.spec].filter(Boolean);
}

/** Every container (init and regular) of a workload, each `{name, image, ...}`. */
export function containers(obj) {
  return podSpecs(obj).flatMap((pod) => [...(pod.initContainers ?? []), ...(pod.containers ?? [])]);
}

// ---------------------------------------------------------------------------------------------
// Operators.

const SCOPES = ["same-namespace", "cluster"];

/**
 * A kind an operator reads, for `operator({reads: [...]})` (a plain `"v1/ConfigMap"` there is
 * `readKind("v1/ConfigMap")`). `scope`: "same-namespace" (the parent's namespace only) or
 * "cluster" (any namespace, or a cluster-scoped kind); `metadataOnly`: objects arrive with name,
 * labels and annotations but no body (no Secret data crosses). The operator needs get, list and
 * watch on the kind in that scope.
 */
export function readKind(kind, { scope = "same-namespace", metadataOnly = false } = {}) {
  if (!SCOPES.includes(scope)) throw new TypeError(`scope ${JSON.stringify(scope)} is not "same-namespace" or "cluster"`);
  return { gvk: gvk(kind), scope, metadataOnly: Boolean(metadataOnly) };
}

/** A `reads` entry (a kind, or `readKind(...)`'s record) → the WIT record. */
function toReadKind(r) {
  return typeof r === "object" && "scope" in r ? readKind(r.gvk, r) : readKind(r);
}

/**
 * Selects the one object of `kind` named `name` (none if it does not exist), grouped under `id` in
 * `req.related`. `namespace`: null for the parent's (scope same-namespace) or every namespace
 * (scope cluster).
 */
export function byName(id, kind, name, namespace = null) {
  return { id: String(id), kind: gvk(kind), namespace: namespace ?? null, target: { tag: "name", val: String(name) } };
}

/**
 * Selects every object of `kind` whose labels match `selector`, a label selector as
 * `kubectl get -l` takes it (`"app=web,tier in (a,b)"`; "" matches all), grouped under `id`.
 */
export function byLabels(id, kind, selector, namespace = null) {
  return { id: String(id), kind: gvk(kind), namespace: namespace ?? null, target: { tag: "labels", val: String(selector) } };
}

/** One selector `related` returned, checked (a malformed one would trap the guest) → the WIT record. */
function toSelector(s) {
  const tag = s?.target?.tag;
  if (typeof s?.id !== "string" || s.kind == null || (tag !== "name" && tag !== "labels") || typeof s.target.val !== "string") {
    throw new TypeError(`related must return byName(...) / byLabels(...) selectors, not ${describe(s)}`);
  }
  return { id: s.id, kind: gvk(s.kind), namespace: s.namespace ?? null, target: { tag, val: s.target.val } };
}

class PluginError extends Error {
  constructor(tag, message) {
    super(message);
    this.name = tag === "invalid" ? "Invalid" : "Retry";
    this.tag = tag;
  }
}

/** Stops the reconcile: the spec is wrong (`Ready=False/InvalidSpec`, not retried until it changes). */
export function invalid(message) {
  throw new PluginError("invalid", String(message));
}

/** Stops the reconcile: a transient problem, retried with backoff. */
export function retry(message) {
  throw new PluginError("retry", String(message));
}

/** `namespace/name` of an object, for messages. */
export function refOf(obj) {
  const meta = obj?.metadata ?? {};
  if (meta.name == null) return "<unnamed parent>";
  return meta.namespace ? `${meta.namespace}/${meta.name}` : meta.name;
}

/** The version of an object's apiVersion (`v1` of `apps/v1`). */
export function versionOf(obj) {
  const av = obj?.apiVersion ?? "";
  return av.includes("/") ? av.split("/")[1] : av;
}

/** Sets apiVersion to `toVersion` of the object's group; returns the object. */
export function setVersion(obj, toVersion) {
  const av = obj.apiVersion ?? "";
  obj.apiVersion = av.includes("/") ? `${av.split("/")[0]}/${toVersion}` : toVersion;
  return obj;
}

/** Keeps `value` as JSON in annotation `key` (nothing for null or `{}`). */
export function stash(obj, key, value) {
  if (value == null || (typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 0)) return;
  if (typeof obj.metadata !== "object" || obj.metadata === null) return;
  obj.metadata.annotations ??= {};
  obj.metadata.annotations[key] = JSON.stringify(value);
}

/** Takes back what `stash` kept (removing the annotation, and an emptied map); null if absent or not JSON. */
export function unstash(obj, key) {
  const annotations = obj?.metadata?.annotations;
  if (typeof annotations?.[key] !== "string") return null;
  let value;
  try {
    value = JSON.parse(annotations[key]);
  } catch {
    return null;
  }
  delete annotations[key];
  if (Object.keys(annotations).length === 0) delete obj.metadata.annotations;
  return value;
}

/** The answer of a reconcile, built by chaining. */
export class Response {
  constructor() {
    this.children = [];
    this.conditions = [];
    this.statusFields = null;
    this.requeueAfter = null;
    this.done = false;
  }
  child(obj) {
    this.children.push(obj);
    return this;
  }
  status(fields) {
    this.statusFields = { ...(this.statusFields ?? {}), ...fields };
    return this;
  }
  /** `status`: true, false, null (Unknown) or "True"/"False"/"Unknown". */
  condition(type, status, reason, message = "") {
    const s = { true: "true", false: "false", null: "unknown", True: "true", False: "false", Unknown: "unknown" }[status];
    this.conditions.push({ type, status: s, reason, message });
    return this;
  }
  ready(ok, reason, message = "") {
    return this.condition("Ready", Boolean(ok), reason, message);
  }
  requeue(seconds) {
    this.requeueAfter = seconds;
    return this;
  }
  finalized(done = true) {
    this.done = done;
    return this;
  }
  toWit() {
    return {
      children: this.children.map((c) => JSON.stringify(c)),
      status: this.statusFields == null ? null : JSON.stringify(this.statusFields),
      conditions: this.conditions,
      requeueAfterSeconds: this.requeueAfter,
      finalized: this.done,
    };
  }
}

/**
 * The `reconciler` and `converter` exports of an operator plugin:
 * `export const { reconciler, converter } = operator({name, version, parent, children, crd, reads, related, reconcile, convert})`.
 * `reconcile(req)` gets `{parent, children, finalizing, settings, related}` (parsed; `related` maps
 * each selector's id to the objects it picked) and returns a `Response`;
 * `related(parent)` returns the `byName(...)` / `byLabels(...)` selectors of the kinds in `reads`
 * this parent reads (default: none; called before every reconcile, so pure and cheap; a throw is
 * reported on the parent as an invalid spec);
 * `convert(obj, toVersion)` returns the converted object (default: only apiVersion changes).
 */
export function operator({
  name, version, parent, children = [], crd = null, finalizer = false, reads = [], related, reconcile, convert,
}) {
  const readKinds = reads.map(toReadKind); // a malformed kind throws here, at load
  return {
    reconciler: {
      metadata() {
        return {
          name,
          version,
          parent: gvk(parent),
          children: children.map((c) =>
            typeof c === "object" && "clusterScoped" in c
              ? { gvk: gvk(c.gvk), clusterScoped: Boolean(c.clusterScoped) }
              : { gvk: gvk(c), clusterScoped: false },
          ),
          crd: crd == null ? null : typeof crd === "string" ? crd : JSON.stringify(crd),
          finalizer,
          reads: readKinds,
        };
      },
      related(p) {
        if (!related) return [];
        let ref = "<unparsable parent>";
        try {
          const obj = JSON.parse(p);
          ref = refOf(obj);
          const selectors = related(obj);
          if (!Array.isArray(selectors)) throw new TypeError(`related must return an array of selectors, not ${describe(selectors)}`);
          return selectors.map(toSelector);
        } catch (err) {
          if (!(err instanceof PluginError)) logError(err);
          const text = err instanceof PluginError ? err.message : describe(err);
          throw text.startsWith(`${ref}:`) ? text : `${ref}: ${text}`;
        }
      },
      reconcile(req) {
        let ref = "<unparsable parent>";
        try {
          const p = JSON.parse(req.parent);
          ref = refOf(p);
          const answer = reconcile({
            parent: p,
            children: req.children.map((c) => JSON.parse(c)),
            finalizing: req.finalizing,
            settings: settingsOf(req.settings),
            related: Object.fromEntries((req.related ?? []).map((r) => [r.id, r.objects.map((o) => JSON.parse(o))])),
          });
          if (!(answer instanceof Response)) throw new TypeError("reconcile must return a Response");
          return answer.toWit();
        } catch (err) {
          const tag = err instanceof PluginError ? err.tag : "invalid";
          if (!(err instanceof PluginError)) logError(err);
          const text = err instanceof PluginError ? err.message : describe(err);
          throw { tag, val: text.startsWith(`${ref}:`) ? text : `${ref}: ${text}` };
        }
      },
    },
    converter: {
      convert(obj, toVersion) {
        try {
          const out = (convert ?? ((o, v) => setVersion(o, v)))(JSON.parse(obj), toVersion);
          return JSON.stringify(out);
        } catch (err) {
          logError(err);
          throw describe(err);
        }
      },
    },
  };
}
