//! Which AssumedRoles a change to a Secret concerns, looked up by name
//! rather than by a scan of every AssumedRole: kept in step with the
//! AssumedRole watch, so that a Secret event costs the same whether the
//! cluster holds ten AssumedRoles or ten thousand.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::api::AssumedRole;

/// A name, shared by every map that holds it: at ten thousand AssumedRoles
/// the index costs about 200 bytes each.
type Name = Arc<str>;

/// The names an AssumedRole is filed under, within its namespace.
#[derive(Debug, PartialEq)]
struct Filed {
    /// The Secrets it writes or reads: `spec.secret.name`, and the Secret of
    /// static keys that `spec.source.secretRef` names.
    secrets: Box<[Name]>,
    /// The AssumedRole whose credentials it assumes from
    /// (`spec.source.assumedRoleRef`).
    source_role: Option<Name>,
}

impl Filed {
    /// What `ar` (named `name`) is filed under; its Secret's name shares
    /// `name` when it is the same, as it is by default.
    fn of(ar: &AssumedRole, name: &Name) -> Self {
        let share = |other: String| if *other == **name { name.clone() } else { other.into() };
        let source = &ar.spec.source;
        let mut secrets = vec![share(ar.secret_name())];
        if let Some(r) = &source.secret_ref {
            secrets.push(share(r.name.clone()));
        }
        Self {
            secrets: secrets.into(),
            source_role: source.assumed_role_ref.as_ref().map(|r| share(r.name.clone())),
        }
    }
}

/// One namespace's part of the index.
#[derive(Default)]
struct Names {
    /// Secret name to the AssumedRoles that write or read it.
    by_secret: HashMap<Name, Vec<Name>>,
    /// AssumedRole name to the AssumedRoles that assume from it.
    by_source_role: HashMap<Name, Vec<Name>>,
    filed: HashMap<Name, Filed>,
}

#[derive(Default)]
struct Maps {
    namespaces: HashMap<Name, Names>,
}

fn add(map: &mut HashMap<Name, Vec<Name>>, key: &Name, ar: &Name) {
    let list = map.entry(key.clone()).or_default();
    if !list.contains(ar) {
        // Usually the only one: a first push would make room for four.
        list.reserve_exact(1);
        list.push(ar.clone());
    }
}

fn remove(map: &mut HashMap<Name, Vec<Name>>, key: &Name, ar: &Name) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|n| n != ar);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

impl Names {
    fn unfile(&mut self, name: &str) {
        let Some((name, filed)) = self.filed.remove_entry(name) else {
            return;
        };
        for secret in &filed.secrets {
            remove(&mut self.by_secret, secret, &name);
        }
        if let Some(role) = &filed.source_role {
            remove(&mut self.by_source_role, role, &name);
        }
    }
}

impl Maps {
    fn file(&mut self, ar: &AssumedRole) {
        let namespace = ar.namespace().unwrap_or_default();
        let names = match self.namespaces.get_mut(namespace.as_str()) {
            Some(names) => names,
            None => self.namespaces.entry(namespace.into()).or_default(),
        };
        let name: Name = match names.filed.get_key_value(ar.name_any().as_str()) {
            Some((name, filed)) if *filed == Filed::of(ar, name) => return,
            Some((name, _)) => name.clone(),
            None => ar.name_any().into(),
        };
        names.unfile(&name);
        let filed = Filed::of(ar, &name);
        for secret in &filed.secrets {
            add(&mut names.by_secret, secret, &name);
        }
        if let Some(role) = &filed.source_role {
            add(&mut names.by_source_role, role, &name);
        }
        names.filed.insert(name, filed);
    }

    fn unfile(&mut self, ar: &AssumedRole) {
        let namespace = ar.namespace().unwrap_or_default();
        if let Some(names) = self.namespaces.get_mut(namespace.as_str()) {
            names.unfile(&ar.name_any());
            if names.filed.is_empty() {
                self.namespaces.remove(namespace.as_str());
            }
        }
    }
}

/// The index, shared by a scope's watches.
#[derive(Default)]
pub struct SecretIndex {
    live: RwLock<Maps>,
    /// What a relist has seen so far; swapped in when it is done.
    relist: RwLock<Option<Maps>>,
}

