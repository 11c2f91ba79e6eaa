//! Watch fan-out under a sustained write load (a phase of `bench.rs`): `watchers` watchers, each
//! its own HTTPS connection (TLS, HTTP/1.1, as separate clients would), while creates arrive at a
//! steady `rate` per second for `seconds`, 64 in flight at most, through the in-process service.
//! Latency is from a write's commit (the moment it became durable and visible: the store's
//! history records it) to a watcher's receipt of the event's line; the create call's own latency
//! (queueing, validation, fsync) is reported beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use http_body_util::BodyExt;
use pier_apiserver::{ApiServer, Options};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

const PATH: &str = "/apis/pier.dev/v1alpha1/namespaces/default/endpoints";
/// Creates in flight at once (as many clients).
const WRITERS: usize = 64;
/// How long watchers may take to catch up once the writes are done.
const DRAIN: Duration = Duration::from_secs(30);
/// Upper edges (ms) of the latency histogram's buckets; the last bucket is everything above.
const HISTOGRAM_MS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0,
    75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0,
];

/// What the phase runs.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub watchers: usize,
    pub rate: f64,
    pub seconds: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Load {
    /// `PIER_BENCH_FANOUT_WATCHERS` (100), `PIER_BENCH_FANOUT_RATE` (2000 writes/s),
    /// `PIER_BENCH_FANOUT_SECONDS` (10; 0 skips the phase).
    pub fn from_env() -> Load {
        Load {
            watchers: env_or("PIER_BENCH_FANOUT_WATCHERS", 100),
            rate: env_or("PIER_BENCH_FANOUT_RATE", 2000.0),
            seconds: env_or("PIER_BENCH_FANOUT_SECONDS", 10.0),
        }
    }

    fn writes(&self) -> usize {
        (self.rate * self.seconds).round() as usize
    }
}

/// Every event line one watcher received: (resourceVersion, arrival).
type Arrivals = Vec<(u64, Instant)>;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time (user + system) this process used so far.
fn cpu_time() -> Duration {
    let ticks_per_s = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    Duration::from_secs_f64(ticks / ticks_per_s)
}

fn tls_client(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Where each event's version is: every event line has one (in the object's metadata).
const RV_KEY: &[u8] = b"\"resourceVersion\":\"";

/// Adds the events of the complete lines of `carry` + `data` to `seen`, all arriving `at`.
fn take_lines(
    carry: &mut Vec<u8>,
    data: &[u8],
    at: Instant,
    seen: &mut Arrivals,
    finder: &memchr::memmem::Finder<'_>,
) {
    carry.extend_from_slice(data);
    let Some(end) = memchr::memrchr(b'\n', carry) else {
        return;
    };
    for hit in finder.find_iter(&carry[..end]) {
        let rv = carry[hit + RV_KEY.len()..end]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |rv, d| rv * 10 + u64::from(d - b'0'));
        seen.push((rv, at));
    }
    carry.drain(..=end);
}

/// What a watcher needs to reach the server.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: String,
}

type Conn = hyper::client::conn::http1::Connection<
    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    http_body_util::Empty<Bytes>,
>;

/// A TLS connection speaking HTTP/1.1, and the watch started on it (the connection must be
/// polled for the response to progress).
async fn open_watch(to: Endpoint, from: u64) -> anyhow::Result<(hyper::body::Incoming, Conn)> {
    let tcp = tokio::net::TcpStream::connect(to.addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = tokio_rustls::TlsConnector::from(to.tls)
        .connect(name, tcp)
        .await?;
    let (mut sender, mut conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let req = http::Request::get(format!("{PATH}?watch=true&resourceVersion={from}"))
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::AUTHORIZATION, format!("Bearer {}", to.token))
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = tokio::select! {
        resp = sender.send_request(req) => resp?,
        ended = &mut conn => anyhow::bail!("the connection ended: {ended:?}"),
    };
    ensure!(resp.status() == 200, "watch answered {}", resp.status());
    Ok((resp.into_body(), conn))
}

/// One watcher: says `ready` once its watch's response started, records every event until one
/// at the version `done` announces (or the drain time is up). The connection is polled in the
/// same task as the body: one task per watcher, as light a client as can be.
async fn watcher(
    to: Endpoint,
    from: u64,
    capacity: usize,
    ready: mpsc::Sender<()>,
    mut done: watch::Receiver<Option<u64>>,
) -> anyhow::Result<Arrivals> {
    let (mut body, mut conn) = open_watch(to, from).await?;
    let _ = ready.send(()).await;
    let mut seen = Vec::with_capacity(capacity);
    let mut carry = Vec::new();
    let finder = memchr::memmem::Finder::new(RV_KEY);
    let mut target = u64::MAX;
    let deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(deadline);
    while seen.last().is_none_or(|(rv, _)| *rv < target) {
        tokio::select! {
            // What the connection already read comes first.
            biased;
            frame = body.frame() => match frame {
                Some(Ok(frame)) => if let Some(data) = frame.data_ref() {
                    take_lines(&mut carry, data, Instant::now(), &mut seen, &finder);
                },
                _ => break,
            },
            _ = &mut conn => break,
            changed = done.changed(), if target == u64::MAX => {
                if changed.is_err() {
                    break;
                }
                if let Some(last) = *done.borrow() {
                    target = last;
                    deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
            }
            _ = &mut deadline => break,
        }
    }
    Ok(seen)
}

fn endpoint_body(i: usize) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": format!("ld-{i:06}"), "labels": {"app": format!("a{}", i % 10)}},
            "spec": {"network": "bench", "target": {"netns": {"name": format!("c{i}"), "node": "node-a"}},
                "aliases": ["web"]}
        })
        .to_string(),
    )
}

