"""Write wasmop plugins in Python (contract wasmop:plugin@0.3.0, built with componentize-py 0.25.1).

Vendor this one file next to your plugin (or put its folder on componentize-py's `-p` path). It
hides what componentize-py makes you discover by trial:

* the exported classes must be named like the WIT interfaces (`Reconciler`, `Converter`,
  `Reviewer`): `Reconciler, Converter = op.exports()` gives you both, wired to your functions;
* an error must be *raised* as `componentize_py_types.Err(...)`; returning it traps the guest.
  `invalid(msg)` / `retry(msg)` raise the right one, and any other exception escaping your
  reconcile becomes `invalid` with its type and text (`KeyError: missing key 'image'`), its
  traceback written to stderr (the host's debug log, `WASMOP_LOG=debug`), instead of a trap;
* objects cross as JSON strings: you get and return dicts;
* `option<string>` settings arrive as `None` or a string: `req.settings` is the parsed JSON.

    import wasmop_plugin as wp

    op = wp.Operator("hello", "0.1.0", parent="example.com/v1/Hello", children=["v1/ConfigMap"],
                     crd=wp.crd("example.com", "Hello", "hellos", {"v1": {"spec": {"text!": "string"}}}))

    @op.reconcile
    def reconcile(req):
        text = req.spec["text"]                      # a missing key becomes InvalidSpec
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": req.name}, "data": {"text": text}}
        return wp.Response().child(cm).ready(True, "Applied", "ConfigMap written")

    Reconciler, Converter = op.exports()             # the names componentize-py looks for

Related objects (kinds the plugin reads besides its children): declare them with
`reads=["v1/ConfigMap", wp.reads("v1/Secret", scope="cluster", metadata_only=True)]`, pick per
parent with `@op.related` returning `[wp.by_name(id, kind, name), wp.by_labels(id, kind, "app=web")]`
(the parent's namespace unless `namespace=` is given), and find them in `req.related[id]`; a change
to one of them reconciles the parent again.

Policies: `pol = wp.Policy(name, version, applies_to=[...])`, `@pol.review` returning `allow()`,
`deny(msg)` or `mutate(obj)`, and `Reviewer = pol.exports()`.

Outside WebAssembly (plain `python3`) the module works on stand-in types, so plugin logic can be
unit-tested with pytest: `op.call_reconcile(parent_dict, children=[...], related={id: [...]})`,
`op.call_related(parent_dict)`.
"""

import json
import sys
import traceback
from dataclasses import dataclass, make_dataclass
from enum import Enum

__all__ = [
    "Operator", "Policy", "Request", "Response", "Invalid", "Retry", "invalid", "retry",
    "allow", "deny", "mutate", "crd", "Raw", "stash", "unstash", "version_of", "group_of",
    "set_version", "take", "mapping", "log", "cluster_scoped", "dumps", "schema", "reads", "by_name",
    "by_labels",
]

# ---------------------------------------------------------------------------------------------
# Bindings: the ones componentize-py generates inside the component, stand-ins outside it.

try:  # inside a component built by componentize-py
    from componentize_py_types import Err
except ImportError:  # plain Python (tests)

    @dataclass(frozen=True)
    class Err(Exception):  # noqa: N818 - the name componentize-py uses
        value: object


