//! Objects as the host's caches keep them: typed metadata, and the rest as JSON text.
//!
//! A watched object held as a `serde_json::Value` tree costs about seven times its JSON: every
//! map is a B-tree with room for eleven entries, every key and string its own allocation. At
//! 10,000 parents the caches were 163 MB of the operator's 185 MB peak heap (BENCHMARKS.md,
//! "Where the operator's memory goes"). A [`CachedObject`] keeps what the caches key, index and
//! select on — the metadata, typed, without `managedFields` (read by nothing here) — and the
//! rest of the object (spec, status, data…) as compact JSON text, decoded only when a reconcile
//! reads it: a Deployment of 1.8 KB of JSON takes 3.4 KB instead of 13 KB.
//!
//! It is a [`kube::Resource`] of an [`ApiResource`] like [`DynamicObject`] (so kube-runtime's
//! watcher, reflector store and controller take it), and it deserializes from what the API server
//! sends through a [`DynamicObject`], so the `Value` tree lives only while one object is decoded.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::{ApiResource, DynamicResourceScope, PartialObjectMeta, TypeMeta};
use serde::Deserialize;
use serde_json::Value;

/// One object of a kind the host watches, as its caches keep it (see the module docs).
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "DynamicObject")]
pub struct CachedObject {
    /// The object's apiVersion and kind, when the server sent them (a real API server's list
    /// items carry neither: [`CachedObject::to_json`] takes them from the kind).
    pub types: Option<TypeMeta>,
    /// The object's metadata, without `managedFields`.
    pub metadata: ObjectMeta,
    /// Every other top-level field as the JSON text of one object (`null` for an object watched
    /// as metadata only).
    body: Box<str>,
}

impl From<DynamicObject> for CachedObject {
    fn from(object: DynamicObject) -> Self {
        let DynamicObject { types, mut metadata, data } = object;
        metadata.managed_fields = None;
        CachedObject { types, metadata, body: data.to_string().into_boxed_str() }
    }
}

impl From<PartialObjectMeta<DynamicObject>> for CachedObject {
    /// An object watched as metadata only: no body.
    fn from(object: PartialObjectMeta<DynamicObject>) -> Self {
        CachedObject::from(DynamicObject { types: object.types, metadata: object.metadata, data: Value::Null })
    }
}

impl CachedObject {
    /// The same object without its body: what a list's held-back objects keep
    /// ([`crate::relist`]) — the controller maps them to parents by metadata alone.
    #[must_use]
    pub fn header(&self) -> CachedObject {
        CachedObject { types: self.types.clone(), metadata: self.metadata.clone(), body: "null".into() }
    }

    /// Whether the object has no body (watched as metadata only, or a [`CachedObject::header`]).
    pub fn is_header(&self) -> bool {
        &*self.body == "null"
    }

    /// The whole object, its body decoded.
    pub fn to_object(&self) -> Result<DynamicObject, serde_json::Error> {
        Ok(DynamicObject { types: self.types.clone(), metadata: self.metadata.clone(), data: self.body()? })
    }

    /// The object as JSON with the apiVersion and kind of `resource` set — what a plugin sees and
    /// the skip-if-applied check compares: a real API server's list items carry no types, so an
    /// object the cache got from a list (at every start) would otherwise reach the plugin
    /// unrecognisable.
    pub fn to_json(&self, resource: &ApiResource) -> Result<Value, serde_json::Error> {
        let mut json = match self.body()? {
            Value::Object(fields) => fields,
            _ => serde_json::Map::new(),
        };
        json.insert("apiVersion".into(), Value::String(resource.api_version.clone()));
        json.insert("kind".into(), Value::String(resource.kind.clone()));
        json.insert("metadata".into(), serde_json::to_value(&self.metadata)?);
        Ok(Value::Object(json))
    }

    fn body(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

impl kube::Resource for CachedObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "managedFields": [{"manager": "wasmop", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}}},
            "status": {"availableReplicas": 2}
        })
    }

    fn resource() -> ApiResource {
        ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&())
    }

    #[test]
    fn decodes_what_the_server_sends_and_gives_back_the_object_without_managed_fields() {
        let cached: CachedObject = serde_json::from_value(deployment()).unwrap();
        assert_eq!(cached.metadata.name.as_deref(), Some("web"));
        assert!(cached.metadata.managed_fields.is_none());
        let mut want = deployment();
        want["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(cached.to_json(&resource()).unwrap(), want);
        let object = cached.to_object().unwrap();
        assert_eq!(object.data["status"]["availableReplicas"], 2);
        assert!(!cached.is_header() && cached.header().is_header());
        assert_eq!(cached.header().metadata, cached.metadata);
    }

    #[test]
    fn a_list_item_without_types_takes_them_from_its_kind() {
        let mut item = deployment();
        let fields = item.as_object_mut().unwrap();
        fields.remove("apiVersion");
        fields.remove("kind");
        let cached: CachedObject = serde_json::from_value(item).unwrap();
        assert!(cached.types.is_none());
        let json = cached.to_json(&resource()).unwrap();
        assert_eq!((json["apiVersion"].as_str(), json["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
    }

    #[test]
    fn an_object_watched_as_metadata_only_has_no_body() {
        let meta = PartialObjectMeta::<DynamicObject> {
            types: None,
            metadata: ObjectMeta { name: Some("cm".into()), ..ObjectMeta::default() },
            _phantom: std::marker::PhantomData,
        };
        let cached = CachedObject::from(meta);
        assert!(cached.is_header());
        let json = cached.to_json(&ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())).unwrap();
        assert_eq!(json, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}));
    }
}
