//! The lesson through `pier up` and the real `kubectl`, with real traffic (system tier, see
//! docs/architecture.md). Needs root, kubectl, iproute2, ping, busybox-static, socat and nft.

mod system;

use std::time::Duration;

use system::{Pier, Process, TestNetns, examples, wait_for};

/// `docker run -P`: the published web server answers on its host port from the node (its own
/// address and 127.0.0.1); `kill -9` and restart keep address and port and repair the kernel; a
/// veth deleted by hand comes back; deleting the objects removes the kernel objects and the
/// namespace Pier created.
#[test]
fn published_webserver_survives_kill_9_and_hand_deleted_veth() {
    let mut pier = Pier::up("web", &["nginx"]);
    let folder = examples("01-published-webserver");
    pier.kubectl_ok(&format!("apply -f {}", folder.display()));
    pier.wait_condition("pep nginx", "Attached", "True");
    pier.wait_condition("ppub nginx", "Published", "True");

    let ports = pier.kubectl_ok("get ppub nginx");
    let port: u16 = wait_for("a host port", Duration::from_secs(5), || {
        pier.jsonpath("ppub nginx", "{.status.ports[0].hostPort}")
            .parse()
            .ok()
    });
    assert!(
        ports.contains(&format!("0.0.0.0:{port}->80/tcp")),
        "kubectl get ppub shows the docker ps form:\n{ports}"
    );
    let address = pier.jsonpath("pep nginx", "{.status.ipv4Address}");
    let gateway = pier.jsonpath("pnet bridge", "{.status.gateway}");
    assert!(address.starts_with("172.17."), "{address}");

    let mut httpd = pier.serve_http("nginx", "hello from nginx");
    for authority in [format!("127.0.0.1:{port}"), format!("{gateway}:{port}")] {
        let page = wait_for(
            &format!("http://{authority}/"),
            Duration::from_secs(10),
            || {
                let page = pier.http_from_node(&authority);
                page.contains("hello from nginx").then_some(page)
            },
        );
        assert!(page.starts_with("HTTP/1."), "{page}");
    }
    assert!(
        pier.on_node(&format!("ping -c1 -W2 {address}"))
            .status
            .success(),
        "the node reaches the endpoint's address"
    );

    // kill -9, restart: same address and port, traffic still flows. A Pier-named veth that no
    // object explains (left by a crash) is removed by the full reconcile at start.
    let veth_before = pier.node_links();
    pier.kill_9();
    assert!(
        pier.on_node("ip link add pv00deadbeef type veth peer name stray-peer")
            .status
            .success()
    );
    pier.start(&[]);
    wait_for(
        "the stray veth to be removed",
        Duration::from_secs(10),
        || (!pier.node_links().contains("pv00deadbeef")).then_some(()),
    );
    assert_eq!(pier.jsonpath("pep nginx", "{.status.ipv4Address}"), address);
    assert_eq!(
        pier.jsonpath("ppub nginx", "{.status.ports[0].hostPort}"),
        port.to_string()
    );
    assert!(
        pier.http_from_node(&format!("127.0.0.1:{port}"))
            .contains("hello from nginx")
    );

    // Drift: a hand-deleted veth and bridge and a flushed table come back within the resync (2 s here).
    let veth = veth_before
        .lines()
        .find_map(|l| l.split(['@', ' ']).next().filter(|n| n.starts_with("pv")))
        .expect("a Pier veth on the node")
        .to_owned();
    let bridge = veth_before
        .lines()
        .find_map(|l| l.split(' ').next().filter(|n| n.starts_with("pier-")))
        .expect("a Pier bridge on the node")
        .to_owned();
    assert!(
        pier.on_node(&format!("ip link del {veth}"))
            .status
            .success()
    );
    assert!(
        pier.on_node(&format!("ip link del {bridge}"))
            .status
            .success()
    );
    assert!(pier.on_node("nft flush table inet pier").status.success());
    wait_for(
        "veth, bridge and port to be repaired",
        Duration::from_secs(15),
        || {
            let links = pier.node_links();
            (links.contains(&veth)
                && links.contains(&bridge)
                && pier
                    .http_from_node(&format!("127.0.0.1:{port}"))
                    .contains("hello from nginx"))
            .then_some(())
        },
    );

    // Deleting the objects removes veth, bridge, port mapping and the namespace Pier created.
    pier.kubectl_ok(&format!("delete -f {} --timeout=30s", folder.display()));
    wait_for("the kernel objects to go", Duration::from_secs(15), || {
        let links = pier.node_links();
        (!links.contains("pv") && !links.contains("pier-")).then_some(())
    });
    assert!(
        !std::path::Path::new("/var/run/netns/nginx").exists(),
        "the namespace Pier created went with its Endpoint"
    );
    let map = pier.on_node("nft list map inet pier ports_any");
    assert!(
        !String::from_utf8_lossy(&map.stdout).contains(&format!("{port} :")),
        "the port mapping is gone"
    );
    let _ = httpd.kill();
    let _ = httpd.wait();
    pier.stop();
}

