//! Publishing Events about objects. Events are best-effort in Kubernetes: failing to publish one
//! is logged, never fatal.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

/// Publishes Events as one controller instance.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The recorder holds the client, which has no Debug.
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Events reported by `controller` (the field manager's name), from `instance` (the replica or
    /// the node).
    pub fn new(client: Client, controller: &str, instance: String) -> Events {
        let reporter = Reporter {
            controller: controller.to_owned(),
            instance: Some(instance),
        };
        Events {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes an Event about `obj`: a warning or a normal one, why (`reason`, CamelCase), what
    /// was done (`action`) and the human-readable `note`.
    pub async fn publish<K>(&self, obj: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, object = %obj.name_any(), reason, "cannot publish event");
        }
    }
}
