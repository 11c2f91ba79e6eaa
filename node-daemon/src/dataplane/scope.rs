//! Which part of the node a plan reads and changes.

use crate::state::{NodeState, StateError};

use super::DataplaneError;

/// Which part of the node a plan or apply looks at. The bridges and table `inet pier` are in
/// every scope; the scope says which endpoints and links besides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only these endpoints, by id: the attach path. Reads the bridges and these endpoints'
    /// veths by name, so its cost does not grow with the endpoints already on the node, and
    /// collects no garbage.
    Endpoints(Vec<String>),
    /// These links, by name, deleted if they are Pier's and the state no longer wants them: the
    /// detach path (a departed endpoint's veth and its network's bridge).
    Removal(Vec<String>),
    /// Everything, removing what is Pier's and no longer wanted: start and resync.
    Full,
}

impl Scope {
    /// [`Scope::Endpoints`] from ids.
    pub fn endpoints<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Scope {
        Scope::Endpoints(ids.into_iter().map(Into::into).collect())
    }

    /// [`Scope::Removal`] from link names.
    pub fn removal<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Scope {
        Scope::Removal(names.into_iter().map(Into::into).collect())
    }

    pub fn is_full(&self) -> bool {
        matches!(self, Scope::Full)
    }

    /// Whether the endpoint `id` is planned (checked and attached).
    pub fn has_endpoint(&self, id: &str) -> bool {
        match self {
            Scope::Full => true,
            Scope::Endpoints(ids) => ids.iter().any(|i| i == id),
            Scope::Removal(_) => false,
        }
    }

    /// Whether the link `name` may be collected as garbage (if it is Pier's and unwanted).
    pub fn may_remove(&self, name: &str) -> bool {
        match self {
            Scope::Full => true,
            Scope::Endpoints(_) => false,
            Scope::Removal(names) => names.iter().any(|n| n == name),
        }
    }

    /// The links this scope removes by name (none for the other scopes).
    pub fn removals(&self) -> &[String] {
        match self {
            Scope::Removal(names) => names,
            _ => &[],
        }
    }

    /// Checks `state` as far as this scope relies on it. A full plan validates everything; a
    /// scoped one the networks (few) and that each scoped endpoint id appears once: hashing every
    /// endpoint id of a large node on every attach cost as much as the rest of the plan.
    pub(crate) fn validate(&self, state: &NodeState) -> Result<(), DataplaneError> {
        if self.is_full() {
            return state.validate().map_err(DataplaneError::InvalidState);
        }
        let networks = NodeState {
            networks: state.networks.clone(),
            ..NodeState::default()
        };
        networks.validate().map_err(DataplaneError::InvalidState)?;
        if let Scope::Endpoints(ids) = self {
            for id in ids {
                if state.endpoints.iter().filter(|e| e.id == *id).count() > 1 {
                    return Err(DataplaneError::InvalidState(StateError::DuplicateEndpoint(
                        id.clone(),
                    )));
                }
            }
        }
        Ok(())
    }
}
