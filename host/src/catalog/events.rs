//! Reporting a refused plugin revision: a log line, the rejection counter and metric, and a
//! `PluginRejected` Event a user sees with `kubectl get events`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Reporter};

use super::Source;
use crate::telemetry::{Metrics, ReloadStats, Telemetry};

/// Longest Event action the API server accepts.
const MAX_EVENT_ACTION: usize = 128;

/// Where refusals of plugin revisions are reported; cheap to clone.
#[derive(Clone)]
pub struct Rejections {
    events: Option<crate::events::Publisher>,
    reference: ObjectReference,
    reloads: Arc<ReloadStats>,
    metrics: Arc<Metrics>,
}

impl Rejections {
    /// Reports through `client` (Events) when given, and always into `telemetry`.
    pub(super) fn new(client: Option<Client>, namespace: Option<&str>, telemetry: &Telemetry) -> Rejections {
        let reporter = Reporter { controller: "wasmop".into(), instance: std::env::var("POD_NAME").ok() };
        Rejections {
            events: client.map(|c| crate::events::Publisher::new(c, reporter)),
            reference: operator_reference(namespace),
            reloads: telemetry.reloads.clone(),
            metrics: telemetry.metrics.clone(),
        }
    }

    /// Logs, counts and records a `PluginRejected` Event for `source`; `serving` is the
    /// revision of it that keeps serving, if any.
    pub async fn reject(&self, source: &Source, reason: &(dyn std::fmt::Display + Sync), serving: Option<&str>) {
        self.reloads.failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.reload("rejected");
        let reason = crate::text::cap(&reason.to_string(), crate::status::MAX_EVENT_NOTE);
        tracing::error!(source = %source, error = %reason, serving = ?serving,
            "plugin rejected; the previous version (if any) keeps serving");
        let Some(events) = &self.events else { return };
        // The same refusal again folds into its Event's series; the action names the source,
        // so each source's refusal is its own Event.
        let event = Event {
            type_: EventType::Warning,
            reason: "PluginRejected".into(),
            note: Some(crate::text::cap(&format!("{source}: {reason}"), crate::status::MAX_EVENT_NOTE)),
            action: crate::text::cap(&format!("Load {}", source.short_name()), MAX_EVENT_ACTION),
            secondary: None,
        };
        if let Err(err) = events.publish(&event, &self.reference).await {
            tracing::debug!(error = %err, "cannot publish the rejection Event");
        }
    }
}

impl Rejections {
    /// Logs, counts and records a Warning `RolledBack` Event: the rollout of `source` went back
    /// to its stable revision, for the reason `note` gives.
    pub async fn rolled_back(&self, source: &Source, note: &str) {
        self.metrics.rolled_back(&source.short_name());
        tracing::warn!(source = %source, note, "rollout rolled back; the stable revision serves every parent");
        let Some(events) = &self.events else { return };
        let event = Event {
            type_: EventType::Warning,
            reason: "RolledBack".into(),
            note: Some(crate::text::cap(&format!("{source}: {note}"), crate::status::MAX_EVENT_NOTE)),
            action: crate::text::cap(&format!("Roll out {}", source.short_name()), MAX_EVENT_ACTION),
            secondary: None,
        };
        if let Err(err) = events.publish(&event, &self.reference).await {
            tracing::debug!(error = %err, "cannot publish the rollback Event");
        }
    }
}

/// The object rejection Events are about: the operator's own Pod when in-cluster (POD_NAME and
/// POD_NAMESPACE from the downward API), else the namespace the operator is limited to
/// (`--namespace`, the first), else `default`.
fn operator_reference(watched: Option<&str>) -> ObjectReference {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| watched.unwrap_or("default").to_string());
    match std::env::var("POD_NAME") {
        Ok(name) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace),
            ..ObjectReference::default()
        },
        Err(_) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            // The Event is written into this namespace too (not `default`).
            namespace: Some(namespace.clone()),
            name: Some(namespace),
            ..ObjectReference::default()
        },
    }
}
