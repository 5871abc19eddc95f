//! A kwok-like workload status simulator: after a delay, a Deployment's or StatefulSet's
//! status reports all replicas ready and available for its current generation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use crate::meta;
use crate::resources::ResKey;
use crate::store::{ObjKey, State};

/// Manager name the simulator writes status with.
pub const MANAGER: &str = "kube-controller-manager";

/// Runs the simulator until the channel closes.
pub async fn run(state: Arc<Mutex<State>>, mut rx: mpsc::UnboundedReceiver<(ResKey, ObjKey)>, delay: Duration) {
    while let Some((key, ok)) = rx.recv().await {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(mut s) = state.lock() else { return };
            let statefulset = key.1 == "statefulsets";
            s.write_internal(&key, &ok, MANAGER, "status", |d| {
                if meta::is_deleting(d) {
                    return;
                }
                let replicas = d.pointer("/spec/replicas").and_then(|v| v.as_i64()).unwrap_or(1);
                let generation = meta::generation(d);
                let observed = d.pointer("/status/observedGeneration").and_then(|v| v.as_i64());
                let ready = d.pointer("/status/readyReplicas").and_then(|v| v.as_i64()).unwrap_or(0);
                if observed == Some(generation) && ready == replicas {
                    return;
                }
                let now = meta::now();
                if statefulset {
                    let revision = format!("{}-{:x}", meta::name(d), generation);
                    d["status"] = json!({
                        "observedGeneration": generation,
                        "replicas": replicas,
                        "readyReplicas": replicas,
                        "currentReplicas": replicas,
                        "updatedReplicas": replicas,
                        "availableReplicas": replicas,
                        "currentRevision": revision,
                        "updateRevision": revision,
                        "collisionCount": 0,
                    });
                    return;
                }
                d["status"] = json!({
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                         "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                         "message": "ReplicaSet has successfully progressed.", "lastUpdateTime": now, "lastTransitionTime": now},
                    ],
                });
                if replicas == 0 {
                    d["status"].as_object_mut().map(|m| {
                        m.remove("readyReplicas");
                        m.remove("availableReplicas")
                    });
                }
            });
        });
    }
}
