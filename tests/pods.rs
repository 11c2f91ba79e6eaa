//! Pods as Pier's workloads, end to end (system tier, see docs/architecture.md): `pier up` and
//! the real `kubectl`, Pods attached by their `pier.dev/networks` annotation, and for each Pod a
//! sandbox made as the kubelet and the cluster's network plugin make it
//! (`system::pods::PodSandbox`: a namespace of its own with a cluster `eth0` and default route,
//! a process in a real cgroup named for the Pod's UID). Pier finds each namespace through that
//! cgroup, gives it `net1` and leaves `eth0` alone; the Pods reach each other by name and by a
//! shared alias, become attached (the readiness gate's condition, beside the kubelet's own
//! conditions), follow annotation edits, and lose their Endpoints when deleted. Needs root,
//! kubectl, iproute2, ping, busybox-static, socat and nft, and a writable cgroup hierarchy.

mod system;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use pier_crds::conditions::ATTACHED;
use pier_crds::pod::{ATTACHED_CONDITION, NETWORKS_ANNOTATION, POD_LABEL, endpoint_name, reason};
use system::pods::{PodDns, PodSandbox};
use system::{Pier, wait_for};

/// The Pier network every Pod is on (and the search domain of their resolvers).
const NETWORK: &str = "pods-a";
const SUBNET: &str = "10.77.0.0/24";
const GATEWAY: &str = "10.77.0.1";
/// The network one Pod joins and leaves by an annotation edit.
const SECOND: &str = "pods-b";
/// The alias both `web` replicas share (a Deployment's template would carry it).
const ALIAS: &str = "web";
/// How long a change may take to reach the kernel and the DNS server here.
const CONVERGE: Duration = Duration::from_secs(30);

/// A Pod on `pier up`'s node (no scheduler: `nodeName` is set) with Pier's readiness gate and
/// `annotation` as its `pier.dev/networks`.
fn pod(name: &str, annotation: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  annotations:
    {NETWORKS_ANNOTATION}: '{annotation}'
spec:
  nodeName: node-a
  readinessGates: [{{conditionType: {ATTACHED_CONDITION}}}]
  containers: [{{name: app, image: busybox}}]
"#
    )
}

