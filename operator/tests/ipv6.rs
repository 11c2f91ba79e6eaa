//! IPv6 and dual-stack Networks in the operator: a /64 of the cluster's ULA prefix (or the spec's
//! subnet), IPv6 addresses for Endpoints beside (or instead of) IPv4 ones, static IPv6 addresses,
//! ports published on both families, and everything kept across an operator restart.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use pier_crds::{Endpoint, Network, PortPublish};
use serde_json::json;

fn ipv6_of(ep: &Endpoint) -> Option<String> {
    ep.status.as_ref().and_then(|s| s.ipv6_address.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_and_ipv6_only_networks_allocate_both_families() {
    let (_server, client) = cluster().await;
    let op = Operator::start(&client, config("op-1"));
    let nets: Api<Network> = Api::all(client.clone());
    let eps: Api<Endpoint> = Api::namespaced(client.clone(), "default");

    // No ipv6Subnet: a /64 of the cluster's ULA /48, derived from the default Namespace's uid.
    create(&nets, &network("dual", json!({"ipv6": true}))).await;
    let dual = wait_for(&nets, "dual", "allocated", |n| {
        n.status.as_ref().is_some_and(|s| s.ipv6_subnet.is_some())
    })
    .await;
    let status = dual.status.clone().unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid = namespaces
        .get("default")
        .await
        .expect("default namespace")
        .metadata
        .uid
        .expect("a uid");
    let pool = pier_operator::ipam::ipv6::ula_prefix(&uid);
    let subnet: ipnet::Ipv6Net = status
        .ipv6_subnet
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("an IPv6 subnet");
    assert!(
        pool.contains(&subnet) && subnet.prefix_len() == 64,
        "{subnet} in {pool}"
    );
    assert!(status.subnet.is_some(), "IPv4 too");
    assert_eq!(
        status.ipv6_gateway,
        Some(std::net::Ipv6Addr::from(u128::from(subnet.network()) + 1).to_string())
    );

    create(
        &nets,
        &network(
            "only6",
            json!({"ipv4": false, "ipv6": true, "ipv6Subnet": "fd00:abcd::/64"}),
        ),
    )
    .await;
    let only6 = wait_for(&nets, "only6", "allocated", |n| {
        n.status.as_ref().is_some_and(|s| s.ipv6_subnet.is_some())
    })
    .await;
    let status = only6.status.unwrap_or_default();
    assert_eq!(status.subnet, None, "no IPv4 subnet");
    assert_eq!(status.ipv6_gateway.as_deref(), Some("fd00:abcd::1"));

    create(&eps, &endpoint("c1", "c1", Some("dual"), json!({}))).await;
    let c1 = allocated(&eps, "c1").await;
    assert!(address(&c1).is_some() && ipv6_of(&c1).is_some(), "{c1:?}");
    let c1_status = c1.status.clone().unwrap_or_default();
    assert_eq!(c1_status.ipv6_prefix_length, Some(64));
    assert_eq!(c1_status.default_route, Some(true));

    create(
        &eps,
        &endpoint(
            "c2",
            "c2",
            Some("only6"),
            json!({"ipv6Address": "fd00:abcd::42"}),
        ),
    )
    .await;
    let c2 = allocated(&eps, "c2").await;
    assert_eq!(address(&c2), None);
    assert_eq!(ipv6_of(&c2).as_deref(), Some("fd00:abcd::42"));
    let c2_status = c2.status.clone().unwrap_or_default();
    assert_eq!(c2_status.mac_address.as_deref(), Some("02:42:00:00:00:42"));

    // The same static address again is refused.
    create(
        &eps,
        &endpoint(
            "c3",
            "c3",
            Some("only6"),
            json!({"ipv6Address": "fd00:abcd::42"}),
        ),
    )
    .await;
    let c3 = wait_for(&eps, "c3", "refused", |e| {
        endpoint_reason(e) == "AddressInUse"
    })
    .await;
    assert!(endpoint_ready(&c3).is_some_and(|r| r.2.contains("fd00:abcd::42")));

    // -p 8000:80 on a dual-stack endpoint: 0.0.0.0 and ::, the same port; on an IPv6-only one
    // only ::; a hostIP of a family the endpoint lacks is refused.
    let pps: Api<PortPublish> = Api::namespaced(client.clone(), "default");
    create(
        &pps,
        &publish(
            "web",
            "c1",
            json!([{"containerPort": 80, "hostPort": 8000}]),
        ),
    )
    .await;
    let web = wait_for(&pps, "web", "published", |p| {
        p.status.as_ref().is_some_and(|s| !s.ports.is_empty())
    })
    .await;
    assert_eq!(
        web.status.and_then(|s| s.summary).as_deref(),
        Some("0.0.0.0:8000->80/tcp, [::]:8000->80/tcp")
    );
    create(&pps, &publish("web6", "c2", json!([{"containerPort": 80}]))).await;
    let web6 = wait_for(&pps, "web6", "published", |p| {
        p.status.as_ref().is_some_and(|s| !s.ports.is_empty())
    })
    .await;
    let summary = web6.status.and_then(|s| s.summary).unwrap_or_default();
    assert!(summary.starts_with("[::]:"), "{summary}");
    create(
        &pps,
        &publish(
            "web4",
            "c2",
            json!([{"containerPort": 80, "hostIP": "127.0.0.1"}]),
        ),
    )
    .await;
    let refused = wait_for(&pps, "web4", "refused", |p| {
        p.status
            .as_ref()
            .and_then(|s| ready_of(&s.conditions))
            .is_some_and(|r| r.1 == "NoAddress")
    })
    .await;
    let message = refused
        .status
        .and_then(|s| ready_of(&s.conditions))
        .map(|r| r.2)
        .unwrap_or_default();
    assert!(message.contains("no IPv4 address"), "{message}");

    // A restarted operator keeps every IPv6 allocation and hands out the next address.
    op.kill().await;
    let _op = Operator::start(&client, config("op-2"));
    create(&eps, &endpoint("c4", "c4", Some("dual"), json!({}))).await;
    let c4 = allocated(&eps, "c4").await;
    assert_ne!(ipv6_of(&c4), ipv6_of(&c1));
    let c1_again = eps.get("c1").await.expect("c1");
    assert_eq!(ipv6_of(&c1_again), ipv6_of(&c1));
    let dual_again = nets.get("dual").await.expect("dual");
    assert_eq!(
        dual_again.status.and_then(|s| s.ipv6_subnet),
        Some(subnet.to_string())
    );
}