class _Native:
    """Stand-ins for the generated binding types, for running plugin code in plain Python."""

    Gvk = make_dataclass("Gvk", ["group", "version", "kind"])
    ConditionStatus = Enum("ConditionStatus", [("TRUE", 0), ("FALSE", 1), ("UNKNOWN", 2)])
    Condition = make_dataclass("Condition", ["type", "status", "reason", "message"])
    LogLevel = Enum("LogLevel", [("TRACE", 0), ("DEBUG", 1), ("INFO", 2), ("WARN", 3), ("ERROR", 4)])
    ChildKind = make_dataclass("ChildKind", ["gvk", "cluster_scoped"])
    ReadScope = Enum("ReadScope", [("SAME_NAMESPACE", 0), ("CLUSTER", 1)])
    ReadKind = make_dataclass("ReadKind", ["gvk", "scope", "metadata_only"])
    OperatorMetadata = make_dataclass(
        "OperatorMetadata", ["name", "version", "parent", "children", "crd", "finalizer", "reads"]
    )
    Target_Name = make_dataclass("Target_Name", ["value"])
    Target_Labels = make_dataclass("Target_Labels", ["value"])
    Selector = make_dataclass("Selector", ["id", "kind", "namespace", "target"])
    RelatedObjects = make_dataclass("RelatedObjects", ["id", "objects"])
    Response = make_dataclass(
        "Response", ["children", "status", "conditions", "requeue_after_seconds", "finalized"]
    )
    Error_Invalid = make_dataclass("Error_Invalid", ["value"])
    Error_Retry = make_dataclass("Error_Retry", ["value"])
    PolicyMetadata = make_dataclass("PolicyMetadata", ["name", "version", "applies_to"])
    Verdict_Allow = make_dataclass("Verdict_Allow", [])
    Verdict_Mutate = make_dataclass("Verdict_Mutate", ["value"])
    Verdict_Deny = make_dataclass("Verdict_Deny", ["value"])

    @staticmethod
    def log(level, message):
        print(f"[{level.name.lower()}] {message}", file=sys.stderr)


def _binding(module, name):
    """`wit_world.<module>.<name>` of the world being built, or its stand-in. Imported lazily:
    the operator and policy worlds generate different modules."""
    try:
        mod = __import__(f"wit_world.{module}", fromlist=[name])
        return getattr(mod, name)
    except ImportError:
        return getattr(_Native, name)


def _types(name):
    return _binding("imports.types", name)


# ---------------------------------------------------------------------------------------------
# JSON and small helpers.


def dumps(value):
    """Compact JSON with sorted keys, as the Rust SDK (serde_json) writes it: same input, same bytes."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def log(message, level="info"):
    """One line into the host's structured log (level: trace, debug, info, warn, error)."""
    _binding("imports.host", "log")(_types("LogLevel")[level.upper()], str(message))


def _gvk(spec):
    """`"apps/v1/Deployment"`, `"v1/ConfigMap"` (core group) or a `(group, version, kind)` tuple."""
    if isinstance(spec, (tuple, list)):
        group, version, kind = spec
    else:
        parts = spec.split("/")
        if len(parts) == 2:
            parts.insert(0, "")
        if len(parts) != 3:
            raise ValueError(f"{spec!r} is not group/version/Kind (or version/Kind for the core group)")
        group, version, kind = parts
    return _types("Gvk")(group=group, version=version, kind=kind)


def cluster_scoped(gvk):
    """Marks a child kind as cluster-scoped: `children=[wp.cluster_scoped("rbac.authorization.k8s.io/v1/ClusterRole")]`."""
    return ("cluster", gvk)


class _Read:
    """A kind the plugin reads, as `reads()` declares it; made a binding in `call_metadata`."""

    __slots__ = ("gvk", "scope", "metadata_only")

    def __init__(self, gvk, scope, metadata_only):
        self.gvk, self.scope, self.metadata_only = gvk, scope, metadata_only

    def __repr__(self):
        return f"reads({self.gvk!r}, scope={self.scope!r}, metadata_only={self.metadata_only!r})"


_SCOPES = {"same-namespace": "SAME_NAMESPACE", "same_namespace": "SAME_NAMESPACE", "cluster": "CLUSTER"}


def reads(gvk, scope="same-namespace", metadata_only=False):
    """A kind the plugin reads, for `Operator(reads=[...])` (a plain `"v1/ConfigMap"` there is
    `reads("v1/ConfigMap")`). `scope`: "same-namespace" (the parent's namespace only) or "cluster"
    (any namespace, or a cluster-scoped kind); `metadata_only`: the plugin gets name, labels and
    annotations without the body (no Secret data crosses). The operator needs get, list and watch
    on the kind in that scope."""
    if scope not in _SCOPES:
        raise ValueError(f"scope {scope!r} is not 'same-namespace' or 'cluster'")
    _gvk(gvk)  # refuses a malformed kind now, where it is declared
    return _Read(gvk, scope, bool(metadata_only))


def _as_read(spec):
    """A `reads=[...]` entry: `reads(...)` as it is, a kind as `reads(kind)`."""
    return spec if isinstance(spec, _Read) else reads(spec)


