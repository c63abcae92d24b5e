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
/// it again. It keeps the credentials only while this process holds none
/// from that Secret (after a restart): otherwise they are the held ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// The Secret's name.
    pub name: String,
    /// Its resourceVersion.
    pub version: String,
    /// What it holds.
    pub view: SecretView,
}

/// When `view` is the Secret the held set was read from or written to.
fn holds(view: &SecretView, held: &Held) -> bool {
    matches!(&view.observed, Observed::Owned(o) if o.intact && o.issued == Some(held.issued))
}

/// The last status this process wrote for an AssumedRole: the
/// resourceVersion it was written over, and a hash of the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The object's resourceVersion before the write.
    pub over: String,
    /// A hash of the status written.
    pub status: u64,
}

/// The memory of one process, keyed by AssumedRole UID.
#[derive(Default)]
pub struct Memory {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Memory {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut entries = self.entries.lock().ok()?;
        Some(f(entries.entry(uid.to_string()).or_default()))
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
            e.seen.push(seen);
        });
    }

    /// Forgets the Secret `name` that `uid` controlled (deleted, or no
    /// longer the operator's).
    pub fn unsaw(&self, uid: &str, name: &str) {
        self.with(uid, |e| e.seen.retain(|s| s.name != name));
    }

    /// The Secret `name` of `uid` as last delivered, at `version`, with the
    /// credentials filled from the held set when it is the one held. `None`
    /// when it was not delivered at that version, or does not agree with
    /// what this process holds: a GET settles it.
    pub fn seen(&self, uid: &str, name: &str, version: &str) -> Option<SecretView> {
        self.with(uid, |e| {
            let seen = e.seen.iter().find(|s| s.name == name && s.version == version)?;
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
        self.with(uid, |e| e.written.clone()).flatten()
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
    fn seen(ar: &AssumedRole, version: &str) -> (Seen, Timestamp) {
        let secret = fixtures::owned_secret(ar, SignedDuration::from_mins(1), SignedDuration::from_hours(1));
        let view = SecretView::of(ar, Some(&secret), fixtures::KEY);
        let Observed::Owned(owned) = &view.observed else {
            panic!("owned")
        };
        let issued = owned.issued.expect("issued");
        let seen = Seen {
            name: "creds".into(),
            version: version.into(),
            view,
        };
        (seen, issued)
    }

    fn held(issued: Timestamp, written: bool) -> Held {
        Held {
            creds: fixtures::credentials(issued + SignedDuration::from_hours(1)),
            issued,
            spec_hash: String::new(),
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
        let (delivered, issued) = seen(&role(), "7");
        memory.saw("uid", delivered.clone());
        // Nothing held yet: the delivered Secret, with its credentials.
        let view = memory.seen("uid", "creds", "7").expect("a view");
        assert!(view.credentials.is_some());
        assert_eq!(memory.seen("uid", "creds", "8"), None, "another version is read anew");
        assert_eq!(memory.seen("uid", "other", "7"), None);
        // Once the credentials are held, the sighting drops its copy and
        // takes them from the held set.
        memory.hold("uid", held(issued, true));
        let entries = memory.entries.lock().unwrap();
        assert_eq!(entries["uid"].seen[0].view.credentials, None);
        drop(entries);
        assert_eq!(memory.seen("uid", "creds", "7"), Some(delivered.view));
    }

    #[test]
    fn a_delivered_secret_that_disagrees_with_the_held_set_is_read_anew() {
        let memory = Memory::default();
        let (delivered, issued) = seen(&role(), "7");
        memory.saw("uid", delivered.clone());
        // Newer credentials held (a mint whose write the watch has not
        // delivered yet): the Secret must be read.
        memory.hold("uid", held(issued + SignedDuration::from_mins(1), true));
        assert_eq!(memory.seen("uid", "creds", "7"), None);
        // The same set, but its write failed: read too.
        memory.hold("uid", held(issued, false));
        assert_eq!(memory.seen("uid", "creds", "7"), None);
        // Deleted: forgotten.
        memory.hold("uid", held(issued, true));
        memory.unsaw("uid", "creds");
        assert_eq!(memory.seen("uid", "creds", "7"), None);
    }

    #[test]
    fn an_intact_secret_whose_credentials_went_with_a_set_no_longer_held_is_read_anew() {
        let memory = Memory::default();
        let (delivered, issued) = seen(&role(), "7");
        memory.hold("uid", held(issued, true));
        memory.saw("uid", delivered);
        memory.forget("uid");
        assert_eq!(memory.seen("uid", "creds", "7"), None);
    }
}
