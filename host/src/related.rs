//! The inverted index of related objects: which parents selected an object, so a change to a
//! related object (a ConfigMap, a Secret, another resource a plugin reads) reconciles exactly
//! those parents; and the parser of the label selectors plugins give.
//!
//! Each parent selects objects of a kind by name, or by label selector. The index keys
//! name selections by (kind, namespace, name), and label selections by one equality
//! requirement of theirs (kind, namespace, key, value), so looking up a changed object costs
//! the selections that could match it — never a scan of every parent. A selector with no
//! equality requirement (only `In`, `NotIn`, `Exists`, `DoesNotExist`) falls in its kind's
//! and namespace's open bucket, scanned for every object of that kind there. A selection with no
//! namespace (every namespace, scope cluster) is found for an object of any namespace.
//!
//! Pure: no API, no clock. The owner replaces a parent's selections after each `related()`
//! call ([`RelatedIndex::set`]), forgets a deleted parent ([`RelatedIndex::remove`]), and
//! sweeps after a relist ([`RelatedIndex::retain`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use kube::core::{Expression, Selector, SelectorExt};

/// A related kind, as a plugin declares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindRef {
    /// API group (`""` for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
}

/// What one parent selects.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The kind selected.
    pub kind: KindRef,
    /// The namespace searched; `None` for a cluster-scoped kind.
    pub namespace: Option<String>,
    /// By name or by labels.
    pub target: Target,
}

/// How a selection picks objects.
#[derive(Clone, Debug)]
pub enum Target {
    /// The object of this name.
    Name(String),
    /// Every object whose labels match.
    Labels(Selector),
}

/// An object that changed: its kind, namespace, name and labels.
#[derive(Clone, Copy, Debug)]
pub struct Changed<'a> {
    /// Its kind.
    pub kind: &'a KindRef,
    /// Its namespace (`None` when cluster-scoped).
    pub namespace: Option<&'a str>,
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// A declared kind, by its position in [`RelatedIndex::kinds`] (a plugin declares few).
type Kind = u16;
/// A shared string: a namespace, label key or value (interned), or an object's name.
type Text = Arc<str>;
/// A kind in a namespace (`None`: cluster-scoped, or every namespace).
type Place = (Kind, Option<Text>);
/// An object of a kind by `namespace/name` (`/name`: cluster-scoped, or every namespace; an
/// object name has no `/`): one string per name, where a namespace and a name were two.
type Named = (Kind, Text);
/// A `key = value` label of a kind in a namespace.
type Labelled = (Kind, Option<Text>, Text, Text);
/// Parents with the selector they chose.
type Selectors<P> = Vec<(P, Selector)>;

/// Where one selection of a parent is filed, to take it out again (a label bucket boxed: by
/// name is the common case, and every slot is as large as the largest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Name(Named),
    Label(Box<Labelled>),
    Open(Place),
}

/// Parents by what they selected. `P` names a parent (its UID, or its namespace and name).
///
/// Compact, since it holds one entry per reference of every parent: kinds are small numbers,
/// namespaces and label keys and values are interned, a name is allocated once for its key and
/// the slot that removes it, and the parents of one name are a plain list (most names have one).
#[derive(Debug)]
pub struct RelatedIndex<P> {
    kinds: Vec<KindRef>,
    interned: HashSet<Text>,
    by_name: HashMap<Named, Vec<P>>,
    by_label: HashMap<Labelled, Selectors<P>>,
    open: HashMap<Place, Selectors<P>>,
    /// Each parent's slots, to replace or remove its selections.
    slots: HashMap<P, Box<[Slot]>>,
}

impl<P> Default for RelatedIndex<P> {
    fn default() -> Self {
        RelatedIndex {
            kinds: Vec::new(),
            interned: HashSet::new(),
            by_name: HashMap::new(),
            by_label: HashMap::new(),
            open: HashMap::new(),
            slots: HashMap::new(),
        }
    }
}

impl<P: Clone + Eq + Hash> RelatedIndex<P> {
    /// An empty index.
    pub fn new() -> RelatedIndex<P> {
        RelatedIndex::default()
    }

    /// The shared copy of `text` (a namespace, a label key or value): stored once however many
    /// selections name it. Never forgotten: there are few.
    pub fn intern(&mut self, text: &str) -> Text {
        if let Some(shared) = self.interned.get(text) {
            return shared.clone();
        }
        let shared: Text = text.into();
        self.interned.insert(shared.clone());
        shared
    }

