//! Publishes `events.k8s.io/v1` Events about AssumedRoles, with names and
//! notes fitted to the API server's limits ([`crate::events`]).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::events::v1::{Event as K8sEvent, EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::events::EventType,
};
use serde_json::json;

use super::FIELD_MANAGER;
use crate::{api::AssumedRole, events};

/// Folds repeats of an Event into a series for this long, as kube-runtime's
/// recorder does.
const EVENT_SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Publishes `events.k8s.io/v1` Events about AssumedRoles. Like
/// kube-runtime's `Recorder`, it folds a repeat into the first Event's
/// series; unlike it, it fits the Event's name and note to the API server's
/// limits whatever the object's name and the message (see
/// [`crate::events`]).
pub struct EventPublisher {
    client: Client,
    instance: String,
    series: tokio::sync::Mutex<Series>,
}

/// The Events published within [`EVENT_SERIES_TTL`], keyed by a hash of what
/// makes two Events the same one, repeated: the object (by UID), the reason,
/// the type and the note. Only what a repeat needs is kept (the Event's name,
/// its count and when it was last seen), not the Event: one is published per
/// mint, so at scale there is one per AssumedRole.
#[derive(Default)]
struct Series {
    by_key: HashMap<u64, Published>,
    /// When the map was last rid of the expired ones: at most once per
    /// [`PRUNE_EVERY`], not at every publish.
    pruned: Option<Timestamp>,
}

struct Published {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

const PRUNE_EVERY: SignedDuration = SignedDuration::from_secs(30);

impl Series {
    fn key(uid: &str, reason: &str, type_: &str, note: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        (uid, reason, type_, note).hash(&mut hasher);
        hasher.finish()
    }

    /// The repeat of an Event still within its series, counted: its name and
    /// the series to patch it with.
    fn repeat(&mut self, key: u64, now: Timestamp) -> Option<(String, EventSeries)> {
        if self.pruned.is_none_or(|t| t + PRUNE_EVERY <= now) {
            self.by_key.retain(|_, p| p.last + EVENT_SERIES_TTL > now);
            self.by_key.shrink_to_fit();
            self.pruned = Some(now);
        }
        let previous = self.by_key.get_mut(&key).filter(|p| p.last + EVENT_SERIES_TTL > now)?;
        previous.count += 1;
        previous.last = now;
        Some((
            previous.name.to_string(),
            EventSeries {
                count: previous.count,
                last_observed_time: MicroTime(now),
            },
        ))
    }
}

impl EventPublisher {
    /// A publisher that reports as `instance` (the pod's name), or as the
    /// controller when there is none.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            client,
            instance: instance.unwrap_or_else(|| FIELD_MANAGER.into()),
            series: tokio::sync::Mutex::default(),
        }
    }

    /// Publishes one Event regarding `ar`, or counts a repeat of the last one
    /// with the same type and reason.
    pub async fn publish(
        &self,
        ar: &AssumedRole,
        type_: EventType,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        self.publish_regarding(ar.object_ref(&()), type_, reason, note, now)
            .await
    }

    /// Publishes one Event regarding the object `regarding`, or counts a
    /// repeat of the last one with the same type and reason.
    pub async fn publish_regarding(
        &self,
        regarding: k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name = regarding.name.clone().unwrap_or_default();
        let type_name = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let note = events::fit_note(note);
        let key = Series::key(regarding.uid.as_deref().unwrap_or_default(), reason, type_name, &note);
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        // The lock is never held across a call to the API server.
        let repeat = self.series.lock().await.repeat(key, now);
        if let Some((event_name, series)) = repeat {
            let patch = json!({ "series": series });
            api.patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(events::event_name(&name, now)),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(reason.into()),
            note: Some(note),
            type_: Some(type_name.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        self.series.lock().await.by_key.insert(
            key,
            Published {
                name: created.name_any().into(),
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(series: &mut Series, key: u64, at: Timestamp) {
        series.by_key.insert(
            key,
            Published {
                name: format!("event-{key}").into(),
                count: 1,
                last: at,
            },
        );
    }

    #[test]
    fn a_repeat_within_the_series_ttl_is_counted_and_an_older_one_starts_anew() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut series = Series::default();
        let key = Series::key("uid-1", "CredentialsRefreshed", "Normal", "note");
        assert_ne!(key, Series::key("uid-2", "CredentialsRefreshed", "Normal", "note"));
        assert_eq!(series.repeat(key, t0), None);
        published(&mut series, key, t0);
        let (name, second) = series.repeat(key, t0 + SignedDuration::from_mins(5)).unwrap();
        assert_eq!((name, second.count), (format!("event-{key}"), 2));
        let (_, third) = series.repeat(key, t0 + SignedDuration::from_mins(10)).unwrap();
        assert_eq!(third.count, 3, "the series is kept while repeats keep coming");
        // Six minutes after the last repeat the series is over.
        assert_eq!(series.repeat(key, t0 + SignedDuration::from_mins(16)), None);
    }

    #[test]
    fn series_are_dropped_once_they_ended() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut series = Series::default();
        for key in 0..1000 {
            published(&mut series, key, t0);
        }
        series.repeat(u64::MAX, t0 + SignedDuration::from_mins(1));
        assert_eq!(series.by_key.len(), 1000, "none expired yet");
        series.repeat(u64::MAX, t0 + SignedDuration::from_mins(7));
        assert!(series.by_key.is_empty(), "every series ended: nothing is kept");
    }
}
