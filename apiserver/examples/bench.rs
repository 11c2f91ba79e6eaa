//! Benchmark of the embedded API server (not a test): create/get/list/watch latency and
//! throughput with 10,000 objects, and memory.
//!
//! `cargo run --release -p pier-apiserver --example bench -- [N] [DATA_DIR]`
//! (DATA_DIR: a persistent, fsynced store; default: a temporary directory). With
//! `PIER_BENCH_JSON=FILE` the figures are also written there as JSON (read by `benches/run.sh`).
//! Last, watch fan-out under a sustained write load on a server of its own over HTTPS
//! (`bench_parts/fanout_load.rs`; `PIER_BENCH_FANOUT_*` size it, `PIER_BENCH_FANOUT_SECONDS=0`
//! skips it).

#[path = "bench_parts/fanout_load.rs"]
mod fanout_load;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use pier_apiserver::ApiServer;
use serde_json::json;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn msf(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// A raw watcher on the service (what a client receives, without a client's decoding cost):
/// reports (object index, arrival time) for each event.
fn spawn_raw_watcher(
    server: &ApiServer,
    rv: &str,
    tx: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) {
    let mut svc = server.service();
    let uri = format!(
        "/apis/pier.dev/v1alpha1/namespaces/default/endpoints?watch=true&resourceVersion={rv}"
    );
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        let req = http::Request::get(uri)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let Ok(resp) = tower::Service::call(&mut svc, req).await;
        let mut body = resp.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let at = Instant::now();
            let text = String::from_utf8_lossy(data);
            // A frame may hold several events (those waiting for the watcher when it ran).
            for (pos, _) in text.match_indices("\"name\":\"ep-") {
                let digits: String = text[pos + 11..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(i) = digits.parse::<usize>() {
                    let _ = tx.send((i, at));
                }
            }
        }
    });
}

