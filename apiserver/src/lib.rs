//! Pier's embedded Kubernetes-compatible API server.
//!
//! The store of local mode (`pier up`) and of the controller tests: the part of the
//! Kubernetes API that Pier's users (`kubectl`) and controllers (kube-rs) speak.
//!
//! ```no_run
//! # async fn run() -> Result<(), pier_apiserver::Error> {
//! let server = pier_apiserver::ApiServer::open("/var/lib/pier/apiserver").await?;
//! let (addr, _task) = server.serve_https("127.0.0.1:6443".parse().expect("address")).await?;
//! server.write_kubeconfig("/root/.kube/pier", &format!("https://{addr}"))?;
//! // In-process, without TLS or token: kube::Client::new(server.service(), "default")
//! # Ok(()) }
//! ```
//!
//! Layout: [`store`] (objects, one resourceVersion counter, watch history, durable log +
//! snapshots; a write is visible only once fsynced, and a failed one is cut from the log and
//! seen by nobody), [`api`] (the semantics: uid, generation, status subresource, finalizers,
//! optimistic concurrency, managed fields, validation), [`http`] (routing as a `tower::Service`),
//! [`watch`], [`patch`] (merge, JSON, server-side apply), [`validation`] (pruning, defaulting,
//! OpenAPI and CEL), [`selectors`], [`discovery`], [`openapi`], [`table`], [`tls`],
//! [`kubeconfig`], [`protobuf`] (Kubernetes' protobuf encoding), [`reviews`], [`names`] (object names as kube-apiserver checks them), [`private`] (the data
//! directory 0700, its files 0600), [`token`] (at least 32 bytes), [`server`] (the public entry
//! point; at most [`Options::max_connections`] connections at once, more wait to be accepted). Events expire an hour after they were last
//! written or seen ([`Options::event_ttl`], kube-apiserver's `--event-ttl`). The watch history
//! keeps the last 10,000 changes ([`Options::history`]) but none older than 5 minutes
//! ([`Options::history_max_age`]) and no more bytes than the live objects take (at least 1 MiB,
//! [`Options::history_min_bytes`]), dropped on writes and by a periodic task, like the etcd
//! compaction kube-apiserver runs every 5 minutes (`--etcd-compaction-interval`): a watch
//! resuming from a version before them gets 410 Gone and re-lists.
//!
//! Known differences from the real server:
//! - Events are also bounded by what else is stored ([`event_budget`]: a number per other
//!   object and a floor, the oldest deleted first), as this server keeps them in memory where
//!   kube-apiserver keeps them in etcd: `kubectl get events` after a mass deletion shows the
//!   latest, not the whole hour.
//! - JSON, YAML (apply) and, for the built-in kinds of k8s.io/api's core, apps, batch, policy,
//!   rbac, authorization, coordination, events and networking groups, protobuf ([`protobuf`]:
//!   kubectl's typed `create namespace`, `create secret`, `auth can-i`, ...). Answers are JSON
//!   unless the client accepts only protobuf (kubectl accepts both); watch streams and custom
//!   resources are never protobuf (406 when nothing else is accepted). CBOR bodies get 415.
//!   `authorization.k8s.io/v1` SelfSubjectAccessReview and SelfSubjectRulesReview are answered
//!   ([`reviews`]): everything is allowed. Aggregated discovery is answered with the legacy
//!   documents (kubectl falls back to them).
//! - Strategic merge patch on built-in resources merges the keyed lists of the kinds served
//!   ([`patch::strategic`]: containers, env, ports, volumes, conditions, ...); on custom
//!   resources it is refused with 415 as in Kubernetes.
//! - The built-in kinds Helm and charts use ([`builtin_kinds`]: ServiceAccounts, Secrets,
//!   ConfigMaps, Services, Deployments, DaemonSets, ReplicaSets, StatefulSets,
//!   PodDisruptionBudgets, RBAC, ValidatingAdmissionPolicies) are decoded into their
//!   k8s-openapi types (wrong types 400, unknown fields dropped or refused when strict) and
//!   stored; no controller, kubelet, admission or RBAC acts on them, and no defaults are filled
//!   in (a Service gets no cluster IP).
//! - Field management: conflicts are detected on leaf fields; list-type `map`/`set` and
//!   `x-kubernetes-map-type: atomic` are honoured from CRD schemas; built-ins have no schema
//!   but the list types of [`structure`] (a Pod's `status.conditions`, a Node's
//!   `status.conditions` and `status.addresses`, keyed by `type`), every other list of theirs
//!   is atomic. Updates take ownership of the fields they change.
//! - CEL (`x-kubernetes-validations`) through kube-cel: every rule in Pier's CRDs is enforced
//!   (including `cidr()`, `containsIP`, `containsCIDR`, `masked()` and transition rules with
//!   `oldSelf`); kube-cel refuses (fail-closed, reported as a validation error) `sortBy`,
//!   `cel.bind` and two-variable comprehensions, and no CEL cost budget is enforced.
//! - One version per storage: CRDs with several served versions share the objects without
//!   conversion webhooks. Namespace deletion deletes the namespace's objects right away (no
//!   `Terminating` phase); CRD deletion removes its custom resources outright.
//! - A write that fails to reach the disk (write or fsync error) also fails every write queued
//!   behind it in the same moment (they may build on it), and a create that raced it may have
//!   been answered 409 AlreadyExists for an object that then never existed.
//! - Lists are served from the current state (`resourceVersion`/`resourceVersionMatch` on
//!   lists are ignored), continue tokens never expire. No admission, RBAC or audit: whoever has
//!   the token is admin.

pub mod api;
pub mod builtin_kinds;
pub mod convert;
pub mod discovery;
pub mod error;
pub mod event_budget;
pub mod http;
pub mod kubeconfig;
pub mod names;
pub mod openapi;
pub mod patch;
pub mod private;
pub mod protobuf;
pub mod resources;
pub mod reviews;
pub mod selectors;
pub mod server;
pub mod store;
pub mod structure;
pub mod table;
pub mod tls;
pub mod token;
pub mod validation;
pub mod watch;

pub use error::{ApiError, Error};
pub use http::ApiService;
pub use server::{ApiServer, Options};
