//! The three controllers and what they share: the error type, the error policy (per-object
//! exponential backoff), and status writes by server-side apply.

pub mod dependents;
pub mod endpoint;
pub mod network;
pub mod pod;
pub mod portpublish;
pub mod refusal;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::{Api, Resource, ResourceExt};
use pier_crds::{Endpoint, Network, PortPublish, finalizers};
use pier_runtime::error_chain;
use pier_runtime::finalizer::finalizer;
use pier_runtime::status::StatusError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Context, FIELD_MANAGER, FINALIZER};

/// Why a reconcile failed: one variant per step, with the API error as the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an object the reconcile depends on.
    #[error("reading {what}")]
    Get {
        /// Which object.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing objects (nodes, endpoints, networks).
    #[error("listing {what}")]
    List {
        /// Which objects.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status.
    #[error("writing the status of {what}")]
    WriteStatus {
        /// Which object.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Encoding the status.
    #[error("encoding the status of {what}")]
    Encode {
        /// Which object.
        what: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// Creating an Endpoint a Pod's annotation asks for.
    #[error("creating endpoint {what}")]
    CreateEndpoint {
        /// Which Endpoint.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Updating an Endpoint to what a Pod's annotation now says.
    #[error("updating endpoint {what}")]
    UpdateEndpoint {
        /// Which Endpoint.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting an Endpoint its Pod no longer asks for, or whose Pod is gone.
    #[error("deleting endpoint {what}")]
    DeleteEndpoint {
        /// Which Endpoint.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Network being deleted still has endpoints: its deletion is held (retried).
    #[error("network {network:?} still has {count} endpoint(s)")]
    InUse {
        /// The Network.
        network: String,
        /// How many.
        count: usize,
    },
    /// Removing the node agent's finalizer of an object whose node no longer exists.
    #[error("removing finalizer {} of {what} (its node is gone)", finalizers::NODE)]
    RemoveNodeFinalizer {
        /// Which object.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading a controller's reflector store, whose writer is gone (the controllers are
    /// stopping).
    #[error("reading the store of {what}")]
    Store {
        /// Which objects.
        what: &'static str,
        /// The store's error.
        #[source]
        source: kube::runtime::reflector::store::WriterDropped,
    },
    /// Adding or removing the finalizer, or the reconcile inside it.
    #[error("finalizer {}", crate::context::FINALIZER)]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, fixed label for metrics.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Error::Get { .. } => "GetFailed",
            Error::List { .. } => "ListFailed",
            Error::WriteStatus { .. } => "WriteStatusFailed",
            Error::Encode { .. } => "EncodeFailed",
            Error::CreateEndpoint { .. } => "CreateEndpointFailed",
            Error::UpdateEndpoint { .. } => "UpdateEndpointFailed",
            Error::DeleteEndpoint { .. } => "DeleteEndpointFailed",
            Error::InUse { .. } => pier_crds::conditions::reason::IN_USE,
            Error::RemoveNodeFinalizer { .. } => "RemoveNodeFinalizerFailed",
            Error::Store { .. } => "StoreClosed",
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_reason(),
                _ => "FinalizerFailed",
            },
        }
    }
}

impl Error {
    /// Whether the error is expected in normal operation and resolves itself on retry.
    pub fn is_transient(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::InUse { .. } => true,
            Error::RemoveNodeFinalizer {
                source: kube::Error::Api(s),
                ..
            } => s.code == 409,
            Error::Finalizer(inner) => match &**inner {
                F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) => {
                    s.code == 409 || s.code == 422
                }
                F::CleanupFailed(e) | F::ApplyFailed(e) => e.is_transient(),
                _ => false,
            },
            _ => false,
        }
    }
}

pub use pier_runtime::key;

/// Retries a failed object with exponential backoff (per object, reset on success), so a
/// persistent error neither spins nor starves the others.
pub fn error_policy<K: Resource>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
    controller: &str,
) -> Action {
    let key = key(&*obj);
    let delay = ctx.backoff.next(&key);
    ctx.metrics.error(controller, error.metric_reason());
    match error {
        // Expected while a Network drains, or when a reconcile ran on a cached copy older than
        // the finalizer just added (the API refuses the stale patch; the next run sees it): not
        // worth a warning each time.
        _ if error.is_transient() => {
            tracing::debug!(object = %key, error = %error_chain(error), ?delay, "retrying")
        }
        _ => {
            tracing::warn!(object = %key, error = %error_chain(error), ?delay, "reconcile failed; retrying")
        }
    }
    Action::requeue(delay)
}

/// Writes `status` by server-side apply on the status subresource, as `pier-operator`, forcing
/// ownership (the operator is the only writer of these fields). Skipped when `current` already
/// equals it, so an unchanged object costs no write.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    pier_runtime::status::apply_status(api, obj, FIELD_MANAGER, status)
        .await
        .map_err(|error| {
            let what = key(obj);
            match error {
                StatusError::Encode(source) => Error::Encode { what, source },
                StatusError::Api(source) => Error::WriteStatus { what, source },
            }
        })
}