def _selector(id_, kind, target, namespace):
    return _binding("exports.reconciler", "Selector")(
        id=str(id_), kind=_gvk(kind), namespace=None if namespace is None else str(namespace), target=target)


def by_name(id_, kind, name, namespace=None):
    """Selects the one object of `kind` named `name` (none if it does not exist), grouped under
    `id_` in `req.related`. `namespace`: None for the parent's (scope same-namespace) or every
    namespace (scope cluster)."""
    return _selector(id_, kind, _binding("exports.reconciler", "Target_Name")(str(name)), namespace)


def by_labels(id_, kind, selector, namespace=None):
    """Selects every object of `kind` whose labels match `selector`, a label selector as
    `kubectl get -l` takes it (`"app=web,tier in (a,b)"`; "" matches all), grouped under `id_`."""
    return _selector(id_, kind, _binding("exports.reconciler", "Target_Labels")(str(selector)), namespace)


def _api_version(group, version):
    return f"{group}/{version}" if group else version


def _describe(exc):
    """`KeyError: missing key 'image'`: the exception's type and text, for a message."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return f"KeyError: missing key {exc.args[0]!r}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _stderr_traceback():
    # The host keeps the guest's stderr at debug level (100 lines / 64 KiB a call): keep it short.
    lines = traceback.format_exc().rstrip().splitlines()
    print("\n".join(lines[-20:]), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Errors.


class Invalid(Exception):
    """The spec cannot be satisfied (`Ready=False/InvalidSpec`, not retried until it changes)."""


class Retry(Exception):
    """A transient problem: the host retries with backoff (`Ready=False/PluginError`)."""


def invalid(message):
    """Stops the reconcile: the spec is wrong. The parent's `namespace/name: ` is prefixed."""
    raise Invalid(message)


def retry(message):
    """Stops the reconcile: try again later, with backoff."""
    raise Retry(message)


# ---------------------------------------------------------------------------------------------
# Operator plugins.


def _parsed(obj):
    return json.loads(obj) if isinstance(obj, str) else obj


class Request:
    """One reconcile: `parent` (dict), `children` (list of dicts), `finalizing`, `settings`, and
    `related`: the objects each selector of `@op.related` picked, as a dict id -> list of dicts
    (ordered by namespace and name)."""

    def __init__(self, parent, children=(), finalizing=False, settings=None, related=None):
        self.parent = _parsed(parent)
        self.children = [_parsed(c) for c in children]
        # From the host: a list of RelatedObjects(id, objects); from tests: a dict id -> objects.
        pairs = related.items() if isinstance(related, dict) else ((r.id, r.objects) for r in related or ())
        self.related = {id_: [_parsed(o) for o in objects] for id_, objects in pairs}
        self.finalizing = bool(finalizing)
        self.raw_settings = settings  # None or the string the operator configured
        try:
            self.settings = json.loads(settings) if settings else None
        except ValueError:
            self.settings = settings

    @property
    def metadata(self):
        return self.parent.get("metadata") or {}

    @property
    def name(self):
        return self.metadata.get("name")

    @property
    def namespace(self):
        return self.metadata.get("namespace")

    @property
    def spec(self):
        return self.parent.get("spec") or {}

    @property
    def ref(self):
        """`namespace/name` of the parent, for messages (as the Rust SDK's `parent_ref`)."""
        if self.name is None:
            return "<unnamed parent>"
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def child(self, kind, name, api_version=None):
        """The observed child of `kind` (and `api_version`, if given) named `name`, or None."""
        for c in self.children:
            if c.get("kind") == kind and (c.get("metadata") or {}).get("name") == name:
                if api_version is None or c.get("apiVersion") == api_version:
                    return c
        return None

    def children_of(self, kind, api_version=None):
        return [c for c in self.children if c.get("kind") == kind
                and (api_version is None or c.get("apiVersion") == api_version)]


_STATUS = {True: "TRUE", False: "FALSE", None: "UNKNOWN", "True": "TRUE", "False": "FALSE", "Unknown": "UNKNOWN"}


