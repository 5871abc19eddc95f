//! Decoding of the Kubernetes protobuf request envelope for the few kinds kubectl's typed
//! `create` commands send that way (`kubectl create namespace|configmap|secret|serviceaccount`).

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::{ApiResult, StatusError};

const MAGIC: &[u8] = b"k8s\x00";

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skip,
}

fn bad(msg: &str) -> StatusError {
    StatusError::bad_request(format!("invalid protobuf body: {msg}"))
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> ApiResult<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> ApiResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| bad("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> ApiResult<Option<(u64, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Skip
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Skip
            }
            _ => return Err(bad("unsupported wire type")),
        };
        Ok(Some((num, f)))
    }
}

fn string(b: &[u8]) -> ApiResult<String> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8"))
}

/// A map entry (key = 1, value = 2).
fn entry(b: &[u8], bytes_value: bool) -> ApiResult<(String, Value)> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), json!(""));
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) if bytes_value => v = json!(base64::engine::general_purpose::STANDARD.encode(x)),
            (2, Field::Bytes(x)) => v = json!(string(x)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn owner_ref(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => drop(m.insert("kind".into(), json!(string(x)?))),
            (3, Field::Bytes(x)) => insert_str(&mut m, "name", x)?,
            (4, Field::Bytes(x)) => drop(m.insert("uid".into(), json!(string(x)?))),
            (5, Field::Bytes(x)) => drop(m.insert("apiVersion".into(), json!(string(x)?))),
            (6, Field::Varint(v)) => drop(m.insert("controller".into(), json!(v != 0))),
            (7, Field::Varint(v)) => drop(m.insert("blockOwnerDeletion".into(), json!(v != 0))),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn insert_str(m: &mut Map<String, Value>, k: &str, x: &[u8]) -> ApiResult<()> {
    if !x.is_empty() {
        m.insert(k.into(), json!(string(x)?));
    }
    Ok(())
}

fn object_meta(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut owners = Vec::new();
    let mut finalizers = Vec::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => insert_str(&mut m, "name", x)?,
            (2, Field::Bytes(x)) => insert_str(&mut m, "generateName", x)?,
            (3, Field::Bytes(x)) => insert_str(&mut m, "namespace", x)?,
            (6, Field::Bytes(x)) => insert_str(&mut m, "resourceVersion", x)?,
            (11, Field::Bytes(x)) => {
                let (k, v) = entry(x, false)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = entry(x, false)?;
                annotations.insert(k, v);
            }
            (13, Field::Bytes(x)) => owners.push(owner_ref(x)?),
            (14, Field::Bytes(x)) => finalizers.push(json!(string(x)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), Value::Array(owners));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn string_map(b: &[u8], out: &mut Map<String, Value>) -> ApiResult<()> {
    let (k, v) = entry(b, false)?;
    out.insert(k, v);
    Ok(())
}

fn label_selector(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(b);
    let mut labels = Map::new();
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Bytes(x)) = (n, f) {
            string_map(x, &mut labels)?;
        }
    }
    Ok(json!({"matchLabels": labels}))
}

fn container(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let (mut command, mut args, mut ports, mut env) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => insert_str(&mut m, "name", x)?,
            (2, Field::Bytes(x)) => insert_str(&mut m, "image", x)?,
            (3, Field::Bytes(x)) => command.push(json!(string(x)?)),
            (4, Field::Bytes(x)) => args.push(json!(string(x)?)),
            (6, Field::Bytes(x)) => {
                let mut p = Reader::new(x);
                let mut port = Map::new();
                while let Some((n, f)) = p.next()? {
                    match (n, f) {
                        (1, Field::Bytes(y)) => insert_str(&mut port, "name", y)?,
                        (3, Field::Varint(v)) => drop(port.insert("containerPort".into(), json!(v))),
                        (4, Field::Bytes(y)) => insert_str(&mut port, "protocol", y)?,
                        _ => {}
                    }
                }
                ports.push(Value::Object(port));
            }
            (7, Field::Bytes(x)) => {
                let mut e = Reader::new(x);
                let mut var = Map::new();
                while let Some((n, f)) = e.next()? {
                    match (n, f) {
                        (1, Field::Bytes(y)) => insert_str(&mut var, "name", y)?,
                        (2, Field::Bytes(y)) => insert_str(&mut var, "value", y)?,
                        _ => {}
                    }
                }
                env.push(Value::Object(var));
            }
            (14, Field::Bytes(x)) => insert_str(&mut m, "imagePullPolicy", x)?,
            _ => {}
        }
    }
    for (k, v) in [("command", command), ("args", args), ("ports", ports), ("env", env)] {
        if !v.is_empty() {
            m.insert(k.into(), Value::Array(v));
        }
    }
    Ok(Value::Object(m))
}

