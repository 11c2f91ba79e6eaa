//! Publishing Events about objects. Events are best-effort in Kubernetes: failing to publish one
//! is logged, never fatal.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

/// Publishes Events as one controller instance.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
    /// For warnings: a reconcile that keeps failing repeats its warning, which the recorder
    /// turns into one Event with a growing series count. It remembers each Event it published
    /// for 6 minutes to do that.
    warnings: Recorder,
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
            warnings: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
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
        // Normal Events say what was done once (an address allocated, an endpoint attached):
        // published without the series memory, which would otherwise keep one entry per object
        // for 6 minutes, long after a burst of objects came and went.
        let once;
        let recorder = if warning {
            &self.warnings
        } else {
            once = Recorder::new(self.client.clone(), self.reporter.clone());
            &once
        };
        if let Err(error) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, object = %obj.name_any(), reason, "cannot publish event");
        }
    }
}