class Response:
    """The answer, built by chaining: `Response().child(obj).status({...}).ready(ok, reason, msg)`."""

    def __init__(self):
        self.children, self.conditions = [], []
        self._status, self._requeue, self._finalized = None, None, False

    def child(self, obj):
        """A desired child (a dict with apiVersion, kind, metadata.name). Its namespace may be left out."""
        self.children.append(obj)
        return self

    def status(self, fields):
        """Fields under the parent's `.status` (not `conditions` / `observedGeneration`)."""
        self._status = {**(self._status or {}), **fields}
        return self

    def condition(self, type_, status, reason, message=""):
        """A condition; `status` is True, False, None (Unknown) or the string form."""
        self.conditions.append((type_, _STATUS[status], reason, message))
        return self

    def ready(self, ready, reason, message=""):
        """The `Ready` condition (overrides the host's own)."""
        return self.condition("Ready", bool(ready), reason, message)

    def requeue(self, seconds):
        """Be called again after `seconds` (at least 1) even if nothing changes."""
        self._requeue = int(seconds)
        return self

    def finalized(self, done=True):
        """When finalizing: cleanup is complete, the finalizer may be removed."""
        self._finalized = bool(done)
        return self

    def _wit(self):
        cond, status = _types("Condition"), _types("ConditionStatus")
        return _binding("exports.reconciler", "Response")(
            children=[dumps(c) for c in self.children],
            status=None if self._status is None else dumps(self._status),
            conditions=[cond(type=t, status=status[s], reason=r, message=m) for t, s, r, m in self.conditions],
            requeue_after_seconds=self._requeue,
            finalized=self._finalized,
        )


class Operator:
    """An operator plugin: `@op.reconcile`, optionally `@op.related` and `@op.convert`, then
    `Reconciler, Converter = op.exports()` at module level. `reads` lists the kinds `related` may
    select: `"v1/ConfigMap"` (the parent's namespace, whole objects) or `wp.reads(...)`."""

    def __init__(self, name, version, parent, children=(), crd=None, finalizer=False, reads=()):
        self.name, self.version, self.parent = name, version, parent
        self.children, self.crd, self.finalizer = list(children), crd, finalizer
        self.reads = [_as_read(r) for r in reads]
        self._reconcile = None
        self._related = None
        self._convert = default_convert

    def reconcile(self, fn):
        """Decorator: `fn(req: Request) -> Response`."""
        self._reconcile = fn
        return fn

    def related(self, fn):
        """Decorator: `fn(parent: dict) -> list` of `wp.by_name(...)` / `wp.by_labels(...)`, the
        objects this parent reads (default: none). Called before every reconcile: keep it pure and
        cheap. An exception is reported on the parent as an invalid spec."""
        self._related = fn
        return fn

    def convert(self, fn):
        """Decorator: `fn(obj: dict, to_version: str) -> dict` (default: only sets apiVersion)."""
        self._convert = fn
        return fn

    # -- the calls the host makes, also usable from tests --

    def call_metadata(self):
        kinds = []
        for c in self.children:
            scoped = isinstance(c, tuple) and len(c) == 2 and c[0] == "cluster"
            kinds.append(_binding("exports.reconciler", "ChildKind")(gvk=_gvk(c[1] if scoped else c), cluster_scoped=scoped))
        crd_json = self.crd if self.crd is None or isinstance(self.crd, str) else dumps(self.crd)
        scope = _binding("exports.reconciler", "ReadScope")
        read_kinds = [_binding("exports.reconciler", "ReadKind")(
            gvk=_gvk(r.gvk), scope=scope[_SCOPES[r.scope]], metadata_only=r.metadata_only) for r in self.reads]
        return _binding("exports.reconciler", "OperatorMetadata")(
            name=self.name, version=self.version, parent=_gvk(self.parent),
            children=kinds, crd=crd_json, finalizer=self.finalizer, reads=read_kinds,
        )

    def call_related(self, parent):
        """Runs the related function on the parent (JSON or dict); returns the list of selectors
        or raises `Err(str)` naming the parent."""
        if self._related is None:
            return []
        req = None
        try:
            req = Request(parent)
            selectors = self._related(req.parent)
            selector = _binding("exports.reconciler", "Selector")
            if not isinstance(selectors, (list, tuple)):
                raise TypeError(f"related must return a list of wp.by_name / wp.by_labels, not {type(selectors).__name__}")
            for s in selectors:
                if not isinstance(s, selector):
                    raise TypeError(f"related must return wp.by_name / wp.by_labels selectors, not {type(s).__name__}")
            return list(selectors)
        except Err:
            raise
        except (Invalid, Retry) as e:
            raise Err(_prefixed(req, str(e))) from None
        except Exception as e:  # noqa: BLE001
            _stderr_traceback()
            raise Err(_prefixed(req, _describe(e))) from None

    def call_reconcile(self, parent, children=(), finalizing=False, settings=None, related=None):
        """Runs the reconcile function; returns the response or raises `Err(Error_Invalid | Error_Retry)`.
        `related`: what the selectors picked, a dict id -> list of objects (or the WIT list)."""
        if self._reconcile is None:
            raise Err(_binding("exports.reconciler", "Error_Invalid")("plugin has no @op.reconcile function"))
        req = None
        try:
            req = Request(parent, children, finalizing, settings, related)
            answer = self._reconcile(req)
            if not isinstance(answer, Response):
                raise TypeError(f"reconcile must return wasmop_plugin.Response, not {type(answer).__name__}")
            return answer._wit()
        except Err:
            raise
        except Retry as e:
            raise Err(_binding("exports.reconciler", "Error_Retry")(_prefixed(req, str(e)))) from None
        except Invalid as e:
            raise Err(_binding("exports.reconciler", "Error_Invalid")(_prefixed(req, str(e)))) from None
        except Exception as e:  # noqa: BLE001 - every bug becomes a message, never a trap
            _stderr_traceback()
            raise Err(_binding("exports.reconciler", "Error_Invalid")(_prefixed(req, _describe(e)))) from None

    def call_convert(self, obj, to_version):
        """Runs the conversion on a JSON string; returns a JSON string or raises `Err(str)`."""
        try:
            return dumps(self._convert(json.loads(obj), to_version))
        except Err:
            raise
        except Exception as e:  # noqa: BLE001
            _stderr_traceback()
            raise Err(str(e) if isinstance(e, (Invalid, Retry)) else _describe(e)) from None

    def exports(self):
        """`(Reconciler, Converter)`: the classes componentize-py instantiates, by these names."""
        op = self

        class Reconciler:
            def metadata(self):
                return op.call_metadata()

            def related(self, parent):
                return op.call_related(parent)

            def reconcile(self, req):
                return op.call_reconcile(req.parent, req.children, req.finalizing, req.settings, req.related)

        class Converter:
            def convert(self, obj, to_version):
                return op.call_convert(obj, to_version)

        return Reconciler, Converter


