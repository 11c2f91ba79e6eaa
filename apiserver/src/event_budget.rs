//! How many Events the server keeps, besides their TTL ([`crate::Options::event_ttl`]).
//!
//! kube-apiserver keeps every Event for an hour, in etcd, on disk. This server keeps its objects
//! in memory, where an hour of Events is what a burst of activity leaves behind: 500 Endpoints
//! created and deleted leave 1,500 Events (one per address allocated, attached and released), the
//! largest part of `pier up`'s memory once the objects themselves are gone (issue 19). So the
//! Events are also bounded by what is live: [`EventBudget::per_object`] for every other object
//! stored (each keeps the Events of its recent life) and at least [`EventBudget::at_least`],
//! dockerd's own bound (`docker events --since` returns its last 256). Past the bound the oldest
//! go first; a trim leaves a tenth of the bound free, so a steady stream of new Events trims once
//! per tenth rather than once per Event.

/// The bound on stored Events, from the number of other objects stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBudget {
    /// Events kept whatever else is stored.
    pub at_least: usize,
    /// Events kept per other object stored.
    pub per_object: usize,
}

/// dockerd's bound on the events it keeps for `docker events --since`.
pub const EVENTS_KEPT_AT_LEAST: usize = 256;

/// Events kept per other object: an Endpoint's life makes three (address allocated, attached,
/// released), and one more leaves room for a warning.
pub const EVENTS_KEPT_PER_OBJECT: usize = 4;

impl Default for EventBudget {
    fn default() -> Self {
        EventBudget {
            at_least: EVENTS_KEPT_AT_LEAST,
            per_object: EVENTS_KEPT_PER_OBJECT,
        }
    }
}

impl EventBudget {
    /// Events allowed while `other_objects` other objects are stored.
    pub fn allowed(&self, other_objects: usize) -> usize {
        self.at_least
            .max(self.per_object.saturating_mul(other_objects))
    }

    /// How many of `events` to delete, oldest first, while `other_objects` other objects are
    /// stored: none within the bound; past it, down to nine tenths of it.
    pub fn to_delete(&self, events: usize, other_objects: usize) -> usize {
        let allowed = self.allowed(other_objects);
        if events <= allowed {
            return 0;
        }
        events - (allowed - allowed / 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_bound_nothing_goes() {
        let budget = EventBudget::default();
        assert_eq!(budget.to_delete(0, 0), 0);
        assert_eq!(budget.to_delete(256, 0), 0);
        assert_eq!(budget.to_delete(2_000, 500), 0, "4 per object: 2,000");
    }

    #[test]
    fn past_the_bound_down_to_nine_tenths() {
        let budget = EventBudget::default();
        // 500 Endpoints deleted: their 1,500 Events over a handful of other objects.
        assert_eq!(budget.allowed(20), 256);
        assert_eq!(budget.to_delete(1_500, 20), 1_500 - 231);
        // One more than 4 per object.
        assert_eq!(budget.to_delete(4_001, 1_000), 4_001 - 3_600);
    }

    #[test]
    fn the_floor_holds_however_few_objects() {
        let budget = EventBudget {
            at_least: 10,
            per_object: 4,
        };
        assert_eq!(budget.allowed(0), 10);
        assert_eq!(budget.allowed(3), 12);
        assert_eq!(budget.to_delete(11, 0), 11 - 9);
    }
}
