//! Publishes `events.k8s.io/v1` Events about AssumedRoles, with names and
//! notes fitted to the API server's limits ([`crate::events`]).

use std::collections::HashMap;

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
    series: tokio::sync::Mutex<HashMap<EventKey, K8sEvent>>,
}

/// What makes two Events the same one, repeated: the object (by UID), the
/// reason, the type and the note.
type EventKey = (String, String, &'static str, String);

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
        let namespace = ar.namespace().unwrap_or_else(|| "default".into());
        let name = ar.name_any();
        let type_name = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let key = (
            ar.uid().unwrap_or_default(),
            reason.to_string(),
            type_name,
            events::fit_note(note),
        );
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        // The lock is never held across a call to the API server.
        let repeat = {
            let mut series = self.series.lock().await;
            series.retain(|_, e| {
                let last = e
                    .series
                    .as_ref()
                    .map(|s| s.last_observed_time.0)
                    .or(e.event_time.as_ref().map(|t| t.0));
                last.is_some_and(|t| t + EVENT_SERIES_TTL > now)
            });
            series.get_mut(&key).map(|previous| {
                let count = previous.series.as_ref().map_or(2, |s| s.count + 1);
                previous.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                (previous.name_any(), json!({"series": previous.series}))
            })
        };
        if let Some((event_name, patch)) = repeat {
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
            note: Some(key.3.clone()),
            type_: Some(type_name.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(ar.object_ref(&())),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        self.series.lock().await.insert(key, created);
        Ok(())
    }
}