    fn kind(&mut self, kind: &KindRef) -> Kind {
        match self.kinds.iter().position(|k| k == kind) {
            Some(i) => i as Kind,
            None => {
                self.kinds.push(kind.clone());
                (self.kinds.len() - 1) as Kind
            }
        }
    }

    /// Replaces what `parent` selects with `selections`.
    pub fn set(&mut self, parent: &P, selections: Vec<Selection>) {
        self.remove(parent);
        let mut slots = Vec::with_capacity(selections.len());
        for Selection { kind, namespace, target } in selections {
            let kind = self.kind(&kind);
            let namespace = namespace.map(|ns| self.intern(&ns));
            let slot = match target {
                Target::Name(name) => {
                    let key: Named = (kind, named(namespace.as_deref(), &name));
                    // Most names have one parent: no room kept for more.
                    let parents = self.by_name.entry(key.clone()).or_insert_with(|| Vec::with_capacity(1));
                    if !parents.contains(parent) {
                        parents.push(parent.clone());
                    }
                    Slot::Name(key)
                }
                Target::Labels(selector) => match equality(&selector) {
                    Some((key, value)) => {
                        let bucket: Labelled = (kind, namespace, self.intern(&key), self.intern(&value));
                        self.by_label.entry(bucket.clone()).or_default().push((parent.clone(), selector));
                        Slot::Label(Box::new(bucket))
                    }
                    None => {
                        let place: Place = (kind, namespace);
                        self.open.entry(place.clone()).or_default().push((parent.clone(), selector));
                        Slot::Open(place)
                    }
                },
            };
            slots.push(slot);
        }
        if !slots.is_empty() {
            self.slots.insert(parent.clone(), slots.into_boxed_slice());
        }
    }

    /// Forgets what `parent` selected (it was deleted, or selects nothing now).
    pub fn remove(&mut self, parent: &P) {
        let Some(slots) = self.slots.remove(parent) else { return };
        for slot in slots {
            match slot {
                Slot::Name(key) => {
                    if let Some(parents) = self.by_name.get_mut(&key) {
                        parents.retain(|p| p != parent);
                        if parents.is_empty() {
                            self.by_name.remove(&key);
                        }
                    }
                }
                Slot::Label(bucket) => remove_from(&mut self.by_label, &*bucket, parent),
                Slot::Open(place) => remove_from(&mut self.open, &place, parent),
            }
        }
    }

    /// Keeps only the parents `live` says exist (after a relist of the parents).
    pub fn retain(&mut self, live: impl Fn(&P) -> bool) {
        let gone: Vec<P> = self.slots.keys().filter(|p| !live(p)).cloned().collect();
        for parent in gone {
            self.remove(&parent);
        }
    }

    /// The parents that selected `changed`, each once, and how many selections were examined
    /// to find them (the cost: the selections that could match, not the parents).
    pub fn parents_of(&self, changed: Changed<'_>) -> (Vec<P>, usize) {
        let mut found: Vec<P> = Vec::new();
        let mut seen: HashSet<&P> = HashSet::new();
        let mut examined = 0;
        let Some(kind) = self.kinds.iter().position(|k| k == changed.kind) else { return (found, examined) };
        let kind = kind as Kind;
        // The object's own namespace, then (for a namespaced object) selections of every
        // namespace. A namespace no selection names is not interned: nothing to find there.
        let own = changed.namespace.and_then(|ns| self.interned.get(ns).cloned());
        for namespace in own.map(Some).into_iter().chain(std::iter::once(None)) {
            if let Some(parents) = self.by_name.get(&(kind, named(namespace.as_deref(), changed.name))) {
                examined += parents.len();
                for parent in parents {
                    if seen.insert(parent) {
                        found.push(parent.clone());
                    }
                }
            }
            let labelled = changed.labels.iter().filter_map(|(key, value)| {
                let (key, value) = (self.interned.get(key.as_str())?, self.interned.get(value.as_str())?);
                self.by_label.get(&(kind, namespace.clone(), key.clone(), value.clone()))
            });
            let open = self.open.get(&(kind, namespace.clone()));
            for (parent, selector) in labelled.chain(open).flatten() {
                examined += 1;
                if selector.matches(changed.labels) && seen.insert(parent) {
                    found.push(parent.clone());
                }
            }
        }
        (found, examined)
    }