/// Creates `bodies` paced at `rate` per second from `start`; each create's call latency.
async fn paced_writes(
    server: &ApiServer,
    bodies: Arc<Vec<Bytes>>,
    rate: f64,
    start: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (next, bodies) = (next.clone(), bodies.clone());
        let mut svc = server.service();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return anyhow::Ok(took);
                };
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let t = Instant::now();
                let req = http::Request::post(PATH)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(body.clone()))?;
                let Ok(resp) = tower::Service::call(&mut svc, req).await;
                ensure!(resp.status() == 201, "create answered {}", resp.status());
                took.push(t.elapsed());
            }
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await??);
    }
    Ok(took)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Counts of `sorted` per bucket of [`HISTOGRAM_MS`] (the last: above every edge).
fn histogram(sorted: &[f64]) -> Vec<usize> {
    let mut counts = vec![0; HISTOGRAM_MS.len() + 1];
    for v in sorted {
        let b = HISTOGRAM_MS.partition_point(|edge| edge < v);
        counts[b] += 1;
    }
    counts
}

/// Delivery latencies: every (watcher, event) sample, the worst watcher per write, and per second
/// of the run (by commit time) p50/p99/max.
struct Latencies {
    all: Vec<f64>,
    worst_per_write: Vec<f64>,
    per_second: Vec<Value>,
}

fn latencies(commits: &[(u64, Instant)], watchers: &[Arrivals]) -> Latencies {
    let first_rv = commits.first().map(|(rv, _)| *rv).unwrap_or(0);
    let start = commits.first().map(|(_, at)| *at);
    let mut worst = vec![0.0_f64; commits.len()];
    let seconds = commits
        .last()
        .zip(start)
        .map(|((_, at), s)| at.duration_since(s).as_secs() as usize + 1)
        .unwrap_or(0);
    let mut by_second: Vec<Vec<f64>> = vec![Vec::new(); seconds];
    let mut all = Vec::with_capacity(commits.len() * watchers.len());
    for seen in watchers {
        for (rv, at) in seen {
            let Some(i) = rv.checked_sub(first_rv).map(|i| i as usize) else {
                continue;
            };
            let Some((_, committed)) = commits.get(i) else {
                continue;
            };
            let lat = ms(at.saturating_duration_since(*committed));
            all.push(lat);
            worst[i] = worst[i].max(lat);
            if let Some(s) = start.map(|s| committed.duration_since(s).as_secs() as usize) {
                by_second[s].push(lat);
            }
        }
    }
    all.sort_unstable_by(f64::total_cmp);
    let per_second = by_second
        .iter_mut()
        .enumerate()
        .map(|(s, v)| {
            v.sort_unstable_by(f64::total_cmp);
            json!({"second": s, "samples": v.len(), "p50_ms": round3(pct(v, 0.5)),
                   "p99_ms": round3(pct(v, 0.99)), "max_ms": round3(pct(v, 1.0))})
        })
        .collect();
    Latencies {
        all,
        worst_per_write: worst.into_iter().map(round3).collect(),
        per_second,
    }
}

/// Whether every watcher got every write, each in resourceVersion order.
fn completeness(commits: &[(u64, Instant)], watchers: &[Arrivals]) -> (usize, usize, bool) {
    let (first, last) = match (commits.first(), commits.last()) {
        (Some((f, _)), Some((l, _))) => (*f, *l),
        _ => return (0, 0, true),
    };
    let mut received = 0;
    let mut complete = 0;
    let mut in_order = true;
    for seen in watchers {
        let ours: Vec<u64> = seen
            .iter()
            .map(|(rv, _)| *rv)
            .filter(|rv| (first..=last).contains(rv))
            .collect();
        in_order &= ours.windows(2).all(|w| w[0] < w[1]);
        received += ours.len();
        complete += usize::from(ours.len() == commits.len());
    }
    (received, complete, in_order)
}

/// A server with a durable store and a history that keeps every write of the run (so each
/// write's commit time can be read back), serving HTTPS, with Pier's CRDs.
async fn start_server(
    dir: &std::path::Path,
    writes: usize,
) -> anyhow::Result<(ApiServer, SocketAddr)> {
    let server = ApiServer::open_with(
        dir,
        Options {
            history: writes + 10_000,
            history_max_age: Duration::from_secs(3600),
            ..Options::default()
        },
    )
    .await?;
    let client = kube::Client::new(server.service(), "default");
    let crds: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(client);
    for (_, crd) in pier_crds::manifests::all_crds() {
        crds.create(&Default::default(), &crd).await?;
    }
    let (addr, _task) = server.serve_https("127.0.0.1:0".parse()?).await?;
    Ok((server, addr))
}

