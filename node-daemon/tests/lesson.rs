//! The lesson's published-port part replayed against the dataplane (links + firewall), with real
//! HTTP: `docker run -d -p 8000:80 nginx`, `-P`, two servers on host ports 80 and 8000, reached
//! from the node, from 127.0.0.1, from another computer and from a container (hairpin).

mod common;

use std::net::Ipv4Addr;

use common::{Lab, Ns, bridge_endpoint, bridge_network, published};
use pier_node::state::NodeState;

/// The host's address on the link to the "remote computer".
const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// A second "computer" on the node's LAN, with no route to the container subnets.
fn remote_computer(lab: &Lab) -> Ns {
    lab.lan_computer("remote", HOST_UPLINK, REMOTE)
}

fn web_state(web: &Ns) -> NodeState {
    NodeState {
        networks: vec![bridge_network("bridge", "172.17.0.0/16", "172.17.0.1")],
        endpoints: vec![bridge_endpoint(
            "default/web",
            web,
            "bridge",
            "eth0",
            "172.17.0.2",
            true,
        )],
        ports: vec![published(
            "default/web",
            "default/web",
            8000,
            "172.17.0.2",
            80,
        )],
        ..NodeState::default()
    }
}

#[test]
fn published_port_8000_reaches_the_web_server_from_everywhere() {
    let lab = Lab::new("p8000");
    let web = lab.container("web");
    let remote = remote_computer(&lab);
    let _httpd = web.serve_http(80, "hello from web");
    let mut state = web_state(&web);
    // A second container on the same network, for the hairpin case.
    let client = lab.container("client");
    state.endpoints.push(bridge_endpoint(
        "default/client",
        &client,
        "bridge",
        "eth0",
        "172.17.0.3",
        true,
    ));
    lab.apply_ok(&state);
    lab.assert_converged(&state);

    let from_remote = remote.http_get_eventually(HOST_UPLINK, 8000);
    assert_eq!(
        from_remote.as_deref(),
        Some("hello from web"),
        "from another computer"
    );
    let from_host = lab.host.http_get_eventually(HOST_UPLINK, 8000);
    assert_eq!(
        from_host.as_deref(),
        Some("hello from web"),
        "from the node itself"
    );
    let from_localhost = lab.host.http_get_eventually(Ipv4Addr::LOCALHOST, 8000);
    assert_eq!(
        from_localhost.as_deref(),
        Some("hello from web"),
        "from 127.0.0.1"
    );
    let hairpin = client.http_get_eventually(HOST_UPLINK, 8000);
    assert_eq!(
        hairpin.as_deref(),
        Some("hello from web"),
        "from a container (hairpin)"
    );
    // Even the web server reaches its own published port (hairpin mode on its bridge port).
    let own = web.http_get_eventually(HOST_UPLINK, 8000);
    assert_eq!(
        own.as_deref(),
        Some("hello from web"),
        "from the endpoint itself"
    );
    let shown = lab.host.sh(&format!(
        "ip -d link show dev {}",
        state.endpoints[0].host_veth_name()
    ));
    assert!(shown.contains("hairpin on"), "{shown}");
    // The container port itself is not published on the host.
    assert!(remote.http_get(HOST_UPLINK, 80).is_none());
}

#[test]
fn publish_all_maps_allocated_high_ports() {
    // `docker run -d -P nginx`: the operator allocated 32772 -> 80 and 32771 -> 443.
    let lab = Lab::new("pall");
    let web = lab.container("web");
    let remote = remote_computer(&lab);
    let _http = web.serve_http(80, "port 80");
    let _https = web.serve_http(443, "port 443");
    let mut state = web_state(&web);
    state.ports = vec![
        published("default/web", "default/web", 32772, "172.17.0.2", 80),
        published("default/web", "default/web", 32771, "172.17.0.2", 443),
    ];
    lab.apply_ok(&state);
    assert_eq!(
        remote.http_get_eventually(HOST_UPLINK, 32772).as_deref(),
        Some("port 80")
    );
    assert_eq!(
        remote.http_get_eventually(HOST_UPLINK, 32771).as_deref(),
        Some("port 443")
    );
    lab.assert_converged(&state);
}

