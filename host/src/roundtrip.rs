//! Offline round-trip check of a plugin's conversion: for every object and every other version
//! B its CRD defines, A → B → A must give back A exactly. Objects come from files and from a
//! generator that fills each version's schema with varied values, so a field the author forgot
//! is caught before deploy.

use serde_json::{Map, Value, json};

use crate::plugin::OperatorPlugin;

/// One round trip that did not give back the original.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// `Kind namespace/name (apiVersion)` of the original.
    pub object: String,
    /// The version it went through.
    pub via: String,
    /// Where the result first differs (a JSON pointer) and how, or the conversion error.
    pub difference: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}: {}", self.object, self.via, self.difference)
    }
}

/// Round-trips each object through every other version of the plugin's CRD.
pub fn check(plugin: &OperatorPlugin, objects: &[Value]) -> Vec<Failure> {
    let versions: Vec<String> = plugin.metadata().crd_versions().into_iter().map(|v| v.name).collect();
    let mut failures = Vec::new();
    for original in objects {
        let from = version_of(original);
        for via in versions.iter().filter(|v| **v != from) {
            let back = plugin.convert(original, via).and_then(|there| plugin.convert(&there, &from));
            let difference = match back {
                Ok(back) => first_difference("", original, &back),
                Err(e) => Some(e.to_string()),
            };
            if let Some(difference) = difference {
                failures.push(Failure { object: describe(original), via: via.clone(), difference });
            }
        }
    }
    failures
}

/// `count` objects per version of the plugin's CRD, generated from each version's schema with a
/// fixed seed (the same objects every run).
pub fn generate(plugin: &OperatorPlugin, count: usize) -> Vec<Value> {
    let meta = plugin.metadata();
    let Some(crd) = &meta.crd else { return Vec::new() };
    let mut rng = Rng::seeded(0x9e37_79b9_7f4a_7c15);
    let mut objects = Vec::new();
    for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
        let schema = &version["schema"]["openAPIV3Schema"]["properties"];
        let api_version = format!("{}/{}", meta.parent.group, version["name"].as_str().unwrap_or(""));
        for i in 0..count {
            let mut obj = json!({
                "apiVersion": api_version, "kind": meta.parent.kind,
                "metadata": {"name": format!("gen-{i}"), "namespace": "default", "uid": format!("uid-{i}"), "generation": 1},
            });
            for field in ["spec", "status"] {
                if schema.get(field).is_some() {
                    obj[field] = rng.value(&schema[field], 0);
                }
            }
            if rng.below(2) == 0 {
                obj["metadata"]["labels"] = json!({"team": rng.word(1, 6)});
            }
            objects.push(obj);
        }
    }
    objects
}

fn version_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    api_version.rsplit('/').next().unwrap_or(api_version).to_string()
}

fn describe(obj: &Value) -> String {
    format!(
        "{} {}/{} ({})",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("?"),
        obj["apiVersion"].as_str().unwrap_or("?")
    )
}

/// The first place `b` differs from `a`, as `pointer: was X, came back Y`.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (va, vb) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                let present = (x.contains_key(k), y.contains_key(k));
                if present.0 != present.1 {
                    return Some(format!("{path}/{k}: was {}, came back {}", shown(x.get(k)), shown(y.get(k))));
                }
                first_difference(&format!("{path}/{k}"), va, vb)
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (va, vb))| first_difference(&format!("{path}/{i}"), va, vb))
        }
        _ if a == b => None,
        _ => Some(format!("{}: was {a}, came back {b}", if path.is_empty() { "/" } else { path })),
    }
}

fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "absent".to_string(), Value::to_string)
}

/// A deterministic generator of schema-shaped values (xorshift, seeded: the same every run).
struct Rng(rand_xorshift::XorShiftRng);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(rand_core::SeedableRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        rand_core::Rng::next_u64(&mut self.0) % n.max(1)
    }

    fn word(&mut self, min: u64, max: u64) -> String {
        let len = min + self.below(max.saturating_sub(min) + 1);
        (0..len).map(|_| char::from(b'a' + self.below(26) as u8)).collect()
    }

    /// A value that fits `schema` (types, enums, ranges, lengths; not patterns).
    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        if let Some(choices) = schema["enum"].as_array().filter(|c| !c.is_empty()) {
            return choices[self.below(choices.len() as u64) as usize].clone();
        }
        match schema["type"].as_str().unwrap_or("object") {
            "string" if schema["format"] == "date-time" => json!("2026-01-02T03:04:05Z"),
            "string" => {
                let min = schema["minLength"].as_u64().unwrap_or(0);
                json!(self.word(min.max(1), schema["maxLength"].as_u64().unwrap_or(12).min(12).max(min.max(1))))
            }
            "integer" | "number" => {
                let min = schema["minimum"].as_f64().unwrap_or(0.0) as i64;
                let max = schema["maximum"].as_f64().unwrap_or(min as f64 + 100.0) as i64;
                json!(min + self.below((max - min + 1).max(1) as u64) as i64)
            }
            "boolean" => json!(self.below(2) == 0),
            "array" if depth < 4 => {
                let n = self.below(3);
                Value::Array((0..n).map(|_| self.value(&schema["items"], depth + 1)).collect())
            }
            "array" => json!([]),
            _ => self.object(schema, depth),
        }
    }

    fn object(&mut self, schema: &Value, depth: usize) -> Value {
        let required: Vec<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut out = Map::new();
        for (key, sub) in schema["properties"].as_object().into_iter().flatten() {
            if depth < 4 && (required.contains(&key.as_str()) || self.below(3) > 0) {
                out.insert(key.clone(), self.value(sub, depth + 1));
            }
        }
        if schema["x-kubernetes-preserve-unknown-fields"] == true && self.below(2) == 0 {
            out.insert(self.word(3, 8), json!(self.word(1, 8)));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_field() {
        let a = json!({"spec": {"workload": {"image": "a", "port": 80}}});
        let b = json!({"spec": {"workload": {"image": "a"}}});
        assert_eq!(first_difference("", &a, &b).unwrap(), "/spec/workload/port: was 80, came back absent");
        assert_eq!(first_difference("", &a, &a), None);
    }

    #[test]
    fn generated_values_fit_the_schema() {
        let schema = json!({"type": "object", "required": ["n"], "properties": {
            "n": {"type": "integer", "minimum": 5, "maximum": 7},
            "s": {"type": "string", "enum": ["x", "y"]},
        }});
        let mut rng = Rng::seeded(42);
        for _ in 0..50 {
            let v = rng.value(&schema, 0);
            assert!((5..=7).contains(&v["n"].as_i64().unwrap()), "{v}");
            assert!(v.get("s").is_none_or(|s| s == "x" || s == "y"), "{v}");
        }
    }
}
