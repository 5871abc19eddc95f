//! The typed path: a request whose objects stay JSON text until the plugin decodes them into
//! its own types, and an answer encoded straight to JSON text ([`EncodedResponse`]'s builder).
//!
//! [`Request`] and [`Response`] hold `serde_json::Value` trees: each object is parsed into a
//! tree, decoded from the tree into the plugin's type, and the answer is built as a tree and
//! encoded. For a small plugin that is most of its work. An [`Operator`](crate::Operator) opts
//! in by overriding [`Operator::reconcile_raw`](crate::Operator::reconcile_raw); the default
//! goes through [`Request`] and [`Operator::reconcile`](crate::Operator::reconcile), so the two
//! paths answer alike.

use k8s_openapi::Resource;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::wire::{EncodedRequest, EncodedResponse, decode_request};
use crate::{Condition, Error, Request};

/// What identifies an object, read without decoding the rest of it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Header {
    api_version: String,
    kind: String,
    metadata: HeaderMeta,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HeaderMeta {
    name: Option<String>,
    namespace: Option<String>,
}

fn header(json: &str) -> Header {
    serde_json::from_str(json).unwrap_or_default()
}

/// A request as it crosses the boundary, decoded only as far as the plugin asks.
#[derive(Clone, Copy, Debug)]
pub struct RawRequest<'a> {
    req: &'a EncodedRequest,
}

impl<'a> RawRequest<'a> {
    /// The typed view of `req`.
    pub fn new(req: &'a EncodedRequest) -> Self {
        RawRequest { req }
    }

    /// The parent's `apiVersion` (empty if it has none), read without decoding the parent.
    pub fn parent_api_version(&self) -> String {
        header(&self.req.parent).api_version
    }

    /// Decodes the parent into a typed struct straight from its JSON. A parent that does not
    /// fit is an [`Error::Invalid`] naming it and what serde complained about.
    pub fn parent_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.req.parent).map_err(|e| Error::Invalid(format!("{}: {e}", self.parent_ref())))
    }

    /// `namespace/name` (or `name`) of the parent, for messages.
    pub fn parent_ref(&self) -> String {
        let meta = header(&self.req.parent).metadata;
        match (meta.namespace, meta.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name,
            _ => "<unnamed parent>".to_string(),
        }
    }

    /// The observed child of type `K` named `name`, if it exists and decodes. Only the header
    /// of each other child is read.
    pub fn child<K: Resource + DeserializeOwned>(&self, name: &str) -> Option<K> {
        self.req.children.iter().find_map(|json| {
            let h = header(json);
            let wanted =
                h.api_version == K::API_VERSION && h.kind == K::KIND && h.metadata.name.as_deref() == Some(name);
            wanted.then(|| serde_json::from_str(json).ok()).flatten()
        })
    }

    /// The objects the selector `id` picked, decoded as `K`; one that does not decode is an
    /// [`Error::Retry`] naming it.
    pub fn related_as<K: DeserializeOwned>(&self, id: &str) -> Result<Vec<K>, Error> {
        let picked = self.req.related.iter().find(|(selector, _)| selector == id).map(|(_, objects)| objects);
        picked
            .into_iter()
            .flatten()
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    let name = header(json).metadata.name.unwrap_or_else(|| "?".into());
                    Error::Retry(format!("related object {name} (selector {id}) does not decode: {e}"))
                })
            })
            .collect()
    }

    /// True when the parent is being deleted (only for plugins with a finalizer).
    pub fn finalizing(&self) -> bool {
        self.req.finalizing
    }

    /// The operator's settings for this plugin, if any.
    pub fn settings(&self) -> Option<&'a str> {
        self.req.settings.as_deref()
    }

    /// The whole request as [`Request`] (`Value` trees): the path of
    /// [`Operator::reconcile`](crate::Operator::reconcile).
    pub fn decode(&self) -> Result<Request, Error> {
        decode_request(self.req)
    }
}

impl EncodedResponse {
    /// An empty answer: no children, no status.
    pub fn new() -> Self {
        EncodedResponse::default()
    }

