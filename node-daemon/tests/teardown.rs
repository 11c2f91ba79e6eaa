//! Kernel tests of bulk teardown: the links of many Endpoints deleted with one kernel request
//! (the dataplane and `pier down`'s reset), concurrent detaches served by shared removals (the
//! agent's batcher over the real dataplane, and the whole agent with the API server and the
//! operator), and what must not change: a detach ends only after its veth is gone, the node's
//! finalizer and then the operator's release come after it, links that are not Pier's are never
//! touched, and a failed removal reaches every detach waiting for it without stopping the next.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Lab, Ns, bridge_endpoint, bridge_network};
use pier_crds::names::{REMOVAL_LINK_GROUP, is_pier_veth_name};
use pier_node::agent::batch::Batcher;
use pier_node::dataplane::{Dataplane, ObjectKey, Outcome, Report, Scope};
use pier_node::kernel::netlink::Nl;
use pier_node::state::NodeState;

/// A network with `n` endpoints, each in a namespace of its own.
fn crowd(lab: &Lab, n: usize) -> (Vec<Ns>, NodeState) {
    let containers: Vec<Ns> = (0..n).map(|i| lab.container(&format!("e{i}"))).collect();
    let endpoints = containers
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let address = format!("10.77.{}.{}", i / 250, i % 250 + 2);
            bridge_endpoint(&format!("default/e{i}"), ns, "bulk", "eth0", &address, true)
        })
        .collect();
    let state = NodeState {
        networks: vec![bridge_network("bulk", "10.77.0.0/16", "10.77.255.254")],
        endpoints,
        ..NodeState::default()
    };
    (containers, state)
}

/// The host-side veths of Pier's in `host`.
fn pier_veths(host: &Ns) -> Vec<String> {
    host.links()
        .into_iter()
        .filter(|name| is_pier_veth_name(name))
        .collect()
}

/// The group `ip link` shows for `link` in `ns` (`default` for 0).
fn group_of(ns: &Ns, link: &str) -> String {
    let shown = ns.sh(&format!("ip -o link show {link}"));
    let mut words = shown.split_whitespace();
    words.find(|w| *w == "group");
    words.next().unwrap_or_default().to_owned()
}

/// The lines the report has for the link `name`, which must have changed.
fn changed<'a>(report: &'a Report, name: &str) -> &'a [String] {
    match report.outcome(&ObjectKey::Link(name.to_owned())) {
        Some(Outcome::Changed(lines)) => lines,
        other => panic!("link {name}: {other:?}\n{report}"),
    }
}

#[test]
fn many_veths_go_with_one_kernel_request_much_faster_than_one_by_one() {
    let lab = Lab::new("bulk");
    let (containers, mut state) = crowd(&lab, 200);
    lab.apply_ok(&state);
    lab.host.sh("ip link add fg0 type veth peer name fg1");
    assert_eq!(pier_veths(&lab.host).len(), 200);

    // One by one, as every detach used to remove its veth: 40 removals of one veth each.
    let serial = Instant::now();
    for _ in 0..40 {
        let gone = state.endpoints.pop().expect("an endpoint");
        let veth = gone.host_veth_name();
        let report = lab
            .dataplane
            .apply(&state, &Scope::removal([veth.as_str()]))
            .expect("removal");
        assert!(report.is_success(), "{report}");
        assert!(!changed(&report, &veth)[0].contains("one request"));
    }
    let per_veth = serial.elapsed() / 40;

    // The other 160 in one removal: one kernel request.
    let doomed: Vec<String> = state
        .endpoints
        .drain(..)
        .map(|e| e.host_veth_name())
        .collect();
    let together = Instant::now();
    let report = lab
        .dataplane
        .apply(&state, &Scope::removal(doomed.clone()))
        .expect("removal");
    let took = together.elapsed();
    assert!(report.is_success(), "{report}");
    for veth in &doomed {
        assert!(
            changed(&report, veth)[0].ends_with("one request for 160 links"),
            "{report}"
        );
    }
    eprintln!(
        "one by one: {:.1} ms per veth; 160 together: {:.0} ms ({:.1} ms per veth)",
        per_veth.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0 / 160.0
    );
    assert!(
        took < per_veth * 160 / 4,
        "160 veths together took {took:?}, one by one {per_veth:?} each"
    );

    assert!(pier_veths(&lab.host).is_empty());
    for container in containers.iter().step_by(25) {
        assert_eq!(container.links(), vec!["lo".to_owned()]);
    }
    let links = lab.host.links();
    assert!(links.contains(&"fg0".to_owned()) && links.contains(&"fg1".to_owned()));
    assert_eq!(group_of(&lab.host, "fg0"), "default");
    lab.assert_converged(&state);
}

