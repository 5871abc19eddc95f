//! Server-side apply: field sets (`fieldsV1`), `managedFields` bookkeeping, conflicts and merging.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::error::{ApiResult, Cause, StatusError};
use crate::meta;
use crate::resources::ListType;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathElement {
    /// A map field (`f:name`).
    Field(String),
    /// An associative list item by key (`k:{"name":"x"}`).
    Key(String),
    /// A set item by value (`v:"x"`).
    Value(String),
    /// A list item by index (`i:0`).
    Index(usize),
}

/// A tree of owned fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    /// Whether the node itself is a member (a leaf value or a whole list item).
    pub member: bool,
    /// Child nodes.
    pub children: BTreeMap<PathElement, FieldSet>,
}

/// Fields of metadata that are never tracked.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

/// Removes fields the field manager never tracks, and (per subresource) the part a write cannot touch.
pub fn trackable(obj: &Value, status_subresource: bool, sub: &str) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(Value::Object(md)) = m.get_mut("metadata") {
            for f in UNTRACKED_META {
                md.remove(*f);
            }
        }
        if m.get("metadata").is_some_and(|md| md.as_object().is_some_and(Map::is_empty)) {
            m.remove("metadata");
        }
        if sub == "status" {
            m.retain(|k, _| k == "status");
        } else if status_subresource {
            m.remove("status");
        }
    }
    v
}

fn key_json(item: &Value, keys: &[String]) -> Option<String> {
    let obj = item.as_object()?;
    let mut k = Map::new();
    for key in keys {
        match obj.get(key) {
            Some(v) => {
                k.insert(key.clone(), v.clone());
            }
            // Key fields with a schema default (ports' protocol) match as if defaulted.
            None if key == "protocol" => {
                k.insert(key.clone(), Value::String("TCP".into()));
            }
            None => {}
        }
    }
    (!k.is_empty()).then(|| Value::Object(k).to_string())
}

impl FieldSet {
    /// The set of fields present in `value`.
    pub fn from_value(value: &Value, list_type: &dyn Fn(&[String]) -> ListType) -> FieldSet {
        let mut path = Vec::new();
        Self::build(value, list_type, &mut path)
    }

