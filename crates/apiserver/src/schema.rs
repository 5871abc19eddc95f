//! CRD structural schemas: defaulting, pruning of unknown fields, and validation.

use serde_json::{Map, Value};

use crate::error::Cause;

fn ty(schema: &Value) -> Option<&str> {
    schema.get("type").and_then(Value::as_str)
}

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool).unwrap_or(false)
}

fn int_or_string(schema: &Value) -> bool {
    schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool).unwrap_or(false)
}

/// Applies `default` values from the schema, recursively.
pub fn apply_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if !m.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        apply_defaults(child, s);
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in m.values_mut() {
                    apply_defaults(child, ap);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for it in items {
                    apply_defaults(it, is);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields the schema does not declare (unless it preserves unknown fields).
/// Returns the paths of pruned fields.
pub fn prune(value: &mut Value, schema: &Value, path: &str, pruned: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let ap = schema.get("additionalProperties");
            let keep_unknown = preserves(schema) || ap.is_some_and(|a| a.is_object() || a == &Value::Bool(true));
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let child_schema = props.and_then(|p| p.get(&k)).or(ap.filter(|a| a.is_object()));
                match child_schema {
                    // A null where the schema is not nullable is dropped (then defaulted).
                    Some(s)
                        if m.get(&k).is_some_and(Value::is_null)
                            && !s.get("nullable").and_then(Value::as_bool).unwrap_or(false) =>
                    {
                        m.remove(&k);
                    }
                    Some(s) => {
                        if let Some(c) = m.get_mut(&k) {
                            prune(c, s, &child_path, pruned);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        m.remove(&k);
                        pruned.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    prune(it, is, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validates `value` against `schema`, appending one cause per bad field.
pub fn validate(value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() {
        let nullable = schema.get("nullable").and_then(Value::as_bool).unwrap_or(false);
        if !nullable && (ty(schema).is_some() || int_or_string(schema)) {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    ty(schema).unwrap_or("string")
                ),
            ));
        }
        return;
    }
    if int_or_string(schema) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer-or-string: {}",
                    type_name(value),
                    show(value)
                ),
            ));
            return;
        }
    } else if let Some(t) = ty(schema) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
            "number" => value.is_number(),
            _ => true,
        };
        if !ok {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"{}\": {path} in body must be of type {t}: {}", type_name(value), show(value)),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(show).collect();
        causes.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {}: supported values: {}", show(value), list.join(", ")),
        ));
    }
    if let Some(n) = value.as_f64() {
        let excl_max = schema.get("exclusiveMaximum").and_then(Value::as_bool).unwrap_or(false);
        let excl_min = schema.get("exclusiveMinimum").and_then(Value::as_bool).unwrap_or(false);
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && (n > max || (excl_max && n == max))
        {
            let rel = if excl_max { "less than" } else { "less than or equal to" };
            causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {}: {path} in body should be {rel} {}", show(value), show(&schema["maximum"])),
            ));
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && (n < min || (excl_min && n == min))
        {
            let rel = if excl_min { "greater than" } else { "greater than or equal to" };
            causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {}: {path} in body should be {rel} {}", show(value), show(&schema["minimum"])),
            ));
        }
    }
    if let (Some(n), Some(m)) = (value.as_f64(), schema.get("multipleOf").and_then(Value::as_f64))
        && m > 0.0
        && (n / m).fract().abs() > 1e-9
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!(
                "Invalid value: {}: {path} in body should be a multiple of {}",
                show(value),
                show(&schema["multipleOf"])
            ),
        ));
    }
    if schema.get("format").and_then(Value::as_str) == Some("int32")
        && let Some(n) = value.as_i64()
        && i32::try_from(n).is_err()
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {n}: {path} in body must be of type int32: \"{n}\""),
        ));
    }
    combinators(value, schema, path, causes);
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            causes.push(Cause::new("FieldValueTooLong", path, format!("Too long: may not be more than {max} bytes")));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {}: {path} in body should be at least {min} chars long", show(value)),
            ));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(s) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {path} in body should match '{p}'", show(value)),
                )),
                _ => {}
            }
        }
    }
    match value {
        Value::Object(m) => {
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        let p = join(path, r);
                        causes.push(Cause::new("FieldValueRequired", p, "Required value"));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let ap = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in m {
                if let Some(s) = props.and_then(|p| p.get(k)).or(ap) {
                    validate(v, s, &join(path, k), causes);
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && m.len() as u64 > max
            {
                causes.push(Cause::new(
                    "TooMany",
                    path,
                    format!("Too many: {}: must have at most {max} items", m.len()),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                causes.push(Cause::new(
                    "TooMany",
                    path,
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {path} in body should have at least {min} items", items.len()),
                ));
            }
            if let Some(is) = schema.get("items") {
                for (i, it) in items.iter().enumerate() {
                    validate(it, is, &format!("{path}[{i}]"), causes);
                }
            }
            duplicates(items, schema, path, causes);
        }
        _ => {}
    }
}

/// `allOf`, `anyOf`, `oneOf` and `not` (value validations in structural schemas).
fn combinators(value: &Value, schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let passes = |sub: &Value| {
        let mut c = Vec::new();
        validate(value, sub, path, &mut c);
        c.is_empty()
    };
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for sub in all {
            validate(value, sub, path, causes);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(passes)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {path} in body must validate at least one schema (anyOf)", show(value)),
        ));
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array)
        && one.iter().filter(|s| passes(s)).count() != 1
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {path} in body must validate one and only one schema (oneOf)", show(value)),
        ));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {}: {path} in body must not validate the schema (not)", show(value)),
        ));
    }
}

