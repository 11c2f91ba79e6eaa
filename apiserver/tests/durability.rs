//! Durability: state survives a restart and `kill -9`; nothing acknowledged is lost and
//! resourceVersions keep increasing; nothing is visible before it is durable, and a failed write
//! leaves no trace; the data directory is private.
//!
//! The kill -9 test re-runs this test binary as a child server process (the ignored
//! `child_server` test, selected by PIER_APISERVER_CHILD_DIR) and kills it with SIGKILL while
//! writes are in flight.

mod common;

use std::fs::{File, Permissions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, ObjectList, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use pier_apiserver::ApiServer;
use pier_apiserver::store::wal::LogIo;
use serde_json::json;

fn networks(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("pier.dev", "v1alpha1", "Network"),
        "networks",
    );
    Api::all_with(client.clone(), &ar)
}

fn network(name: &str) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network",
        "metadata": {"name": name}, "spec": {"mtu": 1500}}))
    .expect("valid")
}

#[tokio::test]
async fn state_survives_restart_and_versions_keep_increasing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let last_rv;
    {
        let server = ApiServer::open(dir.path()).await.expect("open");
        let client = kube::Client::new(server.service(), "default");
        common::install_crds(&client).await;
        let api = networks(&client);
        for i in 0..20 {
            api.create(&PostParams::default(), &network(&format!("n{i}")))
                .await
                .expect("created");
        }
        api.delete("n3", &Default::default())
            .await
            .expect("deleted");
        last_rv = api
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv")
            .parse::<u64>()
            .expect("numeric");
    }
    let server = ApiServer::open(dir.path()).await.expect("reopen");
    let client = kube::Client::new(server.service(), "default");
    let api = networks(&client);
    let list = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 19, "the CRDs and objects came back");
    assert!(api.get_opt("n3").await.expect("get").is_none());
    let created = api
        .create(&PostParams::default(), &network("after"))
        .await
        .expect("created after restart");
    let rv: u64 = created
        .metadata
        .resource_version
        .expect("rv")
        .parse()
        .expect("numeric");
    assert!(rv > last_rv, "{rv} > {last_rv}");
}

/// The child server process of `acknowledged_writes_survive_kill_9`.
#[tokio::test]
#[ignore = "run by acknowledged_writes_survive_kill_9 as a child process"]
async fn child_server() {
    let Ok(dir) = std::env::var("PIER_APISERVER_CHILD_DIR") else {
        return;
    };
    // Frequent snapshots, so the kill lands around log compactions too.
    let opts = pier_apiserver::Options {
        compact_every: 97,
        ..Default::default()
    };
    let server = ApiServer::open_with(&dir, opts).await.expect("open");
    let (addr, task) = server
        .serve_https("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("serve");
    let kubeconfig = std::path::Path::new(&dir).join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig, &format!("https://{addr}"))
        .expect("kubeconfig");
    println!("READY");
    task.await.expect("serving");
}

