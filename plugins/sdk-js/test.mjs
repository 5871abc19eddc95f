// Tests of the helper under plain Node: node --test plugins/sdk-js/
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  gvk, settingsOf, allow, deny, mutate, policy, containers, operator, Response, invalid, retry,
  versionOf, setVersion, stash, unstash, setLog, readKind, byName, byLabels,
} from "./wasmop-plugin.js";

const logged = [];
setLog((level, message) => logged.push([level, message]));

test("gvk and settings", () => {
  assert.deepEqual(gvk("apps/v1/Deployment"), { group: "apps", version: "v1", kind: "Deployment" });
  assert.deepEqual(gvk("v1/ConfigMap"), { group: "", version: "v1", kind: "ConfigMap" });
  assert.throws(() => gvk("Deployment"), /group\/version\/Kind/);
  assert.equal(settingsOf(null), null);
  assert.equal(settingsOf(undefined), null); // StarlingMonkey's none
  assert.deepEqual(settingsOf('{"a":1}'), { a: 1 });
  assert.equal(settingsOf("plain text"), "plain text");
});

test("verdicts, fail-closed policy, containers", () => {
  assert.deepEqual([allow(), deny("no"), mutate({ a: 1 })], [
    { tag: "allow" }, { tag: "deny", val: "no" }, { tag: "mutate", val: '{"a":1}' }]);
  const p = policy({ name: "p", version: "1", appliesTo: ["batch/v1/Job"], review: (_p, c) => c.spec.x.y });
  assert.deepEqual(p.metadata().appliesTo, [{ group: "batch", version: "v1", kind: "Job" }]);
  assert.match(p.review("{}", '{"spec":{}}', null).val, /^policy p failed: TypeError: /);
  assert.equal(logged.at(-1)[0], "debug");
  const cron = { kind: "CronJob", spec: { jobTemplate: { spec: { template: { spec: {
    initContainers: [{ name: "i" }], containers: [{ name: "c" }] } } } } } };
  assert.deepEqual(containers(cron).map((c) => c.name), ["i", "c"]);
});

test("conversion helpers round-trip", () => {
  const original = { apiVersion: "g.io/v1", metadata: { name: "a" } };
  const obj = structuredClone(original);
  stash(obj, "g.io/extra", { port: 80 });
  assert.equal(obj.metadata.annotations["g.io/extra"], '{"port":80}');
  assert.deepEqual(unstash(obj, "g.io/extra"), { port: 80 });
  assert.deepEqual(obj, original);
  assert.equal(versionOf(setVersion(obj, "v2")), "v2");
  assert.equal(obj.apiVersion, "g.io/v2");
});

test("operator: response, thrown error payloads, conversion", () => {
  const parent = JSON.stringify({ apiVersion: "g.io/v1", kind: "T", metadata: { name: "a", namespace: "ns" }, spec: {} });
  const make = (reconcile) => operator({ name: "t", version: "1", parent: "g.io/v1/T", reconcile });
  const ok = make(() => new Response().child({ kind: "ConfigMap" }).ready(false, "Waiting").requeue(5));
  assert.deepEqual(ok.reconciler.reconcile({ parent, children: [], finalizing: false, settings: null }), {
    children: ['{"kind":"ConfigMap"}'], status: null, requeueAfterSeconds: 5, finalized: false,
    conditions: [{ type: "Ready", status: "false", reason: "Waiting", message: "" }] });
  const req = { parent, children: [], finalizing: false, settings: undefined };
  const thrown = (fn) => { try { fn(); } catch (e) { return e; } };
  assert.deepEqual(thrown(() => make(() => invalid("bad")).reconciler.reconcile(req)), { tag: "invalid", val: "ns/a: bad" });
  assert.deepEqual(thrown(() => make(() => retry("later")).reconciler.reconcile(req)), { tag: "retry", val: "ns/a: later" });
  assert.deepEqual(thrown(() => make((r) => r.parent.spec.x.y).reconciler.reconcile(req)).tag, "invalid");
  assert.equal(JSON.parse(ok.converter.convert(parent, "v2")).apiVersion, "g.io/v2");
});

test("operator: reads, related selectors and objects", () => {
  const parent = JSON.stringify({ apiVersion: "g.io/v1", kind: "T", metadata: { name: "a", namespace: "ns" }, spec: {} });
  const op = operator({
    name: "t", version: "1", parent: "g.io/v1/T",
    reads: ["v1/ConfigMap", readKind("v1/Secret", { scope: "cluster", metadataOnly: true })],
    related: (p) => [byName("config", "v1/ConfigMap", p.metadata.name), byLabels("peers", "g.io/v1/T", "app=a", "other")],
    reconcile: (req) => new Response().status({ cm: req.related.config[0].data, n: req.related.peers.length }),
  });
  assert.deepEqual(op.reconciler.metadata().reads, [
    { gvk: { group: "", version: "v1", kind: "ConfigMap" }, scope: "same-namespace", metadataOnly: false },
    { gvk: { group: "", version: "v1", kind: "Secret" }, scope: "cluster", metadataOnly: true }]);
  assert.deepEqual(op.reconciler.related(parent), [
    { id: "config", kind: { group: "", version: "v1", kind: "ConfigMap" }, namespace: null, target: { tag: "name", val: "a" } },
    { id: "peers", kind: { group: "g.io", version: "v1", kind: "T" }, namespace: "other", target: { tag: "labels", val: "app=a" } }]);
  const cm = JSON.stringify({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "a" }, data: { k: "v" } });
  const related = [{ id: "config", objects: [cm] }, { id: "peers", objects: [] }];
  const out = op.reconciler.reconcile({ parent, children: [], finalizing: false, settings: null, related });
  assert.deepEqual(JSON.parse(out.status), { cm: { k: "v" }, n: 0 });
  assert.throws(() => readKind("v1/Secret", { scope: "everywhere" }), /scope "everywhere"/);
});

test("operator: no related reads nothing; a throw in related names the parent", () => {
  const parent = JSON.stringify({ apiVersion: "g.io/v1", kind: "T", metadata: { name: "a", namespace: "ns" }, spec: {} });
  const make = (related) => operator({ name: "t", version: "1", parent: "g.io/v1/T", related, reconcile: () => new Response() });
  assert.deepEqual(make(undefined).reconciler.related(parent), []);
  assert.deepEqual(make(undefined).reconciler.metadata().reads, []);
  const thrown = (fn) => { try { fn(); } catch (e) { return e; } };
  assert.equal(thrown(() => make(() => invalid("no ref")).reconciler.related(parent)), "ns/a: no ref");
  assert.match(thrown(() => make((p) => p.spec.ref.name).reconciler.related(parent)), /^ns\/a: TypeError: /);
  assert.match(thrown(() => make(() => [{ id: "x" }]).reconciler.related(parent)), /^ns\/a: TypeError: related must return byName/);
  assert.match(thrown(() => make(() => null).reconciler.related(parent)), /^ns\/a: TypeError: related must return an array/);
});
