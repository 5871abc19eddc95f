//! Watch streams: filtering and shaping events per watcher, bookmarks, timeouts, and the
//! newline-delimited JSON framing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::convert;
use crate::error::StatusError;
use crate::output::{self, Shape};
use crate::resources::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType, State};

/// What one watch asked for.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Resource watched (in the requested version).
    pub info: Arc<ResourceInfo>,
    /// Namespace, or all namespaces.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// Response shape.
    pub shape: Shape,
    /// When the server closes the stream.
    pub timeout: Duration,
    /// Interval between bookmarks.
    pub bookmark_interval: Duration,
}

impl WatchSpec {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| crate::meta::namespace(obj) == n)
            && self.labels.matches(obj)
            && (self.fields.is_empty()
                || if self.info.key().0 != self.info.group {
                    self.fields.matches(&State::present(&self.info, obj))
                } else {
                    self.fields.matches(obj)
                })
    }

    /// The event this watcher sees for a store event, if any (selector transitions turn
    /// MODIFIED into ADDED or DELETED, as the real watch cache does).
    pub fn translate(&self, ev: &Event) -> Option<(EventType, Arc<Value>)> {
        if ev.res != self.info.key() {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.old.as_ref().is_some_and(|o| self.matches(o));
        let kind = match ev.kind {
            EventType::Added if now => EventType::Added,
            EventType::Modified if now && before => EventType::Modified,
            EventType::Modified if now => EventType::Added,
            EventType::Modified if before => EventType::Deleted,
            EventType::Deleted if now || before => EventType::Deleted,
            _ => return None,
        };
        Some((kind, ev.object.clone()))
    }

    /// One wire line for an object event.
    pub fn line(&self, kind: EventType, obj: &Value, first: bool) -> Bytes {
        let presented = State::present(&self.info, obj);
        let object = output::shape_object(&self.info, self.shape, &presented, first);
        frame(&json!({"type": kind.as_str(), "object": object}))
    }

    /// The wire line for a store event as this watcher sees it, if any; the plain form of an
    /// object served as stored is serialized once and shared between watchers.
    pub fn event_line(&self, ev: &Event, first: bool) -> Option<Bytes> {
        let (kind, obj) = self.translate(ev)?;
        if kind == ev.kind && self.shape == Shape::Full && served_as_stored(&self.info, &obj) {
            return Some(ev.line.get_or_init(|| self.line(kind, &obj, first)).clone());
        }
        Some(self.line(kind, &obj, first))
    }

    /// Whether objects go through the conversion webhook before being sent.
    fn webhook(&self) -> bool {
        self.info.conversion.is_some() && self.shape != Shape::Metadata
    }

    /// [`WatchSpec::event_line`], converting the object by webhook first where needed.
    pub async fn event_out(&self, ev: &Event, first: bool) -> Result<Option<Bytes>, StatusError> {
        if !self.webhook() {
            return Ok(self.event_line(ev, first));
        }
        let Some((kind, obj)) = self.translate(ev) else {
            return Ok(None);
        };
        let obj = convert::finish(&self.info, vec![obj], false).await?;
        Ok(obj.first().map(|o| self.line(kind, o, first)))
    }

    /// A BOOKMARK line at `rv`.
    pub fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (api_version, kind) = match self.shape {
            Shape::Full => (self.info.api_version(), self.info.kind.clone()),
            Shape::Metadata => ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata".to_string()),
            Shape::Table => ("meta.k8s.io/v1".to_string(), "Table".to_string()),
        };
        let mut md = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        frame(&json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": md}}))
    }
}

/// Whether an object is stored in the version `info` serves (no conversion to send it).
fn served_as_stored(info: &ResourceInfo, obj: &Value) -> bool {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    match api_version.split_once('/') {
        Some((group, version)) => group == info.group && version == info.version,
        None => info.group.is_empty() && api_version == info.version,
    }
}

