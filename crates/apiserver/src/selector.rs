//! Label selectors (equality, set-based, existence), field selectors and shard selectors
//! (`shardSelector`, KEP-5866: hash ranges of an object's UID or namespace).

use serde_json::Value;

use crate::error::{ApiResult, StatusError};
use crate::meta;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

fn parse_set(s: &str) -> ApiResult<Vec<String>> {
    let inner = s.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
        StatusError::bad_request(format!("unable to parse requirement: found '{s}', expected: '(' values ')'"))
    })?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let bad =
                || StatusError::bad_request(format!("unable to parse requirement: invalid label selector: {part:?}"));
            let req = if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::NotEq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                Req::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Req::Eq(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = part.find(" notin ") {
                Req::NotIn(part[..idx].trim().to_string(), parse_set(&part[idx + 7..])?)
            } else if let Some(idx) = part.find(" in ") {
                Req::In(part[..idx].trim().to_string(), parse_set(&part[idx + 4..])?)
            } else {
                Req::Exists(part.trim().to_string())
            };
            let key = match &req {
                Req::Eq(k, _)
                | Req::NotEq(k, _)
                | Req::In(k, _)
                | Req::NotIn(k, _)
                | Req::Exists(k)
                | Req::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the selector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = meta::labels(obj);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector, with the request's shard selector if the server honours it (both
/// select on an object's own fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
    shards: Vec<ShardRange>,
}

/// One `shardRange(object.FIELD, 'START', 'END')`: the 64-bit FNV-1a hash of the field's
/// value is in [START, END).
#[derive(Debug, Clone, PartialEq)]
struct ShardRange {
    field: &'static str,
    start: u128,
    end: u128,
}

/// Parses a `shardSelector`: `shardRange(object.metadata.uid, '0x…', '0x…')`, or several joined
/// by `||`, over `object.metadata.uid` or `object.metadata.namespace`, as the API server does.
fn parse_shards(s: &str) -> ApiResult<Vec<ShardRange>> {
    let bad = |why: &str| StatusError::bad_request(format!("invalid shardSelector {s:?}: {why}"));
    let mut ranges = Vec::new();
    for part in s.split("||").map(str::trim).filter(|p| !p.is_empty()) {
        let args = part
            .strip_prefix("shardRange(")
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| bad("expected shardRange(object.FIELD, 'HEX', 'HEX')"))?;
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        let [field, start, end] = args[..] else { return Err(bad("shardRange takes three arguments")) };
        let field = match field {
            "object.metadata.uid" => "metadata.uid",
            "object.metadata.namespace" => "metadata.namespace",
            _ => return Err(bad("only object.metadata.uid and object.metadata.namespace are supported")),
        };
        let hex = |h: &str| {
            let digits = h.strip_prefix('\'').and_then(|h| h.strip_suffix('\'')).and_then(|h| h.strip_prefix("0x"));
            digits.and_then(|d| u128::from_str_radix(d, 16).ok()).filter(|v| *v <= 1 << 64)
        };
        let (Some(start), Some(end)) = (hex(start), hex(end)) else {
            return Err(bad("bounds are quoted hex strings '0x…' within [0x0, 0x10000000000000000]"));
        };
        if start >= end {
            return Err(bad("the start must be below the end"));
        }
        ranges.push(ShardRange { field, start, end });
    }
    Ok(ranges)
}

/// 64-bit FNV-1a (Go's `hash/fnv` `New64a`), the shard hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Fields every resource supports in field selectors.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Job" => &["status.successful"],
        "Pod" => &["spec.nodeName", "status.phase", "spec.serviceAccountName"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax, rejecting fields `kind` does not support.
    pub fn parse(s: &str, kind: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for part in split_top_level(s) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(StatusError::bad_request(format!("invalid selector: '{s}'; can't understand '{part}'")));
            };
            let k = k.trim();
            if !COMMON_FIELDS.contains(&k) && !kind_fields(kind).contains(&k) {
                return Err(StatusError::bad_request(format!("field label not supported: {k}")));
            }
            out.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs: out, shards: Vec::new() })
    }

    /// Adds the shard selector `s` (`shardSelector`; empty selects every shard).
    pub fn with_shards(mut self, s: &str) -> ApiResult<Self> {
        self.shards = parse_shards(s)?;
        Ok(self)
    }

    /// Whether a shard selector was given.
    pub fn sharded(&self) -> bool {
        !self.shards.is_empty()
    }

    /// Whether the selector is empty.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty() && self.shards.is_empty()
    }

    /// Whether an object satisfies every requirement, and one shard range if any is given.
    pub fn matches(&self, obj: &Value) -> bool {
        let value = |k: &str| match meta::lookup(obj, k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let in_shard = || {
            self.shards.iter().any(|r| {
                let hash = u128::from(fnv1a(value(r.field).as_bytes()));
                r.start <= hash && hash < r.end
            })
        };
        self.reqs.iter().all(|(k, eq, v)| (value(k) == *v) == *eq) && (self.shards.is_empty() || in_shard())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn equality_set_and_existence() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (back)", false),
            ("missing notin (x)", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&o), want, "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a", "ConfigMap").unwrap().matches(&o));
        assert!(!FieldSelector::parse("metadata.namespace!=ns", "ConfigMap").unwrap().matches(&o));
        assert_eq!(FieldSelector::parse("spec.foo=x", "ConfigMap").unwrap_err().code, 400);
    }

    #[test]
    fn shard_selectors_pick_hash_ranges() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: in the upper half, not the lower.
        let obj = json!({"metadata": {"name": "x", "uid": "a", "namespace": "default"}});
        let upper = "shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')";
        let lower = "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')";
        let select = |s: &str| FieldSelector::parse("", "ConfigMap").unwrap().with_shards(s).unwrap();
        assert!(select(upper).matches(&obj));
        assert!(!select(lower).matches(&obj));
        assert!(select(&format!("{lower} || {upper}")).matches(&obj));
        assert!(select("").matches(&obj) && !select("").sharded());
        for bad in [
            "shardRange(object.metadata.name, '0x0', '0x1')",
            "shardRange(object.metadata.uid, '0x2', '0x1')",
            "range(x)",
        ] {
            assert!(FieldSelector::default().with_shards(bad).is_err(), "{bad} accepted");
        }
    }
}
