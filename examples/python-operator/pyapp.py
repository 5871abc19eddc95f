"""PyApp (python.wasmop.dev/v1; v1beta1 served, deprecated): Appoperator in Python.
spec.workload {image, replicas, port} -> one Deployment; Ready once its replicas are available."""
import wasmop_plugin as wp

GROUP, KIND, MAX_REPLICAS = "python.wasmop.dev", "PyApp", 1000
V1_FIELDS = "pyapp.python.wasmop.dev/v1-workload"  # v1 workload fields v1beta1 cannot hold (port)
IMAGE, REPLICAS = "string 1.. # Container image to run, e.g. nginx:1.27", f"int 0..{MAX_REPLICAS} =1 # Pods to run"
STATUS = {"availableReplicas": "int # Replicas available", "replicas": "int # Replicas asked for"}
CRD = wp.crd(GROUP, KIND, "pyapps", short_names=["pyapp"], versions={
    "v1": {"spec": {"workload!": {"image!": IMAGE, "replicas": REPLICAS, "port": "int 1..65535 # Port (new in v1)"}},
           "status": STATUS, "columns": {"Image": ".spec.workload.image", "Replicas": (".spec.workload.replicas", "integer")}},
    "v1beta1": {"spec": {"image!": IMAGE, "replicas": REPLICAS}, "status": STATUS,
                "deprecated": f"{GROUP}/v1beta1 {KIND} is deprecated; use {GROUP}/v1 (spec.workload)",
                "columns": {"Image": ".spec.image", "Replicas": (".spec.replicas", "integer")}},
})
op = wp.Operator("pyapp", "0.1.0", parent=(GROUP, "v1", KIND), children=["apps/v1/Deployment"], crd=CRD)

@op.reconcile
def reconcile(req):
    if wp.version_of(req.parent) != "v1":  # offline eval of v1beta1: the API server would convert it
        req.parent = convert(req.parent, "v1")
    name, w = req.name, req.spec["workload"]  # a missing key becomes InvalidSpec, naming it
    image, replicas, port = w["image"], w.get("replicas", 1), w.get("port")
    if not isinstance(image, str) or not image.strip():
        wp.invalid("spec.workload.image must name a container image, e.g. nginx:1.27")
    if not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
        wp.invalid(f"spec.workload.replicas must be between 0 and {MAX_REPLICAS}, got {replicas}")
    if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        wp.invalid(f"spec.workload.port must be between 1 and 65535, got {port}")
    container = {"name": "app", "image": image, **({"ports": [{"containerPort": port}]} if port else {})}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {
        "replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}}
    observed = req.child("Deployment", name, "apps/v1") or {}
    available = (observed.get("status") or {}).get("availableReplicas", 0)
    ready = available == replicas
    return (wp.Response().child(deployment).status({"availableReplicas": available, "replicas": replicas})
            .ready(ready, "Available" if ready else "Progressing", f"{available}/{replicas} replicas available"))

@op.convert
def convert(obj, to_version):
    """v1beta1 {image, replicas} <-> v1 {workload: {image, replicas, port}}; port rides in V1_FIELDS."""
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
        wp.stash(obj, V1_FIELDS, workload)  # what is left (the port), back on the way to v1
    return wp.set_version(obj, to_version)

Reconciler, Converter = op.exports()  # the class names componentize-py looks for