/// Serializes one event followed by a newline.
pub fn frame(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// The in-stream ERROR event carrying a Status.
pub fn error_line(status: &Value) -> Bytes {
    frame(&json!({"type": "ERROR", "object": status}))
}

/// Signals that end open watches.
pub struct Signals {
    /// Bumped by `Faults::drop_watches`.
    pub drop: watch::Receiver<u64>,
    /// Set on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// Where a watch starts.
pub struct Start {
    /// Objects sent as synthetic ADDED events first (stored form).
    pub initial: Vec<Arc<Value>>,
    /// For `sendInitialEvents`: the resourceVersion of the `initial-events-end` bookmark.
    pub initial_end: Option<u64>,
    /// Retained events after the requested resourceVersion.
    pub backlog: Vec<Arc<Event>>,
    /// Events at or before this resourceVersion are not sent.
    pub from: u64,
}

/// Sends the line for `ev`, if this watcher sees it. False when the watch must end: the
/// client is gone, or the object could not be converted (kube-apiserver then ends the stream,
/// as it does when it cannot encode a watch event).
async fn send_event(spec: &WatchSpec, ev: &Event, first: &mut bool, out: &mpsc::Sender<Bytes>) -> bool {
    match spec.event_out(ev, *first).await {
        Ok(Some(line)) => {
            *first = false;
            out.send(line).await.is_ok()
        }
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(error = %e.message, "ending watch: cannot convert an event's object");
            false
        }
    }
}

/// Sends the initial objects as ADDED events (converted in one review where needed).
async fn send_initial(spec: &WatchSpec, initial: Vec<Arc<Value>>, out: &mpsc::Sender<Bytes>) -> bool {
    let initial = if spec.webhook() { convert::finish(&spec.info, initial, true).await } else { Ok(initial) };
    let initial = match initial {
        Ok(objs) => objs,
        Err(e) => {
            tracing::warn!(error = %e.message, "ending watch: cannot convert its initial objects");
            return false;
        }
    };
    for (i, obj) in initial.iter().enumerate() {
        if out.send(spec.line(EventType::Added, obj, i == 0)).await.is_err() {
            return false;
        }
    }
    true
}

/// Drives one watch: sends the initial objects, the backlog, then translated events from `rx`,
/// with bookmarks, until timeout, a drop, shutdown, or the client going away.
pub async fn run(
    spec: WatchSpec,
    start: Start,
    mut rx: mpsc::UnboundedReceiver<Arc<Event>>,
    out: mpsc::Sender<Bytes>,
    mut signals: Signals,
) {
    let Start { initial, initial_end, backlog, from } = start;
    let mut first = initial.is_empty();
    let mut last_rv = from;
    if !send_initial(&spec, initial, &out).await {
        return;
    }
    if let Some(rv) = initial_end
        && out.send(spec.bookmark(rv, true)).await.is_err()
    {
        return;
    }
    for ev in backlog {
        last_rv = last_rv.max(ev.rv);
        if !send_event(&spec, &ev, &mut first, &out).await {
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + spec.bookmark_interval, spec.bookmark_interval);
    let _ = signals.drop.borrow_and_update();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                if ev.rv <= from {
                    continue;
                }
                last_rv = last_rv.max(ev.rv);
                if !send_event(&spec, &ev, &mut first, &out).await {
                    return;
                }
            }
            _ = tick.tick(), if spec.bookmarks => {
                // Drain what is already queued so the bookmark never runs ahead of events.
                while let Ok(ev) = rx.try_recv() {
                    if ev.rv <= from { continue; }
                    last_rv = last_rv.max(ev.rv);
                    if !send_event(&spec, &ev, &mut first, &out).await {
                        return;
                    }
                }
                if out.send(spec.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = signals.drop.changed() => return,
            _ = signals.shutdown.changed() => return,
            _ = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn spec(labels: &str) -> WatchSpec {
        WatchSpec {
            info: Registry::builtin().get("", "v1", "configmaps").unwrap(),
            namespace: Some("default".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
            bookmarks: true,
            shape: Shape::Full,
            timeout: Duration::from_secs(1),
            bookmark_interval: Duration::from_secs(1),
        }
    }

    fn event(kind: EventType, new_labels: Value, old_labels: Option<Value>, ns: &str) -> Event {
        let obj = |l: Value| Arc::new(json!({"metadata": {"name": "a", "namespace": ns, "labels": l}}));
        Event {
            rv: 5,
            kind,
            res: ("".into(), "configmaps".into()),
            object: obj(new_labels),
            old: old_labels.map(obj),
            line: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn selector_transitions() {
        let s = spec("app=x");
        let t = |e: Event| s.translate(&e).map(|(k, _)| k);
        assert_eq!(t(event(EventType::Added, json!({"app": "x"}), None, "default")), Some(EventType::Added));
        assert_eq!(t(event(EventType::Added, json!({"app": "y"}), None, "default")), None);
        assert_eq!(
            t(event(EventType::Modified, json!({"app": "x"}), Some(json!({})), "default")),
            Some(EventType::Added)
        );
        assert_eq!(
            t(event(EventType::Modified, json!({}), Some(json!({"app": "x"})), "default")),
            Some(EventType::Deleted)
        );
        assert_eq!(
            t(event(EventType::Modified, json!({"app": "x"}), Some(json!({"app": "x"})), "default")),
            Some(EventType::Modified)
        );
        assert_eq!(t(event(EventType::Added, json!({"app": "x"}), None, "other")), None);
    }

    #[test]
    fn bookmark_and_error_framing() {
        let s = spec("");
        let b: Value = serde_json::from_slice(&s.bookmark(42, true)).unwrap();
        assert_eq!(b["type"], "BOOKMARK");
        assert_eq!(b["object"]["kind"], "ConfigMap");
        assert_eq!(b["object"]["apiVersion"], "v1");
        assert_eq!(b["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
        let line = error_line(&json!({"code": 410}));
        assert!(line.ends_with(b"\n"));
        assert_eq!(serde_json::from_slice::<Value>(&line).unwrap()["type"], "ERROR");
    }
}
