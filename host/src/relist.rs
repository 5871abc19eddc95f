//! A list's objects, passed on at its end.
//!
//! kube-runtime's reflector shows a list's objects in its cache only when the list ends
//! (`InitDone` swaps the cache whole). An object a list delivers — the first list, a relist
//! after the watch expired (410), a re-scoped shard watch — and passed on to the controller
//! before then makes a reconcile that reads the cache without it: a parent is dropped (the
//! controller finds no such object), and a child's parent computes its status from the old
//! cache, with nothing left to trigger it again. So the objects of each list are held back and
//! passed on right after its end, when the cache holds them. Only their type and metadata are
//! held (what the controller maps to a parent), not the whole object twice.

use crate::cached::CachedObject;
use futures::{Stream, StreamExt};
use kube::runtime::watcher::{Error, Event};

/// `events` (after the reflector), with each list's objects passed on, as metadata, right after
/// the list's end; other events as they come.
pub fn at_list_end<S>(events: S) -> impl Stream<Item = Result<Event<CachedObject>, Error>> + Send + 'static
where
    S: Stream<Item = Result<Event<CachedObject>, Error>> + Send + 'static,
{
    let mut held: Vec<CachedObject> = Vec::new();
    events.flat_map(move |event| futures::stream::iter(hold(&mut held, event)))
}

/// What one event lets through, holding a list's objects in `held` until it ends.
fn hold(
    held: &mut Vec<CachedObject>,
    event: Result<Event<CachedObject>, Error>,
) -> Vec<Result<Event<CachedObject>, Error>> {
    match event {
        // A list starting again replaces the one it interrupted.
        Ok(Event::Init) => {
            held.clear();
            vec![Ok(Event::Init)]
        }
        Ok(Event::InitApply(object)) => {
            held.push(object.header());
            Vec::new()
        }
        Ok(Event::InitDone) => {
            let listed = std::mem::take(held).into_iter().map(|o| Ok(Event::InitApply(o)));
            listed.chain([Ok(Event::InitDone)]).collect()
        }
        other => vec![other],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> CachedObject {
        let mut o: CachedObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"big": "x"}
        }))
        .unwrap();
        o.metadata.name = Some(name.into());
        o
    }

    fn names(events: &[Result<Event<CachedObject>, Error>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Ok(Event::Init) => "init".into(),
                Ok(Event::InitApply(o)) => format!("listed {}", o.metadata.name.clone().unwrap_or_default()),
                Ok(Event::InitDone) => "done".into(),
                Ok(Event::Apply(o)) => format!("apply {}", o.metadata.name.clone().unwrap_or_default()),
                Ok(Event::Delete(o)) => format!("delete {}", o.metadata.name.clone().unwrap_or_default()),
                Err(_) => "error".into(),
            })
            .collect()
    }

    #[test]
    fn a_lists_objects_come_after_its_end_and_an_interrupted_list_is_forgotten() {
        let mut held = Vec::new();
        let mut out = Vec::new();
        for event in [
            Ok(Event::Init),
            Ok(Event::InitApply(object("a"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(object("b"))),
            Ok(Event::Init),
            Ok(Event::InitApply(object("lost"))),
            Ok(Event::Init),
            Ok(Event::InitApply(object("a"))),
            Ok(Event::InitApply(object("b"))),
            Ok(Event::Delete(object("c"))),
            Ok(Event::InitDone),
        ] {
            out.extend(hold(&mut held, event));
        }
        assert_eq!(
            names(&out),
            ["init", "listed a", "done", "apply b", "init", "init", "delete c", "listed a", "listed b", "done"]
                .map(String::from)
        );
        assert!(out.iter().all(|e| !matches!(e, Ok(Event::InitApply(o)) if !o.is_header())), "held whole objects");
    }

    /// Behind kube-runtime's reflector: each listed object passed on is in the cache by then.
    #[tokio::test]
    async fn the_cache_holds_each_listed_object_when_it_is_passed_on() {
        use kube::runtime::WatchStreamExt;
        use kube::runtime::reflector::{ObjectRef, store::Writer};
        let resource = kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let writer = Writer::new(resource.clone());
        let store = writer.as_reader();
        let first = [Event::Init, Event::InitApply(object("a")), Event::InitDone];
        let relist = [Event::Init, Event::InitApply(object("a")), Event::InitApply(object("b")), Event::InitDone];
        let events = futures::stream::iter(first.into_iter().chain(relist).map(Ok));
        let mut passed = std::pin::pin!(at_list_end(events.reflect(writer)));
        let mut seen = Vec::new();
        while let Some(event) = passed.next().await {
            if let Ok(Event::InitApply(o)) = event {
                let name = o.metadata.name.clone().unwrap_or_default();
                let cached = store.get(&ObjectRef::from_obj_with(&o, resource.clone())).is_some();
                seen.push((name, cached));
            }
        }
        assert_eq!(seen, [("a", true), ("a", true), ("b", true)].map(|(n, c)| (n.to_string(), c)));
    }
}
