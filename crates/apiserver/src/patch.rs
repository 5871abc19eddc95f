//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

use serde_json::{Map, Value};

use crate::error::{ApiResult, StatusError};
use crate::resources::ListType;

/// Applies an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn invalid_patch(msg: impl Into<String>) -> StatusError {
    StatusError::new(422, "Invalid", msg)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn parse_pointer(path: &str) -> ApiResult<Vec<String>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path.strip_prefix('/').ok_or_else(|| invalid_patch(format!("invalid JSON pointer {path:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn get_path<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> ApiResult<&'a mut Value> {
    let mut cur = doc;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(seg).ok_or_else(|| invalid_patch(format!("doc is missing path: {seg}")))?,
            Value::Array(a) => {
                let i: usize = seg.parse().map_err(|_| invalid_patch(format!("invalid array index {seg}")))?;
                a.get_mut(i).ok_or_else(|| invalid_patch(format!("array index {i} out of bounds")))?
            }
            _ => return Err(invalid_patch(format!("doc is missing path: {seg}"))),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> ApiResult<()> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| invalid_patch(format!("invalid array index {last}")))?;
            if i > a.len() {
                return Err(invalid_patch(format!("array index {i} out of bounds")));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(invalid_patch("cannot add to a scalar")),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> ApiResult<Value> {
    let Some((last, parent)) = path.split_last() else {
        return Err(invalid_patch("cannot remove the whole document"));
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| invalid_patch(format!("unable to remove nonexistent key: {last}: missing value"))),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| invalid_patch(format!("invalid array index {last}")))?;
            if i >= a.len() {
                return Err(invalid_patch(format!("array index {i} out of bounds")));
            }
            Ok(a.remove(i))
        }
        _ => Err(invalid_patch("cannot remove from a scalar")),
    }
}