    fn build(value: &Value, lt: &dyn Fn(&[String]) -> ListType, path: &mut Vec<String>) -> FieldSet {
        let mut node = FieldSet::default();
        match value {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    path.push(k.clone());
                    node.children.insert(PathElement::Field(k.clone()), Self::build(v, lt, path));
                    path.pop();
                }
            }
            Value::Array(items) if !items.is_empty() => match lt(path) {
                ListType::Atomic => node.member = true,
                ListType::Set => {
                    for it in items {
                        node.children.insert(
                            PathElement::Value(it.to_string()),
                            FieldSet { member: true, children: BTreeMap::new() },
                        );
                    }
                }
                ListType::Map(keys) => {
                    let ks: Option<Vec<String>> = items.iter().map(|it| key_json(it, &keys)).collect();
                    match ks {
                        Some(ks) => {
                            for (k, it) in ks.into_iter().zip(items) {
                                let mut child = Self::build(it, lt, path);
                                child.member = true;
                                node.children.insert(PathElement::Key(k), child);
                            }
                        }
                        None => node.member = true,
                    }
                }
            },
            _ => node.member = true,
        }
        node
    }

    /// Whether the set owns nothing.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// Renders the set as `fieldsV1`.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (pe, child) in &self.children {
            if child.is_empty() {
                continue;
            }
            let key = match pe {
                PathElement::Field(f) => format!("f:{f}"),
                PathElement::Key(k) => format!("k:{k}"),
                PathElement::Value(v) => format!("v:{v}"),
                PathElement::Index(i) => format!("i:{i}"),
            };
            m.insert(key, child.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Parses `fieldsV1`.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut node = FieldSet::default();
        let Some(m) = v.as_object() else {
            return node;
        };
        if m.is_empty() {
            node.member = true;
        }
        for (k, child) in m {
            if k == "." {
                node.member = true;
                continue;
            }
            let pe = if let Some(f) = k.strip_prefix("f:") {
                PathElement::Field(f.to_string())
            } else if let Some(f) = k.strip_prefix("k:") {
                let canonical =
                    serde_json::from_str::<Value>(f).map(|v| v.to_string()).unwrap_or_else(|_| f.to_string());
                PathElement::Key(canonical)
            } else if let Some(f) = k.strip_prefix("v:") {
                PathElement::Value(f.to_string())
            } else if let Some(f) = k.strip_prefix("i:") {
                PathElement::Index(f.parse().unwrap_or(0))
            } else {
                continue;
            };
            node.children.insert(pe, Self::from_fields_v1(child));
        }
        node
    }

    /// All member paths.
    pub fn members(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        self.collect(&mut path, &mut out);
        out
    }

    fn collect(&self, path: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        if self.member {
            out.push(path.clone());
        }
        for (pe, c) in &self.children {
            path.push(pe.clone());
            c.collect(path, out);
            path.pop();
        }
    }

    /// The node at a path, if any.
    pub fn node(&self, path: &[PathElement]) -> Option<&FieldSet> {
        path.iter().try_fold(self, |n, pe| n.children.get(pe))
    }

    /// Whether the path is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// Whether the path or anything below it is a member.
    pub fn has_under(&self, path: &[PathElement]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    /// Adds a member path.
    pub fn insert(&mut self, path: &[PathElement]) {
        let mut n = self;
        for pe in path {
            n = n.children.entry(pe.clone()).or_default();
        }
        n.member = true;
    }

    /// Removes a member path (keeping descendants).
    pub fn remove(&mut self, path: &[PathElement]) {
        let mut n = self;
        for pe in path {
            match n.children.get_mut(pe) {
                Some(c) => n = c,
                None => return,
            }
        }
        n.member = false;
    }

    /// Union in place.
    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (pe, c) in &other.children {
            self.children.entry(pe.clone()).or_default().union(c);
        }
    }

    /// Drops empty branches.
    pub fn prune(&mut self) {
        for c in self.children.values_mut() {
            c.prune();
        }
        self.children.retain(|_, c| !c.is_empty());
    }
}

/// Whether the path ends at a key field of an associative list item (`[name=x].name`), which
/// stays as long as the item does.
fn is_key_field(path: &[PathElement]) -> bool {
    match path {
        [.., PathElement::Key(k), PathElement::Field(f)] => {
            serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|m| m.contains_key(f))
        }
        _ => false,
    }
}

/// Whether a list item has the given key values (a missing `protocol` counts as its default, TCP).
fn key_matches(item: &Value, want: &Map<String, Value>) -> bool {
    want.iter().all(|(k, v)| match item.get(k) {
        Some(x) => x == v,
        None => k == "protocol" && v == "TCP",
    })
}

/// The value at a field path in an object.
pub fn value_at<'a>(obj: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = match pe {
            PathElement::Field(f) => cur.get(f)?,
            PathElement::Index(i) => cur.get(*i)?,
            PathElement::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|x| **x == want)?
            }
            PathElement::Key(k) => {
                let want: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?.iter().find(|x| key_matches(x, &want))?
            }
        };
    }
    Some(cur)
}

/// Removes the value at a field path.
pub fn remove_at(obj: &mut Value, path: &[PathElement]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for pe in parent {
        let next = match pe {
            PathElement::Field(f) => cur.get_mut(f),
            PathElement::Index(i) => cur.get_mut(*i),
            PathElement::Value(v) => {
                let want: Option<Value> = serde_json::from_str(v).ok();
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|x| Some(&**x) == want.as_ref()))
            }
            PathElement::Key(k) => {
                let want: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|x| key_matches(x, &want)))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        PathElement::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        PathElement::Index(i) => {
            if let Some(a) = cur.as_array_mut()
                && *i < a.len()
            {
                a.remove(*i);
            }
        }
        PathElement::Value(v) => {
            let want: Option<Value> = serde_json::from_str(v).ok();
            if let Some(a) = cur.as_array_mut() {
                a.retain(|x| Some(x) != want.as_ref());
            }
        }
        PathElement::Key(k) => {
            let want: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            if let Some(a) = cur.as_array_mut() {
                a.retain(|x| !key_matches(x, &want));
            }
        }
    }
}