fn spawn_child(dir: &std::path::Path) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "child_server", "--ignored", "--nocapture"])
        .env("PIER_APISERVER_CHILD_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("READY") => break,
            Some(Ok(_)) => continue,
            other => panic!("child server did not start: {other:?}"),
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

async fn client_for(dir: &std::path::Path) -> kube::Client {
    let kc = Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(dir.path());
    let client = client_for(dir.path()).await;
    common::install_crds(&client).await;
    let api = networks(&client);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let counter = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let acked = acked.clone();
        let counter = counter.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                match api
                    .create(&PostParams::default(), &network(&format!("w{w}-{i}")))
                    .await
                {
                    Ok(o) => {
                        let rv = o
                            .metadata
                            .resource_version
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0);
                        acked
                            .lock()
                            .expect("lock")
                            .push((o.metadata.name.unwrap_or_default(), rv));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Let writes flow, then kill the server mid-stream.
    while acked.lock().expect("lock").len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for w in writers {
        w.await.expect("writer ends");
    }
    let acked = acked.lock().expect("lock").clone();
    let max_rv = acked.iter().map(|(_, rv)| *rv).max().unwrap_or(0);

    let mut child = spawn_child(dir.path());
    let client = client_for(dir.path()).await;
    let api = networks(&client);
    let list = api.list(&ListParams::default()).await.expect("list");
    let present: std::collections::HashSet<String> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !present.contains(*n))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let after = api
        .create(&PostParams::default(), &network("after-restart"))
        .await
        .expect("write after restart");
    let rv: u64 = after
        .metadata
        .resource_version
        .and_then(|r| r.parse().ok())
        .expect("rv");
    assert!(rv > max_rv, "{rv} > {max_rv}");
    child.kill().expect("stop child");
    child.wait().expect("reaped");
}

/// The log's fsync, held at a gate the test opens, then failing or succeeding as it says; or a
/// write torn halfway.
#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    tear_next_write: AtomicBool,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<bool>>>,
}

impl Gate {
    /// Arms the gate for the next fsync: returns (entered, release(fail?)).
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<bool>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.entered.lock().expect("lock") = Some(entered_tx);
        *self.release.lock().expect("lock") = Some(release_rx);
        self.armed.store(true, Ordering::SeqCst);
        (entered_rx, release_tx)
    }
}

impl LogIo for Gate {
    fn write(&self, file: &mut File, buf: &[u8]) -> std::io::Result<()> {
        if self.tear_next_write.swap(false, Ordering::SeqCst) {
            file.write_all(&buf[..buf.len() / 2])?;
            return Err(std::io::Error::other("injected: torn write"));
        }
        file.write_all(buf)
    }

    fn sync(&self, file: &mut File) -> std::io::Result<()> {
        if !self.armed.swap(false, Ordering::SeqCst) {
            return file.sync_data();
        }
        if let Some(entered) = self.entered.lock().expect("lock").take() {
            let _ = entered.send(());
        }
        let release = self.release.lock().expect("lock").take();
        let fail = release.and_then(|r| r.recv().ok()).unwrap_or(true);
        if fail {
            return Err(std::io::Error::other("injected: fsync failed"));
        }
        file.sync_data()
    }
}

async fn wait_entered(entered: mpsc::Receiver<()>) {
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
        .await
        .expect("join")
        .expect("the write reached fsync");
}