#[test]
fn two_servers_on_host_ports_80_and_8000() {
    let lab = Lab::new("p80");
    let (web1, web2) = (lab.container("web1"), lab.container("web2"));
    let remote = remote_computer(&lab);
    let _a = web1.serve_http(80, "first nginx");
    let _b = web2.serve_http(80, "second nginx");
    let state = NodeState {
        networks: vec![bridge_network("bridge", "172.17.0.0/16", "172.17.0.1")],
        endpoints: vec![
            bridge_endpoint("default/web1", &web1, "bridge", "eth0", "172.17.0.2", true),
            bridge_endpoint("default/web2", &web2, "bridge", "eth0", "172.17.0.3", true),
        ],
        ports: vec![
            published("default/web1", "default/web1", 80, "172.17.0.2", 80),
            published("default/web2", "default/web2", 8000, "172.17.0.3", 80),
        ],
        ..NodeState::default()
    };
    lab.apply_ok(&state);
    assert_eq!(
        remote.http_get_eventually(HOST_UPLINK, 80).as_deref(),
        Some("first nginx")
    );
    assert_eq!(
        remote.http_get_eventually(HOST_UPLINK, 8000).as_deref(),
        Some("second nginx")
    );
    // Removing one publication is one change and leaves the other working.
    let mut fewer = state.clone();
    fewer.ports.pop();
    lab.apply_ok(&fewer);
    assert!(remote.http_get(HOST_UPLINK, 8000).is_none());
    assert_eq!(
        remote.http_get_eventually(HOST_UPLINK, 80).as_deref(),
        Some("first nginx")
    );
}

#[test]
fn egress_is_masqueraded_and_internal_networks_have_none() {
    let lab = Lab::new("egress");
    let _remote = remote_computer(&lab); // kept alive: the target of egress
    let (out, inner) = (lab.container("out"), lab.container("inner"));
    let mut internal = bridge_network("secret", "172.20.0.0/16", "172.20.0.1");
    internal.internal = true;
    let state = NodeState {
        networks: vec![
            bridge_network("bridge", "172.17.0.0/16", "172.17.0.1"),
            internal,
        ],
        endpoints: vec![
            bridge_endpoint("default/out", &out, "bridge", "eth0", "172.17.0.2", true),
            bridge_endpoint(
                "default/inner",
                &inner,
                "secret",
                "eth0",
                "172.20.0.2",
                true,
            ),
        ],
        ports: vec![],
        ..NodeState::default()
    };
    lab.apply_ok(&state);
    // The remote computer has no route to 172.17.0.0/16: only masquerade makes the reply come back.
    let remote_ip = REMOTE;
    assert!(out.ping_eventually(remote_ip), "egress through masquerade");
    assert!(
        !inner.ping(remote_ip),
        "an internal network has no route out"
    );
    assert!(inner.ping_eventually("172.20.0.1".parse().expect("address")));
}

#[test]
fn foreign_bridge_and_nftables_table_survive_apply_and_reset() {
    let lab = Lab::new("foreign");
    let web = lab.container("web");
    lab.host.sh("ip link add br-foreign type bridge");
    let has_nft = lab.host.exec("command -v nft").status.success();
    assert!(
        has_nft,
        "this test needs the nft binary to make a foreign table (apt-get install nftables)"
    );
    lab.host
        .sh("nft add table inet foreign && nft add chain inet foreign keep '{ type filter hook input priority 0; }'");
    let state = web_state(&web);
    lab.apply_ok(&state);
    lab.dataplane
        .apply(&NodeState::default(), &pier_node::dataplane::Scope::Full)
        .expect("apply empty");
    let report = lab.dataplane.reset().expect("reset");
    assert!(report.is_success(), "{report}");
    assert!(lab.host.links().contains(&"br-foreign".to_owned()));
    assert!(
        lab.host
            .exec("nft list table inet foreign")
            .status
            .success()
    );
    assert!(!lab.host.exec("nft list table inet pier").status.success());
}