#[test]
fn a_link_not_piers_in_the_removal_group_stops_the_group_and_stays() {
    let lab = Lab::new("bulkfg");
    let (_containers, mut state) = crowd(&lab, 4);
    lab.apply_ok(&state);
    // Another program uses the same group number.
    lab.host.sh(&format!(
        "ip link add fg0 type veth peer name fg1 && ip link set fg0 group {REMOVAL_LINK_GROUP}"
    ));
    let doomed: Vec<String> = state
        .endpoints
        .drain(..)
        .map(|e| e.host_veth_name())
        .collect();
    let report = lab
        .dataplane
        .apply(&state, &Scope::removal(doomed.clone()))
        .expect("removal");
    assert!(report.is_success(), "{report}");
    for veth in &doomed {
        assert!(
            !changed(&report, veth)[0].contains("one request"),
            "deleted one by one: {report}"
        );
    }
    assert!(pier_veths(&lab.host).is_empty());
    let links = lab.host.links();
    assert!(links.contains(&"fg0".to_owned()) && links.contains(&"fg1".to_owned()));
    assert_eq!(group_of(&lab.host, "fg0"), REMOVAL_LINK_GROUP.to_string());
}

#[test]
fn a_pier_link_left_in_the_removal_group_is_moved_back_not_deleted() {
    let lab = Lab::new("bulkst");
    let (_containers, mut state) = crowd(&lab, 4);
    lab.apply_ok(&state);
    // As a deletion cut short (a crash between moving and deleting) would leave it; the state
    // still wants it.
    let kept = state.endpoints[0].host_veth_name();
    lab.host
        .sh(&format!("ip link set {kept} group {REMOVAL_LINK_GROUP}"));
    let doomed: Vec<String> = state
        .endpoints
        .drain(1..)
        .map(|e| e.host_veth_name())
        .collect();
    let report = lab
        .dataplane
        .apply(&state, &Scope::removal(doomed.clone()))
        .expect("removal");
    assert!(report.is_success(), "{report}");
    for veth in &doomed {
        assert!(
            changed(&report, veth)[0].ends_with("one request for 3 links"),
            "{report}"
        );
    }
    assert_eq!(pier_veths(&lab.host), vec![kept.clone()]);
    assert_eq!(group_of(&lab.host, &kept), "default");
    lab.assert_converged(&state);
}

#[test]
fn pier_down_deletes_every_pier_link_with_one_request_and_keeps_the_others() {
    let lab = Lab::new("bulkdown");
    let (_containers, state) = crowd(&lab, 30);
    lab.apply_ok(&state);
    lab.host
        .sh("ip link add fg0 type veth peer name fg1 && ip link add br-fg type bridge");
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    let links: Vec<&ObjectKey> = report
        .objects
        .keys()
        .filter(|k| matches!(k, ObjectKey::Link(_)))
        .collect();
    assert_eq!(links.len(), 31, "30 veths and the bridge: {report}");
    for key in links {
        let ObjectKey::Link(name) = key else {
            unreachable!("filtered")
        };
        assert!(
            changed(&report, name)[0].ends_with("one request for 31 links"),
            "{report}"
        );
    }
    let left: BTreeSet<String> = lab.host.links().into_iter().collect();
    assert_eq!(
        left,
        BTreeSet::from(["lo", "fg0", "fg1", "br-fg"].map(String::from))
    );
}

/// What the batcher's work answers: the removal's report, or why it failed as a whole.
type Removed = Result<Arc<Report>, String>;

/// A batcher whose work removes the requested links with `dataplane`, planned from `state` as it
/// is when the work starts (as the agent's removals plan from its stores); counts the removals.
fn removals(
    dataplane: Dataplane,
    state: Arc<Mutex<NodeState>>,
) -> (Batcher<Vec<String>, Removed>, Arc<AtomicUsize>) {
    let (batcher, batches) = Batcher::new(pier_node::agent::removal::LINGER);
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(batches.run(move |requests: Vec<Vec<String>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let dataplane = dataplane.clone();
        let state = state.lock().expect("state").clone();
        let scope = Scope::Removal(requests.concat());
        async move {
            tokio::task::spawn_blocking(move || dataplane.apply(&state, &scope))
                .await
                .map_err(|error| error.to_string())?
                .map(Arc::new)
                .map_err(|error| pier_runtime::error_chain(&error))
        }
    }));
    (batcher, count)
}

