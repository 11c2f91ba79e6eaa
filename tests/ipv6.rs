//! IPv6 and dual-stack through `pier up` and the real kubectl (whole-system tier): the lesson's
//! steps on examples/ipv6 — a dual-stack network, names resolving to both families, a static
//! IPv6 address, a port published on both families reached over `[::1]` from the node and from
//! another endpoint, isolation between IPv6 networks, an IPv6-only network and a
//! `docker network connect` onto it. (The client address seen from a LAN host is shown by the
//! kernel tests of the firewall.) Needs root, kubectl, iproute2, ping, busybox-static, socat,
//! dig and nft.

mod system;

use std::time::Duration;

use system::{Pier, Process, in_netns, wait_for};

const CONVERGE: Duration = Duration::from_secs(30);

/// The first address of `family` (`-4` or `-6`, global scope) on `interface` in `netns`.
fn address_of(netns: &str, family: &str, interface: &str) -> Option<String> {
    let out = in_netns(
        netns,
        &format!("ip -o {family} addr show dev {interface} scope global"),
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet" && *w != "inet6")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
}

/// busybox nslookup's answers for `name` of `type_` (A or AAAA) asked of `server` in `netns`.
fn lookup(netns: &str, type_: &str, name: &str, server: &str) -> String {
    let out = in_netns(
        netns,
        &format!("busybox nslookup -type={type_} {name} {server}"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_lesson_on_a_dual_stack_network_and_an_ipv6_only_one() {
    let names = ["web6", "client6", "only6", "iso6"];
    let pier = Pier::up("ipv6", &names);
    pier.apply(
        &std::fs::read_to_string(system::examples("ipv6").join("dual-stack.yaml"))
            .expect("example"),
    );
    for ep in ["web6", "client6"] {
        pier.wait_condition(&format!("endpoint/{ep}"), "Attached", "True");
    }
    let web6 = pier.jsonpath("endpoint/web6", "{.status.ipv6Address}");
    let web4 = pier.jsonpath("endpoint/web6", "{.status.ipv4Address}");
    let gateway6 = pier.jsonpath("network/dual-net", "{.status.ipv6Gateway}");
    assert_eq!(web6, "fd00:31::2");
    assert_eq!(gateway6, "fd00:31::1");
    assert_eq!(
        pier.jsonpath("endpoint/client6", "{.status.ipv6Address}"),
        "fd00:31::10",
        "the static address"
    );
    // The kernel has what the status says, and the IPv6 default route goes via the gateway.
    assert_eq!(
        address_of("web6", "-6", "eth0").as_deref(),
        Some("fd00:31::2")
    );
    let routes = String::from_utf8_lossy(&in_netns("client6", "ip -6 route show default").stdout)
        .into_owned();
    assert!(routes.contains("via fd00:31::1"), "{routes}");

    // By name, over each family; A and AAAA from Pier's DNS, also over the IPv6 gateway; PTR in
    // ip6.arpa.
    for family in ["-6", "-4"] {
        wait_for("ping web6 by name", CONVERGE, || {
            in_netns("client6", &format!("ping {family} -c1 -W1 web6"))
                .status
                .success()
                .then_some(())
        });
    }
    let aaaa = lookup("client6", "AAAA", "web6", &gateway6);
    assert!(aaaa.contains(&web6), "{aaaa}");
    let a = lookup("client6", "A", "web6.dual-net", &gateway6);
    assert!(a.contains(&web4), "{a}");
    let ptr = in_netns("client6", &format!("dig +short -x {web6} @{gateway6}"));
    let ptr = String::from_utf8_lossy(&ptr.stdout).into_owned();
    assert!(ptr.contains("web6"), "{ptr}");

    // `-p 8086:80` without hostIP: both families. From the node over [::1], and from another
    // endpoint through the node's port (hairpin); the server (socat) answers with the peer it
    // saw.
    let ports = pier.jsonpath("portpublish/web6", "{.status.summary}");
    assert_eq!(ports, "0.0.0.0:8086->80/tcp, [::]:8086->80/tcp");
    pier.wait_condition("portpublish/web6", "Published", "True");
    let _server = Process(
        std::process::Command::new("ip")
            .args(["netns", "exec", "web6", "socat"])
            .args([
                "TCP6-LISTEN:80,fork,reuseaddr,ipv6only=0",
                "SYSTEM:echo peer $SOCAT_PEERADDR",
            ])
            .spawn()
            .expect("socat starts"),
    );
    wait_for("[::1]:8086 answers on the node", CONVERGE, || {
        let out = pier.on_node("socat -T2 - TCP6:[::1]:8086,connect-timeout=2 </dev/null");
        String::from_utf8_lossy(&out.stdout)
            .contains("peer")
            .then_some(())
    });
    wait_for("the port from client6 over IPv6", CONVERGE, || {
        let out = in_netns(
            "client6",
            &format!("socat -T2 - TCP6:[{gateway6}]:8086,connect-timeout=2 </dev/null"),
        );
        String::from_utf8_lossy(&out.stdout)
            .contains("peer")
            .then_some(())
    });

    // Another IPv6 network is isolated from this one.
    pier.apply(
        "apiVersion: pier.dev/v1alpha1\nkind: Network\nmetadata: {name: iso-net}\n\
         spec: {ipv6: true, ipv6Subnet: 'fd00:32::/64'}\n---\n\
         apiVersion: pier.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: iso6}\n\
         spec: {network: iso-net, target: {netns: {name: iso6}}}\n",
    );
    pier.wait_condition("endpoint/iso6", "Attached", "True");
    assert!(
        !in_netns("iso6", &format!("ping -6 -c1 -W1 {web6}"))
            .status
            .success(),
        "networks are isolated over IPv6"
    );

    // IPv6-only: no IPv4 address at all; the gateway and the name work over IPv6.
    pier.apply(
        &std::fs::read_to_string(system::examples("ipv6").join("ipv6-only.yaml")).expect("example"),
    );
    pier.wait_condition("endpoint/only6", "Attached", "True");
    assert_eq!(address_of("only6", "-4", "eth0"), None);
    let only6 = pier.jsonpath("endpoint/only6", "{.status.ipv6Address}");
    let gateway_only6 = pier.jsonpath("network/v6-net", "{.status.ipv6Gateway}");
    assert!(
        pier.jsonpath("network/v6-net", "{.status.subnet}")
            .is_empty()
    );
    assert!(
        in_netns("only6", &format!("ping -6 -c1 -W2 {gateway_only6}"))
            .status
            .success()
    );
    let aaaa = lookup("only6", "AAAA", "only6", &gateway_only6);
    assert!(aaaa.contains(&only6), "{aaaa}");

    // `docker network connect v6-net client6`: client6 reaches only6 by name.
    pier.apply(
        "apiVersion: pier.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: client6-v6}\n\
         spec: {network: v6-net, target: {netns: {name: client6}}}\n",
    );
    pier.wait_condition("endpoint/client6-v6", "Attached", "True");
    wait_for("client6 pings only6 by name", CONVERGE, || {
        in_netns("client6", "ping -6 -c1 -W1 only6")
            .status
            .success()
            .then_some(())
    });
}