def _prefixed(req, message):
    ref = req.ref if req is not None else "<unparsable parent>"
    return message if message.startswith(ref + ":") else f"{ref}: {message}"


# ---------------------------------------------------------------------------------------------
# Conversion, as the Rust SDK's wasmop_sdk::conversion.


def group_of(obj):
    """The group of an object's apiVersion ("" for the core group)."""
    api_version = obj.get("apiVersion") or ""
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def version_of(obj):
    """The version of an object's apiVersion ("v1" of "apps/v1")."""
    api_version = obj.get("apiVersion") or ""
    return api_version.split("/", 1)[1] if "/" in api_version else api_version


def set_version(obj, to_version):
    """Sets apiVersion to `to_version` of the object's group; returns the object."""
    obj["apiVersion"] = _api_version(group_of(obj), to_version)
    return obj


def mapping(value):
    """`value` if it is a dict, else a new empty dict (for fields that may be absent or malformed)."""
    return value if isinstance(value, dict) else {}


def take(d, *keys):
    """Removes `keys` from dict `d` and returns them as a new dict (only those present)."""
    return {k: d.pop(k) for k in keys if k in d}


def default_convert(obj, to_version):
    """The conversion of a kind with one version: only apiVersion changes."""
    return set_version(obj, to_version)


def stash(obj, key, value):
    """Keeps `value` as JSON in annotation `key` (nothing for None or an empty dict), for fields
    the target version cannot hold."""
    if value is None or value == {}:
        return
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return
    annotations = metadata.setdefault("annotations", {})
    if isinstance(annotations, dict):
        annotations[key] = dumps(value)