fn names(list: &ObjectList<DynamicObject>) -> Vec<String> {
    list.items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_visible_only_once_durable_and_a_failed_fsync_leaves_no_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(Gate::default());
    {
        let opts = pier_apiserver::Options {
            log_io: gate.clone(),
            ..Default::default()
        };
        let server = ApiServer::open_with(dir.path(), opts).await.expect("open");
        let client = kube::Client::new(server.service(), "default");
        common::install_crds(&client).await;
        let api = networks(&client);
        api.create(&PostParams::default(), &network("before"))
            .await
            .expect("created");
        let rv = api
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let mut watch = api
            .watch(&WatchParams::default(), &rv)
            .await
            .expect("watch")
            .boxed();

        // A write waiting for its fsync is not visible; it is once the fsync is done.
        let (entered, release) = gate.arm();
        let slow = tokio::spawn({
            let api = api.clone();
            async move { api.create(&PostParams::default(), &network("slow")).await }
        });
        wait_entered(entered).await;
        assert!(api.get_opt("slow").await.expect("get").is_none());
        let listed = api.list(&ListParams::default()).await.expect("list");
        assert!(!names(&listed).contains(&"slow".to_string()));
        assert_eq!(
            listed.metadata.resource_version.as_deref(),
            Some(rv.as_str())
        );
        release.send(false).expect("release");
        slow.await.expect("join").expect("created once durable");
        assert!(api.get_opt("slow").await.expect("get").is_some());

        // A failed fsync: the request fails and nobody ever sees the object.
        let (entered, release) = gate.arm();
        let doomed = tokio::spawn({
            let api = api.clone();
            async move { api.create(&PostParams::default(), &network("doomed")).await }
        });
        wait_entered(entered).await;
        assert!(api.get_opt("doomed").await.expect("get").is_none());
        release.send(true).expect("release");
        match doomed.await.expect("join") {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 500, "{s:?}"),
            other => panic!("expected 500, got {other:?}"),
        }
        assert!(api.get_opt("doomed").await.expect("get").is_none());
        let listed = api.list(&ListParams::default()).await.expect("list");
        assert!(!names(&listed).contains(&"doomed".to_string()));

        // A torn write fails the same way, and the log is cut back to its last good record.
        gate.tear_next_write.store(true, Ordering::SeqCst);
        let e = api
            .create(&PostParams::default(), &network("torn"))
            .await
            .expect_err("torn write");
        assert!(
            matches!(e, kube::Error::Api(ref s) if s.code == 500),
            "{e:?}"
        );

        // Writes go on; the watch saw slow and then after, never doomed or torn.
        api.create(&PostParams::default(), &network("after"))
            .await
            .expect("created after the failures");
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("after") {
            let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("an event")
                .expect("open")
                .expect("event");
            match event {
                WatchEvent::Added(o) => seen.push(o.metadata.name.unwrap_or_default()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, vec!["slow", "after"]);

        let log = std::fs::read_to_string(dir.path().join("store/wal.jsonl")).expect("log");
        for line in log.lines() {
            let record: serde_json::Value = serde_json::from_str(line).expect("a whole record");
            let name = record["n"].as_str().unwrap_or_default();
            assert!(!["doomed", "torn"].contains(&name), "{line}");
        }
    }
    // The next start opens the log and has exactly what was acknowledged.
    let server = ApiServer::open(dir.path()).await.expect("reopen");
    let client = kube::Client::new(server.service(), "default");
    let mut present = names(
        &networks(&client)
            .list(&ListParams::default())
            .await
            .expect("list"),
    );
    present.sort();
    assert_eq!(present, vec!["after", "before", "slow"]);
}

fn modes_under(dir: &Path, out: &mut Vec<(String, u32)>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("meta");
        out.push((
            path.display().to_string(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            modes_under(&path, out);
        }
    }
}

fn assert_private(dir: &Path) {
    let mode = std::fs::metadata(dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    let mut modes = Vec::new();
    modes_under(dir, &mut modes);
    assert!(modes.len() >= 7, "{modes:?}");
    for (path, mode) in modes {
        let want = if Path::new(&path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(mode, want, "{path}: {mode:o}");
    }
}

#[tokio::test]
async fn the_data_directory_is_private_also_when_it_existed() {
    let root = tempfile::tempdir().expect("tempdir");
    // Fresh, under the usual umask.
    let fresh = root.path().join("fresh");
    {
        let server = ApiServer::open(&fresh).await.expect("open");
        server
            .write_kubeconfig(fresh.join("kubeconfig"), "https://127.0.0.1:6443")
            .expect("kubeconfig");
    }
    assert_private(&fresh);
    // Made open by hand (or by an older version): tightened at open.
    for path in [fresh.clone(), fresh.join("store")] {
        std::fs::set_permissions(&path, Permissions::from_mode(0o755)).expect("chmod");
    }
    for f in [
        "ca.crt",
        "token",
        "kubeconfig",
        "store/wal.jsonl",
        "store/snapshot.jsonl",
    ] {
        std::fs::set_permissions(fresh.join(f), Permissions::from_mode(0o644)).expect("chmod");
    }
    let existing = root.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    std::fs::set_permissions(&existing, Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(existing.join("notes"), "left here").expect("file");
    for dir in [&fresh, &existing] {
        let _server = ApiServer::open(dir).await.expect("open");
        assert_private(dir);
    }
}