/// Applies an RFC 6902 JSON patch. A `test` of a missing path compares equal to `null`,
/// as the real API server's implementation does.
pub fn json_patch(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops = patch.as_array().ok_or_else(|| StatusError::bad_request("json patch must be an array of operations"))?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = parse_pointer(op.get("path").and_then(Value::as_str).unwrap_or(""))?;
        let value =
            || op.get("value").cloned().ok_or_else(|| invalid_patch(format!("missing value for {name} operation")));
        match name {
            "add" => add(doc, &path, value()?)?,
            "remove" => {
                remove(doc, &path)?;
            }
            "replace" => {
                let v = value()?;
                if get_path(doc, &path).is_none() {
                    return Err(invalid_patch(format!(
                        "replace operation does not apply: doc is missing key: {}",
                        op.get("path").and_then(Value::as_str).unwrap_or("")
                    )));
                }
                remove(doc, &path)?;
                add(doc, &path, v)?;
            }
            "test" => {
                let want = value()?;
                let actual = get_path(doc, &path).cloned().unwrap_or(Value::Null);
                if actual != want {
                    return Err(invalid_patch(format!(
                        "the server rejected our request due to an error in our request: testing value {} failed: test failed",
                        op.get("path").and_then(Value::as_str).unwrap_or("")
                    )));
                }
            }
            "move" | "copy" => {
                let from = parse_pointer(op.get("from").and_then(Value::as_str).unwrap_or(""))?;
                let v = if name == "move" {
                    remove(doc, &from)?
                } else {
                    get_path(doc, &from).cloned().ok_or_else(|| invalid_patch("copy from a missing path"))?
                };
                add(doc, &path, v)?;
            }
            other => {
                return Err(StatusError::bad_request(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(())
}

/// The strategic-merge key of a list item: the first list-map key only (the
/// `patchMergeKey`, e.g. `port` for Service ports, `containerPort` for container ports).
fn key_of(item: &Value, keys: &[String]) -> Option<Vec<Value>> {
    let obj = item.as_object()?;
    let k: Vec<Value> = keys.iter().take(1).map(|k| obj.get(k).cloned().unwrap_or(Value::Null)).collect();
    k.iter().any(|v| !v.is_null()).then_some(k)
}

/// Applies a strategic merge patch. `list_type` tells how the list at a field path merges.
pub fn strategic_merge(
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
    list_type: &dyn Fn(&[String]) -> ListType,
) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Some(order) = v.as_array() {
                orders.push((field, order));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(live)), Some(del)) = (t.get_mut(field), v.as_array()) {
                live.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Object(_) => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v, path, list_type);
                }
            }
            Value::Array(items) => match list_type(path) {
                ListType::Map(keys) => {
                    let live = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                    if !live.is_array() {
                        *live = Value::Array(Vec::new());
                    }
                    if let Value::Array(live) = live {
                        for item in items {
                            let Some(key) = key_of(item, &keys) else {
                                live.push(item.clone());
                                continue;
                            };
                            let pos = live.iter().position(|l| key_of(l, &keys).as_ref() == Some(&key));
                            let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                            match (pos, delete) {
                                (Some(i), true) => {
                                    live.remove(i);
                                }
                                (None, true) => {}
                                (Some(i), false) => strategic_merge(&mut live[i], item, path, list_type),
                                (None, false) => {
                                    let mut fresh = Value::Null;
                                    strategic_merge(&mut fresh, item, path, list_type);
                                    live.push(fresh);
                                }
                            }
                        }
                    }
                }
                ListType::Set => {
                    let live = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(live) = live {
                        for item in items {
                            if !live.contains(item) {
                                live.push(item.clone());
                            }
                        }
                    } else {
                        *live = v.clone();
                    }
                }
                ListType::Atomic => {
                    t.insert(k.clone(), v.clone());
                }
            },
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    // `$setElementOrder/<field>`: the listed items first, in that order; others keep theirs.
    for (field, order) in orders {
        path.push(field.to_string());
        let keys = match list_type(path) {
            ListType::Map(keys) => Some(keys),
            _ => None,
        };
        path.pop();
        if let Some(Value::Array(live)) = t.get_mut(field) {
            let rank = |item: &Value| {
                order.iter().position(|o| match &keys {
                    Some(ks) => key_of(o, ks).is_some() && key_of(o, ks) == key_of(item, ks),
                    None => o == item,
                })
            };
            let mut indexed: Vec<(usize, Value)> =
                live.drain(..).enumerate().map(|(i, v)| (rank(&v).unwrap_or(order.len() + i), v)).collect();
            indexed.sort_by_key(|(r, _)| *r);
            live.extend(indexed.into_iter().map(|(_, v)| v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls() {
        let mut d = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut d, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(d, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_test_of_missing_path_equals_null() {
        let mut d = json!({"metadata": {"name": "x"}});
        json_patch(
            &mut d,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["a"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
            ]),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b"]));
        let err =
            json_patch(&mut d, &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}])).unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn json_patch_replace_remove_move_and_escapes() {
        let mut d = json!({"a/b": 1, "x": [1, 2, 3]});
        json_patch(
            &mut d,
            &json!([
                {"op": "replace", "path": "/a~1b", "value": 2},
                {"op": "remove", "path": "/x/0"},
                {"op": "move", "from": "/a~1b", "path": "/y"},
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"x": [2, 3], "y": 2}));
        assert!(json_patch(&mut d, &json!([{"op": "replace", "path": "/nope", "value": 1}])).is_err());
    }

    #[test]
    fn strategic_merge_directives() {
        let lt = |p: &[String]| match p.last().map(String::as_str) {
            Some("containers") => ListType::Map(vec!["name".into()]),
            Some("finalizers") => ListType::Set,
            _ => ListType::Atomic,
        };
        let mut d = json!({"finalizers": ["a", "b", "c"], "containers": [{"name": "x"}, {"name": "y"}]});
        strategic_merge(
            &mut d,
            &json!({
                "$deleteFromPrimitiveList/finalizers": ["b"],
                "$setElementOrder/containers": [{"name": "z"}, {"name": "y"}, {"name": "x"}],
                "containers": [{"name": "z", "image": "z"}],
            }),
            &mut Vec::new(),
            &lt,
        );
        assert_eq!(d["finalizers"], json!(["a", "c"]));
        assert_eq!(d["containers"], json!([{"name": "z", "image": "z"}, {"name": "y"}, {"name": "x"}]));
    }

    #[test]
    fn strategic_merge_by_container_name() {
        let lt = |p: &[String]| {
            if p.last().map(String::as_str) == Some("containers") {
                ListType::Map(vec!["name".into()])
            } else {
                ListType::Atomic
            }
        };
        let mut d = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ]}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"containers": [
                {"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"},
                {"name": "a", "$patch": "delete"}
            ]}}),
            &mut Vec::new(),
            &lt,
        );
        assert_eq!(d, json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}}));
    }
}