/// Renders a path as the real server prints it in conflicts (`.spec.containers[name="x"].image`).
pub fn path_string(path: &[PathElement]) -> String {
    let mut s = String::new();
    for pe in path {
        match pe {
            PathElement::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            PathElement::Index(i) => s.push_str(&format!("[{i}]")),
            PathElement::Value(v) => s.push_str(&format!("[={v}]")),
            PathElement::Key(k) => {
                let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = m.iter().map(|(kk, vv)| format!("{kk}={vv}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
        }
    }
    s
}

/// Structural merge of an applied configuration into a live object.
pub fn merge_applied(live: &mut Value, applied: &Value, path: &mut Vec<String>, lt: &dyn Fn(&[String]) -> ListType) {
    match (live.as_object_mut(), applied) {
        (Some(l), Value::Object(a)) => {
            for (k, av) in a {
                path.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, av, path, lt),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
            return;
        }
        (None, Value::Object(_)) => {
            *live = applied.clone();
            return;
        }
        _ => {}
    }
    if let (Value::Array(l), Value::Array(a)) = (&mut *live, applied) {
        match lt(path) {
            ListType::Map(keys) => {
                for item in a {
                    let Some(k) = key_json(item, &keys) else {
                        continue;
                    };
                    match l.iter_mut().find(|x| key_json(x, &keys).as_deref() == Some(&k)) {
                        Some(existing) => merge_applied(existing, item, path, lt),
                        None => l.push(item.clone()),
                    }
                }
                return;
            }
            ListType::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
                return;
            }
            ListType::Atomic => {}
        }
    }
    *live = applied.clone();
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion used.
    pub api_version: String,
    /// Timestamp.
    pub time: String,
    /// Subresource ("" for the main resource).
    pub subresource: String,
    /// Owned fields.
    pub set: FieldSet,
}

/// Reads `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<Managed> {
    obj.get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| Managed {
                    manager: e.get("manager").and_then(Value::as_str).unwrap_or("").into(),
                    operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").into(),
                    api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").into(),
                    time: e.get("time").and_then(Value::as_str).unwrap_or("").into(),
                    subresource: e.get("subresource").and_then(Value::as_str).unwrap_or("").into(),
                    set: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields` (dropping entries that own nothing).
pub fn write_managed(obj: &mut Value, entries: &[Managed]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.set.to_fields_v1(),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    let m = meta::meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// Inputs of one server-side apply.
pub struct ApplyRequest<'a> {
    /// The applied configuration (already stripped of untracked fields).
    pub applied: &'a Value,
    /// Field manager.
    pub manager: &'a str,
    /// `force=true`.
    pub force: bool,
    /// Subresource ("" or "status").
    pub subresource: &'a str,
    /// apiVersion of the request.
    pub api_version: &'a str,
    /// For error messages: (group, plural, name).
    pub ident: (&'a str, &'a str, &'a str),
}

/// Applies `req.applied` onto `live` (a full object), returning the merged object with updated
/// `managedFields`, or a 409 listing each conflicting field.
pub fn apply(live: &Value, req: &ApplyRequest<'_>, lt: &dyn Fn(&[String]) -> ListType) -> ApiResult<Value> {
    let mut entries = read_managed(live);
    let applied_set = FieldSet::from_value(req.applied, lt);
    let is_mine = |e: &Managed| e.manager == req.manager && e.operation == "Apply" && e.subresource == req.subresource;
    // Conflicts: fields owned by someone else whose value would change.
    let mut conflicts: Vec<(usize, Vec<PathElement>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if is_mine(e) {
            continue;
        }
        for p in applied_set.members() {
            if !e.set.has(&p) || applied_set.node(&p).is_some_and(|n| !n.children.is_empty()) {
                continue;
            }
            if value_at(req.applied, &p) != value_at(live, &p) {
                conflicts.push((i, p));
            }
        }
    }
    if !conflicts.is_empty() {
        if req.force {
            for (i, p) in &conflicts {
                entries[*i].set.remove(p);
            }
        } else {
            let (group, plural, name) = req.ident;
            let causes: Vec<Cause> = conflicts
                .iter()
                .map(|(i, p)| {
                    Cause::new(
                        "FieldManagerConflict",
                        path_string(p),
                        format!("conflict with {}", describe_manager(&entries[*i])),
                    )
                })
                .collect();
            let detail = if causes.len() == 1 {
                format!("Apply failed with 1 conflict: {}: {}", causes[0].message, causes[0].field)
            } else {
                let lines: Vec<String> = causes.iter().map(|c| format!("- {}: {}", c.message, c.field)).collect();
                format!("Apply failed with {} conflicts:\n{}", causes.len(), lines.join("\n"))
            };
            let mut err = StatusError::new(409, "Conflict", detail);
            err.group = (!group.is_empty()).then(|| group.to_string());
            err.kind = Some(plural.to_string());
            err.name = Some(name.to_string());
            err.causes = causes;
            return Err(err);
        }
    }
    // Removal of fields this manager stopped applying and nobody else owns.
    let mut result = live.clone();
    let mut others = FieldSet::default();
    for e in entries.iter().filter(|e| !is_mine(e)) {
        others.union(&e.set);
    }
    if let Some(prev) = entries.iter().find(|e| is_mine(e)) {
        let mut gone: Vec<Vec<PathElement>> = prev
            .set
            .members()
            .into_iter()
            .filter(|p| !applied_set.has(p) && !others.has_under(p) && !is_key_field(p))
            .collect();
        // Whole list items first (their fields go with them), then single fields.
        gone.sort_by_key(Vec::len);
        for p in gone {
            remove_at(&mut result, &p);
        }
    }
    merge_applied(&mut result, req.applied, &mut Vec::new(), lt);
    // Ownership.
    let entry = Managed {
        manager: req.manager.to_string(),
        operation: "Apply".into(),
        api_version: req.api_version.to_string(),
        time: meta::now(),
        subresource: req.subresource.to_string(),
        set: applied_set,
    };
    match entries.iter().position(is_mine) {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    for e in &mut entries {
        e.set.prune();
    }
    write_managed(&mut result, &entries);
    Ok(result)
}

/// Records a non-apply write by `manager`: it takes ownership of every field it changed, and
/// others lose fields that changed or disappeared.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    tracked_new: &Value,
    tracked_old: Option<&Value>,
    manager: &str,
    subresource: &str,
    api_version: &str,
    lt: &dyn Fn(&[String]) -> ListType,
) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let new_set = FieldSet::from_value(tracked_new, lt);
    let changed: Vec<Vec<PathElement>> = new_set
        .members()
        .into_iter()
        .filter(|p| tracked_old.and_then(|o| value_at(o, p)) != value_at(tracked_new, p))
        .collect();
    for e in &mut entries {
        let mine = e.manager == manager && e.operation == "Update" && e.subresource == subresource;
        for p in e.set.members() {
            let gone = value_at(tracked_new, &p).is_none() && e.subresource == subresource;
            if gone || (!mine && changed.contains(&p)) {
                e.set.remove(&p);
            }
        }
        e.set.prune();
    }
    if !changed.is_empty() {
        let pos = entries
            .iter()
            .position(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource);
        let idx = match pos {
            Some(i) => i,
            None => {
                entries.push(Managed {
                    manager: manager.to_string(),
                    operation: "Update".into(),
                    api_version: api_version.to_string(),
                    time: String::new(),
                    subresource: subresource.to_string(),
                    set: FieldSet::default(),
                });
                entries.len() - 1
            }
        };
        for p in &changed {
            entries[idx].set.insert(p);
        }
        entries[idx].time = meta::now();
        entries[idx].api_version = api_version.to_string();
    }
    write_managed(new, &entries);
}

/// A manager as the real server names it in a conflict: `"name"` for an applier, `"name" using
/// VERSION at TIME` for an updater (structured-merge-diff's wording).
fn describe_manager(entry: &Managed) -> String {
    let mut out = format!("\"{}\"", entry.manager);
    if !entry.subresource.is_empty() {
        out.push_str(&format!(" with subresource \"{}\"", entry.subresource));
    }
    if entry.operation == "Update" {
        out.push_str(&format!(" using {}", entry.api_version));
        if !entry.time.is_empty() {
            out.push_str(&format!(" at {}", entry.time));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lt(p: &[String]) -> ListType {
        if p.last().map(String::as_str) == Some("containers") {
            ListType::Map(vec!["name".into()])
        } else {
            ListType::Atomic
        }
    }

    #[test]
    fn defaulted_protocol_key_matches_on_merge() {
        let ports = |p: &[String]| {
            if p.last().map(String::as_str) == Some("ports") {
                ListType::Map(vec!["containerPort".into(), "protocol".into()])
            } else {
                ListType::Atomic
            }
        };
        let mut live = json!({"ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]});
        merge_applied(&mut live, &json!({"ports": [{"containerPort": 80, "name": "web"}]}), &mut Vec::new(), &ports);
        assert_eq!(live, json!({"ports": [{"containerPort": 80, "protocol": "TCP", "name": "web"}]}));
        // Same value through a defaulted key: no conflict with another manager.
        let applied = json!({"ports": [{"containerPort": 80, "name": "web"}]});
        let set = FieldSet::from_value(&applied, &ports);
        for p in set.members() {
            assert_eq!(value_at(&applied, &p).is_some(), value_at(&live, &p).is_some(), "{p:?}");
        }
    }

    #[test]
    fn dropping_a_list_item_removes_it_whole() {
        let base = json!({"metadata": {"name": "d"}});
        let both = json!({"spec": {"containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]}});
        let live = apply(&base, &req(&both, "m", false), &lt).unwrap();
        // Server-side defaults add unowned fields to the items.
        let mut live = live;
        live["spec"]["containers"][1]["imagePullPolicy"] = json!("Always");
        let one = json!({"spec": {"containers": [{"name": "a", "image": "a"}]}});
        let live = apply(&live, &req(&one, "m", false), &lt).unwrap();
        assert_eq!(live["spec"]["containers"], json!([{"name": "a", "image": "a"}]));
    }

    #[test]
    fn fields_v1_round_trips() {
        let v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "i"}], "replicas": 2}});
        let set = FieldSet::from_value(&v, &lt);
        let f = set.to_fields_v1();
        assert_eq!(
            f,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}, "f:replicas": {}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&f), set);
    }

    fn req<'a>(applied: &'a Value, manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest { applied, manager, force, subresource: "", api_version: "v1", ident: ("", "configmaps", "x") }
    }

    #[test]
    fn conflicts_force_and_removal() {
        let a1 = json!({"data": {"a": "1", "b": "1"}});
        let live = apply(&json!({"metadata": {"name": "x"}}), &req(&a1, "one", false), &lt).unwrap();
        // Same value from another manager: shared ownership, no conflict.
        let a2 = json!({"data": {"a": "1"}});
        let live = apply(&live, &req(&a2, "two", false), &lt).unwrap();
        // Different value: conflict.
        let a3 = json!({"data": {"b": "2"}});
        let err = apply(&live, &req(&a3, "two", false), &lt).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.causes[0].field, ".data.b");
        assert_eq!(err.causes[0].reason, "FieldManagerConflict");
        let live = apply(&live, &req(&a3, "two", true), &lt).unwrap();
        assert_eq!(live["data"]["b"], "2");
        // "two" now applies only b, so it no longer owns a; "one" drops everything: a is
        // owned by nobody and removed, b stays with "two".
        let live = apply(&live, &req(&json!({"data": {}}), "one", false), &lt).unwrap();
        assert_eq!(live["data"], json!({"b": "2"}));
        // "two" drops b too.
        let live = apply(&live, &req(&json!({"data": {"c": "3"}}), "two", false), &lt).unwrap();
        assert_eq!(live["data"], json!({"c": "3"}));
    }
}
