//! Kubernetes Events (`events.k8s.io/v1`) about the objects the host works on, folded into
//! series: an Event recurring within six minutes (same type, action, reason, note, object and
//! related object) increments the first one's `series.count` instead of creating another.
//!
//! In place of kube-runtime's `Recorder`, which keeps a clone of every Event it published for
//! six minutes and scans all of them on every publish (at 10,000 parents, 10,000 cached Events
//! and an O(n²) burst). Here a series is a few words (its Event's name, count and last time),
//! at most [`MAX_SERIES`] per publisher, pruned only when that fills. Unlike the `Recorder`,
//! the note is part of what makes a series: `Updated Deployment ns/web` and `Updated Service
//! ns/web` stay two Events (the API server keeps a series' note as first written).
//!
//! Published inside a reconcile whose trace is kept, the note ends with `(trace ID)`; a series
//! names the trace of its first occurrence.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// How long an Event may recur into the same series (kube-runtime's and client-go's figure).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// Most series a publisher remembers; past it, expired ones go, then the oldest half.
pub const MAX_SERIES: usize = 4096;

/// Publishes Events as one reporting controller; cheap to clone (the series are shared).
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    reporter: Reporter,
    series: Arc<Mutex<Series>>,
}

/// The series this publisher started, by key.
#[derive(Default)]
struct Series {
    entries: HashMap<u64, Seen>,
}

/// One series: its Event's name, how often it occurred, and when last.
#[derive(Clone)]
struct Seen {
    name: String,
    count: i32,
    last: Instant,
}

impl Series {
    /// The series `key` belongs to at `now`, if it is still open.
    fn open(&self, key: u64, now: Instant) -> Option<Seen> {
        self.entries.get(&key).filter(|s| now.duration_since(s.last) < SERIES_TTL).cloned()
    }

    /// Records an occurrence; keeps at most [`MAX_SERIES`] entries (expired first, then the
    /// least recently seen).
    fn record(&mut self, key: u64, seen: Seen, now: Instant) {
        self.entries.insert(key, seen);
        if self.entries.len() <= MAX_SERIES {
            return;
        }
        self.entries.retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
        if self.entries.len() > MAX_SERIES / 2 {
            let mut lasts: Vec<Instant> = self.entries.values().map(|s| s.last).collect();
            let cut = lasts.len() - MAX_SERIES / 2;
            let (_, nth, _) = lasts.select_nth_unstable(cut);
            let cut = *nth;
            self.entries.retain(|_, s| s.last >= cut);
        }
    }
}

impl Publisher {
    /// A publisher reporting as `reporter` through `client`.
    pub fn new(client: Client, reporter: Reporter) -> Publisher {
        Publisher { client, reporter, series: Arc::default() }
    }