/// Starts the watchers and waits until each one's response has begun.
async fn start_watchers(
    server: &ApiServer,
    addr: SocketAddr,
    load: &Load,
    done: &watch::Sender<Option<u64>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<Arrivals>>>> {
    let to = Endpoint {
        addr,
        tls: tls_client(server.ca_pem())?,
        token: server.token().to_string(),
    };
    let from = server.api().store.current_rv();
    let (ready_tx, mut ready) = mpsc::channel(load.watchers.max(1));
    let handles: Vec<_> = (0..load.watchers)
        .map(|_| {
            let w = watcher(
                to.clone(),
                from,
                load.writes(),
                ready_tx.clone(),
                done.subscribe(),
            );
            tokio::spawn(w)
        })
        .collect();
    drop(ready_tx);
    for _ in 0..load.watchers {
        tokio::time::timeout(Duration::from_secs(30), ready.recv())
            .await
            .context("watchers did not start")?
            .context("a watcher failed to start")?;
    }
    Ok(handles)
}

/// Runs the phase; its figures as JSON (every figure also printed).
pub async fn run(load: &Load) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let writes = load.writes();
    let (server, addr) = start_server(tmp.path(), writes).await?;
    let (done, _) = watch::channel(None);
    let handles = start_watchers(&server, addr, load, &done).await?;
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..writes).map(endpoint_body).collect());
    let (load_start, cpu_start) = (loadavg(), cpu_time());
    let first_rv = server.api().store.current_rv() + 1;
    let start = Instant::now();
    let mut create_ms: Vec<f64> = paced_writes(&server, bodies, load.rate, start)
        .await?
        .into_iter()
        .map(ms)
        .collect();
    let write_secs = start.elapsed().as_secs_f64();
    let last_rv = server.api().store.current_rv();
    done.send_replace(Some(last_rv));
    let mut watchers = Vec::new();
    for h in handles {
        watchers.push(h.await??);
    }
    let (cpu, wall) = (cpu_time() - cpu_start, start.elapsed());
    let commits: Vec<(u64, Instant)> = (first_rv..=last_rv)
        .map(|rv| server.api().store.committed_at(rv).map(|at| (rv, at)))
        .collect::<Option<_>>()
        .context("a write's commit time left the history")?;
    ensure!(commits.len() == writes, "other writes during the run");
    let lat = latencies(&commits, &watchers);
    // Writes made durable together are published within microseconds of each other.
    let groups = 1 + commits
        .windows(2)
        .filter(|w| w[1].1.duration_since(w[0].1) > Duration::from_micros(50))
        .count();
    let (received, complete, in_order) = completeness(&commits, &watchers);
    create_ms.sort_unstable_by(f64::total_cmp);
    let all = &lat.all;
    let figures = json!({
        "watchers": load.watchers, "target_writes_per_s": load.rate, "seconds": load.seconds,
        "writes": writes, "writes_per_s": writes as f64 / write_secs, "write_clients": WRITERS,
        "commit_groups_per_s": groups as f64 / write_secs,
        "transport": "HTTPS (TLS 1.3, HTTP/1.1), one connection per watcher",
        "received": received, "expected": writes * load.watchers,
        "watchers_complete": complete, "all_in_order": in_order,
        "p50_ms": pct(all, 0.5), "p90_ms": pct(all, 0.9), "p99_ms": pct(all, 0.99),
        "p999_ms": pct(all, 0.999), "max_ms": pct(all, 1.0),
        "create_call_p50_ms": pct(&create_ms, 0.5), "create_call_p99_ms": pct(&create_ms, 0.99),
        "cpu_cores_used": cpu.as_secs_f64() / wall.as_secs_f64(),
        "cpu_seconds": cpu.as_secs_f64(),
        "cpu_us_per_delivery": cpu.as_secs_f64() * 1e6 / received.max(1) as f64,
        "loadavg_start": load_start, "loadavg_end": loadavg(),
        "histogram": {"upper_edges_ms": HISTOGRAM_MS, "counts": histogram(all)},
        "per_second": lat.per_second,
        "worst_watcher_per_write_ms": lat.worst_per_write,
    });
    println!(
        "watch fan-out under load: {} watchers over HTTPS, {writes} creates at {:.0}/s \
         (target {:.0}/s): received {received} of {} ({complete} watchers complete, in order: \
         {in_order}); commit -> receipt p50 {:.3} ms p99 {:.3} ms max {:.3} ms; create call p50 \
         {:.3} ms p99 {:.3} ms; {:.0} commit groups/s; {:.2} CPU cores used (server and clients), {:.2} µs of CPU per delivery; load \
         {load_start}",
        load.watchers,
        writes as f64 / write_secs,
        load.rate,
        writes * load.watchers,
        pct(all, 0.5),
        pct(all, 0.99),
        pct(all, 1.0),
        pct(&create_ms, 0.5),
        pct(&create_ms, 0.99),
        groups as f64 / write_secs,
        cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / received.max(1) as f64,
    );
    Ok(figures)
}