/// `docker network create`, `--net`, name resolution within a network, isolation between
/// networks, and `docker network connect`.
#[test]
fn networks_names_isolation_and_connect() {
    let pier = Pier::up("connect", &["con1", "con2", "con3"]);
    let folder = examples("04-connect");
    pier.kubectl_ok(&format!(
        "apply -f {}",
        folder.join("containers.yaml").display()
    ));
    for name in ["con1", "con2", "con3"] {
        pier.wait_condition(&format!("pep {name}"), "Attached", "True");
    }
    let networks = pier.kubectl_ok("get networks");
    for column in ["NAME", "DRIVER", "SCOPE", "SUBNET"] {
        assert!(networks.contains(column), "{networks}");
    }
    for network in ["bridge", "host", "none", "workshop-tage", "ch-open"] {
        assert!(
            networks
                .lines()
                .any(|l| l.starts_with(&format!("{network} "))),
            "docker network ls lists {network}:\n{networks}"
        );
    }

    let con1 = pier.jsonpath("pep con1", "{.status.ipv4Address}");
    let ping = |from: &str, to: &str| {
        system::sh(&format!("ip netns exec {from} ping -c1 -W1 {to}"))
            .status
            .success()
    };
    assert!(ping("con2", &con1), "con2 reaches con1 at {con1}");
    wait_for("con2 to ping con1 by name", Duration::from_secs(10), || {
        ping("con2", "con1").then_some(())
    });
    assert!(
        !ping("con3", &con1),
        "ch-open is isolated from workshop-tage"
    );
    assert!(
        !ping("con3", "con1"),
        "con3 does not resolve con1 before the connect"
    );

    pier.kubectl_ok(&format!(
        "apply -f {}",
        folder.join("connect.yaml").display()
    ));
    pier.wait_condition("pep con3-workshop-tage", "Attached", "True");
    wait_for("con3 to ping con1 by name", Duration::from_secs(10), || {
        ping("con3", "con1").then_some(())
    });
    let interfaces = system::sh_ok("ip netns exec con3 ip -4 -br addr");
    let tage = pier.jsonpath("pnet workshop-tage", "{.status.subnet}");
    let open = pier.jsonpath("pnet ch-open", "{.status.subnet}");
    let line = |iface: &str| {
        interfaces
            .lines()
            .find(|l| l.starts_with(iface))
            .unwrap_or_else(|| panic!("{iface} in con3:\n{interfaces}"))
            .to_owned()
    };
    let prefix = |subnet: &str| subnet.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        line("eth0").contains(&prefix(&open)),
        "eth0 on ch-open {open}: {interfaces}"
    );
    assert!(
        line("eth1").contains(&prefix(&tage)),
        "eth1 on workshop-tage {tage}: {interfaces}"
    );
}

