"""PyApp (python.wasmop.dev/v1; v1beta1 served, deprecated): Appoperator in Python.
spec.workload {image, replicas, port, configRef} -> one Deployment, the ConfigMap configRef names as
its environment and its content hash on the pod template; Ready once its replicas are available."""
import base64

import wasmop_plugin as wp

GROUP, KIND, MAX_REPLICAS = "python.wasmop.dev", "PyApp", 1000
V1_FIELDS = "pyapp.python.wasmop.dev/v1-workload"  # v1 workload fields v1beta1 cannot hold (port, configRef)
CONFIG_HASH = "pyapp.python.wasmop.dev/config-hash"  # pod-template annotation: the hash of configRef's content
IMAGE, REPLICAS = "string 1.. # Container image to run, e.g. nginx:1.27", f"int 0..{MAX_REPLICAS} =1 # Pods to run"
CONFIG_REF = ("string 1.. # Name of a ConfigMap in the same namespace whose keys become the container's environment"
              " (envFrom). Editing it rolls the pods: the pod template carries a hash of its content.")
STATUS = {"availableReplicas": "int # Replicas available", "replicas": "int # Replicas asked for"}
CRD = wp.crd(GROUP, KIND, "pyapps", short_names=["pyapp"], versions={
    "v1": {"spec": {"workload!": {"image!": IMAGE, "replicas": REPLICAS, "port": "int 1..65535 # Port (new in v1)",
                                  "configRef": CONFIG_REF}},
           "status": STATUS, "columns": {"Image": ".spec.workload.image", "Replicas": (".spec.workload.replicas", "integer")}},
    "v1beta1": {"spec": {"image!": IMAGE, "replicas": REPLICAS}, "status": STATUS,
                "deprecated": f"{GROUP}/v1beta1 {KIND} is deprecated; use {GROUP}/v1 (spec.workload)",
                "columns": {"Image": ".spec.image", "Replicas": (".spec.replicas", "integer")}},
})
op = wp.Operator("pyapp", "0.1.0", parent=(GROUP, "v1", KIND), children=["apps/v1/Deployment"], reads=["v1/ConfigMap"],
                 crd=CRD)

def dig(obj, *keys):  # obj[k1][k2]..., or None where a level is missing
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj

@op.related
def related(parent):  # the ConfigMap spec.workload.configRef names, in the parent's namespace
    ref = dig(parent if wp.version_of(parent) == "v1" else convert(parent, "v1"), "spec", "workload", "configRef")
    return [wp.by_name("config", "v1/ConfigMap", ref)] if isinstance(ref, str) else []

@op.reconcile
def reconcile(req):
    if wp.version_of(req.parent) != "v1":  # offline eval of v1beta1: the API server would convert it
        req.parent = convert(req.parent, "v1")
    name, w = req.name, req.spec["workload"]  # a missing key becomes InvalidSpec, naming it
    image, replicas, port, config_ref = w["image"], w.get("replicas", 1), w.get("port"), w.get("configRef")
    if not isinstance(image, str) or not image.strip():
        wp.invalid("spec.workload.image must name a container image, e.g. nginx:1.27")
    if not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
        wp.invalid(f"spec.workload.replicas must be between 0 and {MAX_REPLICAS}, got {replicas}")
    if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        wp.invalid(f"spec.workload.port must be between 1 and 65535, got {port}")
    if config_ref is not None and not (isinstance(config_ref, str) and config_ref):
        wp.invalid(f"spec.workload.configRef must name a ConfigMap, got {config_ref!r}")
    observed, configs = req.child("Deployment", name, "apps/v1") or {}, req.related.get("config") or []
    kept = dig(observed, "spec", "template", "metadata", "annotations", CONFIG_HASH)  # while the ConfigMap is missing
    hashed = (config_hash(configs[0]) if configs else kept) if config_ref else None  # so nothing rolls meanwhile
    container = {"name": "app", "image": image, **({"ports": [{"containerPort": port}]} if port else {}),
                 **({"envFrom": [{"configMapRef": {"name": config_ref}}]} if config_ref else {})}
    meta = {"labels": {"app": name}, **({"annotations": {CONFIG_HASH: hashed}} if hashed is not None else {})}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": meta, "spec": {"containers": [container]}}}}
    available = (observed.get("status") or {}).get("availableReplicas", 0)
    ready = available == replicas
    reason, message = "Available" if ready else "Progressing", f"{available}/{replicas} replicas available"
    if config_ref and not configs:
        ready, reason = False, "ConfigMissing"
        message = f"ConfigMap {config_ref} (spec.workload.configRef) does not exist in this namespace; create it"
    return (wp.Response().child(deployment).status({"availableReplicas": available, "replicas": replicas})
            .ready(ready, reason, message))

def config_hash(cm):
    """64-bit FNV-1a over data then binaryData (decoded), key order, 0xff after tag, key and value: 16 hex digits."""
    h = 0xCBF29CE484222325
    for tag, field, decode in ((b"d", "data", str.encode), (b"b", "binaryData", base64.b64decode)):
        for key, value in sorted(wp.mapping(cm.get(field)).items()):
            for byte in b"\xff".join((tag, key.encode(), decode(value))) + b"\xff":
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"

@op.convert
def convert(obj, to_version):
    """v1beta1 {image, replicas} <-> v1 {workload: {image, replicas, port, configRef}}; the rest rides in V1_FIELDS."""
    versions, frm, spec = ["v1beta1", "v1"], wp.version_of(obj), obj.get("spec") or {}
    if frm not in versions or to_version not in versions:
        raise ValueError(f"cannot convert {frm} to {to_version}: this plugin converts between {versions}")
    if frm != to_version and not isinstance(spec, dict):
        raise ValueError(f"spec of this {frm} {KIND} is not an object")
    if frm != to_version and to_version == "v1":  # stashed fields first, then image and replicas over them
        workload = {**wp.mapping(wp.unstash(obj, V1_FIELDS)), **wp.take(spec, "image", "replicas")}
        obj["spec"] = {**spec, **({"workload": workload} if workload else {})}
    elif frm != to_version:
        workload = wp.mapping(spec.pop("workload", None))
        obj["spec"] = {**spec, **wp.take(workload, "image", "replicas")}
        wp.stash(obj, V1_FIELDS, workload)  # what is left (port, configRef), back on the way to v1
    return wp.set_version(obj, to_version)

Reconciler, Converter = op.exports()  # the class names componentize-py looks for
