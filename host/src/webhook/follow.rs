//! Keeps [`Converters`] in line with the plugins directory on a replica that runs no supervisor
//! (a standby: only the leader runs controllers, but every replica answers the webhook): the
//! first file in name order that serves a kind converts it, as in the supervisor. While a
//! supervisor feeds the converters, the follower loads nothing (the plugins are loaded once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Converters;
use crate::plugin::{LoadedPlugin, OperatorPlugin, Runtime};
use crate::{operator, sidecar};

/// Quiet time after a change before the directory is read again (the last write wins).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Loads the converting plugins of `dir` into `converters` now and after every change, until
/// the task is dropped. A directory that cannot be watched is logged; the first load stands.
pub fn follow(runtime: Arc<Runtime>, dir: PathBuf, converters: Converters) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        });
        let _watcher = match watcher.and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch the plugins directory for conversion");
                None
            }
        };
        loop {
            if !converters.is_fed() {
                let (rt, d) = (runtime.clone(), dir.clone());
                match tokio::task::spawn_blocking(move || converting(&rt, &d)).await {
                    Ok(serving) if !converters.is_fed() => converters.replace(serving),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "loading converting plugins failed"),
                }
            }
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                }
                () = converters.unfed.notified() => {}
            }
        }
    })
}

/// The first plugin file per parent kind in `dir` that converts, with its sidecar's limits.
fn converting(rt: &Runtime, dir: &Path) -> Vec<OperatorPlugin> {
    let files = operator::plugin_files(dir).unwrap_or_default();
    let mut first: HashMap<(String, String), OperatorPlugin> = HashMap::new();
    for path in files {
        let limits = sidecar::read(&path).map(|s| s.limits).unwrap_or_default();
        let Ok(LoadedPlugin::Operator(plugin)) = rt.load_with(&path, limits) else { continue };
        let parent = &plugin.metadata().parent;
        first.entry((parent.group.clone(), parent.kind.clone())).or_insert(plugin);
    }
    first.into_values().collect()
}