/// Bad input shows in `kubectl get`/`describe` with a clear reason and breaks nothing else:
/// an overlapping subnet, a taken static address, a taken host port, an unknown network, and a
/// subnet the node itself uses.
#[test]
fn bad_input_has_clear_reasons_and_breaks_nothing() {
    let pier = Pier::up(
        "refuse",
        &["rf-good", "rf-taken", "rf-lost", "rf-host", "rf-port"],
    );
    // The node uses 10.77.0.0/24 on a link Pier does not own.
    assert!(
        pier.on_node(
            "ip link add rf-uplink type veth peer name rf-peer && ip addr add 10.77.0.1/24 dev rf-uplink && ip link set rf-uplink up"
        )
        .status
        .success()
    );
    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: good}
spec: {subnet: 10.66.0.0/16}
---
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: on-node}
spec: {subnet: 10.77.0.0/16}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: good}
spec: {network: good, ipv4Address: 10.66.0.10, target: {netns: {name: rf-good}}}
---
apiVersion: pier.dev/v1alpha1
kind: PortPublish
metadata: {name: good}
spec: {endpoint: good, ports: [{containerPort: 80, hostPort: 8000}]}
"#,
    );
    pier.wait_condition("pep good", "Attached", "True");
    pier.wait_condition("ppub good", "Published", "True");
    // Applied once `good` holds its subnet: of two overlapping Networks the one allocated first
    // keeps its subnet, whatever order a single apply lists them in.
    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: overlapping}
