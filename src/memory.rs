//! What this process remembers about each AssumedRole between reconciles:
//! the credentials it holds and the failures it counts. Both are lost on a
//! restart, by design: the Secret and the status are the durable record.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use crate::plan::{Held, Remembered};

#[derive(Default)]
struct Entry {
    held: Option<Held>,
    failures: Option<Remembered>,
    written: Option<Written>,
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
        self.with(uid, |e| e.held.clone()).flatten()
    }

    /// Holds `held` for `uid`.
    pub fn hold(&self, uid: &str, held: Held) {
        self.with(uid, |e| e.held = Some(held));
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