def unstash(obj, key):
    """Takes back what `stash` kept under `key`, removing the annotation (and an emptied
    annotations map). An annotation that is not JSON stays, and None is returned."""
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict) or not isinstance(annotations.get(key), str):
        return None
    try:
        value = json.loads(annotations[key])
    except ValueError:
        return None
    del annotations[key]
    if not annotations:
        del metadata["annotations"]
    return value


# ---------------------------------------------------------------------------------------------
# Policy plugins.


def allow():
    """Apply the child as it is."""
    return _binding("exports.reviewer", "Verdict_Allow")()


def deny(message):
    """Refuse the child; say why and what to change."""
    return _binding("exports.reviewer", "Verdict_Deny")(str(message))


def mutate(obj):
    """Apply this object instead (same apiVersion, kind, name and namespace)."""
    return _binding("exports.reviewer", "Verdict_Mutate")(obj if isinstance(obj, str) else dumps(obj))


class Policy:
    """A policy plugin: `@pol.review` then `Reviewer = pol.exports()`."""

    def __init__(self, name, version, applies_to=()):
        self.name, self.version, self.applies_to = name, version, list(applies_to)
        self._review = None

    def review(self, fn):
        """Decorator: `fn(parent: dict, child: dict, settings) -> allow() | deny(msg) | mutate(obj)`."""
        self._review = fn
        return fn

    def call_metadata(self):
        return _binding("exports.reviewer", "PolicyMetadata")(
            name=self.name, version=self.version, applies_to=[_gvk(g) for g in self.applies_to])

    def call_review(self, parent, child, settings=None):
        """Runs the review; an exception denies the child (fail closed) naming it."""
        try:
            parsed = None
            if settings:
                try:
                    parsed = json.loads(settings)
                except ValueError:
                    parsed = settings
            return self._review(json.loads(parent), json.loads(child), parsed)
        except Exception as e:  # noqa: BLE001
            _stderr_traceback()
            return deny(f"policy {self.name} failed: {_describe(e)}")

    def exports(self):
        pol = self

        class Reviewer:
            def metadata(self):
                return pol.call_metadata()

            def review(self, parent, child, settings):
                return pol.call_review(parent, child, settings)

        return Reviewer


# ---------------------------------------------------------------------------------------------
# The CustomResourceDefinition, from a short schema.


class Raw:
    """An OpenAPI v3 schema passed through as it is, where the short form does not reach."""

    def __init__(self, schema):
        self.schema = schema