    /// How many parents select anything.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no parent selects anything.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Parses a label selector in the syntax of `kubectl get -l`: comma-separated requirements
/// `key=value` (or `==`), `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists) and
/// `!key` (does not exist). `""` selects everything. The error says which requirement is wrong.
pub fn parse_labels(text: &str) -> Result<Selector, String> {
    let mut expressions = Vec::new();
    for requirement in split_requirements(text)? {
        let requirement = requirement.trim();
        if requirement.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(format!("{text:?} has an empty requirement (two commas, or one at an end)"));
        }
        expressions.push(parse_requirement(requirement)?);
    }
    Ok(expressions.into_iter().collect())
}

/// The requirements of a selector: split on the commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| format!("{text:?} closes a parenthesis it never opened"))?
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{text:?} leaves a parenthesis open"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(req: &str) -> Result<Expression, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) || k.contains(['=', '!', '(', ')']) {
            return Err(format!("requirement {req:?} has no valid label key"));
        }
        Ok(k.to_string())
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if v.contains(char::is_whitespace) || v.contains(['=', '!', '(', ')', ',']) {
            return Err(format!("requirement {req:?} has an invalid value {v:?}"));
        }
        Ok(v.to_string())
    };
    if let Some((k, v)) = req.split_once("!=") {
        return Ok(Expression::NotEqual(key(k)?, value(v)?));
    }
    if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
        return Ok(Expression::Equal(key(k)?, value(v)?));
    }
    if let Some(k) = req.strip_prefix('!') {
        return Ok(Expression::DoesNotExist(key(k)?));
    }
    for (op, negated) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = req.split_once(op) {
            let set = set.trim();
            let inner = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| {
                format!("requirement {req:?}: the values of `{}` go in parentheses, e.g. (a,b)", op.trim())
            })?;
            let values = inner.split(',').map(value).collect::<Result<std::collections::BTreeSet<_>, _>>()?;
            return Ok(if negated { Expression::NotIn(key(k)?, values) } else { Expression::In(key(k)?, values) });
        }
    }
    Ok(Expression::Exists(key(req)?))
}

/// One `key = value` requirement of `selector`, to file it under; the smallest, so the same
/// selector is always filed alike.
fn equality(selector: &Selector) -> Option<(String, String)> {
    selector
        .clone()
        .into_iter()
        .filter_map(|e| match e {
            Expression::Equal(key, value) => Some((key, value)),
            Expression::In(key, values) if values.len() == 1 => values.into_iter().next().map(|v| (key, v)),
            _ => None,
        })
        .min()
}

/// The key of a name in a namespace (or none): `namespace/name`, `/name`.
fn named(namespace: Option<&str>, name: &str) -> Text {
    format!("{}/{name}", namespace.unwrap_or_default()).into()
}

