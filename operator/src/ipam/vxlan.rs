//! VXLAN ids for overlay Networks: one per Network, unique in the cluster, from
//! [`FIRST_VXLAN_ID`] up (Docker's overlay driver starts there too), the lowest free one first.
//!
//! Pure: the operator records the id in `status.vxlanId` and a restarted operator rebuilds the
//! allocator from those statuses, oldest Network first, so the first holder keeps a contested id.

use std::collections::{BTreeMap, BTreeSet};

use pier_crds::network::{FIRST_VXLAN_ID, MAX_VXLAN_ID};

use super::Rebuilt;

/// Why an id could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VxlanIdError {
    #[error("every VXLAN id from {FIRST_VXLAN_ID} to {MAX_VXLAN_ID} is taken")]
    Exhausted,
    #[error("VXLAN id {id} of network {network:?} is held by network {holder:?}")]
    Taken {
        id: u32,
        network: String,
        holder: String,
    },
    #[error("VXLAN id {id} of network {network:?} is outside {FIRST_VXLAN_ID}..={MAX_VXLAN_ID}")]
    OutOfRange { id: u32, network: String },
}

/// Which overlay Network holds which VXLAN id.
#[derive(Debug, Clone, Default)]
pub struct VxlanIds {
    by_network: BTreeMap<String, u32>,
    used: BTreeSet<u32>,
}

impl VxlanIds {
    /// The id `network` holds, giving it the lowest free one if it holds none. Idempotent.
    pub fn ensure(&mut self, network: &str) -> Result<u32, VxlanIdError> {
        if let Some(id) = self.by_network.get(network) {
            return Ok(*id);
        }
        // Ids are handed out densely from the bottom: the first gap is at most `used.len()` in.
        let id = (FIRST_VXLAN_ID..=MAX_VXLAN_ID)
            .find(|id| !self.used.contains(id))
            .ok_or(VxlanIdError::Exhausted)?;
        self.hold(network, id);
        Ok(id)
    }

    /// The id `network` holds.
    pub fn get(&self, network: &str) -> Option<u32> {
        self.by_network.get(network).copied()
    }

    /// Frees the id of `network`.
    pub fn release(&mut self, network: &str) -> Option<u32> {
        let id = self.by_network.remove(network)?;
        self.used.remove(&id);
        Some(id)
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// The allocator holding the recorded `(network, id)` pairs, in order: a pair whose id is
    /// out of range or already held is rejected (that Network gets a new id when reconciled).
    pub fn rebuild(
        recorded: impl IntoIterator<Item = (String, u32)>,
    ) -> Rebuilt<VxlanIds, VxlanIdError> {
        let mut allocator = VxlanIds::default();
        let mut rejected = Vec::new();
        for (network, id) in recorded {
            if !(FIRST_VXLAN_ID..=MAX_VXLAN_ID).contains(&id) {
                rejected.push(VxlanIdError::OutOfRange { id, network });
            } else if let Some(holder) = allocator.holder(id) {
                rejected.push(VxlanIdError::Taken {
                    id,
                    network,
                    holder: holder.to_owned(),
                });
            } else {
                allocator.hold(&network, id);
            }
        }
        Rebuilt {
            allocator,
            rejected,
        }
    }

    fn holder(&self, id: u32) -> Option<&str> {
        self.used.contains(&id).then(|| {
            self.by_network
                .iter()
                .find(|(_, held)| **held == id)
                .map(|(network, _)| network.as_str())
        })?
    }

    fn hold(&mut self, network: &str, id: u32) {
        self.by_network.insert(network.to_owned(), id);
        self.used.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_4096_and_fill_gaps() {
        let mut ids = VxlanIds::default();
        assert_eq!(ids.ensure("a"), Ok(4096));
        assert_eq!(ids.ensure("b"), Ok(4097));
        assert_eq!(ids.ensure("a"), Ok(4096), "idempotent");
        assert_eq!(ids.release("a"), Some(4096));
        assert_eq!(ids.ensure("c"), Ok(4096), "the lowest free id");
        assert_eq!(ids.get("b"), Some(4097));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn rebuild_keeps_the_first_holder_and_rejects_the_rest() {
        let rebuilt = VxlanIds::rebuild([
            ("old".to_owned(), 4100),
            ("young".to_owned(), 4100),
            ("odd".to_owned(), 7),
        ]);
        assert_eq!(rebuilt.allocator.get("old"), Some(4100));
        assert_eq!(rebuilt.allocator.get("young"), None);
        assert_eq!(
            rebuilt.rejected,
            vec![
                VxlanIdError::Taken {
                    id: 4100,
                    network: "young".into(),
                    holder: "old".into()
                },
                VxlanIdError::OutOfRange {
                    id: 7,
                    network: "odd".into()
                },
            ]
        );
        let mut ids = rebuilt.allocator;
        assert_eq!(ids.ensure("young"), Ok(4096));
    }
}
