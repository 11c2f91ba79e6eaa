//! The reflector stores of the Network and Endpoint controllers, read by the reconcilers instead
//! of the API. Pods, Nodes and PortPublishes are not read from here: the operator keeps no store
//! of Pods or Nodes, and no reconcile reads another PortPublish.

use std::sync::Arc;

use kube::runtime::reflector::store::WriterDropped;
use kube::runtime::reflector::{ObjectRef, Store};
use pier_crds::{Endpoint, Network};

/// Every Network and every Endpoint, as the controllers' watches last saw them.
#[derive(Debug, Clone)]
pub struct Stores {
    networks: Store<Network>,
    endpoints: Store<Endpoint>,
}

impl Stores {
    /// The stores of the Network and Endpoint controllers.
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

    /// The Endpoint `namespace/name` (after the initial list, as [`Stores::network`]).
    pub async fn endpoint(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Endpoint>>, WriterDropped> {
        self.endpoints.wait_until_ready().await?;
        Ok(self.endpoints.get(&ObjectRef::new(name).within(namespace)))
    }
}
