//! The admin port of a Pier process: `/livez` (the process answers), `/readyz` (what `ready`
//! says) and `/metrics` (a prometheus-client registry, OpenMetrics text).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of `/metrics`.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` reports.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready; otherwise what is still awaited (the 503's body).
    fn ready(&self) -> Result<(), &'static str>;
}

/// What the admin port serves.
#[derive(Clone)]
pub struct Admin {
    readiness: Arc<dyn Readiness>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &self.readiness.ready())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Serves `readiness` on `/readyz` and `registry` on `/metrics`.
    pub fn new(readiness: Arc<dyn Readiness>, registry: Arc<Registry>) -> Admin {
        Admin {
            readiness,
            registry,
        }
    }

    /// The response to a GET of `path`.
    pub fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body, content_type) = match path {
            "/livez" | "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
            "/readyz" => match self.readiness.ready() {
                Ok(()) => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
                Err(waiting) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {waiting}\n"),
                    "text/plain",
                ),
            },
            "/metrics" => (StatusCode::OK, self.metrics(), OPENMETRICS),
            _ => (
                StatusCode::NOT_FOUND,
                "not found\n".to_owned(),
                "text/plain",
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        response
    }

    /// The registry in the text exposition format.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves on `addr` (HTTP/1 and HTTP/2); returns the bound address and the serving task.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = match listener.accept().await {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Out of descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "admin port: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let response = admin.respond(request.uri().path());
                            async move { Ok::<_, Infallible>(response) }
                        },
                    );
                    let mut builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    // A client that opens a connection and sends nothing does not hold it; one
                    // that shuts its side down after the request (`nc`, `socat`, probes) still
                    // gets its answer (without half-close, an EOF read before the response is
                    // written closes the connection unanswered).
                    builder
                        .http1()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .half_close(true);
                    if let Err(error) = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await
                    {
                        tracing::debug!(%error, "admin connection ended");
                    }
                });
            }
        });
        Ok((bound, task))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Readiness for Flag {
        fn ready(&self) -> Result<(), &'static str> {
            if self.0.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("warming up")
            }
        }
    }

    fn admin() -> (Arc<Flag>, Counter, Admin) {
        let flag = Arc::new(Flag::default());
        let counter = Counter::<u64>::default();
        let mut registry = Registry::default();
        registry.sub_registry_with_prefix("pier_test").register(
            "things",
            "Things done",
            counter.clone(),
        );
        let admin = Admin::new(flag.clone(), Arc::new(registry));
        (flag, counter, admin)
    }

    #[test]
    fn routes() {
        let (flag, _, admin) = admin();
        assert_eq!(admin.respond("/livez").status(), StatusCode::OK);
        assert_eq!(
            admin.respond("/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        flag.0.store(true, Ordering::Relaxed);
        assert_eq!(admin.respond("/readyz").status(), StatusCode::OK);
        let metrics = admin.respond("/metrics");
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(
            metrics.headers().get(http::header::CONTENT_TYPE),
            Some(&HeaderValue::from_static(OPENMETRICS))
        );
        assert_eq!(admin.respond("/nope").status(), StatusCode::NOT_FOUND);
    }

    /// The whole response to `GET path` over a fresh connection.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_probes_and_metrics_over_http() {
        let (flag, counter, admin) = admin();
        counter.inc_by(3);
        let (addr, task) = admin
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bound");
        assert!(get(addr, "/livez").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.ends_with("not ready: warming up\n"),
            "{not_ready}"
        );
        flag.0.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("pier_test_things_total 3"), "{metrics}");
        assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }

    #[tokio::test]
    async fn answers_a_bare_half_closed_http_1_0_probe() {
        let (_, _, admin) = admin();
        let (addr, task) = admin
            .serve("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bound");
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /livez HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        // As `printf ... | socat` does: the asker's side closes before the answer comes.
        tcp.shutdown().await.expect("half-close");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.ends_with("ok\n"), "{out}");
        task.abort();
    }
}
