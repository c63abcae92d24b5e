//! What this process remembers about each AssumedRole between reconciles:
//! the credentials it holds, the failures it counts, and its Secrets as the
//! owned-Secret watch last delivered them. All is lost on a restart, by
//! design: the Secret and the status are the durable record, and the watch's
//! first list delivers the Secrets again.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use crate::{
    plan::{Held, Remembered, SecretView},
    secret::Observed,
};

#[derive(Default)]
struct Entry {
    /// Boxed: most of an entry's size, and the map holds room for more
    /// entries than it has.
    held: Option<Box<Held>>,
    failures: Option<Remembered>,
    written: Option<Written>,
    /// Usually one: more only while a rename leaves Secrets behind.
    seen: Vec<Seen>,
}

/// A Secret an AssumedRole controls, as the owned-Secret watch delivered it:
/// read with the HMAC key when it arrived, so that a reconcile need not read
/// it again, and the only record of it (the watch keeps no cache of its
/// own). It keeps the credentials only while this process holds none from
/// that Secret (after a restart): otherwise they are the held ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// The Secret's name.
    pub name: String,
    /// Its UID: a Secret left behind by a rename is deleted only as that
    /// object.
    pub uid: Option<String>,
    /// What it holds.
    pub view: SecretView,
    /// Which watch delivered it, and in which of its lists: a Secret its
    /// last list no longer delivered was deleted while the watch was away.
    pub from: Sighting,
}

/// Which owned-Secret watch (one per watched scope) delivered a Secret, and
/// in which of its lists (each relist starts a new one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sighting {
    /// The watch.
    pub scope: u16,
    /// Its list.
    pub list: u32,
}

/// When `view` is the Secret the held set was read from or written to.
fn holds(view: &SecretView, held: &Held) -> bool {
    matches!(&view.observed, Observed::Owned(o) if o.intact && o.issued == Some(held.issued))
}

/// The last status this process wrote for an AssumedRole: the
/// resourceVersion it was written over, and the status, both as hashes (no
/// allocation per AssumedRole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// A hash of the object's resourceVersion before the write.
    over: u64,
    /// A hash of the status written.
    status: u64,
}

impl Written {
    /// The status hashed as `status`, written over `resource_version`.
    pub fn new(resource_version: &str, status: u64) -> Self {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let over = BuildHasherDefault::<DefaultHasher>::default().hash_one(resource_version);
        Self { over, status }
    }
}

/// The memory of one process, keyed by AssumedRole UID.
#[derive(Default)]
pub struct Memory {
    entries: Mutex<HashMap<u128, Entry>>,
}

/// An AssumedRole's UID as a key: the 128 bits of the UUID the API server
/// assigns (a hash of the text, for anything else), so that a key costs no
/// allocation.
fn key(uid: &str) -> u128 {
    let mut bits = 0u128;
    let mut digits = 0;
    for c in uid.chars().filter(|c| *c != '-') {
        match c.to_digit(16) {
            Some(d) if digits < 32 => {
                bits = bits << 4 | u128::from(d);
                digits += 1;
            }
            _ => {
                digits = 0;
                break;
            }
        }
    }
    if digits == 32 {
        return bits;
    }
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    u128::from(hasher.hash_one((uid, 0))) << 64 | u128::from(hasher.hash_one((uid, 1)))
}