    /// Adds a desired child (any k8s-openapi type, which serialises with apiVersion and kind),
    /// encoded straight to JSON text.
    pub fn child<K: serde::Serialize>(mut self, child: &K) -> Result<Self, Error> {
        let json = serde_json::to_string(child).map_err(|e| Error::Retry(format!("cannot encode child: {e}")))?;
        self.children.push(json);
        Ok(self)
    }

    /// Sets the status fields (any serialisable struct or JSON object), encoded to JSON text.
    pub fn status<S: serde::Serialize>(mut self, status: &S) -> Result<Self, Error> {
        let json = serde_json::to_string(status).map_err(|e| Error::Retry(format!("cannot encode status: {e}")))?;
        self.status = Some(json);
        Ok(self)
    }

    /// Adds a condition, checked as the host checks it (see [`crate::Response::condition`]).
    pub fn condition(mut self, condition: Condition) -> Result<Self, Error> {
        crate::types::add_condition(&mut self.conditions, condition)?;
        Ok(self)
    }

    /// Asks to be reconciled again after `seconds`.
    #[must_use]
    pub fn requeue_after(mut self, seconds: u32) -> Self {
        self.requeue_after_seconds = Some(seconds);
        self
    }

    /// Marks finalization complete.
    #[must_use]
    pub fn finalized(mut self) -> Self {
        self.finalized = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn request() -> EncodedRequest {
        let parent = r#"{"apiVersion":"g/v1","kind":"P","metadata":{"name":"p","namespace":"ns"},"spec":{"n":1}}"#;
        EncodedRequest::new(parent)
            .children(vec![
                r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"c"}}"#.into(),
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"v"}}"#.into(),
            ])
            .related("config", vec![r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"r"}}"#.into()])
    }

    #[test]
    fn reads_what_the_value_path_reads() {
        let encoded = request();
        let (raw, tree) = (RawRequest::new(&encoded), decode_request(&encoded).unwrap());
        assert_eq!(raw.parent_api_version(), "g/v1");
        assert_eq!(raw.parent_ref(), tree.parent_ref());
        let (a, b): (ConfigMap, ConfigMap) = (raw.child("c").unwrap(), tree.child("c").unwrap());
        assert_eq!(a, b, "the ConfigMap, not the Secret of the same name");
        assert!(raw.child::<ConfigMap>("other").is_none());
        assert_eq!(raw.related_as::<ConfigMap>("config").unwrap(), tree.related_as::<ConfigMap>("config").unwrap());
        assert!(raw.related_as::<ConfigMap>("none").unwrap().is_empty());
        let bad: Result<Vec<i32>, _> = raw.related_as("config");
        assert!(matches!(bad, Err(Error::Retry(m)) if m.contains("related object r")));
        let invalid: Result<Vec<i32>, _> = raw.parent_as();
        assert!(matches!(invalid, Err(Error::Invalid(m)) if m.starts_with("ns/p: ")));
    }

    #[test]
    fn the_encoded_builder_answers_like_the_response_builder() {
        let cm: ConfigMap = serde_json::from_str(r#"{"metadata":{"name":"c"},"data":{"k":"v"}}"#).unwrap();
        let built = EncodedResponse::new().child(&cm).unwrap().status(&serde_json::json!({"n": 1})).unwrap();
        let built = built.condition(Condition::ready(true, "Done", "")).unwrap().requeue_after(5);
        let tree = crate::Response::new().child(&cm).unwrap().status(&serde_json::json!({"n": 1})).unwrap();
        let tree =
            crate::wire::encode_response(tree.condition(Condition::ready(true, "Done", "")).unwrap().requeue_after(5));
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(parse(&built.children[0]), parse(&tree.children[0]));
        assert_eq!(built.status.as_deref().map(parse), tree.status.as_deref().map(parse));
        assert_eq!((built.conditions, built.requeue_after_seconds), (tree.conditions, tree.requeue_after_seconds));
        assert!(EncodedResponse::new().condition(Condition::ready(true, "not camel", "")).is_err());
    }
}
