//! Example policy plugin: every container of a Deployment, StatefulSet, DaemonSet or Job must
//! pin its image to a tag other than `latest` (or to a digest), so rollouts are reproducible.
//!
//! Settings (the `[settings]` of `deny-latest-tag.toml`, or `wasmop eval --policy-settings`):
//! `deniedTags = ["latest", "edge"]` names the floating tags to refuse (default `["latest"]`).

use serde_json::Value;
use wasmop_sdk::{Gvk, Policy, PolicyMetadata, Verdict};

/// The policy.
pub struct DenyLatestTag;

impl Policy for DenyLatestTag {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata {
            name: "deny-latest-tag".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            applies_to: vec![
                Gvk::new("apps", "v1", "Deployment"),
                Gvk::new("apps", "v1", "StatefulSet"),
                Gvk::new("apps", "v1", "DaemonSet"),
                Gvk::new("batch", "v1", "Job"),
            ],
        }
    }

    fn review(_parent: &Value, child: Value, settings: Option<&str>) -> Verdict {
        let denied = match denied_tags(settings) {
            Ok(denied) => denied,
            Err(message) => return Verdict::Deny(message),
        };
        let pod_spec = &child["spec"]["template"]["spec"];
        let containers =
            ["initContainers", "containers"].iter().flat_map(|field| pod_spec[field].as_array().into_iter().flatten());
        for container in containers {
            let image = container["image"].as_str().unwrap_or("");
            if !is_pinned(image, &denied) {
                let name = container["name"].as_str().unwrap_or("?");
                return Verdict::Deny(format!(
                    "container {name:?} uses image {image:?}; pin a version tag (e.g. nginx:1.27), not one of {denied:?}"
                ));
            }
        }
        Verdict::Allow
    }
}

/// The floating tags to refuse, from the settings (default `latest`).
fn denied_tags(settings: Option<&str>) -> Result<Vec<String>, String> {
    let Some(raw) = settings else { return Ok(vec!["latest".into()]) };
    let settings: Value =
        serde_json::from_str(raw).map_err(|e| format!("deny-latest-tag: its settings are not valid JSON: {e}"))?;
    match &settings["deniedTags"] {
        Value::Null => Ok(vec!["latest".into()]),
        Value::Array(tags) if tags.iter().all(Value::is_string) => {
            Ok(tags.iter().filter_map(Value::as_str).map(str::to_string).collect())
        }
        other => Err(format!("deny-latest-tag: settings.deniedTags must be a list of tags, got {other}")),
    }
}

/// Whether an image reference names a digest or a tag that is not among `denied`.
pub fn is_pinned(image: &str, denied: &[String]) -> bool {
    if image.contains('@') {
        return true;
    }
    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => !tag.is_empty() && !denied.iter().any(|d| d == tag),
        None => false,
    }
}

wasmop_sdk::export_policy!(DenyLatestTag);

#[cfg(test)]
mod tests {
    use super::{denied_tags, is_pinned};

    #[test]
    fn tags_and_digests() {
        let latest = ["latest".to_string()];
        assert!(is_pinned("nginx:1.27", &latest));
        assert!(is_pinned("registry:5000/team/app:v2", &latest));
        assert!(is_pinned("nginx@sha256:abc", &latest));
        assert!(!is_pinned("nginx", &latest));
        assert!(!is_pinned("nginx:latest", &latest));
        assert!(!is_pinned("registry:5000/team/app", &latest));
    }

    #[test]
    fn settings_name_the_denied_tags() {
        assert_eq!(denied_tags(None).unwrap(), ["latest"]);
        let edge = denied_tags(Some(r#"{"deniedTags": ["edge"]}"#)).unwrap();
        assert!(!is_pinned("app:edge", &edge) && is_pinned("app:latest", &edge));
        assert!(denied_tags(Some(r#"{"deniedTags": 3}"#)).unwrap_err().contains("must be a list"));
    }
}