impl Memory {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock().ok()?;
        Some(f(entries.entry(key(uid)).or_default()))
    }

    /// The credentials held for `uid`.
    pub fn held(&self, uid: &str) -> Option<Held> {
        self.with(uid, |e| e.held.as_deref().cloned()).flatten()
    }

    /// Holds `held` for `uid`.
    pub fn hold(&self, uid: &str, held: Held) {
        self.with(uid, |e| {
            for seen in &mut e.seen {
                if seen.name == held.secret_name && holds(&seen.view, &held) {
                    seen.view.credentials = None;
                }
            }
            e.held = Some(Box::new(held));
        });
    }

    /// Remembers a Secret that `uid` controls, as the watch delivered it.
    pub fn saw(&self, uid: &str, mut seen: Seen) {
        self.with(uid, |e| {
            if e.held
                .as_ref()
                .is_some_and(|held| held.secret_name == seen.name && holds(&seen.view, held))
            {
                seen.view.credentials = None;
            }
            e.seen.retain(|s| s.name != seen.name);
            // Room for one: a first push would make room for four.
            e.seen.reserve_exact(1);
            e.seen.push(seen);
        });
    }

    /// Forgets the Secret `name` that `uid` controlled (deleted, or no
    /// longer the operator's).
    pub fn unsaw(&self, uid: &str, name: &str) {
        self.with(uid, |e| e.seen.retain(|s| s.name != name));
    }

    /// Forgets every Secret that the watch of `scope` delivered before its
    /// list `list`, once that list is complete: those were deleted while
    /// the watch was away. Returns how many.
    pub fn relisted(&self, scope: u16, list: u32) -> usize {
        let Ok(mut entries) = self.entries.lock() else {
            return 0;
        };
        let mut gone = 0;
        for entry in entries.values_mut() {
            let before = entry.seen.len();
            entry.seen.retain(|s| s.from.scope != scope || s.from.list >= list);
            gone += before - entry.seen.len();
        }
        gone
    }

    /// The Secrets `uid` controls under other names than `current`: left
    /// behind by a rename.
    pub fn others_seen(&self, uid: &str, current: &str) -> Vec<Seen> {
        self.with(uid, |e| e.seen.iter().filter(|s| s.name != current).cloned().collect())
            .unwrap_or_default()
    }

    /// The Secret `name` of `uid` as last delivered, with the credentials
    /// filled from the held set when it is the one held. `None` when it was
    /// not delivered, or does not agree with what this process holds: a GET
    /// settles it.
    pub fn seen(&self, uid: &str, name: &str) -> Option<SecretView> {
        self.with(uid, |e| {
            let seen = e.seen.iter().find(|s| s.name == name)?;
            let mut view = seen.view.clone();
            match &e.held {
                Some(held) if held.secret_name == name => {
                    if !(held.written && holds(&view, held)) {
                        return None;
                    }
                    view.credentials = Some(held.creds.clone());
                }
                // Intact, but its credentials went with a held set this
                // process no longer holds.
                _ if matches!(&view.observed, Observed::Owned(o) if o.intact) && view.credentials.is_none() => {
                    return None;
                }
                _ => {}
            }
            Some(view)
        })
        .flatten()
    }

    /// Drops the credentials held for `uid` (its grant was revoked).
    pub fn forget(&self, uid: &str) {
        self.with(uid, |e| e.held = None);
    }

    /// The failures remembered for `uid`.
    pub fn failures(&self, uid: &str) -> Option<Remembered> {
        self.with(uid, |e| e.failures.clone()).flatten()
    }

    /// Remembers the failures of `uid`, or forgets them after a success.
    pub fn set_failures(&self, uid: &str, failures: Option<Remembered>) {
        self.with(uid, |e| e.failures = failures);
    }

    /// The last status written for `uid`.
    pub fn written(&self, uid: &str) -> Option<Written> {
        self.with(uid, |e| e.written).flatten()
    }

    /// Remembers the status just written for `uid`.
    pub fn set_written(&self, uid: &str, written: Written) {
        self.with(uid, |e| e.written = Some(written));
    }

    /// Forgets every AssumedRole whose UID is not in `live`; returns how many.
    pub fn retain(&self, live: &HashSet<String>) -> usize {
        let Ok(mut entries) = self.entries.lock() else {
            return 0;
        };
        let before = entries.len();
        let live: HashSet<u128> = live.iter().map(|uid| key(uid)).collect();
        entries.retain(|uid, _| live.contains(uid));
        before - entries.len()
    }
}

#[cfg(test)]
mod tests {
    use jiff::{SignedDuration, Timestamp};

    use super::*;
    use crate::{api::AssumedRole, fixtures, plan::SecretView};

