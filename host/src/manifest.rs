//! Reading and writing Kubernetes manifests: multi-document YAML (or JSON) files of objects.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A manifest file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{path} is not valid YAML: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with the location.
        reason: String,
    },
    /// A document is not a Kubernetes object.
    #[error("{path}, document {index}: {reason}")]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// 1-based index of the document.
        index: usize,
        /// What is missing.
        reason: String,
    },
}

/// Reads every object of a multi-document YAML file; empty documents are skipped. Each must be
/// a mapping with `apiVersion`, `kind` and `metadata.name`.
pub fn read_objects(path: &Path) -> Result<Vec<Value>, ManifestError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
    parse_objects(&text, path)
}

/// Parses the objects of a multi-document YAML text; `path` is only used in errors.
pub fn parse_objects(text: &str, path: &Path) -> Result<Vec<Value>, ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| ManifestError::Parse { path: path.to_path_buf(), reason: e.to_string() })?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, doc)| {
            let bad = |reason: &str| ManifestError::NotAnObject {
                path: path.to_path_buf(),
                index: i + 1,
                reason: reason.into(),
            };
            if !doc.is_object() {
                return Err(bad("expected a Kubernetes object (a mapping)"));
            }
            if !doc["apiVersion"].is_string() || !doc["kind"].is_string() {
                return Err(bad("apiVersion and kind are required"));
            }
            if !doc["metadata"]["name"].is_string() {
                return Err(bad("metadata.name is required"));
            }
            Ok(doc)
        })
        .collect()
}

/// Renders objects as multi-document YAML, each document introduced by `---`.
pub fn to_yaml_documents(objects: &[Value]) -> String {
    let mut out = String::new();
    for obj in objects {
        out.push_str("---\n");
        out.push_str(&to_yaml(obj));
    }
    out
}

/// Renders one value as YAML.
pub fn to_yaml(value: &Value) -> String {
    // Serialising a serde_json::Value cannot fail: every key is a string.
    let mut text = serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_multi_document_yaml() {
        let objs = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}),
        ];
        let text = to_yaml_documents(&objs);
        assert_eq!(parse_objects(&text, Path::new("x.yaml")).unwrap(), objs);
    }

    #[test]
    fn names_file_and_document_on_error() {
        let err = parse_objects("---\nkind: ConfigMap\n", Path::new("bad.yaml")).unwrap_err();
        assert_eq!(err.to_string(), "bad.yaml, document 1: apiVersion and kind are required");
    }
}
