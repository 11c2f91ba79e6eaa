//! Pier's API: the `pier.dev/v1alpha1` custom resources.
//!
//! - [`Network`] (cluster-scoped): `docker network create`.
//! - [`Endpoint`] (namespaced): one attachment of one workload to one network (`docker run --net`,
//!   `docker network connect`).
//! - [`PortPublish`] (namespaced): `docker run -p` / `-P`.
//!
//! Only types live here (plus the manifests generated from them), so every other crate can depend on
//! them without pulling in controllers.

// `#[kube(printcolumn(type_ = "string", ...))]` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

pub mod conditions;
pub mod endpoint;
pub mod finalizers;
pub mod manifests;
pub mod names;
pub mod network;
pub mod pod;
pub mod portpublish;
mod schema;

pub use conditions::Condition;
pub use endpoint::{Endpoint, EndpointSpec, EndpointStatus, EndpointTarget};
pub use network::{Driver, Network, NetworkSpec, NetworkStatus};
pub use portpublish::{PortPublish, PortPublishSpec, PortPublishStatus, PortSpec, Protocol};

/// The API group of every Pier resource.
pub const GROUP: &str = "pier.dev";
/// The API version of every Pier resource.
pub const VERSION: &str = "v1alpha1";
/// The category all Pier kinds belong to: `kubectl get pier`.
pub const CATEGORY: &str = "pier";