fn endpoint(i: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": format!("ep-{i:05}"), "labels": {"app": format!("a{}", i % 10)}},
        "spec": {"network": "bench", "target": {"netns": {"name": format!("c{i}"), "node": "node-a"}},
            "aliases": ["web"]}
    }))
    .expect("valid")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let rss0 = rss_mib();
    let server = ApiServer::open(&dir).await?;
    let client = kube::Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in pier_crds::manifests::all_crds() {
        let _ = crds.create(&PostParams::default(), &crd).await;
    }
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pier.dev", "v1alpha1", "Endpoint"),
        "endpoints",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    println!(
        "pier-apiserver bench: {n} Endpoint objects, durable store in {}",
        dir.display()
    );

    // Watchers for the fan-out measurement (started before the writes).
    let watchers: usize = std::env::var("WATCHERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(10);
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for _ in 0..watchers {
        spawn_raw_watcher(&server, &rv, lat_tx.clone());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Concurrent creates (64 in flight), each acknowledged only once fsynced.
    let sent: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..n).map(|_| std::sync::OnceLock::new()).collect());
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let api = api.clone();
        let next = next.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return lat;
                }
                let t = Instant::now();
                let _ = sent[i].set(t);
                api.create(&PostParams::default(), &endpoint(i))
                    .await
                    .expect("create");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut create_lat = Vec::new();
    for t in tasks {
        create_lat.extend(t.await?);
    }
    let create_secs = start.elapsed().as_secs_f64();
    let mut figures = serde_json::Map::new();
    figures.insert("bench".into(), json!("apiserver"));
    figures.insert("objects".into(), json!(n));
    figures.insert(
        "create_concurrent".into(),
        json!({"clients": 64, "writes_per_s": n as f64 / create_secs,
               "p50_ms": msf(pct(&mut create_lat, 0.5)), "p99_ms": msf(pct(&mut create_lat, 0.99))}),
    );
    println!(
        "create: {n} in {create_secs:.2} s = {:.0} writes/s (64 concurrent clients); latency p50 {} p99 {}",
        n as f64 / create_secs,
        ms(pct(&mut create_lat, 0.5)),
        ms(pct(&mut create_lat, 0.99))
    );

    // Watch fan-out: from the create call to each watcher's receipt.
    drop(lat_tx);
    let mut fan = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fan.len() < n * watchers && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), lat_rx.recv()).await {
            Ok(Some((i, at))) => {
                if let Some(s) = sent.get(i).and_then(|s| s.get()) {
                    fan.push(at.saturating_duration_since(*s));
                }
            }
            _ => break,
        }
    }
    figures.insert(
        "watch_during_storm".into(),
        json!({"watchers": watchers, "received": fan.len(), "expected": n * watchers,
               "p50_ms": msf(pct(&mut fan, 0.5)), "p99_ms": msf(pct(&mut fan, 0.99)),
               "max_ms": msf(pct(&mut fan, 1.0))}),
    );
    println!(
        "watch during the write storm: {watchers} watchers received {} of {} events; create-call-to-delivery p50 {} p99 {} max {}",
        fan.len(),
        n * watchers,
        ms(pct(&mut fan, 0.5)),
        ms(pct(&mut fan, 0.99)),
        ms(pct(&mut fan, 1.0))
    );

    // Sequential single-client latency (one write at a time: fsync-bound).
    let mut seq = Vec::new();
    for i in n..n + 200 {
        let t = Instant::now();
        api.create(&PostParams::default(), &endpoint(i)).await?;
        seq.push(t.elapsed());
    }
    figures.insert(
        "create_sequential".into(),
        json!({"p50_ms": msf(pct(&mut seq, 0.5)), "p99_ms": msf(pct(&mut seq, 0.99))}),
    );
    println!(
        "create (one client, sequential): p50 {} p99 {}",
        ms(pct(&mut seq, 0.5)),
        ms(pct(&mut seq, 0.99))
    );

    // Watch fan-out at a steady pace: 100 watchers, one create every 5 ms; latency from the
    // create call to each watcher's receipt (includes the create's own fsync).
    let fan_watchers = 100;
    let base = n + 1000;
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let (ftx, mut frx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for _ in 0..fan_watchers {
        spawn_raw_watcher(&server, &rv, ftx.clone());
    }
    drop(ftx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paced = 500;
    let mut starts = Vec::new();
    for i in base..base + paced {
        starts.push(Instant::now());
        api.create(&PostParams::default(), &endpoint(i)).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut fan = Vec::new();
    while fan.len() < paced * fan_watchers {
        match tokio::time::timeout(Duration::from_secs(5), frx.recv()).await {
            Ok(Some((i, at))) if i >= base && i < base + paced => {
                fan.push(at.saturating_duration_since(starts[i - base]));
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    figures.insert(
        "watch_fanout".into(),
        json!({"watchers": fan_watchers, "creates": paced, "pace_ms": 5,
               "received": fan.len(), "expected": paced * fan_watchers,
               "p50_ms": msf(pct(&mut fan, 0.5)), "p99_ms": msf(pct(&mut fan, 0.99)),
               "max_ms": msf(pct(&mut fan, 1.0))}),
    );
    println!(
        "watch fan-out: {fan_watchers} watchers x {paced} creates (one per 5 ms): received {} of {}; create-call-to-delivery p50 {} p99 {} max {}",
        fan.len(),
        paced * fan_watchers,
        ms(pct(&mut fan, 0.5)),
        ms(pct(&mut fan, 0.99)),
        ms(pct(&mut fan, 1.0))
    );

    // Gets.
    let mut get_lat = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        api.get(&format!("ep-{i:05}")).await?;
        get_lat.push(t.elapsed());
    }
    let get_secs = start.elapsed().as_secs_f64();
    figures.insert(
        "get".into(),
        json!({"gets_per_s": n as f64 / get_secs, "p50_ms": msf(pct(&mut get_lat, 0.5)),
               "p99_ms": msf(pct(&mut get_lat, 0.99))}),
    );
    println!(
        "get: {n} sequential in {get_secs:.2} s = {:.0} gets/s; latency p50 {} p99 {}",
        n as f64 / get_secs,
        ms(pct(&mut get_lat, 0.5)),
        ms(pct(&mut get_lat, 0.99))
    );

    // Lists.
    let t = Instant::now();
    let all = api.list(&ListParams::default()).await?;
    let took = t.elapsed();
    figures.insert("list_all_ms".into(), json!(msf(took)));
    println!("list: all {} objects in {}", all.items.len(), ms(took));
    let t = Instant::now();
    let sel = api.list(&ListParams::default().labels("app=a3")).await?;
    let took = t.elapsed();
    figures.insert("list_selector_ms".into(), json!(msf(took)));
    println!(
        "list with label selector: {} of {} in {}",
        sel.items.len(),
        all.items.len(),
        ms(took)
    );
    drop(all);
    drop(sel);
    figures.insert(
        "memory".into(),
        json!({"rss_mib": rss_mib(), "objects": n + 200, "rss_start_mib": rss0}),
    );
    println!(
        "memory: RSS {:.1} MiB with {} objects ({:.1} MiB at start)",
        rss_mib(),
        n + 200,
        rss0
    );
    let load = fanout_load::Load::from_env();
    if load.seconds > 0.0 {
        figures.insert("watch_fanout_load".into(), fanout_load::run(&load).await?);
    }
    if let Ok(path) = std::env::var("PIER_BENCH_JSON") {
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(())
}