_SCALARS = {
    "string": {"type": "string"},
    "int": {"type": "integer", "format": "int32"},
    "int32": {"type": "integer", "format": "int32"},
    "int64": {"type": "integer", "format": "int64"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "boolean": {"type": "boolean"},
    "date-time": {"type": "string", "format": "date-time"},
    "int-or-string": {"x-kubernetes-int-or-string": True},
    "object": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    "any": {"x-kubernetes-preserve-unknown-fields": True},
}
_RANGE = {"string": ("minLength", "maxLength"), "array": ("minItems", "maxItems"),
          "object": ("minProperties", "maxProperties")}
_KEYS = {"minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "pattern", "format",
         "minProperties", "maxProperties", "multipleOf"}


def _json_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _base(type_text):
    if type_text.startswith("[") and type_text.endswith("]"):
        return {"type": "array", "items": _base(type_text[1:-1])}
    if type_text.startswith("{") and type_text.endswith("}"):
        return {"type": "object", "additionalProperties": _base(type_text[1:-1])}
    if type_text not in _SCALARS:
        raise ValueError(f"unknown type {type_text!r} (one of {', '.join(_SCALARS)}, [T], {{T}})")
    return dict(_SCALARS[type_text])


def schema(field):
    """The OpenAPI v3 schema of one field in the short form:

    * `"TYPE [LO..HI] [=DEFAULT] [a|b|c] [key=value]... [# description]"`; TYPE is one of
      string, int (int32), int64, integer, number, bool, date-time, int-or-string, object
      (free-form), any, `[T]` (list of T) or `{T}` (map of T). `LO..HI` (either side may be left
      out) bounds a number's value, a string's length or a list's items; `a|b|c` is an enum;
      `key=value` sets minLength, pattern, format, ... as they are;
    * a dict: an object whose keys are field names, a name ending in `!` being required, and
      `"#"` its description;
    * `Raw({...})`: an OpenAPI schema as it is.
    """
    if isinstance(field, Raw):
        return field.schema
    if isinstance(field, dict):
        out = {"type": "object", "properties": {}}
        required = []
        for key, sub in field.items():
            if key == "#":
                out["description"] = sub
                continue
            name = key.rstrip("!")
            if key.endswith("!"):
                required.append(name)
            out["properties"][name] = schema(sub)
        if required:
            out["required"] = required
        return out
    text, _, description = str(field).partition("#")
    tokens = text.split()
    if not tokens:
        raise ValueError(f"empty field schema {field!r}")
    out = _base(tokens[0])
    kind = out.get("type", "")
    for token in tokens[1:]:
        if ".." in token and "=" not in token:
            lo, hi = token.split("..", 1)
            low_key, high_key = _RANGE.get(kind, ("minimum", "maximum"))
            if lo:
                out[low_key] = _json_or_text(lo)
            if hi:
                out[high_key] = _json_or_text(hi)
        elif token.startswith("="):
            out["default"] = _json_or_text(token[1:])
        elif "=" in token and token.split("=", 1)[0] in _KEYS:
            key, value = token.split("=", 1)
            out[key] = value if key in ("pattern", "format") else _json_or_text(value)
        elif "|" in token:
            out["enum"] = [_json_or_text(v) if kind != "string" else v for v in token.split("|")]
        elif token == "nullable":
            out["nullable"] = True
        else:
            raise ValueError(f"cannot read {token!r} in field schema {field!r}")
    if description.strip():
        out["description"] = description.strip()
    return out


_CONDITIONS = {
    "description": "Standard conditions of the object; `Ready` is written by the wasmop host.",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "status", "reason", "message", "lastTransitionTime"],
        "properties": {
            "type": {"type": "string", "maxLength": 316, "pattern":
                     "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "minLength": 1, "maxLength": 1024,
                       "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    },
}


def crd(group, kind, plural, versions, storage=None, namespaced=True, short_names=(), singular=None):
    """An apiextensions.k8s.io/v1 CustomResourceDefinition as a dict.

    `versions` maps each version name to a dict with `spec` and `status` (short schemas, see
    `schema`), and optionally `served` (default True), `deprecated` (True or the warning text)
    and `columns` (`{"Image": ".spec.image", "Replicas": (".spec.replicas", "integer")}`; Ready
    and Age are added). `storage` names the storage version (default: the first). Every version
    gets the status subresource, and status gets `conditions` and `observedGeneration`.
    """
    storage = storage or next(iter(versions))
    if storage not in versions:
        raise ValueError(f"storage version {storage!r} is not among {list(versions)}")
    out_versions = []
    for name, v in versions.items():
        unknown = set(v) - {"spec", "status", "served", "deprecated", "columns"}
        if unknown:
            raise ValueError(f"version {name}: unknown keys {sorted(unknown)}")
        spec_schema = schema(v.get("spec", Raw({"type": "object", "x-kubernetes-preserve-unknown-fields": True})))
        status_schema = schema(v.get("status", {}))
        status_schema.setdefault("properties", {}).update(
            conditions=_CONDITIONS,
            observedGeneration={"type": "integer", "format": "int64", "description":
                                "The generation of the spec the status describes."})
        root = {"type": "object", "properties": {"spec": spec_schema, "status": status_schema}}
        if spec_schema.get("required"):
            root["required"] = ["spec"]
        columns = []
        for title, col in (v.get("columns") or {}).items():
            path, type_ = col if isinstance(col, tuple) else (col, "string")
            columns.append({"name": title, "type": type_, "jsonPath": path})
        columns += [
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]
        entry = {"name": name, "served": v.get("served", True), "storage": name == storage,
                 "schema": {"openAPIV3Schema": root}, "subresources": {"status": {}},
                 "additionalPrinterColumns": columns}
        if v.get("deprecated"):
            entry["deprecated"] = True
            if isinstance(v["deprecated"], str):
                entry["deprecationWarning"] = v["deprecated"]
        out_versions.append(entry)
    names = {"kind": kind, "plural": plural, "singular": singular or kind.lower(), "listKind": f"{kind}List"}
    if short_names:
        names["shortNames"] = list(short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "names": names, "scope": "Namespaced" if namespaced else "Cluster",
                 "versions": out_versions},
    }