impl SecretIndex {
    /// Follows one event of the AssumedRole watch.
    pub fn apply(&self, event: &watcher::Event<AssumedRole>) {
        match event {
            watcher::Event::Apply(ar) => self.live.write().unwrap_or_else(|e| e.into_inner()).file(ar),
            watcher::Event::Delete(ar) => self.live.write().unwrap_or_else(|e| e.into_inner()).unfile(ar),
            watcher::Event::Init => *self.relist.write().unwrap_or_else(|e| e.into_inner()) = Some(Maps::default()),
            watcher::Event::InitApply(ar) => {
                if let Some(maps) = self.relist.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    maps.file(ar);
                }
            }
            watcher::Event::InitDone => {
                if let Some(maps) = self.relist.write().unwrap_or_else(|e| e.into_inner()).take() {
                    *self.live.write().unwrap_or_else(|e| e.into_inner()) = maps;
                }
            }
        }
    }

    /// The AssumedRoles that a change to `secret` concerns: its controller,
    /// every AssumedRole in its namespace that wants a Secret of its name or
    /// reads static keys from it, and, for an owned Secret, every
    /// AssumedRole that assumes from its owner's credentials.
    pub fn interested(&self, secret: &impl ResourceExt) -> Vec<ObjectRef<AssumedRole>> {
        let ns = secret.namespace().unwrap_or_default();
        let maps = self.live.read().unwrap_or_else(|e| e.into_inner());
        let names = maps.namespaces.get(ns.as_str());
        let named = |map: fn(&Names) -> &HashMap<Name, Vec<Name>>, key: &str| {
            names.and_then(|n| map(n).get(key)).into_iter().flatten().map(|n| &**n)
        };
        let mut found: HashSet<&str> = named(|n| &n.by_secret, &secret.name_any()).collect();
        if let Some(owner) = secret
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "AssumedRole")
        {
            found.insert(&owner.name);
            found.extend(named(|n| &n.by_source_role, &owner.name));
        }
        found.into_iter().map(|name| ObjectRef::new(name).within(&ns)).collect()
    }

    /// How many AssumedRoles are filed (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        let maps = self.live.read().unwrap_or_else(|e| e.into_inner());
        maps.namespaces.values().map(|n| n.filed.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
    use kube::api::{ObjectMeta, PartialObjectMeta};

    use super::*;

    fn role(name: &str, secret: Option<&str>, source: &str) -> AssumedRole {
        let mut ar = AssumedRole::test();
        ar.metadata.name = Some(name.into());
        ar.metadata.namespace = Some("team".into());
        ar.spec.secret.name = secret.map(str::to_string);
        if let Some(keys) = source.strip_prefix("keys:") {
            ar.spec.source.secret_ref = Some(crate::api::SourceSecretRef {
                name: keys.into(),
                ..Default::default()
            });
        }
        if let Some(from) = source.strip_prefix("chain:") {
            ar.spec.source.assumed_role_ref = Some(crate::api::AssumedRoleRef { name: from.into() });
        }
        ar
    }

    fn secret(name: &str, owner: Option<&str>) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret> {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                ..Default::default()
            },
            _phantom: Default::default(),
        };
        if let Some(owner) = owner {
            s.metadata.owner_references = Some(vec![OwnerReference {
                kind: "AssumedRole".into(),
                name: owner.into(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        s
    }

    fn names(mut refs: Vec<ObjectRef<AssumedRole>>) -> Vec<String> {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_secret_wakes_who_writes_it_who_reads_it_and_who_chains_from_its_owner() {
        let index = SecretIndex::default();
        for ar in [
            role("a", Some("shared"), ""),
            role("b", Some("shared"), ""),
            role("c", None, "keys:static"),
            role("d", None, "chain:a"),
            role("e", None, ""),
        ] {
            index.apply(&watcher::Event::Apply(ar));
        }
        assert_eq!(names(index.interested(&secret("shared", None))), ["a", "b"]);
        assert_eq!(names(index.interested(&secret("static", None))), ["c"]);
        // An owned Secret: its owner, whoever wants its name, and whoever
        // chains from the owner.
        assert_eq!(names(index.interested(&secret("shared", Some("a")))), ["a", "b", "d"]);
        // The default Secret name is the AssumedRole's own.
        assert_eq!(names(index.interested(&secret("e", None))), ["e"]);
        assert!(index.interested(&secret("unrelated", None)).is_empty());
        // Another namespace's Secret of the same name concerns nobody here.
        let mut elsewhere = secret("shared", None);
        elsewhere.metadata.namespace = Some("other".into());
        assert!(index.interested(&elsewhere).is_empty());
    }

    #[test]
    fn a_changed_spec_is_filed_anew_and_a_deleted_one_forgotten() {
        let index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(role("a", Some("first"), "")));
        index.apply(&watcher::Event::Apply(role("a", Some("second"), "")));
        assert!(index.interested(&secret("first", None)).is_empty());
        assert_eq!(names(index.interested(&secret("second", None))), ["a"]);
        index.apply(&watcher::Event::Delete(role("a", Some("second"), "")));
        assert!(index.interested(&secret("second", None)).is_empty());
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_it_is_done() {
        let index = SecretIndex::default();
        index.apply(&watcher::Event::Apply(role("gone", None, "")));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(role("new", None, "")));
        // Mid-relist, the old index still answers.
        assert_eq!(names(index.interested(&secret("gone", None))), ["gone"]);
        index.apply(&watcher::Event::InitDone);
        assert!(index.interested(&secret("gone", None)).is_empty());
        assert_eq!(names(index.interested(&secret("new", None))), ["new"]);
    }
}
