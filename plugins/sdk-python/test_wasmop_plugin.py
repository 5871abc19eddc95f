"""Tests of the helper in plain Python (stand-in binding types):
PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider plugins/sdk-python"""
import json

import pytest

import wasmop_plugin as wp


def test_schema_short_form():
    assert wp.schema("int 0..1000 =1 # Pods") == {
        "type": "integer", "format": "int32", "minimum": 0, "maximum": 1000, "default": 1, "description": "Pods"}
    assert wp.schema("string 1..63 pattern=^[a-z]+$") == {
        "type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z]+$"}
    assert wp.schema("string a|b") == {"type": "string", "enum": ["a", "b"]}
    assert wp.schema("[string] ..3") == {"type": "array", "items": {"type": "string"}, "maxItems": 3}
    assert wp.schema("{int}") == {"type": "object", "additionalProperties": {"type": "integer", "format": "int32"}}
    assert wp.schema({"#": "A thing", "name!": "string", "size": "int"}) == {
        "type": "object", "description": "A thing", "required": ["name"],
        "properties": {"name": {"type": "string"}, "size": {"type": "integer", "format": "int32"}}}
    with pytest.raises(ValueError, match="unknown type"):
        wp.schema("strin")


def test_crd_versions_storage_and_status():
    crd = wp.crd("g.io", "Thing", "things", {"v2": {"spec": {"a!": "string"}}, "v1": {"deprecated": "old"}})
    v2, v1 = crd["spec"]["versions"]
    assert crd["metadata"]["name"] == "things.g.io"
    assert (v2["storage"], v1["storage"], v1["deprecated"], v1["deprecationWarning"]) == (True, False, True, "old")
    assert v2["schema"]["openAPIV3Schema"]["required"] == ["spec"]
    status = v2["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["conditions"]["items"]["properties"]["message"]["maxLength"] == 32768
    assert v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"]


def test_stash_unstash_round_trip_and_broken_annotation():
    original = {"apiVersion": "g.io/v1", "metadata": {"name": "a"}}
    obj = json.loads(json.dumps(original))
    wp.stash(obj, "g.io/extra", {"port": 80})
    assert obj["metadata"]["annotations"]["g.io/extra"] == '{"port":80}'
    assert wp.unstash(obj, "g.io/extra") == {"port": 80}
    assert obj == original
    broken = {"metadata": {"annotations": {"k": "{not json"}}}
    assert wp.unstash(broken, "k") is None and broken["metadata"]["annotations"]["k"] == "{not json"


def test_versions():
    obj = {"apiVersion": "tools.wasmop.dev/v1beta1"}
    assert (wp.group_of(obj), wp.version_of(obj)) == ("tools.wasmop.dev", "v1beta1")
    assert wp.set_version(obj, "v1")["apiVersion"] == "tools.wasmop.dev/v1"
    assert wp.set_version({"apiVersion": "v1"}, "v2")["apiVersion"] == "v2"


def _op(fn):
    op = wp.Operator("t", "0.1.0", parent="g.io/v1/T", children=["v1/ConfigMap", wp.cluster_scoped("rbac.authorization.k8s.io/v1/ClusterRole")])
    op.reconcile(fn)
    return op


PARENT = json.dumps({"apiVersion": "g.io/v1", "kind": "T", "metadata": {"name": "a", "namespace": "ns"}, "spec": {}})


def test_errors_are_raised_as_err_with_the_parent_named():
    def bad_spec(req):
        wp.invalid("spec.x is wrong")

    def later(req):
        wp.retry("database not reachable")

    def bug(req):
        return req.spec["missing"]

    def wrong_return(req):
        return {"children": []}

    for fn, cls, text in [
        (bad_spec, "Error_Invalid", "ns/a: spec.x is wrong"),
        (later, "Error_Retry", "ns/a: database not reachable"),
        (bug, "Error_Invalid", "ns/a: KeyError: missing key 'missing'"),
        (wrong_return, "Error_Invalid", "ns/a: TypeError: reconcile must return wasmop_plugin.Response, not dict"),
    ]:
        with pytest.raises(wp.Err) as err:
            _op(fn).call_reconcile(PARENT)
        assert (type(err.value.value).__name__, err.value.value.value) == (cls, text)


def test_response_and_metadata():
    def ok(req):
        assert req.settings == {"a": 1} and req.child("ConfigMap", "a")["data"] == {}
        return wp.Response().child({"kind": "ConfigMap"}).status({"n": 1}).ready(True, "Done", "ok").requeue(30)

    cm = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {}})
    out = _op(ok).call_reconcile(PARENT, [cm], settings='{"a": 1}')
    assert out.children == ['{"kind":"ConfigMap"}'] and out.status == '{"n":1}' and out.requeue_after_seconds == 30
    assert (out.conditions[0].type, out.conditions[0].status.name, out.conditions[0].reason) == ("Ready", "TRUE", "Done")
    meta = _op(ok).call_metadata()
    assert [(c.gvk.group, c.gvk.kind, c.cluster_scoped) for c in meta.children] == [
        ("", "ConfigMap", False), ("rbac.authorization.k8s.io", "ClusterRole", True)]


