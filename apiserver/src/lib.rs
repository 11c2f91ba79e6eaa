//! Pier's embedded Kubernetes-compatible API server.
//!
//! The store of local mode (`pier up`) and of the controller tests. See DESIGN.md §2.
//!
//! ```no_run
//! # async fn run() -> Result<(), pier_apiserver::Error> {
//! let server = pier_apiserver::ApiServer::open("/var/lib/pier/apiserver").await?;
//! let (addr, _task) = server.serve_https("127.0.0.1:6443".parse().expect("address")).await?;
//! server.write_kubeconfig("/root/.kube/pier", &format!("https://{addr}"))?;
//! // In-process: kube::Client::new(server.service(), "default")
//! # Ok(()) }
//! ```

pub mod api;
pub mod convert;
pub mod discovery;
pub mod error;
pub mod http;
pub mod kubeconfig;
pub mod openapi;
pub mod patch;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;
pub mod validation;
pub mod watch;

pub use error::{ApiError, Error};
pub use http::ApiService;
pub use server::{ApiServer, Options};