    /// The Secret of `ar` as the watch would deliver it, issued a minute ago.
    fn seen(ar: &AssumedRole) -> (Seen, Timestamp) {
        let secret = fixtures::owned_secret(ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
        let view = SecretView::of(ar, Some(&secret), fixtures::KEY);
        let Observed::Owned(owned) = &view.observed else {
            panic!("owned")
        };
        let issued = owned.issued.expect("issued");
        let seen = Seen {
            name: "creds".into(),
            uid: Some("secret-uid".into()),
            view,
            from: Sighting::default(),
        };
        (seen, issued)
    }

    fn held(issued: Timestamp, written: bool) -> Held {
        Held {
            creds: fixtures::credentials(issued + SignedDuration::from_hours(1)),
            issued,
            spec_hash: "".into(),
            assumed_role_arn: None,
            source_identity: None,
            secret_name: "creds".into(),
            written,
            restores: 0,
            source_key: None,
        }
    }

    fn role() -> AssumedRole {
        let mut ar = AssumedRole::test();
        ar.spec.secret.name = Some("creds".into());
        ar
    }

    #[test]
    fn after_a_restart_the_delivered_secret_stands_in_for_a_get_and_its_credentials_are_kept_once() {
        let memory = Memory::default();
        let (delivered, issued) = seen(&role());
        memory.saw("uid", delivered.clone());
        // Nothing held yet: the delivered Secret, with its credentials.
        let view = memory.seen("uid", "creds").expect("a view");
        assert!(view.credentials.is_some());
        assert_eq!(memory.seen("uid", "other"), None);
        // Once the credentials are held, the sighting drops its copy and
        // takes them from the held set.
        memory.hold("uid", held(issued, true));
        let entries = memory.entries.lock().unwrap();
        assert_eq!(entries[&key("uid")].seen[0].view.credentials, None);
        drop(entries);
        assert_eq!(memory.seen("uid", "creds"), Some(delivered.view));
    }

    #[test]
    fn a_delivered_secret_that_disagrees_with_the_held_set_is_read_anew() {
        let memory = Memory::default();
        let (delivered, issued) = seen(&role());
        memory.saw("uid", delivered.clone());
        // Newer credentials held (a mint whose write the watch has not
        // delivered yet): the Secret must be read.
        memory.hold("uid", held(issued + SignedDuration::from_mins(1), true));
        assert_eq!(memory.seen("uid", "creds"), None);
        // The same set, but its write failed: read too.
        memory.hold("uid", held(issued, false));
        assert_eq!(memory.seen("uid", "creds"), None);
        // Deleted: forgotten.
        memory.hold("uid", held(issued, true));
        memory.unsaw("uid", "creds");
        assert_eq!(memory.seen("uid", "creds"), None);
    }

    #[test]
    fn an_intact_secret_whose_credentials_went_with_a_set_no_longer_held_is_read_anew() {
        let memory = Memory::default();
        let (delivered, issued) = seen(&role());
        memory.hold("uid", held(issued, true));
        memory.saw("uid", delivered);
        memory.forget("uid");
        assert_eq!(memory.seen("uid", "creds"), None);
    }

    #[test]
    fn a_relist_forgets_the_secrets_it_no_longer_delivers_and_only_those_of_its_watch() {
        let memory = Memory::default();
        let (delivered, _) = seen(&role());
        let at = |scope, list, name: &str| Seen {
            name: name.into(),
            from: Sighting { scope, list },
            ..delivered.clone()
        };
        memory.saw("a", at(0, 1, "creds"));
        memory.saw("a", at(0, 1, "renamed"));
        memory.saw("b", at(1, 1, "creds"));
        // The watch of scope 0 lists again and delivers only `creds`.
        memory.saw("a", at(0, 2, "creds"));
        assert_eq!(memory.relisted(0, 2), 1);
        assert!(memory.seen("a", "creds").is_some());
        assert_eq!(memory.seen("a", "renamed"), None, "deleted while the watch was away");
        assert!(memory.seen("b", "creds").is_some(), "another watch's Secret stays");
        assert_eq!(memory.relisted(0, 2), 0);
    }

    #[test]
    fn the_secrets_left_behind_by_a_rename_are_those_under_other_names() {
        let memory = Memory::default();
        let (delivered, _) = seen(&role());
        memory.saw("uid", delivered.clone());
        memory.saw(
            "uid",
            Seen {
                name: "old".into(),
                ..delivered
            },
        );
        let others: Vec<String> = memory.others_seen("uid", "creds").into_iter().map(|s| s.name).collect();
        assert_eq!(others, ["old"]);
        assert!(memory.others_seen("uid", "old").iter().all(|s| s.name == "creds"));
        assert!(memory.others_seen("other-uid", "creds").is_empty());
    }

    #[test]
    fn a_uuid_is_its_own_key_and_other_text_is_hashed_apart() {
        assert_eq!(
            key("53228462-38c9-4fad-b7ef-f04127d04ebc"),
            0x5322_8462_38c9_4fad_b7ef_f041_27d0_4ebc
        );
        assert_ne!(key("uid-1"), key("uid-2"));
        assert_eq!(key("uid-1"), key("uid-1"));
        assert_ne!(
            key("53228462-38c9-4fad-b7ef-f04127d04eb"),
            key("53228462-38c9-4fad-b7ef-f04127d04eb0")
        );
    }
}