/// The annotation of a `web` replica: the JSON form, with the shared alias.
fn web_annotation() -> String {
    format!(r#"[{{"network": "{NETWORK}", "aliases": ["{ALIAS}"]}}]"#)
}

/// The Endpoint the operator makes for `pod` on `network`.
fn endpoint(pod: &str, network: &str) -> String {
    format!("pep {}", endpoint_name(pod, network))
}

/// The Endpoints labelled as `pod`'s (`kubectl get -o name` lines).
fn endpoints_of(pier: &Pier, pod: &str) -> Vec<String> {
    pier.kubectl_ok(&format!("get pep -l {POD_LABEL}={pod} -o name"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The addresses `name` resolves to from `asker`, by the Pier DNS server at the gateway.
fn resolve(asker: &PodSandbox, name: &str) -> BTreeSet<Ipv4Addr> {
    let out = asker.exec(&format!("busybox nslookup {name} {GATEWAY}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.starts_with("Address"))
        .flat_map(str::split_whitespace)
        .filter_map(|word| word.parse().ok())
        .collect()
}

#[test]
fn pods_attach_by_annotation_through_their_cgroup() {
    let pier = Pier::up("pods", &[]);
    create_networks_and_pods(&pier);
    kubelet_reports(&pier, "web-1", "False");
    let dns = PodDns {
        nameserver: GATEWAY.to_owned(),
        search: NETWORK.to_owned(),
    };
    let web_1 = PodSandbox::for_pod(&pier, "web-1", 1, &dns);
    let web_2 = PodSandbox::for_pod(&pier, "web-2", 2, &dns);
    let client = PodSandbox::for_pod(&pier, "client", 3, &dns);

    let address = attached(&pier, &[&web_1, &web_2, &client]);
    kubelet_and_pier_conditions_stay_apart(&pier, "web-1");
    for name in ["web-1", "web-2", ALIAS] {
        wait_for(&format!("client to ping {name} by name"), CONVERGE, || {
            client
                .exec(&format!("ping -c1 -W1 {name}"))
                .status
                .success()
                .then_some(())
        });
    }
    let replicas = BTreeSet::from([address["web-1"], address["web-2"]]);
    wait_for(
        &format!("{ALIAS} to resolve to both replicas"),
        CONVERGE,
        || (resolve(&client, ALIAS) == replicas).then_some(()),
    );

    annotation_edits_connect_and_disconnect(&pier, &web_1);
    deleting_a_pod_removes_its_endpoints(&pier, &web_2, &client, address["web-1"]);
}

/// The two Networks, the two `web` replicas (JSON annotation, shared alias) and the client
/// (text annotation).
fn create_networks_and_pods(pier: &Pier) {
    pier.apply(&format!(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {{name: {NETWORK}}}
spec: {{subnet: {SUBNET}, gateway: {GATEWAY}}}
---
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {{name: {SECOND}}}
spec: {{subnet: 10.77.1.0/24, gateway: 10.77.1.1}}
"#
    ));
    let web = web_annotation();
    let pods = [
        pod("web-1", &web),
        pod("web-2", &web),
        pod("client", NETWORK),
    ];
    pier.apply(&pods.join("---"));
}

/// Waits until every sandbox's Endpoint on [`NETWORK`] is attached and its Pod's condition
/// says so, checking the Endpoint and the namespace; the Endpoints' addresses, by Pod.
fn attached(pier: &Pier, sandboxes: &[&PodSandbox]) -> BTreeMap<String, Ipv4Addr> {
    let mut address = BTreeMap::new();
    for sandbox in sandboxes {
        let pod = &sandbox.pod;
        pier.wait_condition(&endpoint(pod, NETWORK), ATTACHED, "True");
        owned_and_labelled(pier, sandbox);
        let ip = pier.jsonpath(&endpoint(pod, NETWORK), "{.status.ipv4Address}");
        net1_beside_the_cluster_network(sandbox, &ip);
        let ip = ip
            .parse()
            .unwrap_or_else(|e| panic!("{pod}'s address {ip:?}: {e}"));
        address.insert(pod.clone(), ip);
        assert_eq!(
            pier.wait_condition(&format!("pod {pod}"), ATTACHED_CONDITION, "True"),
            reason::ATTACHED
        );
    }
    address
}

/// The kubelet's part of Pod `pod`'s status, applied as the kubelet does (field manager
/// `kubelet`, pods/status): its `Ready` condition with `ready` as the status.
fn kubelet_reports(pier: &Pier, pod: &str, ready: &str) {
    pier.apply_with(
        &[
            "--server-side",
            "--subresource=status",
            "--field-manager=kubelet",
        ],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\n\
             status: {{conditions: [{{type: Ready, status: '{ready}'}}]}}\n"
        ),
    );
}

/// Pier's condition (field manager pier-operator) and the kubelet's are entries of their own:
/// neither write removes or conflicts with the other.
fn kubelet_and_pier_conditions_stay_apart(pier: &Pier, pod: &str) {
    let object = format!("pod {pod}");
    assert_eq!(pier.condition(&object, "Ready").0, "False", "the kubelet's");
    kubelet_reports(pier, pod, "True");
    assert_eq!(pier.condition(&object, "Ready").0, "True");
    assert_eq!(
        pier.condition(&object, ATTACHED_CONDITION).0,
        "True",
        "Pier's"
    );
}

/// The Endpoint is the Pod's: labelled with its name, owned by it as its controller.
fn owned_and_labelled(pier: &Pier, sandbox: &PodSandbox) {
    let pod = &sandbox.pod;
    assert_eq!(
        endpoints_of(pier, pod),
        vec![format!("endpoint.pier.dev/{}", endpoint_name(pod, NETWORK))]
    );
    let owner = pier.jsonpath(
        &endpoint(pod, NETWORK),
        "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid}/{.metadata.ownerReferences[0].controller}",
    );
    assert_eq!(owner, format!("Pod/{}/true", sandbox.uid));
}

/// `net1` has the Endpoint's address; `eth0`, its address and the default route stay the
/// cluster network's.
fn net1_beside_the_cluster_network(sandbox: &PodSandbox, ip: &str) {
    let pod = &sandbox.pod;
    assert_eq!(
        sandbox.addresses("net1"),
        vec![format!("{ip}/24")],
        "{pod}'s net1"
    );
    assert_eq!(
        sandbox.addresses("eth0"),
        vec![format!("{}/24", sandbox.cluster_address)],
        "{pod}'s eth0"
    );
    let routes = sandbox.default_routes();
    assert_eq!(routes.len(), 1, "{pod}'s one default route: {routes:?}");
    assert!(
        routes[0].contains(&format!("via {} dev eth0", sandbox.cluster_gateway)),
        "{pod}'s default route stays the cluster network's: {routes:?}"
    );
    assert!(
        sandbox
            .exec(&format!("ping -c1 -W2 {}", sandbox.cluster_gateway))
            .status
            .success(),
        "{pod} still reaches its node over eth0"
    );
}

/// Adding a network to a running Pod's annotation connects it (`net2`); removing it
/// disconnects it, and `net1` stays.
fn annotation_edits_connect_and_disconnect(pier: &Pier, sandbox: &PodSandbox) {
    let pod = &sandbox.pod;
    let both = format!(
        r#"[{{"network": "{NETWORK}", "aliases": ["{ALIAS}"]}}, {{"network": "{SECOND}"}}]"#
    );
    pier.kubectl_ok(&format!(
        "annotate pod {pod} --overwrite '{NETWORKS_ANNOTATION}={both}'"
    ));
    pier.wait_condition(&endpoint(pod, SECOND), ATTACHED, "True");
    let ip = pier.jsonpath(&endpoint(pod, SECOND), "{.status.ipv4Address}");
    assert_eq!(sandbox.addresses("net2"), vec![format!("{ip}/24")]);
    assert_eq!(endpoints_of(pier, pod).len(), 2);

    pier.kubectl_ok(&format!(
        "annotate pod {pod} --overwrite '{NETWORKS_ANNOTATION}={}'",
        web_annotation()
    ));
    wait_for(&format!("{pod}'s net2 to go"), CONVERGE, || {
        (!sandbox.has_link("net2") && endpoints_of(pier, pod).len() == 1).then_some(())
    });
    assert!(sandbox.has_link("net1"), "{pod} keeps net1");
    pier.wait_condition(&format!("pod {pod}"), ATTACHED_CONDITION, "True");
}

/// Deleting a Pod deletes its Endpoints (the operator does it: no garbage collector runs in
/// `pier up`), its `net1` goes and the alias then names the other replica only.
fn deleting_a_pod_removes_its_endpoints(
    pier: &Pier,
    sandbox: &PodSandbox,
    asker: &PodSandbox,
    other_replica: Ipv4Addr,
) {
    let pod = &sandbox.pod;
    pier.kubectl_ok(&format!("delete pod {pod} --timeout=30s"));
    wait_for(&format!("{pod}'s Endpoints to go"), CONVERGE, || {
        endpoints_of(pier, pod).is_empty().then_some(())
    });
    wait_for(&format!("{pod}'s net1 to go"), CONVERGE, || {
        (!sandbox.has_link("net1")).then_some(())
    });
    assert!(sandbox.has_link("eth0"), "{pod}'s eth0 is not Pier's");
    wait_for(
        &format!("{ALIAS} to name the other replica only"),
        CONVERGE,
        || (resolve(asker, ALIAS) == BTreeSet::from([other_replica])).then_some(()),
    );
}
