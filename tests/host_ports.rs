//! Host ports as Docker keeps them, through `pier up` and the real `kubectl` (system tier, see
//! docs/architecture.md): a port a process of the node listens on is refused (`PortInUseOnNode`)
//! and the process keeps answering, the PortPublish's other ports are live, the port is published
//! once the process is gone; a published port cannot be bound by a process of the node; an
//! unpublished one is free again. Needs root, kubectl, iproute2, busybox-static, socat and nft.

mod system;

use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use system::{Pier, Process, wait_for};

/// A web server of the node: listening on TCP `port` in the node's namespace, serving `text`.
fn node_listener(pier: &Pier, port: u16, text: &str) -> Process {
    let dir = pier.data_dir.join(format!("www-node-{port}"));
    std::fs::create_dir_all(&dir).expect("www dir");
    std::fs::write(dir.join("index.html"), text).expect("index.html");
    let child = Command::new("ip")
        .args(["netns", "exec", &pier.node_netns, "busybox", "httpd", "-f"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-h")
        .arg(&dir)
        .stdin(Stdio::null())
        .spawn()
        .expect("httpd starts in the node namespace");
    Process(child)
}

/// The error of binding `protocol` `port` on every address in the node's namespace, as a
/// process of the node would (std's TcpListener even asks for SO_REUSEADDR); `None`: it bound.
fn bind_on_node(pier: &Pier, protocol: &str, port: u16) -> Option<io::ErrorKind> {
    let netns = PathBuf::from(format!("/var/run/netns/{}", pier.node_netns));
    let tcp = protocol == "tcp";
    pier_node::kernel::netns::run_in(Some(&netns), move || {
        let address = (Ipv4Addr::UNSPECIFIED, port);
        let bound = if tcp {
            TcpListener::bind(address).map(drop)
        } else {
            UdpSocket::bind(address).map(drop)
        };
        bound.err().map(|e| e.kind())
    })
    .expect("runs in the node namespace")
}

/// The `Published` condition's message.
fn published_message(pier: &Pier, object: &str) -> String {
    pier.jsonpath(
        object,
        "{.status.conditions[?(@.type==\"Published\")].message}",
    )
}

#[test]
fn a_port_the_node_uses_is_refused_until_free_and_published_ports_are_held() {
    let pier = Pier::up("hostport", &["hp-web"]);
    let mut node_server = node_listener(&pier, 8000, "from-the-node");
    wait_for("the node's listener", Duration::from_secs(10), || {
        pier.http_from_node("127.0.0.1:8000")
            .contains("from-the-node")
            .then_some(())
    });

    pier.apply(
        r#"
apiVersion: pier.dev/v1alpha1
kind: Network
metadata: {name: hp}
spec: {subnet: 10.68.0.0/24}
---
apiVersion: pier.dev/v1alpha1
kind: Endpoint
metadata: {name: web}
spec: {network: hp, target: {netns: {name: hp-web}}}
---
apiVersion: pier.dev/v1alpha1
kind: PortPublish
metadata: {name: web}
spec:
  endpoint: web
  ports:
  - {containerPort: 80, hostPort: 8000}
  - {containerPort: 80, hostPort: 8001}
  - {containerPort: 53, hostPort: 8002, protocol: UDP}
"#,
    );
    pier.wait_condition("pep web", "Attached", "True");
    let _httpd = Process(pier.serve_http("hp-web", "hello from web"));

    // Refused on the node, with the port named, and an Event; the process keeps its port.
    assert_eq!(
        pier.wait_condition("ppub web", "Published", "False"),
        "PortInUseOnNode"
    );
    let message = published_message(&pier, "ppub web");
    assert!(
        message.contains("0.0.0.0:8000/tcp is in use on node node-a")
            && message.contains("0.0.0.0:8001->80/tcp")
            && !message.contains("8000->"),
        "{message}"
    );
    let events = pier.kubectl_ok("get events --field-selector involvedObject.name=web");
    assert!(events.contains("PortInUseOnNode"), "{events}");
    // The other ports of the same PortPublish are live, and held.
    let page = wait_for("the other port", Duration::from_secs(10), || {
        let page = pier.http_from_node("127.0.0.1:8001");
        page.contains("hello from web").then_some(page)
    });
    assert!(page.starts_with("HTTP/1."), "{page}");
    for _ in 0..3 {
        assert!(
            pier.http_from_node("127.0.0.1:8000")
                .contains("from-the-node"),
            "the node's process keeps answering on its port"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        bind_on_node(&pier, "tcp", 8001),
        Some(io::ErrorKind::AddrInUse)
    );
    assert_eq!(
        bind_on_node(&pier, "udp", 8002),
        Some(io::ErrorKind::AddrInUse)
    );

    // The process goes: the next resync publishes the port, and holds it.
    node_server.stop();
    assert_eq!(
        pier.wait_condition("ppub web", "Published", "True"),
        "Published"
    );
    let page = wait_for("the freed port", Duration::from_secs(10), || {
        let page = pier.http_from_node("127.0.0.1:8000");
        page.contains("hello from web").then_some(page)
    });
    assert!(page.starts_with("HTTP/1."), "{page}");
    assert_eq!(
        bind_on_node(&pier, "tcp", 8000),
        Some(io::ErrorKind::AddrInUse)
    );

    // Unpublished: the ports are free for the node's processes again.
    pier.kubectl_ok("delete ppub web --wait=true");
    for (protocol, port) in [("tcp", 8000), ("tcp", 8001), ("udp", 8002)] {
        wait_for(
            &format!("{port}/{protocol} released"),
            Duration::from_secs(10),
            || bind_on_node(&pier, protocol, port).is_none().then_some(()),
        );
    }
}