/// Whether the link `name` exists in the namespace at `host` now.
async fn link_exists(host: &Path, name: &str) -> bool {
    let (host, name) = (host.to_path_buf(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let nl = Nl::open_in(Some(&host)).expect("a socket in the host namespace");
        nl.link(&name).expect("link lookup").is_some()
    })
    .await
    .expect("lookup ran")
}

/// One detach as the agent does it: the endpoint leaves the desired state, its veth is
/// submitted, and the answer must say it is gone. Returns whether the kernel still had it when
/// the answer came (it must not), or the removal's failure.
async fn detach(
    batcher: Batcher<Vec<String>, Removed>,
    state: Arc<Mutex<NodeState>>,
    host: PathBuf,
    id: String,
    veth: String,
) -> Result<bool, String> {
    state
        .lock()
        .expect("state")
        .endpoints
        .retain(|e| e.id != id);
    let report = batcher
        .submit(vec![veth.clone()])
        .await
        .expect("answered")?;
    if let Some(Outcome::Failed(message)) = report.outcome(&ObjectKey::Link(veth.clone())) {
        return Err(message.clone());
    }
    Ok(link_exists(&host, &veth).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_detaches_share_removals_and_each_ends_after_its_veth_is_gone() {
    let lab = Lab::new("bulkdet");
    let (_containers, state) = crowd(&lab, 100);
    tokio::task::block_in_place(|| lab.apply_ok(&state));
    lab.host.sh("ip link add fg0 type veth peer name fg1");
    let ends: Vec<(String, String)> = state
        .endpoints
        .iter()
        .map(|e| (e.id.clone(), e.host_veth_name()))
        .collect();
    let state = Arc::new(Mutex::new(state));
    let (batcher, applies) = removals(lab.dataplane.clone(), Arc::clone(&state));
    let detaches = ends.into_iter().map(|(id, veth)| {
        tokio::spawn(detach(
            batcher.clone(),
            Arc::clone(&state),
            lab.host.path(),
            id,
            veth,
        ))
    });
    for detached in futures::future::join_all(detaches).await {
        let still_there = detached.expect("joined").expect("detached");
        assert!(
            !still_there,
            "a detach ended while its veth was still there"
        );
    }
    let applies = applies.load(Ordering::SeqCst);
    eprintln!("100 concurrent detaches: {applies} removals");
    assert!(applies <= 10, "{applies} removals for 100 detaches");
    assert!(pier_veths(&lab.host).is_empty());
    assert!(lab.host.links().contains(&"fg0".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_removal_fails_every_detach_in_it_and_the_next_removals_still_run() {
    let lab = Lab::new("bulkfail");
    let (_containers, state) = crowd(&lab, 20);
    tokio::task::block_in_place(|| lab.apply_ok(&state));
    // The agent's node namespace, reached through a path that is missing at first: every
    // removal fails as a whole until it is there.
    let path = std::env::temp_dir().join(format!("{}-node", lab.host.name));
    let _ = std::fs::remove_file(&path);
    let dataplane = Dataplane::new(Some(path.clone()));
    let ends: Vec<(String, String)> = state
        .endpoints
        .iter()
        .map(|e| (e.id.clone(), e.host_veth_name()))
        .collect();
    let state = Arc::new(Mutex::new(state));
    let (batcher, _applies) = removals(dataplane, Arc::clone(&state));
    let round = |batcher: &Batcher<Vec<String>, Removed>| {
        let detaches = ends.iter().map(|(id, veth)| {
            tokio::spawn(detach(
                batcher.clone(),
                Arc::clone(&state),
                lab.host.path(),
                id.clone(),
                veth.clone(),
            ))
        });
        futures::future::join_all(detaches)
    };
    let failed = tokio::time::timeout(Duration::from_secs(30), round(&batcher))
        .await
        .expect("every detach got an answer");
    for detached in failed {
        let error = detached.expect("joined").expect_err("the removal failed");
        assert!(error.contains("does not exist"), "{error}");
    }
    assert_eq!(pier_veths(&lab.host).len(), 20, "nothing was removed");

    // The namespace is reachable again: the retries go through.
    std::os::unix::fs::symlink(lab.host.path(), &path).expect("symlink");
    let retried = tokio::time::timeout(Duration::from_secs(30), round(&batcher))
        .await
        .expect("every retry got an answer");
    for detached in retried {
        let still_there = detached.expect("joined").expect("detached");
        assert!(!still_there);
    }
    assert!(pier_veths(&lab.host).is_empty());
    let _ = std::fs::remove_file(&path);
}

/// The operator's test fixture: an embedded API server with Pier's CRDs, and the real operator.
#[path = "../../operator/tests/common/mod.rs"]
mod operator_fixture;

/// Removes the named namespaces whose names start with `prefix` (those the agent made and a
/// failing test left behind).
struct NamedNamespaces {
    prefix: String,
}

impl NamedNamespaces {
    fn left(&self) -> Vec<String> {
        std::fs::read_dir(pier_crds::names::NETNS_DIR)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NamedNamespaces {
    fn drop(&mut self) {
        for name in self.left() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
        }
    }
}

/// The time the kernel takes to delete one veth by itself here and now: 20 pairs made in `host`
/// and deleted one request each.
fn one_by_one_per_veth(host: &Ns) -> Duration {
    host.sh("for i in $(seq 20); do ip link add cal$i type veth peer name cap$i; done");
    let nl = Nl::open_in(Some(&host.path())).expect("a socket in the host namespace");
    let started = Instant::now();
    for i in 1..=20 {
        let name = format!("cal{i}");
        let link = nl.link(&name).expect("lookup").expect("made");
        nl.delete_link(link.index, &name).expect("deleted");
    }
    started.elapsed() / 20
}

/// Checks, for every change the watch shows of an Endpoint let go by the node (its finalizer
/// gone) or deleted, that its veth and namespace are gone from the kernel already; returns the
/// violations seen, once the watch has listed what is there (a change made after that reaches
/// it as an event, not in the initial list, which is not checked).
async fn watch_releases(
    api: kube::Api<pier_crds::Endpoint>,
    host: PathBuf,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use kube::ResourceExt;
    use kube::runtime::watcher;
    let violations = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&violations);
    let (listed, on_listed) = tokio::sync::oneshot::channel();
    let mut listed = Some(listed);
    let watching = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let (ep, deleted) = match event {
                Ok(watcher::Event::Apply(ep)) => (ep, false),
                Ok(watcher::Event::Delete(ep)) => (ep, true),
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            let released = ep.metadata.deletion_timestamp.is_some()
                && !ep
                    .finalizers()
                    .iter()
                    .any(|f| f == pier_crds::finalizers::NODE);
            if !(released || deleted) {
                continue;
            }
            let veth = pier_crds::names::host_veth_name(ep.metadata.uid.as_deref().unwrap_or(""));
            if link_exists(&host, &veth).await {
                seen.lock()
                    .expect("lock")
                    .push(format!("{}: veth {veth}", ep.name_any()));
            }
            let netns = ep.spec.target.netns.as_ref().map(|n| n.name.clone());
            if let Some(netns) = netns
                && Path::new(pier_crds::names::NETNS_DIR).join(&netns).exists()
            {
                seen.lock()
                    .expect("lock")
                    .push(format!("{}: netns {netns}", ep.name_any()));
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), on_listed)
        .await
        .expect("the watch listed the endpoints in time")
        .expect("the watch ran");
    (violations, watching)
}

/// The value of the sample `name` in the agent's metrics as Prometheus scrapes them.
fn scraped(metrics: &pier_node::agent::metrics::NodeMetrics, name: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics encode");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Polls `check` every 10 ms until it holds (at most 2 minutes); returns how long it took.
async fn until(what: &str, check: impl AsyncFn() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_deleted_at_once_leave_together_after_their_veths_and_free_their_addresses() {
    use kube::api::{Api, DeleteParams, ListParams, PostParams};
    use operator_fixture::{NODE, Operator, object};
    use pier_node::agent::node_kernel::RealKernel;
    use pier_node::agent::{AgentConfig, AgentHealth};
    use serde_json::json;

    const N: usize = 200;
    common::require_root();
    let host = Ns::new("bulkagent-h");
    host.sh("ip link add fg0 type veth peer name fg1");
    let per_veth = tokio::task::block_in_place(|| one_by_one_per_veth(&host));
    let prefix = format!("pt-bulkagent-{}-", std::process::id());
    let namespaces = NamedNamespaces {
        prefix: prefix.clone(),
    };
    let state_dir = tempfile::tempdir().expect("state dir");

    let (_server, client) = operator_fixture::cluster().await;
    let operator = Operator::start(&client, operator_fixture::config("test-operator"));
    let mut config = AgentConfig::new(NODE);
    config.host_netns = Some(host.path());
    config.dns = None;
    config.netns_targets = true;
    config.state_dir = state_dir.path().to_path_buf();
    config.resync = Duration::from_secs(3600);
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(500);
    let metrics = Arc::clone(&config.metrics);
    let kernel = Arc::new(RealKernel::new(&config));
    let health = Arc::new(AgentHealth::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn({
        let (client, health) = (client.clone(), Arc::clone(&health));
        let mut stopped = stopped.clone();
        async move {
            let until_stopped = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            pier_node::agent::run_with(client, config, kernel, health, until_stopped)
                .await
                .expect("the agent ran");
        }
    });
    until("the agent is ready", async || {
        health.ready.load(Ordering::Relaxed)
    })
    .await;

    let networks: Api<pier_crds::Network> = Api::all(client.clone());
    networks
        .create(
            &PostParams::default(),
            &operator_fixture::network("bulk", json!({"subnet": "10.78.0.0/16"})),
        )
        .await
        .expect("network");
    let eps: Api<pier_crds::Endpoint> = Api::namespaced(client.clone(), "default");
    let label = format!("bulk={}", std::process::id());
    let address = |i: usize| format!("10.78.{}.{}", i / 250 + 1, i % 250 + 2);
    let endpoint = |name: &str, i: usize| -> pier_crds::Endpoint {
        object(
            json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"bulk": std::process::id().to_string()}},
            "spec": {"network": "bulk", "target": {"netns": {"name": format!("{prefix}{i}")}},
                "ipv4Address": address(i)}}),
        )
    };
    for i in 0..N {
        eps.create(&PostParams::default(), &endpoint(&format!("e{i}"), i))
            .await
            .expect("endpoint");
    }
    let attached = async || {
        let list = eps
            .list(&ListParams::default().labels(&label))
            .await
            .expect("list");
        list.items
            .iter()
            .filter(|ep| {
                ep.status.as_ref().is_some_and(|s| {
                    pier_crds::conditions::is_true(&s.conditions, pier_crds::conditions::ATTACHED)
                })
            })
            .count()
    };
    until("every endpoint is attached", async || attached().await == N).await;
    assert_eq!(pier_veths(&host).len(), N);

    // All deleted at once.
    let (violations, watching) = watch_releases(eps.clone(), host.path()).await;
    let started = Instant::now();
    eps.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&label),
    )
    .await
    .expect("deleted");
    until("no veth of theirs is left", async || {
        pier_veths(&host).is_empty()
    })
    .await;
    let veths_gone = started.elapsed();
    until("the API has none of them", async || {
        eps.list(&ListParams::default().labels(&label))
            .await
            .expect("list")
            .items
            .is_empty()
    })
    .await;
    let api_empty = started.elapsed();
    let removals = scraped(&metrics, "pier_node_detach_batch_size_count");
    let detaches = scraped(&metrics, "pier_node_detach_batch_size_sum");
    eprintln!(
        "{N} Endpoints deleted at once: no veth left after {veths_gone:?}, none in the API after \
         {api_empty:?}; {detaches} detaches in {removals} removals; one by one the kernel takes \
         {per_veth:?} per veth here"
    );

    // Each let go only after its veth and namespace were gone; nothing left; others untouched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watching.abort();
    let violations = violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "released too early: {violations:?}");
    assert!(namespaces.left().is_empty(), "{:?}", namespaces.left());
    let links = host.links();
    assert!(links.contains(&"fg0".to_owned()) && links.contains(&"fg1".to_owned()));
    // Served together: on average at least 4 detaches per removal (how fast is the
    // benchmark's to say: this agent, its API server and its operator run unoptimized here).
    assert!(detaches >= N as f64, "{detaches} detaches");
    assert!(
        removals * 4.0 <= detaches,
        "{detaches} detaches in {removals} removals"
    );

    // Their addresses were released: one of them is allocated again.
    eps.create(&PostParams::default(), &endpoint("again", 0))
        .await
        .expect("endpoint");
    until("the address is allocated and attached again", async || {
        attached().await == 1
    })
    .await;
    eps.delete("again", &DeleteParams::default())
        .await
        .expect("deleted");
    until("it is gone", async || {
        eps.get_opt("again").await.expect("get").is_none()
    })
    .await;
    assert!(pier_veths(&host).is_empty());

    let _ = stop.send(true);
    agent.await.expect("the agent stopped cleanly");
    operator.stop().await;
}
