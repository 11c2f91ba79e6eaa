//! The reflector store of the Network controller, read by the reconcilers instead of the API.
//! Endpoints are read from the API where a reconcile depends on one (a shared or published
//! Endpoint: its node and readiness decide, and the reconcile usually runs because they changed,
//! seen by another watch than the one filling the store); the operator keeps no store of Pods or
//! Nodes, and no reconcile reads another PortPublish.

use std::sync::Arc;

use kube::runtime::reflector::store::WriterDropped;
use kube::runtime::reflector::{ObjectRef, Store};
use pier_crds::Network;

/// Every Network, as the Network controller's watch last saw them.
#[derive(Debug, Clone)]
pub struct Stores {
    networks: Store<Network>,
}

impl Stores {
    /// The store of the Network controller.
    pub fn new(networks: Store<Network>) -> Self {
        Stores { networks }
    }

    /// The Network `name`. Waits until the store holds the initial list: the controller that
    /// fills it starts with the others, and until then every Network would look missing.
    pub async fn network(&self, name: &str) -> Result<Option<Arc<Network>>, WriterDropped> {
        self.networks.wait_until_ready().await?;
        Ok(self.networks.get(&ObjectRef::new(name)))
    }

    /// Every Network (after the initial list, as [`Stores::network`]).
    pub async fn networks(&self) -> Result<Vec<Arc<Network>>, WriterDropped> {
        self.networks.wait_until_ready().await?;
        Ok(self.networks.state())
    }
}
