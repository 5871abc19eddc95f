//! Example policy plugin: every container of a Deployment, StatefulSet, DaemonSet or Job must
//! pin its image to a tag other than `latest` (or to a digest), so rollouts are reproducible.

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

    fn review(_parent: &Value, child: Value, _settings: Option<&str>) -> Verdict {
        let pod_spec = &child["spec"]["template"]["spec"];
        let containers =
            ["initContainers", "containers"].iter().flat_map(|field| pod_spec[field].as_array().into_iter().flatten());
        for container in containers {
            let image = container["image"].as_str().unwrap_or("");
            if !is_pinned(image) {
                let name = container["name"].as_str().unwrap_or("?");
                return Verdict::Deny(format!(
                    "container {name:?} uses image {image:?}; pin a version tag (e.g. nginx:1.27) instead of latest"
                ));
            }
        }
        Verdict::Allow
    }
}

/// Whether an image reference names a digest or a tag other than `latest`.
pub fn is_pinned(image: &str) -> bool {
    if image.contains('@') {
        return true;
    }
    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => !tag.is_empty() && tag != "latest",
        None => false,
    }
}

wasmop_sdk::export_policy!(DenyLatestTag);

#[cfg(test)]
mod tests {
    use super::is_pinned;

    #[test]
    fn tags_and_digests() {
        assert!(is_pinned("nginx:1.27"));
        assert!(is_pinned("registry:5000/team/app:v2"));
        assert!(is_pinned("nginx@sha256:abc"));
        assert!(!is_pinned("nginx"));
        assert!(!is_pinned("nginx:latest"));
        assert!(!is_pinned("registry:5000/team/app"));
    }
}