/// Duplicate items of `x-kubernetes-list-type: set` lists and duplicate keys of `map` lists.
fn duplicates(items: &[Value], schema: &Value, path: &str, causes: &mut Vec<Cause>) {
    let keys: Option<Vec<String>> = match crate::resources::schema_list_type(schema) {
        crate::resources::ListType::Set => None,
        crate::resources::ListType::Map(k) => Some(k),
        crate::resources::ListType::Atomic => return,
    };
    let mut seen: Vec<Value> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let id = match &keys {
            None => it.clone(),
            Some(ks) => Value::Object(ks.iter().filter_map(|k| it.get(k).map(|v| (k.clone(), v.clone()))).collect()),
        };
        if seen.contains(&id) {
            let shown = match &keys {
                None => show(&id),
                Some(_) => format!("map[string]interface {{}}{id}"),
            };
            causes.push(Cause::new("FieldValueDuplicate", format!("{path}[{i}]"), format!("Duplicate value: {shown}")));
        } else {
            seen.push(id);
        }
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() { k.to_string() } else { format!("{path}.{k}") }
}

/// Defaults, prunes and validates a custom resource against its version's schema.
/// `metadata`, `apiVersion` and `kind` are left to the generic code. Returns the pruned paths.
pub fn process(obj: &mut Value, schema: &Value) -> (Vec<String>, Vec<Cause>) {
    let mut pruned = Vec::new();
    let mut causes = Vec::new();
    let Value::Object(m) = obj else {
        return (pruned, causes);
    };
    let metadata = m.remove("metadata");
    let api_version = m.remove("apiVersion");
    let kind = m.remove("kind");
    let mut body = Value::Object(std::mem::take(m));
    let mut root = schema.clone();
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove("metadata");
        props.remove("apiVersion");
        props.remove("kind");
    }
    if let Some(req) = root.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| !matches!(r.as_str(), Some("metadata" | "apiVersion" | "kind")));
    }
    prune(&mut body, &root, "", &mut pruned);
    apply_defaults(&mut body, &root);
    validate(&body, &root, "", &mut causes);
    let mut out: Map<String, Value> = match body {
        Value::Object(b) => b,
        _ => Map::new(),
    };
    if let Some(v) = api_version {
        out.insert("apiVersion".into(), v);
    }
    if let Some(v) = kind {
        out.insert("kind".into(), v);
    }
    if let Some(v) = metadata {
        out.insert("metadata".into(), v);
    }
    *obj = Value::Object(out);
    (pruned, causes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "port": {"x-kubernetes-int-or-string": true},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "note": {"type": "string", "nullable": true},
                    }
                },
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        })
    }

    #[test]
    fn defaults_and_prunes() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
            "spec": {"name": "ab", "junk": 1, "extra": {"any": true}, "port": "http", "note": null, "replicas": null}, "top": 1});
        let (pruned, causes) = process(&mut o, &schema());
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(o["spec"]["replicas"], 1);
        assert!(o["spec"].get("junk").is_none());
        assert!(o.get("top").is_none());
        assert_eq!(o["spec"]["extra"]["any"], true);
        assert_eq!(pruned, vec!["spec.junk".to_string(), "top".to_string()]);
        assert_eq!(o["metadata"]["name"], "a");
    }

    #[test]
    fn combinators_multiples_formats_and_duplicates() {
        let schema = json!({"type": "object", "properties": {
            "n": {"type": "integer", "multipleOf": 5, "format": "int32"},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true},
            "exclusive": {"type": "object", "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
        }});
        let mut c = Vec::new();
        validate(
            &json!({"n": 10, "tags": ["a", "b"], "ports": [{"name": "x"}], "either": "s", "exclusive": {"a": 1}}),
            &schema,
            "spec",
            &mut c,
        );
        assert!(c.is_empty(), "{c:?}");
        let mut c = Vec::new();
        validate(
            &json!({"n": 7, "tags": ["a", "a"], "ports": [{"name": "x"}, {"name": "x"}], "exclusive": {"a": 1, "b": 2}}),
            &schema,
            "spec",
            &mut c,
        );
        let fields: Vec<&str> = c.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.exclusive", "spec.n", "spec.ports[1]", "spec.tags[1]"]);
        let mut c = Vec::new();
        validate(&json!({"n": 5_000_000_000_i64}), &schema, "spec", &mut c);
        assert_eq!(c.len(), 1);
        assert!(c[0].message.contains("int32"));
    }

    #[test]
    fn one_cause_per_bad_field() {
        let mut o = json!({"spec": {"replicas": 11, "color": "pink", "port": 1.5}});
        let (_, causes) = process(&mut o, &schema());
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.name", "spec.color", "spec.port", "spec.replicas"]);
        assert!(causes[3].message.contains("less than or equal to 10"));
        let mut o = json!({"spec": {"name": "ABCDEFG", "replicas": "x"}});
        let (_, causes) = process(&mut o, &schema());
        let reasons: Vec<&str> = causes.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons, vec!["FieldValueTooLong", "FieldValueInvalid", "FieldValueTypeInvalid"]);
    }
}
