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
