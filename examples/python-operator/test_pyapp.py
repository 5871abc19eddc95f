"""Tests of the plugin's logic in plain Python, as plugins/appoperator's Rust tests:
PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=plugins/sdk-python python3 -m pytest -p no:cacheprovider examples/python-operator"""
import json

import pytest

import pyapp
import wasmop_plugin as wp


def parent(workload, version="v1"):
    return {"apiVersion": f"python.wasmop.dev/{version}", "kind": "PyApp",
            "metadata": {"name": "web", "namespace": "shop", "generation": 2}, "spec": {"workload": workload}}


def reconcile(obj, children=()):
    return pyapp.op.call_reconcile(json.dumps(obj), [json.dumps(c) for c in children])


def test_replicas_default_to_one():
    assert json.loads(reconcile(parent({"image": "nginx:1.27"})).children[0])["spec"]["replicas"] == 1


def test_ready_follows_available_replicas():
    observed = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
                "status": {"availableReplicas": 3}}
    cond = reconcile(parent({"image": "nginx", "replicas": 3}), [observed]).conditions[0]
    assert (cond.type, cond.status.name, cond.reason, cond.message) == ("Ready", "TRUE", "Available", "3/3 replicas available")


@pytest.mark.parametrize("workload, message", [
    ({"image": " "}, "shop/web: spec.workload.image must name a container image, e.g. nginx:1.27"),
    ({"image": "a", "replicas": 1001}, "shop/web: spec.workload.replicas must be between 0 and 1000, got 1001"),
    ({"image": "a", "port": 0}, "shop/web: spec.workload.port must be between 1 and 65535, got 0"),
    ({}, "shop/web: KeyError: missing key 'image'"),
])
def test_invalid_specs_name_the_field(workload, message):
    with pytest.raises(wp.Err) as err:
        reconcile(parent(workload))
    assert err.value.value.value == message


def test_a_port_is_declared_on_the_container():
    deployment = json.loads(reconcile(parent({"image": "a", "port": 8080})).children[0])
    assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080}]


def test_an_older_version_is_converted_before_reconciling():
    old = parent({}, "v1beta1")
    old["spec"] = {"image": "old:1", "replicas": 2}
    assert json.loads(reconcile(old).children[0])["spec"]["replicas"] == 2


def test_v1_to_v1beta1_keeps_the_port_in_an_annotation_and_back():
    original = parent({"image": "nginx:1.27", "replicas": 2, "port": 8080})
    old = json.loads(pyapp.op.call_convert(json.dumps(original), "v1beta1"))
    assert old["spec"] == {"image": "nginx:1.27", "replicas": 2}
    assert old["metadata"]["annotations"][pyapp.V1_FIELDS] == '{"port":8080}'
    assert json.loads(pyapp.op.call_convert(json.dumps(old), "v1")) == original


def test_unknown_versions_are_refused():
    with pytest.raises(wp.Err) as err:
        pyapp.op.call_convert(json.dumps(parent({"image": "a"})), "v2")
    assert "v2" in err.value.value and "v1beta1" in err.value.value


def config_map(data):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": "shop"}, "data": data}


def template(resp):
    return json.loads(resp.children[0])["spec"]["template"]


def test_a_config_ref_is_read_becomes_env_from_and_its_content_hash_rolls_the_pods():
    spec = {"image": "a", "configRef": "web-config"}
    [selector] = pyapp.op.call_related(json.dumps(parent(spec)))
    assert (selector.id, selector.kind.kind, selector.namespace, selector.target.value) == (
        "config", "ConfigMap", None, "web-config")
    assert pyapp.op.call_related(json.dumps(parent({"image": "a"}))) == []

    def reconcile_with(data):
        return pyapp.op.call_reconcile(json.dumps(parent(spec)), related={"config": [config_map(data)]})

    first = template(reconcile_with({"LEVEL": "info"}))
    assert first["spec"]["containers"][0]["envFrom"] == [{"configMapRef": {"name": "web-config"}}]
    assert len(first["metadata"]["annotations"][pyapp.CONFIG_HASH]) == 16
    assert template(reconcile_with({"LEVEL": "info"})) == first, "the same content, the same template"
    assert template(reconcile_with({"LEVEL": "debug"}))["metadata"] != first["metadata"]
    assert template(reconcile_with({"ab": "c"})) != template(reconcile_with({"a": "bc"}))  # keys and values apart


def test_the_config_hash_is_the_rust_plugins():
    # Values of plugins/appoperator: its golden case config-found, and its answers (wasmop test --update).
    assert pyapp.config_hash(config_map({"LOG_LEVEL": "info"})) == "9a67fd5ea33f136d"
    assert pyapp.config_hash({"binaryData": {"k": "AAEC/w=="}}) == "4ae5119364329ab1"
    assert pyapp.config_hash({}) == "cbf29ce484222325"


def test_a_v1beta1_parent_reads_the_config_ref_it_stashed():
    old = parent({}, "v1beta1")
    old["spec"] = {"image": "old:1"}
    old["metadata"]["annotations"] = {pyapp.V1_FIELDS: '{"configRef":"web-config"}'}
    [selector] = pyapp.op.call_related(json.dumps(old))
    assert selector.target.value == "web-config"


def test_a_missing_config_map_is_config_missing_and_keeps_the_hash_the_deployment_has():
    spec = {"image": "a", "configRef": "web-config"}
    observed = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"template": {"metadata": {"annotations": {pyapp.CONFIG_HASH: "0123456789abcdef"}}}},
                "status": {"availableReplicas": 1}}
    resp = reconcile(parent(spec), [observed])
    assert (resp.conditions[0].reason, resp.conditions[0].message) == (
        "ConfigMissing", "ConfigMap web-config (spec.workload.configRef) does not exist in this namespace; create it")
    assert template(resp)["metadata"]["annotations"] == {pyapp.CONFIG_HASH: "0123456789abcdef"}
    fresh = reconcile(parent(spec))
    assert fresh.conditions[0].reason == "ConfigMissing"
    assert "annotations" not in template(fresh)["metadata"], "no hash to keep"