fn pod_template(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(b);
    let mut t = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(x)) => drop(t.insert("metadata".into(), object_meta(x)?)),
            (2, Field::Bytes(x)) => {
                let mut p = Reader::new(x);
                let mut containers = Vec::new();
                let mut spec = Map::new();
                while let Some((n, f)) = p.next()? {
                    match (n, f) {
                        (2, Field::Bytes(y)) => containers.push(container(y)?),
                        (3, Field::Bytes(y)) => insert_str(&mut spec, "restartPolicy", y)?,
                        (8, Field::Bytes(y)) => insert_str(&mut spec, "serviceAccountName", y)?,
                        _ => {}
                    }
                }
                spec.insert("containers".into(), Value::Array(containers));
                t.insert("spec".into(), Value::Object(spec));
            }
            _ => {}
        }
    }
    Ok(Value::Object(t))
}

/// The fields of a DeploymentSpec that `kubectl create deployment` sets.
fn deployment_spec(b: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(b);
    let mut spec = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Varint(v)) => drop(spec.insert("replicas".into(), json!(v as i32))),
            (2, Field::Bytes(x)) => drop(spec.insert("selector".into(), label_selector(x)?)),
            (3, Field::Bytes(x)) => drop(spec.insert("template".into(), pod_template(x)?)),
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

fn body(kind: &str, raw: &[u8]) -> ApiResult<Value> {
    let mut r = Reader::new(raw);
    let mut obj = Map::new();
    let mut maps: [Map<String, Value>; 3] = Default::default();
    while let Some((n, f)) = r.next()? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(x)) => drop(obj.insert("metadata".into(), object_meta(x)?)),
            ("ConfigMap", 2, Field::Bytes(x)) => {
                let (k, v) = entry(x, false)?;
                maps[0].insert(k, v);
            }
            ("ConfigMap", 3, Field::Bytes(x)) => {
                let (k, v) = entry(x, true)?;
                maps[1].insert(k, v);
            }
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                drop(obj.insert("immutable".into(), json!(v != 0)))
            }
            ("Secret", 2, Field::Bytes(x)) => {
                let (k, v) = entry(x, true)?;
                maps[0].insert(k, v);
            }
            ("Secret", 3, Field::Bytes(x)) => drop(obj.insert("type".into(), json!(string(x)?))),
            ("Secret", 4, Field::Bytes(x)) => {
                let (k, v) = entry(x, false)?;
                maps[2].insert(k, v);
            }
            ("Deployment", 2, Field::Bytes(x)) => drop(obj.insert("spec".into(), deployment_spec(x)?)),
            ("Namespace", 2, Field::Bytes(x)) => {
                let mut s = Reader::new(x);
                let mut fins = Vec::new();
                while let Some((n, f)) = s.next()? {
                    if let (1, Field::Bytes(y)) = (n, f) {
                        fins.push(json!(string(y)?));
                    }
                }
                obj.insert("spec".into(), json!({"finalizers": fins}));
            }
            _ => {}
        }
    }
    let [data, binary, string_data] = maps;
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    Ok(Value::Object(obj))
}

/// Decodes a protobuf-encoded request body into JSON, for the kinds listed in the module docs.
pub fn decode(raw: &[u8]) -> ApiResult<Value> {
    let rest = raw.strip_prefix(MAGIC).ok_or_else(|| bad("missing k8s envelope"))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut inner) = (String::new(), String::new(), None);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next()? {
                    match (n, f) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => inner = Some(x),
            _ => {}
        }
    }
    if kind.ends_with("Review") {
        // Reviews are answered from their kind alone (this server authorizes everything).
        return Ok(json!({"apiVersion": api_version, "kind": kind, "spec": {}}));
    }
    if !matches!(kind.as_str(), "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount" | "Deployment") {
        return Err(StatusError::unsupported_media_type(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (protobuf is supported only for Namespace, ConfigMap, Secret, ServiceAccount and Deployment; got {kind})"
        )));
    }
    let mut obj = body(&kind, inner.unwrap_or_default())?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let meta = [field(1, b"cm"), field(11, &[field(1, b"app"), field(2, b"web")].concat())].concat();
        let raw = [field(1, &meta), field(2, &[field(1, b"k"), field(2, b"v")].concat())].concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &raw)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"app": "web"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn other_kinds_are_415() {
        let tm = [field(1, b"batch/v1"), field(2, b"Job")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
    }
}
