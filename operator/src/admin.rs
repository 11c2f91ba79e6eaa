//! The admin port: `/livez`, `/readyz` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// What the admin port reports.
#[derive(Debug, Default)]
pub struct Health {
    /// Ready: a standby waiting for the lease, or the leader once its allocations are rebuilt
    /// and its controllers run.
    pub ready: AtomicBool,
}

/// Answers one admin request.
pub fn respond(path: &str, health: &Health, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/livez" | "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "ok\n".to_owned(), "text/plain")
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: rebuilding allocations\n".to_owned(),
            "text/plain",
        ),
        "/metrics" => (
            StatusCode::OK,
            metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

/// Serves the admin port on `addr`; returns the bound address and the serving task.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin port: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (health, metrics) = (Arc::clone(&health), Arc::clone(&metrics));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = respond(req.uri().path(), &health, &metrics);
                        async move { Ok::<_, Infallible>(response) }
                    });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if let Err(e) = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await
                {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let (health, metrics) = (Health::default(), Metrics::default());
        assert_eq!(
            respond("/livez", &health, &metrics).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond("/readyz", &health, &metrics).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            respond("/readyz", &health, &metrics).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond("/metrics", &health, &metrics).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond("/nope", &health, &metrics).status(),
            StatusCode::NOT_FOUND
        );
    }
}