    /// Publishes `event` about `regarding` (in its namespace; `default` for a cluster-scoped
    /// object): a new Event, or the next occurrence of its open series.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = self.key(event, regarding);
        let trace = crate::traces::trace_id(&tracing::Span::current()).map(|id| format!(" (trace {id})"));
        let trace = trace.unwrap_or_default();
        let note = event.note.as_deref().map(|note| {
            format!("{}{trace}", crate::text::cap(note, crate::status::MAX_EVENT_NOTE.saturating_sub(trace.len())))
        });
        let now = Instant::now();
        let open = self.series.lock().ok().and_then(|s| s.open(key, now));
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        if let Some(seen) = open {
            let count = seen.count + 1;
            // Only the series: the API server refuses a change to any other field of an Event.
            let patch = serde_json::json!({
                "series": {"count": count, "lastObservedTime": MicroTime(jiff::Timestamp::now())},
            });
            match api.patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.remember(key, Seen { name: seen.name, count, last: now }, now);
                    return Ok(());
                }
                // Deleted meanwhile (or expired by the API server): a new Event below.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let created = api.create(&PostParams::default(), &self.event(event, note, regarding)).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.remember(key, Seen { name, count: 1, last: now }, now);
        Ok(())
    }

    fn remember(&self, key: u64, seen: Seen, now: Instant) {
        if let Ok(mut series) = self.series.lock() {
            series.record(key, seen, now);
        }
    }

    /// What makes two Events one series: type, action, reason, note (as given, without the
    /// trace), reporter, the object and the related object.
    fn key(&self, event: &Event, regarding: &ObjectReference) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        matches!(event.type_, EventType::Warning).hash(&mut hasher);
        (&event.action, &event.reason, &event.note, &self.reporter.controller, &self.reporter.instance)
            .hash(&mut hasher);
        for reference in std::iter::once(regarding).chain(event.secondary.as_ref()) {
            (&reference.api_version, &reference.kind, &reference.namespace, &reference.name, &reference.uid)
                .hash(&mut hasher);
        }
        hasher.finish()
    }

    /// A new Event object for `event` (named as kube-runtime names them: the object's name and
    /// the time in hexadecimal nanoseconds).
    fn event(&self, event: &Event, note: Option<String>, regarding: &ObjectReference) -> K8sEvent {
        let now = jiff::Timestamp::now();
        let named = regarding.name.as_deref().unwrap_or(&self.reporter.controller);
        let type_ = match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            note,
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{named}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(type_.into()),
            ..K8sEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_SERIES, SERIES_TTL, Seen, Series};
    use std::time::{Duration, Instant};

    fn seen(name: &str, last: Instant) -> Seen {
        Seen { name: name.into(), count: 1, last }
    }

    #[test]
    fn a_series_stays_open_for_six_minutes_after_its_last_occurrence() {
        let mut series = Series::default();
        let start = Instant::now();
        series.record(1, seen("a", start), start);
        assert_eq!(series.open(1, start + Duration::from_secs(60)).map(|s| s.name), Some("a".into()));
        assert!(series.open(1, start + SERIES_TTL).is_none());
        assert!(series.open(2, start).is_none());
    }

    #[test]
    fn past_the_cap_the_least_recently_seen_half_goes() {
        let mut series = Series::default();
        let start = Instant::now();
        for key in 0..=MAX_SERIES as u64 {
            let at = start + Duration::from_millis(key);
            series.record(key, seen(&key.to_string(), at), at);
        }
        assert!(series.entries.len() <= MAX_SERIES / 2 + 1, "{}", series.entries.len());
        let latest = start + Duration::from_millis(MAX_SERIES as u64);
        assert!(series.open(MAX_SERIES as u64, latest).is_some(), "the newest series is kept");
        assert!(series.open(0, latest).is_none(), "the oldest series went");
    }

    #[tokio::test]
    async fn a_recurring_event_is_one_series_and_another_note_another_event() {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use kube::runtime::events::{Event, EventType, Reporter};
        let server = wasmop_apiserver::ApiServer::start(wasmop_apiserver::Config::default()).await.unwrap();
        let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let publisher = super::Publisher::new(client.clone(), Reporter { controller: "wasmop".into(), instance: None });
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some("default".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let event = |reason: &str, note: &str| Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Apply".into(),
            secondary: None,
        };
        for _ in 0..3 {
            publisher.publish(&event("Updated", "Updated Deployment default/web"), &regarding).await.unwrap();
        }
        publisher.publish(&event("Updated", "Updated Service default/web"), &regarding).await.unwrap();
        let events = kube::Api::<K8sEvent>::namespaced(client, "default").list(&Default::default()).await.unwrap();
        let note = |e: &K8sEvent| e.note.clone().unwrap_or_default();
        let deployment: Vec<&K8sEvent> = events.items.iter().filter(|e| note(e).contains("Deployment")).collect();
        assert_eq!(deployment.len(), 1, "one series: {deployment:?}");
        assert_eq!(deployment[0].series.as_ref().map(|s| s.count), Some(3));
        assert_eq!(events.items.len(), 2, "the Service's Event is its own: {:?}", events.items);
    }
}
