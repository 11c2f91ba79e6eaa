//! Which part of the node a plan reads and changes.

use crate::state::{Driver, NetworkState, NodeState, StateError};

use super::DataplaneError;
use super::names::vxlan_of_bridge;

/// Which part of the node a plan or apply looks at. Table `inet pier` is in every scope; the
/// bridges and the overlay networks' VXLAN devices with their FDB and neighbour entries in
/// every scope but [`Scope::Overlay`], which has the overlay networks' only; the scope says which
/// endpoints and links besides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only these endpoints, by id: the attach path. Reads the bridges and these endpoints'
    /// veths by name, so its cost does not grow with the endpoints already on the node, and
    /// collects no garbage.
    Endpoints(Vec<String>),
    /// These links, by name, deleted if they are Pier's and the state no longer wants them: the
    /// detach path (a departed endpoint's veth and its network's bridge). A bridge named here
    /// takes its network's VXLAN device with it.
    Removal(Vec<String>),
    /// Only the overlay networks: their bridges, VXLAN devices and the devices' FDB and
    /// neighbour entries (for the remote endpoints of the state), and table `inet pier` (which
    /// nodes may send into which overlay). No endpoint, no garbage: the path for changes of
    /// endpoints on other nodes.
    Overlay,
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
            Scope::Removal(_) | Scope::Overlay => false,
        }
    }

    /// Whether the network's bridge (and VXLAN device) is planned.
    pub fn has_network(&self, network: &NetworkState) -> bool {
        match self {
            Scope::Overlay => network.driver == Driver::Overlay,
            _ => true,
        }
    }

    /// Whether the plan reads and converges the overlay devices' FDB and neighbour entries on
    /// the state's remote endpoints: the full and overlay scopes. The attach and detach paths
    /// leave existing entries to them (the agent's overlay apply follows every remote change),
    /// so an attach costs the same whatever the number of endpoints on other nodes.
    pub fn has_overlay_entries(&self) -> bool {
        matches!(self, Scope::Full | Scope::Overlay)
    }

    /// Whether the link `name` may be collected as garbage (if it is Pier's and unwanted).
    pub fn may_remove(&self, name: &str) -> bool {
        match self {
            Scope::Full => true,
            Scope::Endpoints(_) | Scope::Overlay => false,
            Scope::Removal(_) => self.removals().iter().any(|n| n == name),
        }
    }

    /// The links this scope removes by name (none for the other scopes): those named, and the
    /// VXLAN device of each bridge named.
    pub fn removals(&self) -> Vec<String> {
        let Scope::Removal(names) = self else {
            return Vec::new();
        };
        let twins = names.iter().filter_map(|name| vxlan_of_bridge(name));
        names.iter().cloned().chain(twins).collect()
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
