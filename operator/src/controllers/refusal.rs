//! Why an object is not (yet) allocated, and how every controller reports it: the `Ready`
//! condition it writes, and (when that condition changes) a metric, a log line and an Event.

use kube::Resource;
use pier_crds::conditions::{ALLOCATED, Condition};

use crate::conditions::ready;
use crate::context::Context;
use pier_crds::conditions::reason;

/// A refusal: the condition reason, the message users read, and whether the object is only
/// waiting (for a node, Pod, Network or Endpoint that will come: a Normal Event then, not a
/// Warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `Ready` condition's reason.
    pub reason: &'static str,
    /// The `Ready` condition's message and the Event's note.
    pub message: String,
    /// Only waiting for something that will come.
    pub waiting: bool,
}

/// What one allocation came to: the `Ready` message, or why not.
pub type Outcome = Result<String, Refusal>;

impl Refusal {
    /// Waiting for something that will come.
    pub fn wait(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            waiting: true,
        }
    }

    /// Refused until the spec (or another object) changes.
    pub fn refuse(reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            waiting: false,
        }
    }

    /// The `Ready` condition: False with this reason and message.
    pub fn condition(&self, existing: &[Condition], generation: Option<i64>) -> Condition {
        ready(
            existing,
            false,
            self.reason,
            self.message.clone(),
            generation,
        )
    }

    /// Reports the refusal of `obj` by `controller` (during `action`, the Event's action): counts
    /// it, logs it, and publishes an Event. Called when the condition changed, so a refusal that
    /// lasts is reported once.
    pub async fn report<K>(&self, ctx: &Context, obj: &K, controller: &'static str, action: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        ctx.metrics.error(controller, self.reason);
        let object = super::key(obj);
        if self.waiting {
            tracing::info!(controller, %object, reason = self.reason, message = %self.message, "waiting");
        } else {
            tracing::warn!(controller, %object, reason = self.reason, message = %self.message, "refused");
        }
        ctx.events
            .publish(
                obj,
                !self.waiting,
                self.reason,
                action,
                self.message.clone(),
            )
            .await;
    }
}

impl Refusal {
    /// Reports the refusal of `obj` when its condition `changed` (see [`Refusal::report`]) and
    /// asks to look again later: the watches bring most of what an object waits for, not all
    /// (Nodes are not watched).
    pub async fn requeue<K>(
        &self,
        changed: bool,
        ctx: &Context,
        obj: &K,
        controller: &'static str,
    ) -> kube::runtime::controller::Action
    where
        K: Resource<DynamicType = ()>,
    {
        if changed {
            self.report(ctx, obj, controller, "Allocate").await;
        }
        kube::runtime::controller::Action::requeue(ctx.config.wait_requeue)
    }
}

/// The `Ready` condition for an outcome: True with reason `Allocated`, or False with the
/// refusal's reason; `lastTransitionTime` kept from `existing` when the status does not flip.
pub fn condition(existing: &[Condition], outcome: &Outcome, generation: Option<i64>) -> Condition {
    match outcome {
        Ok(message) => ready(
            existing,
            true,
            reason::ALLOCATED,
            message.clone(),
            generation,
        ),
        Err(r) => r.condition(existing, generation),
    }
}

/// The `Allocated` condition of an Endpoint or PortPublish for an outcome (as [`condition`]).
pub fn allocated(existing: &[Condition], outcome: &Outcome, generation: Option<i64>) -> Condition {
    let (ok, why, message) = match outcome {
        Ok(message) => (true, reason::ALLOCATED, message.clone()),
        Err(r) => (false, r.reason, r.message.clone()),
    };
    pier_crds::conditions::observe(existing, ALLOCATED, ok, why, message, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_carries_the_refusal() {
        let refused: Outcome = Err(Refusal::refuse(reason::PORT_CONFLICT, "port 80 is held"));
        let c = condition(&[], &refused, Some(3));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "PortConflict", "port 80 is held")
        );
        assert_eq!(c.observed_generation, Some(3));
        let allocated: Outcome = Ok("subnet 172.18.0.0/16".into());
        let c = condition(&[c], &allocated, Some(4));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("True", "Allocated", "subnet 172.18.0.0/16")
        );
    }

    #[test]
    fn waiting_and_refused_differ_only_in_kind() {
        let w = Refusal::wait(reason::NETWORK_NOT_FOUND, "no network");
        let r = Refusal::refuse(reason::NETWORK_NOT_FOUND, "no network");
        assert!(w.waiting && !r.waiting);
        assert_eq!((w.reason, &w.message), (r.reason, &r.message));
    }
}
