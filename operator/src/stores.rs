//! The reflector stores read by the reconcilers instead of the API: the Network controller's, and
//! the Endpoints the Pod controller follows (the same watch that wakes it fills that store, so a
//! Pod reconciled because an Endpoint changed sees the change). The Endpoint and PortPublish
//! controllers read Endpoints from the API where a reconcile depends on one (a shared or published
//! Endpoint: its node and readiness decide, and the reconcile usually runs because they changed,
//! seen by another watch than the one filling a store); the operator keeps no store of Nodes, and
//! no reconcile reads another PortPublish.

use std::sync::Arc;

use kube::runtime::reflector::store::WriterDropped;
use kube::runtime::reflector::{ObjectRef, Store};
use pier_crds::{Endpoint, Network};

/// Every Network, as the Network controller's watch last saw them.
#[derive(Debug, Clone)]
pub struct Stores {
    networks: Store<Network>,
    endpoints: Store<Endpoint>,
}

impl Stores {
    /// The store of the Network controller and the Pod controller's store of Endpoints.
    pub fn new(networks: Store<Network>, endpoints: Store<Endpoint>) -> Self {
        Stores {
            networks,
            endpoints,
        }
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

    /// Every Endpoint (after the initial list).
    pub async fn endpoints(&self) -> Result<Vec<Arc<Endpoint>>, WriterDropped> {
        self.endpoints.wait_until_ready().await?;
        Ok(self.endpoints.state())
    }
}
