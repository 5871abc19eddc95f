//! Which kinds the cluster serves: a plugin's parent and child kinds looked up in discovery.

use kube::Client;
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{self, Scope};

use crate::plugin::Gvk;

/// A kind the cluster does not serve, or discovery failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot find {gvk} in the cluster ({source}); install its CRD (wasmop run --install-crds) or fix the plugin's metadata"
)]
pub struct KindNotServed {
    /// The kind.
    pub gvk: Gvk,
    /// Discovery's error.
    pub source: kube::Error,
}

/// Looks a kind up in the cluster's discovery: its plural and whether it is namespaced.
pub async fn resolve(client: &Client, gvk: &Gvk) -> Result<(ApiResource, bool), KindNotServed> {
    let key = GroupVersionKind::gvk(&gvk.group, &gvk.version, &gvk.kind);
    match discovery::pinned_kind(client, &key).await {
        Ok((ar, caps)) => Ok((ar, caps.scope == Scope::Namespaced)),
        Err(source) => Err(KindNotServed { gvk: gvk.clone(), source }),
    }
}