fn remove_from<K: Eq + Hash, P: Eq>(map: &mut HashMap<K, Selectors<P>>, key: &K, parent: &P) {
    if let Some(entries) = map.get_mut(key) {
        entries.retain(|(p, _)| p != parent);
        if entries.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn config_maps() -> KindRef {
        KindRef { group: String::new(), kind: "ConfigMap".into() }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn by_labels(pairs: &[(&str, &str)]) -> Target {
        let selector = LabelSelector { match_labels: Some(labels(pairs)), match_expressions: None };
        Target::Labels(Selector::try_from(selector).unwrap())
    }

    fn exists(key: &str) -> Target {
        let requirement = LabelSelectorRequirement { key: key.into(), operator: "Exists".into(), values: None };
        let selector = LabelSelector { match_labels: None, match_expressions: Some(vec![requirement]) };
        Target::Labels(Selector::try_from(selector).unwrap())
    }

    fn select(namespace: &str, target: Target) -> Selection {
        Selection { kind: config_maps(), namespace: Some(namespace.into()), target }
    }

    fn changed<'a>(kind: &'a KindRef, ns: &'a str, name: &'a str, labels: &'a BTreeMap<String, String>) -> Changed<'a> {
        Changed { kind, namespace: Some(ns), name, labels }
    }

    #[test]
    fn an_object_finds_the_parents_that_named_it_or_whose_labels_it_matches() {
        let mut index = RelatedIndex::new();
        index.set(&"web", vec![select("shop", Target::Name("web-config".into()))]);
        index.set(&"api", vec![select("shop", by_labels(&[("app", "api"), ("tier", "back")]))]);
        index.set(&"any", vec![select("shop", exists("team"))]);
        index.set(&"other-ns", vec![select("blog", Target::Name("web-config".into()))]);
        let kind = config_maps();
        let none = labels(&[]);
        assert_eq!(index.parents_of(changed(&kind, "shop", "web-config", &none)).0, ["web"]);
        let api = labels(&[("app", "api"), ("tier", "back")]);
        assert_eq!(index.parents_of(changed(&kind, "shop", "x", &api)).0, ["api"]);
        let partly = labels(&[("app", "api")]);
        assert!(index.parents_of(changed(&kind, "shop", "x", &partly)).0.is_empty(), "the whole selector must match");
        let team = labels(&[("team", "a"), ("app", "api"), ("tier", "back")]);
        let mut both = index.parents_of(changed(&kind, "shop", "x", &team)).0;
        both.sort();
        assert_eq!(both, ["any", "api"]);
        let secrets = KindRef { group: String::new(), kind: "Secret".into() };
        assert!(index.parents_of(changed(&secrets, "shop", "web-config", &none)).0.is_empty(), "another kind");
    }

    #[test]
    fn a_parent_selecting_twice_is_found_once_and_new_selections_replace_old_ones() {
        let mut index = RelatedIndex::new();
        let twice = vec![select("shop", Target::Name("c".into())), select("shop", by_labels(&[("app", "web")]))];
        index.set(&"web", twice);
        let (kind, web) = (config_maps(), labels(&[("app", "web")]));
        assert_eq!(index.parents_of(changed(&kind, "shop", "c", &web)).0, ["web"]);
        index.set(&"web", vec![select("shop", Target::Name("d".into()))]);
        assert!(index.parents_of(changed(&kind, "shop", "c", &web)).0.is_empty());
        assert_eq!(index.parents_of(changed(&kind, "shop", "d", &web)).0, ["web"]);
        index.remove(&"web");
        assert!(index.parents_of(changed(&kind, "shop", "d", &web)).0.is_empty());
        assert!(index.is_empty() && index.by_name.is_empty() && index.by_label.is_empty());
    }

    #[test]
    fn a_relist_sweeps_the_parents_that_are_gone() {
        let mut index = RelatedIndex::new();
        for parent in ["a", "b", "c"] {
            index.set(&parent.to_string(), vec![select("shop", Target::Name("shared".into()))]);
        }
        index.retain(|p| p != "b");
        let (kind, none) = (config_maps(), labels(&[]));
        let mut left = index.parents_of(changed(&kind, "shop", "shared", &none)).0;
        left.sort();
        assert_eq!(left, ["a", "c"]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn label_selectors_parse_as_kubectl_writes_them() {
        let sel = parse_labels("app=web, tier in (a,b),!legacy,team,env!=dev,x==y,zone notin (z)").unwrap();
        let matching = labels(&[("app", "web"), ("tier", "b"), ("team", "t"), ("env", "prod"), ("x", "y")]);
        assert!(sel.matches(&matching));
        let mut legacy = matching.clone();
        legacy.insert("legacy".into(), "1".into());
        assert!(!sel.matches(&legacy));
        assert!(parse_labels("").unwrap().selects_all());
        for (bad, says) in [("app=a b", "invalid value"), ("a,,b", "empty requirement"), ("tier in a,b", "parentheses")]
        {
            let err = parse_labels(bad).map(|s| s.to_string()).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(parse_labels("tier in (a").unwrap_err().contains("open"));
    }

    #[test]
    fn a_selection_of_every_namespace_finds_objects_in_any() {
        let mut index = RelatedIndex::new();
        index.set(&"all", vec![Selection { kind: config_maps(), namespace: None, target: by_labels(&[("app", "x")]) }]);
        let (kind, x) = (config_maps(), labels(&[("app", "x")]));
        assert_eq!(index.parents_of(changed(&kind, "anywhere", "c", &x)).0, ["all"]);
    }

    #[test]
    fn a_lookup_costs_the_matching_selections_not_the_parents() {
        let mut index = RelatedIndex::new();
        for i in 0..10_000 {
            let app = format!("app-{i}");
            index.set(&i, vec![select("shop", by_labels(&[("app", app.as_str()), ("tier", "web")]))]);
        }
        let kind = config_maps();
        let one = labels(&[("app", "app-42"), ("tier", "web")]);
        let (found, examined) = index.parents_of(changed(&kind, "shop", "x", &one));
        assert_eq!(found, [42]);
        assert!(examined <= 2, "examined {examined} selections for one match");
    }
}
