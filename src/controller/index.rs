//! Which AssumedRoles a change to a Secret concerns, looked up by name
//! rather than by a scan of every AssumedRole: kept in step with the
//! AssumedRole watch, so that a Secret event costs the same whether the
//! cluster holds ten AssumedRoles or ten thousand.

use std::{
    collections::{HashMap, HashSet},
    sync::RwLock,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    api::PartialObjectMeta,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::api::AssumedRole;

/// A namespace and a name.
type Key = (String, String);

/// The names an AssumedRole is filed under.
#[derive(Clone, Debug, Default, PartialEq)]
struct Filed {
    /// The Secrets it writes or reads: `spec.secret.name`, and the Secret of
    /// static keys that `spec.source.secretRef` names.
    secrets: Vec<Key>,
    /// The AssumedRole whose credentials it assumes from
    /// (`spec.source.assumedRoleRef`).
    source_role: Option<Key>,
}

impl Filed {
    fn of(ar: &AssumedRole) -> Self {
        let ns = ar.namespace().unwrap_or_default();
        let source = &ar.spec.source;
        let mut secrets = vec![(ns.clone(), ar.secret_name())];
        if let Some(r) = &source.secret_ref {
            secrets.push((ns.clone(), r.name.clone()));
        }
        Self {
            secrets,
            source_role: source.assumed_role_ref.as_ref().map(|r| (ns, r.name.clone())),
        }
    }
}

#[derive(Default)]
struct Maps {
    by_secret: HashMap<Key, HashSet<ObjectRef<AssumedRole>>>,
    by_source_role: HashMap<Key, HashSet<ObjectRef<AssumedRole>>>,
    filed: HashMap<ObjectRef<AssumedRole>, Filed>,
}

impl Maps {
    fn file(&mut self, ar: &AssumedRole) {
        let key = ObjectRef::from_obj(ar);
        let filed = Filed::of(ar);
        if self.filed.get(&key) == Some(&filed) {
            return;
        }
        self.unfile(&key);
        for secret in &filed.secrets {
            self.by_secret.entry(secret.clone()).or_default().insert(key.clone());
        }
        if let Some(role) = &filed.source_role {
            self.by_source_role.entry(role.clone()).or_default().insert(key.clone());
        }
        self.filed.insert(key, filed);
    }

    fn unfile(&mut self, key: &ObjectRef<AssumedRole>) {
        let Some(filed) = self.filed.remove(key) else { return };
        let remove = |map: &mut HashMap<Key, HashSet<ObjectRef<AssumedRole>>>, k: &Key| {
            if let Some(set) = map.get_mut(k) {
                set.remove(key);
                if set.is_empty() {
                    map.remove(k);
                }
            }
        };
        for secret in &filed.secrets {
            remove(&mut self.by_secret, secret);
        }
        if let Some(role) = &filed.source_role {
            remove(&mut self.by_source_role, role);
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
            watcher::Event::Delete(ar) => self
                .live
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .unfile(&ObjectRef::from_obj(ar)),
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
    pub fn interested(&self, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<AssumedRole>> {
        let ns = secret.namespace().unwrap_or_default();
        let maps = self.live.read().unwrap_or_else(|e| e.into_inner());
        let mut found: HashSet<ObjectRef<AssumedRole>> = maps
            .by_secret
            .get(&(ns.clone(), secret.name_any()))
            .cloned()
            .unwrap_or_default();
        if let Some(owner) = secret
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "AssumedRole")
        {
            found.insert(ObjectRef::new(&owner.name).within(&ns));
            if let Some(chained) = maps.by_source_role.get(&(ns.clone(), owner.name.clone())) {
                found.extend(chained.iter().cloned());
            }
        }
        found.into_iter().collect()
    }

    /// How many AssumedRoles are filed (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live.read().unwrap_or_else(|e| e.into_inner()).filed.len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

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