spec: {subnet: 10.66.5.0/24}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: taken}
spec: {network: good, ipv4Address: 10.66.0.10, target: {netns: {name: rf-taken}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: lost}
spec: {network: no-such-network, target: {netns: {name: rf-lost}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: on-node}
spec: {network: on-node, target: {netns: {name: rf-host}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: port}
spec: {network: good, target: {netns: {name: rf-port}}}
---
apiVersion: pier.dev/v1alpha1
kind: PortPublish
metadata: {name: port}
spec: {endpoint: port, ports: [{containerPort: 80, hostPort: 8000}]}
"#,
    );
    assert_eq!(
        pier.wait_condition("pnet overlapping", "Ready", "False"),
        "SubnetConflict"
    );
    assert_eq!(
        pier.wait_condition("pep taken", "Ready", "False"),
        "AddressInUse"
    );
    assert_eq!(
        pier.wait_condition("pep lost", "Ready", "False"),
        "NetworkNotFound"
    );
    assert_eq!(
        pier.wait_condition("ppub port", "Ready", "False"),
        "PortConflict"
    );
    assert_eq!(
        pier.wait_condition("pep on-node", "Attached", "False"),
        "SubnetInUseOnNode"
    );
    let describe = pier.kubectl_ok("describe pep on-node");
    assert!(
        describe.contains("SubnetInUseOnNode") && describe.contains("rf-uplink"),
        "describe says why and what overlaps:\n{describe}"
    );
    let listed = pier.kubectl_ok("get pep");
    assert!(listed.contains("good"), "{listed}");

    // Nothing of the node's was touched, and the good endpoint still works.
    let uplink =
        String::from_utf8_lossy(&pier.on_node("ip -4 -br addr show rf-uplink").stdout).into_owned();
    assert!(uplink.contains("10.77.0.1/24"), "{uplink}");
    let addresses = String::from_utf8_lossy(&pier.on_node("ip -4 -br addr").stdout).into_owned();
    assert_eq!(
        addresses.matches("10.77.").count(),
        1,
        "no bridge got an address of the refused network:\n{addresses}"
    );
    assert_eq!(pier.condition("pep good", "Attached").0, "True");
    assert_eq!(pier.condition("ppub good", "Published").0, "True");
    assert!(pier.on_node("ping -c1 -W2 10.66.0.10").status.success());
}

/// `docker run -p 8000:80` and `-p 127.0.0.1:8080:80`, then a user-defined network with a
/// fixed subnet and a static address (`docker network create --subnet`, `docker run --ip`).
#[test]
fn manual_ports_and_user_defined_network() {
    let pier = Pier::up("manual", &["nginx-8000", "nginx-local", "box1", "box2"]);
    pier.kubectl_ok(&format!(
        "apply -f {}",
        examples("02-manual-ports").display()
    ));
    pier.kubectl_ok(&format!(
        "apply -f {}",
        examples("03-user-defined-network").display()
    ));
    for object in ["ppub nginx-8000", "ppub nginx-local"] {
        pier.wait_condition(object, "Published", "True");
    }
    let ports = pier.kubectl_ok("get ppub");
    assert!(ports.contains("0.0.0.0:8000->80/tcp"), "{ports}");
    assert!(ports.contains("127.0.0.1:8080->80/tcp"), "{ports}");
    let mut servers = vec![
        pier.serve_http("nginx-8000", "on eight thousand"),
        pier.serve_http("nginx-local", "on loopback only"),
    ];
    let gateway = pier.jsonpath("pnet bridge", "{.status.gateway}");
    for authority in ["127.0.0.1:8000".to_owned(), format!("{gateway}:8000")] {
        wait_for(
            &format!("http://{authority}/"),
            Duration::from_secs(10),
            || {
                pier.http_from_node(&authority)
                    .contains("on eight thousand")
                    .then_some(())
            },
        );
    }
    wait_for("http://127.0.0.1:8080/", Duration::from_secs(10), || {
        pier.http_from_node("127.0.0.1:8080")
            .contains("on loopback only")
            .then_some(())
    });
    assert!(
        !pier
            .http_from_node(&format!("{gateway}:8080"))
            .contains("on loopback only"),
        "a port bound to 127.0.0.1 is not published on the node's other addresses"
    );

    for name in ["box1", "box2"] {
        pier.wait_condition(&format!("pep {name}"), "Attached", "True");
    }
    assert_eq!(
        pier.jsonpath("pep box2", "{.status.ipv4Address}"),
        "172.30.0.10"
    );
    assert_eq!(
        pier.jsonpath("pnet my-net", "{.status.subnet}"),
        "172.30.0.0/16"
    );
    system::sh_ok("ip netns exec box1 ping -c1 -W2 172.30.0.10");
    wait_for("box1 to ping box2 by name", Duration::from_secs(10), || {
        system::sh("ip netns exec box1 ping -c1 -W1 box2")
            .status
            .success()
            .then_some(())
    });
    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}

/// `docker run --net none` (loopback only) and `--net container:NAME` (one namespace, reachable
/// over lo, no interface of its own; a port published for it leads to the namespace's owner, as
/// Docker publishes a shared namespace's ports on the container that owns it).
#[test]
fn none_network_and_container_mode() {
    let pier = Pier::up("modes", &["md-none", "md-app", "md-own"]);
    // A namespace someone else made: used, and left in place when its Endpoint goes.
    system::sh_ok("ip netns add md-own");
    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: isolated}
spec: {network: none, target: {netns: {name: md-none}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: app}
spec: {target: {netns: {name: md-app}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: sidecar}
spec: {target: {endpoint: {name: app}}}
---
apiVersion: pier.dev/v1alpha1
kind: PortPublish
metadata: {name: sidecar}
spec: {endpoint: sidecar, ports: [{containerPort: 80}]}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: own}
spec: {target: {netns: {name: md-own}}}
"#,
    );
    pier.wait_condition("pep own", "Attached", "True");
    pier.kubectl_ok("delete pep own --timeout=30s");
    assert!(
        std::path::Path::new("/var/run/netns/md-own").exists(),
        "a namespace Pier did not create stays when its Endpoint goes"
    );
    assert!(
        !system::sh_ok("ip netns exec md-own ip -br link").contains("eth0"),
        "but the interface Pier made in it is gone"
    );
    for name in ["isolated", "app", "sidecar"] {
        pier.wait_condition(&format!("pep {name}"), "Attached", "True");
    }
    let links = system::sh_ok("ip netns exec md-none ip -br link");
    assert_eq!(links.lines().count(), 1, "none has lo only:\n{links}");
    assert!(links.starts_with("lo "), "{links}");
    assert!(
        system::sh("ip netns exec md-none ping -c1 -W1 127.0.0.1")
            .status
            .success()
    );
    let message = pier.jsonpath(
        "pep sidecar",
        "{.status.conditions[?(@.type==\"Attached\")].message}",
    );
    assert!(message.contains("default/app"), "{message}");
    let mut server = pier.serve_http("md-app", "shared namespace");
    wait_for("the app over lo", Duration::from_secs(10), || {
        let out = system::sh(
            "ip netns exec md-app sh -c 'printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | socat -T2 - TCP:127.0.0.1:80'",
        );
        String::from_utf8_lossy(&out.stdout)
            .contains("shared namespace")
            .then_some(())
    });
    pier.wait_condition("ppub sidecar", "Published", "True");
    let port = pier.jsonpath("ppub sidecar", "{.status.ports[0].hostPort}");
    wait_for(
        "the sidecar's published port",
        Duration::from_secs(10),
        || {
            pier.http_from_node(&format!("127.0.0.1:{port}"))
                .contains("shared namespace")
                .then_some(())
        },
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Beside Docker: the machine already has 172.17.0.0/16 (docker0) and 172.18.0.0/16. `pier up`
/// gives its default `bridge` network and a new network subnets the machine does not use, and
/// touches nothing of the machine's.
#[test]
fn beside_docker_pools_skip_the_machines_subnets() {
    let pier = Pier::up_after(
        "docker",
        &["bd-web"],
        "ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && \
         ip link set docker0 up && ip link add br-other type bridge && \
         ip addr add 172.18.0.1/16 dev br-other && ip link set br-other up",
    );
    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: next}
spec: {}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: web}
spec: {target: {netns: {name: bd-web}}}
"#,
    );
    pier.wait_condition("pep web", "Attached", "True");
    pier.wait_condition("pnet next", "Ready", "True");
    let bridge = pier.jsonpath("pnet bridge", "{.status.subnet}");
    let next = pier.jsonpath("pnet next", "{.status.subnet}");
    for subnet in [&bridge, &next] {
        assert!(
            !subnet.starts_with("172.17.") && !subnet.starts_with("172.18."),
            "{subnet} overlaps the machine's subnets"
        );
    }
    assert_ne!(bridge, next);
    let address = pier.jsonpath("pep web", "{.status.ipv4Address}");
    assert!(
        pier.on_node(&format!("ping -c1 -W2 {address}"))
            .status
            .success()
    );
    let docker0 =
        String::from_utf8_lossy(&pier.on_node("ip -4 -br addr show docker0").stdout).into_owned();
    assert!(docker0.contains("172.17.0.1/16"), "{docker0}");
}