def test_reads_in_the_metadata():
    op = wp.Operator("t", "0.1.0", parent="g.io/v1/T", reads=[
        "v1/ConfigMap", wp.reads("v1/Secret", scope="cluster", metadata_only=True), ("", "v1", "Namespace")])
    meta = op.call_metadata()
    assert [(r.gvk.kind, r.scope.name, r.metadata_only) for r in meta.reads] == [
        ("ConfigMap", "SAME_NAMESPACE", False), ("Secret", "CLUSTER", True), ("Namespace", "SAME_NAMESPACE", False)]
    assert _op(lambda req: wp.Response()).call_metadata().reads == []
    with pytest.raises(ValueError, match="scope 'everywhere'"):
        wp.reads("v1/Secret", scope="everywhere")
    with pytest.raises(ValueError, match="group/version/Kind"):
        wp.Operator("t", "0.1.0", parent="g.io/v1/T", reads=["Secret"])


def test_related_selectors_and_objects():
    op = _op(lambda req: wp.Response().status({"cm": req.related["config"][0]["data"], "n": len(req.related["peers"])}))
    assert op.call_related(PARENT) == [] and op.exports()[0]().related(PARENT) == []  # no @op.related

    @op.related
    def related(parent):
        name = parent["metadata"]["name"]
        return [wp.by_name("config", "v1/ConfigMap", name),
                wp.by_labels("peers", "g.io/v1/T", f"app={name}", namespace="other")]

    config, peers = op.exports()[0]().related(PARENT)
    assert (config.id, config.kind.kind, config.namespace, type(config.target).__name__, config.target.value) == (
        "config", "ConfigMap", None, "Target_Name", "a")
    assert (peers.kind.group, peers.namespace, type(peers.target).__name__, peers.target.value) == (
        "g.io", "other", "Target_Labels", "app=a")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}
    out = op.call_reconcile(PARENT, related={"config": [cm], "peers": [json.dumps(cm), cm]})
    assert json.loads(out.status) == {"cm": {"k": "v"}, "n": 2}
    wit = [wp._Native.RelatedObjects(id="config", objects=[json.dumps(cm)]), wp._Native.RelatedObjects("peers", [])]
    assert json.loads(op.call_reconcile(PARENT, related=wit).status) == {"cm": {"k": "v"}, "n": 0}


def test_related_errors_are_raised_as_err_with_the_parent_named():
    for fn, text in [
        (lambda parent: wp.invalid("spec.ref is missing"), "ns/a: spec.ref is missing"),
        (lambda parent: [parent["spec"]["ref"]], "ns/a: KeyError: missing key 'ref'"),
        (lambda parent: None, "ns/a: TypeError: related must return a list of wp.by_name / wp.by_labels, not NoneType"),
        (lambda parent: ["v1/ConfigMap"], "ns/a: TypeError: related must return wp.by_name / wp.by_labels selectors, not str"),
    ]:
        op = _op(lambda req: wp.Response())
        op.related(fn)
        with pytest.raises(wp.Err) as err:
            op.exports()[0]().related(PARENT)
        assert err.value.value == text


def test_default_convert_and_convert_errors():
    op = _op(lambda req: wp.Response())
    assert json.loads(op.call_convert(PARENT, "v2"))["apiVersion"] == "g.io/v2"

    @op.convert
    def convert(obj, to):
        raise ValueError(f"cannot convert to {to}")

    with pytest.raises(wp.Err) as err:
        op.call_convert(PARENT, "v9")
    assert err.value.value == "ValueError: cannot convert to v9"


def test_policy_verdicts_and_fail_closed():
    pol = wp.Policy("p", "0.1.0", applies_to=["apps/v1/Deployment"])

    @pol.review
    def review(parent, child, settings):
        if settings and settings.get("crash"):
            return child["nope"]
        return wp.deny("no") if child.get("deny") else wp.mutate({**child, "x": 1}) if child.get("mutate") else wp.allow()

    assert type(pol.call_review("{}", "{}", None)).__name__ == "Verdict_Allow"
    assert pol.call_review("{}", '{"deny": true}', None).value == "no"
    assert json.loads(pol.call_review("{}", '{"mutate": true}', None).value) == {"mutate": True, "x": 1}
    crashed = pol.call_review("{}", "{}", '{"crash": true}')
    assert (type(crashed).__name__, crashed.value) == ("Verdict_Deny", "policy p failed: KeyError: missing key 'nope'")