/// The Network `name`, from the store; a miss is confirmed by the API. The reconcile may run
/// because the Network was just created, seen by a watch other than the one filling the store, and
/// a wrong "not found" would hold an Endpoint for a requeue period or skip a PortPublish's check.
pub async fn network(ctx: &Context, name: &str) -> Result<Option<Arc<Network>>, Error> {
    let stored = ctx
        .stores
        .network(name)
        .await
        .map_err(|source| Error::Store {
            what: "networks",
            source,
        })?;
    if stored.is_some() {
        return Ok(stored);
    }
    let api: Api<Network> = Api::all(ctx.client.clone());
    let fresh = api.get_opt(name).await.map_err(|source| Error::Get {
        what: format!("network {name}"),
        source,
    })?;
    Ok(fresh.map(Arc::new))
}

/// The node whose agent holds an object's kernel objects (and its finalizer), if any.
pub trait OnNode {
    /// `status.node`.
    fn node(&self) -> Option<&str>;
}

impl OnNode for Endpoint {
    fn node(&self) -> Option<&str> {
        self.status.as_ref()?.node.as_deref()
    }
}

impl OnNode for PortPublish {
    fn node(&self) -> Option<&str> {
        self.status.as_ref()?.node.as_deref()
    }
}

impl OnNode for Network {
    fn node(&self) -> Option<&str> {
        None
    }
}

/// Whether `obj`'s deletion waits for the node agent: while its finalizer is on the object, the
/// node may still use the address or host port, so the operator's cleanup (which releases them)
/// comes after; and the two finalizers are never removed at once (two patches of one list, one of
/// which would then fail). The node's removal is a watch event that brings the object back here.
/// A node that no longer exists will never remove its finalizer: the operator does, with an Event.
async fn waits_for_node<K>(api: &Api<K>, obj: &K, ctx: &Context) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + OnNode + Clone + DeserializeOwned + std::fmt::Debug,
{
    let meta = obj.meta();
    let held = meta
        .finalizers
        .as_ref()
        .is_some_and(|all| all.iter().any(|f| f == finalizers::NODE));
    if meta.deletion_timestamp.is_none() || !held {
        return Ok(false);
    }
    let what = key(obj);
    if let Some(node) = obj.node() {
        // From the API: the operator keeps no store of Nodes, and a stale "gone" would remove
        // the node agent's finalizer while it still holds the kernel objects.
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let found = nodes
            .get_metadata_opt(node)
            .await
            .map_err(|source| Error::Get {
                what: format!("node {node}"),
                source,
            })?;
        if found.is_some() {
            tracing::debug!(object = %what, node, "waiting for the node to release it");
            return Ok(true);
        }
    }
    // The rest of the list, at the version read: a concurrent change is a conflict, retried.
    let rest: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizers::NODE)
        .collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": rest, "resourceVersion": meta.resource_version},
    });
    api.patch_metadata(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::RemoveNodeFinalizer {
        what: what.clone(),
        source,
    })?;
    let why = match obj.node() {
        Some(node) => format!("node {node} no longer exists"),
        None => "it is on no node any more".to_owned(),
    };
    tracing::warn!(object = %what, %why, "removed the node finalizer");
    ctx.events
        .publish(
            obj,
            true,
            "NodeGone",
            "Delete",
            format!("{why}: removed finalizer {}", finalizers::NODE),
        )
        .await;
    Ok(true)
}

/// The top-level action of every controller: counts the reconcile, runs `apply` (or `cleanup`
/// once the object is being deleted and no node holds it) under the operator's finalizer, and
/// resets the object's backoff on success.
pub async fn reconcile_finalized<K>(
    api: Api<K>,
    obj: Arc<K>,
    ctx: Arc<Context>,
    controller: &'static str,
    apply: impl AsyncFnOnce(&Api<K>, &K, &Context) -> Result<Action, Error>,
    cleanup: impl AsyncFnOnce(&Api<K>, &K, &Context) -> Result<Action, Error>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + OnNode + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    ctx.metrics.reconciled(controller);
    let key = key(&*obj);
    if waits_for_node(&api, &*obj, &ctx).await? {
        ctx.backoff.reset(&key);
        return Ok(Action::await_change());
    }
    let action = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(&api, &obj, &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(&api, &obj, &ctx).await,
        }
    })
    .await
    .map_err(finalizer_error)?;
    ctx.backoff.reset(&key);
    Ok(action)
}

/// Wraps the finalizer helper's error.
pub fn finalizer_error(e: kube::runtime::finalizer::Error<Error>) -> Error {
    Error::Finalizer(Box::new(e))
}