/// A `pier up` whose mounts do not reach the machine (a slave mount namespace, as in a container
/// with a HostToContainer mount, or under `ip netns exec`) does not create a named namespace only
/// it would see: the Endpoint says why and what to do. A namespace made on the machine works.
#[test]
fn a_namespace_only_pier_would_see_is_refused_with_the_fix() {
    let pier = Pier::up_wrapped(
        "slave",
        &["sl-new", "sl-made"],
        &["unshare", "--mount", "--propagation", "slave"],
    );
    system::sh_ok("ip netns add sl-made");
    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: new}
spec: {target: {netns: {name: sl-new}}}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: made}
spec: {target: {netns: {name: sl-made}}}
"#,
    );
    pier.wait_condition("pep made", "Attached", "True");
    assert_eq!(
        pier.wait_condition("pep new", "Attached", "False"),
        "AttachFailed"
    );
    let message = pier.jsonpath(
        "pep new",
        "{.status.conditions[?(@.type==\"Attached\")].message}",
    );
    assert!(
        message.contains("slave mount") && message.contains("ip netns add"),
        "{message}"
    );
    assert!(
        !std::path::Path::new("/var/run/netns/sl-new").exists(),
        "no namespace file on the machine"
    );
    let address = pier.jsonpath("pep made", "{.status.ipv4Address}");
    assert!(
        pier.on_node(&format!("ping -c1 -W2 {address}"))
            .status
            .success()
    );
}

