// Unit tests of the policy logic under plain Node (no WebAssembly): node --test examples/js-policy/
import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

// The component's import `wasmop:plugin/host@0.3.0` does not exist under Node: serve a stub that
// keeps what is logged in globalThis.hostLog.
const stub = "export function log(level, message) { (globalThis.hostLog ??= []).push([level, message]); }";
register(`data:text/javascript,${encodeURIComponent(`
  export async function resolve(specifier, context, next) {
    if (specifier.startsWith("wasmop:")) return { url: "data:text/javascript,${encodeURIComponent(stub)}", shortCircuit: true };
    return next(specifier, context);
  }`)}`);
const { reviewer, isPinned } = await import("./policy.js");

const deployment = (image) => JSON.stringify({
  apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "web" },
  spec: { template: { spec: { containers: [{ name: "app", image }] } } },
});

test("tags and digests", () => {
  assert.ok(isPinned("nginx:1.27"));
  assert.ok(isPinned("registry:5000/team/app:v2"));
  assert.ok(isPinned("nginx@sha256:abc"));
  assert.ok(!isPinned("nginx"));
  assert.ok(!isPinned("nginx:latest"));
  assert.ok(!isPinned("registry:5000/team/app"));
});

test("verdicts; settings arrive as null (QuickJS) or undefined (StarlingMonkey)", () => {
  for (const none of [null, undefined]) {
    assert.deepEqual(reviewer.review("{}", deployment("nginx:1.27"), none), { tag: "allow" });
    assert.deepEqual(reviewer.review("{}", deployment("nginx:latest"), none), {
      tag: "deny",
      val: 'container "app" uses image "nginx:latest"; pin a version tag (e.g. nginx:1.27), not one of ["latest"]',
    });
  }
  const edge = JSON.stringify({ deniedTags: ["edge"] });
  assert.equal(reviewer.review("{}", deployment("app:latest"), edge).tag, "allow");
  assert.equal(reviewer.review("{}", deployment("app:edge"), edge).tag, "deny");
});

test("a bad setting or a bug denies (fail closed) naming the error", () => {
  const bad = reviewer.review("{}", deployment("a:1"), JSON.stringify({ deniedTags: 3 }));
  assert.deepEqual(bad, { tag: "deny", val: "js-deny-latest-tag: settings.deniedTags must be a list of tags, got 3" });
  const broken = reviewer.review("{}", "not json", null);
  assert.equal(broken.tag, "deny");
  assert.match(broken.val, /^policy js-deny-latest-tag failed: SyntaxError: /);
  assert.match(globalThis.hostLog.at(-1)[1], /^SyntaxError: /, "the stack goes to the host log at debug level");
  assert.equal(globalThis.hostLog.at(-1)[0], "debug");
});