/// The do-it-yourself step (`docker network create workshop`, `docker run -P --net workshop
/// nginx`, `curl http://web:80` from a second container) on a machine where Docker runs: its
/// iptables chains, `FORWARD` policy DROP and br_netfilter (tests/fixtures/docker-host.sh). Names
/// resolve, the containers reach each other and the LAN, and another host of the LAN reaches the
/// published port.
#[test]
fn beside_a_docker_host_the_lesson_traffic_flows() {
    let pier = Pier::up_after(
        "dockerfw",
        &["dw-web", "dw-ubuntu"],
        include_str!("fixtures/docker-host.sh"),
    );
    let lan = format!("pl-lan-{}", std::process::id());
    let _lan_guard = TestNetns::new(&lan);
    let wired = pier.on_node(&format!(
        "ip link add uplink0 type veth peer name eth0 netns {lan} && \
         ip addr add 192.0.2.1/24 dev uplink0 && ip link set uplink0 up"
    ));
    assert!(wired.status.success(), "{wired:?}");
    system::sh_ok(&format!(
        "ip netns exec {lan} sh -c \"ip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up\""
    ));
    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: workshop}
spec: {}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: web}
spec: {network: workshop, target: {netns: {name: dw-web}}}
---
apiVersion: pier.dev/v1alpha1
kind: PortPublish
metadata: {name: web}
spec:
  endpoint: web
  ports: [{containerPort: 80, protocol: TCP}]
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: ubuntu}
spec: {network: workshop, target: {netns: {name: dw-ubuntu}}}
"#,
    );
    pier.wait_condition("pep web", "Attached", "True");
    pier.wait_condition("pep ubuntu", "Attached", "True");
    pier.wait_condition("ppub web", "Published", "True");
    let _web = Process(pier.serve_http("dw-web", "hello from web"));
    let get = |netns: &str, authority: &str| {
        let out = system::sh(&format!(
            "ip netns exec {netns} sh -c 'printf \"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" | socat -T2 - TCP:{authority},connect-timeout=2'"
        ));
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        page.contains("hello from").then_some(page)
    };

    // `curl http://web:80` from the second container: DNS by name and the bridged path.
    let page = wait_for(
        "ubuntu to fetch http://web:80",
        Duration::from_secs(15),
        || get("dw-ubuntu", "web:80"),
    );
    assert!(page.contains("hello from web"), "{page}");
    let ping = |target: &str| {
        system::sh(&format!("ip netns exec dw-ubuntu ping -c1 -W2 {target}"))
            .status
            .success()
    };
    assert!(ping("web"), "ping web by name");
    let address = pier.jsonpath("pep web", "{.status.ipv4Address}");
    assert!(ping(&address), "ping web at {address}");

    // The published port from another host of the LAN.
    let port = pier.jsonpath("ppub web", "{.status.ports[0].hostPort}");
    let page = wait_for(
        "the LAN to reach the published port",
        Duration::from_secs(10),
        || get(&lan, &format!("192.0.2.1:{port}")),
    );
    assert!(page.contains("hello from web"), "{page}");

    // A container reaches the outside (masquerade through Docker's FORWARD DROP).
    let dir = std::env::temp_dir().join(format!("{lan}-www"));
    std::fs::create_dir_all(&dir).expect("www dir");
    std::fs::write(dir.join("index.html"), "hello from the lan").expect("index.html");
    let _lan_web = Process(
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &lan, "busybox", "httpd", "-f", "-p", "80", "-h",
            ])
            .arg(&dir)
            .spawn()
            .expect("httpd starts"),
    );
    let page = wait_for("ubuntu to reach the LAN", Duration::from_secs(10), || {
        get("dw-ubuntu", "192.0.2.2:80")
    });
    assert!(page.contains("hello from the lan"), "{page}");

    // Pier's accepts sit in Docker's table, tagged, and Docker's rules are all still there.
    let rules =
        String::from_utf8_lossy(&pier.on_node("iptables-nft -S FORWARD").stdout).into_owned();
    assert!(rules.contains("-j PIER-FORWARD"), "{rules}");
    assert!(
        rules.contains("-j DOCKER-USER") && rules.contains("-P FORWARD DROP"),
        "{rules}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `docker network connect` to a running container keeps the container's gateway: a namespace
/// made by hand, with a default route and a resolv.conf of its own, keeps both when an Endpoint
/// joins and leaves it, and the Attached message says so.
#[test]
fn a_namespace_of_its_own_keeps_its_default_route_and_resolv_conf() {
    let pier = Pier::up("ownns", &["ow-own"]);
    system::sh_ok(
        "ip netns add ow-own && ip -n ow-own link set lo up && \
         ip -n ow-own link add ext0 type veth peer name ext0p && \
         ip -n ow-own link set ext0p up && ip -n ow-own link set ext0 up && \
         ip -n ow-own addr add 10.98.0.2/24 dev ext0 && \
         ip -n ow-own route add default via 10.98.0.1",
    );
    let resolv = "nameserver 10.98.0.53\nsearch own.example\n";
    std::fs::create_dir_all("/etc/netns/ow-own").expect("/etc/netns/ow-own");
    std::fs::write("/etc/netns/ow-own/resolv.conf", resolv).expect("resolv.conf");
    let default_route = || system::sh_ok("ip -n ow-own -4 route show default");
    let before = default_route();
    assert!(before.contains("via 10.98.0.1 dev ext0"), "{before}");

    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: own}
spec: {target: {netns: {name: ow-own}}}
"#,
    );
    pier.wait_condition("pep own", "Attached", "True");
    let message = pier.jsonpath(
        "pep own",
        "{.status.conditions[?(@.type==\"Attached\")].message}",
    );
    for note in [
        pier_node::dataplane::OWN_DEFAULT_ROUTE_KEPT,
        pier_node::dns::resolv_conf::FOREIGN_NOTE,
    ] {
        assert!(message.contains(note), "{message}");
    }
    let address = pier.jsonpath("pep own", "{.status.ipv4Address}");
    let gateway = pier.jsonpath("pnet bridge", "{.status.gateway}");
    let eth0 = system::sh_ok("ip -n ow-own -4 -br addr show eth0");
    assert!(eth0.contains(&format!("{address}/")), "{eth0}");
    assert!(
        system::sh(&format!("ip netns exec ow-own ping -c1 -W2 {gateway}"))
            .status
            .success(),
        "the endpoint reaches its network's gateway by the subnet's route"
    );
    // Past a resync (2 s) and the DNS server's sync: both still the namespace's own.
    let both_still_its_own = || {
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(default_route(), before);
        assert_eq!(
            std::fs::read_to_string("/etc/netns/ow-own/resolv.conf").expect("resolv.conf"),
            resolv
        );
    };
    both_still_its_own();

    pier.kubectl_ok("delete pep own --timeout=30s");
    assert!(
        !system::sh_ok("ip -n ow-own -br link").contains("eth0"),
        "the interface Pier made is gone"
    );
    both_still_its_own();
}
