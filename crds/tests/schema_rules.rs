//! The CRD schemas reject what they can, as the API server would: every OpenAPI constraint is
//! checked with a JSON Schema validator and every `x-kubernetes-validations` rule with a CEL
//! evaluator (the one kube-rs ships), against the schema the code generates.

use kube::CustomResourceExt;
use pier_crds::{Endpoint, Network, PortPublish};
use serde_json::{Value, json};

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every Pier CRD has a schema");
    serde_json::to_value(schema).expect("schema encodes")
}

/// Every error the API server would report for `object` (replacing `old`, if given).
fn errors(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("schema compiles");
    let mut found: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(cel) = kube_cel::validate(schema, object, old) {
        found.extend(cel.into_vec().into_iter().map(|e| e.to_string()));
    }
    found
}

fn network(spec: Value) -> Value {
    json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network", "metadata": {"name": "workshop-tage"}, "spec": spec})
}

fn endpoint(spec: Value) -> Value {
    json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "con1", "namespace": "default"}, "spec": spec})
}

fn portpublish(spec: Value) -> Value {
    json!({"apiVersion": "pier.dev/v1alpha1", "kind": "PortPublish", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
}

#[track_caller]
fn assert_accepted(schema: &Value, object: Value) {
    let found = errors(schema, &object, None);
    assert!(found.is_empty(), "{object} was rejected: {found:#?}");
}

#[track_caller]
fn assert_rejected(schema: &Value, object: Value, expected: &str) {
    let found = errors(schema, &object, None);
    assert!(
        found.iter().any(|e| e.contains(expected)),
        "{object} should be rejected with {expected:?}, got {found:#?}"
    );
}

#[test]
fn networks_accept_the_lesson_and_docker_options() {
    let schema = schema_of(&Network::crd());
    assert_accepted(&schema, network(json!({})));
    assert_accepted(&schema, network(json!({"driver": "null"})));
    assert_accepted(&schema, network(json!({"driver": "overlay"})));
    assert_accepted(
        &schema,
        network(json!({
            "driver": "overlay", "subnet": "10.20.0.0/24", "ipRange": "10.20.0.128/25",
            "internal": true, "mtu": 1400
        })),
    );
    assert_accepted(
        &schema,
        network(json!({
            "driver": "bridge", "subnet": "172.18.0.0/16", "gateway": "172.18.0.1",
            "ipRange": "172.18.5.0/24", "auxAddresses": {"router": "172.18.0.5"},
            "internal": false, "mtu": 1500, "dns": true
        })),
    );
}

#[test]
fn networks_reject_malformed_addressing() {
    let schema = schema_of(&Network::crd());
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.0"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "300.18.0.0/16"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.0/33"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.1/16"})),
        "subnet must be a network address",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.0/16", "gateway": "172.18.0"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.0/16", "gateway": "172.19.0.1"})),
        "gateway needs a subnet and must lie within it",
    );
    assert_rejected(
        &schema,
        network(json!({"gateway": "172.19.0.1"})),
        "gateway needs a subnet",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.0/16", "ipRange": "172.19.0.0/24"})),
        "ipRange needs a subnet and must lie within it",
    );
    assert_rejected(
        &schema,
        network(json!({"subnet": "172.18.0.0/16", "auxAddresses": {"router": "10.0.0.1"}})),
        "auxAddresses need a subnet",
    );
    assert_rejected(&schema, network(json!({"driver": "vlan"})), "is not one of");
    assert_rejected(
        &schema,
        network(json!({"driver": "host", "subnet": "172.18.0.0/16"})),
        "only bridge and overlay networks",
    );
    assert_rejected(
        &schema,
        network(json!({"driver": "null", "mtu": 1400})),
        "only bridge and overlay networks",
    );
    assert_rejected(
        &schema,
        network(json!({"mtu": 20})),
        "less than the minimum",
    );
    let mut long_name = network(json!({}));
    long_name["metadata"]["name"] = json!("n".repeat(64));
    assert_rejected(&schema, long_name, "at most 63 characters");
}

#[test]
fn network_subnet_and_driver_are_immutable() {
    let schema = schema_of(&Network::crd());
    let old = network(json!({"subnet": "172.18.0.0/16"}));
    let changed = network(json!({"subnet": "172.19.0.0/16"}));
    let found = errors(&schema, &changed, Some(&old));
    assert!(
        found.iter().any(|e| e.contains("subnet is immutable")),
        "{found:#?}"
    );
    let removed = network(json!({}));
    let found = errors(&schema, &removed, Some(&old));
    assert!(
        found
            .iter()
            .any(|e| e.contains("subnet cannot be added or removed")),
        "{found:#?}"
    );
    let same = network(json!({"subnet": "172.18.0.0/16", "mtu": 9000}));
    assert!(errors(&schema, &same, Some(&old)).is_empty());
    let old = network(json!({"driver": "bridge"}));
    let found = errors(&schema, &network(json!({"driver": "null"})), Some(&old));
    assert!(
        found.iter().any(|e| e.contains("driver is immutable")),
        "{found:#?}"
    );
}

#[test]
fn endpoints_need_exactly_one_target() {
    let schema = schema_of(&Endpoint::crd());
    assert_accepted(
        &schema,
        endpoint(json!({"network": "workshop-tage", "target": {"netns": {"name": "con1"}}})),
    );
    assert_accepted(
        &schema,
        endpoint(json!({"target": {"pod": {"name": "web"}}})),
    );
    assert_accepted(
        &schema,
        endpoint(json!({"target": {"endpoint": {"name": "con3"}}})),
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": {}})),
        "exactly one of netns, pod or endpoint",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": {"netns": {"name": "a"}, "pod": {"name": "b"}}})),
        "exactly one of netns, pod or endpoint",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"network": "bridge", "target": {"endpoint": {"name": "con3"}}})),
        "container mode",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"network": "workshop-tage"})),
        "target",
    );
}

#[test]
fn endpoints_reject_malformed_fields() {
    let schema = schema_of(&Endpoint::crd());
    let target = json!({"netns": {"name": "con1"}});
    assert_rejected(
        &schema,
        endpoint(json!({"target": target, "interface": "a-very-long-name0"})),
        "longer than 15",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": target, "interface": "eth/0"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": target, "ipv4Address": "172.18.0.256"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": target, "macAddress": "02:42:ac:12:00"})),
        "does not match",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": target, "aliases": ["Not_A_Label"]})),
        "does not match",
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": {"netns": {"name": "../etc"}}})),
        "does not match",
    );
}

#[test]
fn endpoint_network_and_target_are_immutable() {
    let schema = schema_of(&Endpoint::crd());
    let old = endpoint(json!({"network": "workshop-tage", "target": {"netns": {"name": "con1"}}}));
    let moved = endpoint(json!({"network": "ch-open", "target": {"netns": {"name": "con1"}}}));
    let found = errors(&schema, &moved, Some(&old));
    assert!(
        found.iter().any(|e| e.contains("network is immutable")),
        "{found:#?}"
    );
    let retargeted =
        endpoint(json!({"network": "workshop-tage", "target": {"netns": {"name": "con2"}}}));
    let found = errors(&schema, &retargeted, Some(&old));
    assert!(
        found.iter().any(|e| e.contains("target is immutable")),
        "{found:#?}"
    );
    let aliased = endpoint(
        json!({"network": "workshop-tage", "target": {"netns": {"name": "con1"}}, "aliases": ["web"]}),
    );
    assert!(errors(&schema, &aliased, Some(&old)).is_empty());
}

#[test]
fn portpublishes_reject_bad_ports_and_protocols() {
    let schema = schema_of(&PortPublish::crd());
    assert_accepted(
        &schema,
        portpublish(json!({"endpoint": "web", "ports": [
            {"containerPort": 80, "hostPort": 8000},
            {"containerPort": 443, "protocol": "UDP", "hostIP": "127.0.0.1"},
            {"containerPort": 9, "protocol": "SCTP"}
        ]})),
    );
    assert_rejected(
        &schema,
        portpublish(json!({"endpoint": "web", "ports": [{"containerPort": 0}]})),
        "less than the minimum",
    );
    assert_rejected(
        &schema,
        portpublish(json!({"endpoint": "web", "ports": [{"containerPort": 70000}]})),
        "greater than the maximum",
    );
    assert_rejected(
        &schema,
        portpublish(
            json!({"endpoint": "web", "ports": [{"containerPort": 80, "hostPort": 65536}]}),
        ),
        "greater than the maximum",
    );
    assert_rejected(
        &schema,
        portpublish(
            json!({"endpoint": "web", "ports": [{"containerPort": 80, "protocol": "ICMP"}]}),
        ),
        "is not one of",
    );
    assert_rejected(
        &schema,
        portpublish(
            json!({"endpoint": "web", "ports": [{"containerPort": 80, "hostIP": "localhost"}]}),
        ),
        "does not match",
    );
    assert_rejected(
        &schema,
        portpublish(json!({"endpoint": "web", "ports": []})),
        "has less than 1 item",
    );
}

#[test]
fn ipv6_fields_are_checked_like_the_ipv4_ones() {
    let schema = schema_of(&Network::crd());
    assert_accepted(&schema, network(json!({"ipv6": true})));
    assert_accepted(
        &schema,
        network(json!({
            "ipv6": true, "ipv6Subnet": "fd12:3456:789a:1::/64",
            "ipv6Gateway": "fd12:3456:789a:1::fe", "ipv6IpRange": "fd12:3456:789a:1::/80"
        })),
    );
    assert_accepted(
        &schema,
        network(json!({"ipv4": false, "ipv6": true, "driver": "overlay"})),
    );
    assert_rejected(
        &schema,
        network(json!({"ipv4": false})),
        "a network needs IPv4 or IPv6",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv4": false, "ipv6": true, "subnet": "172.18.0.0/16"})),
        "an IPv6-only network",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv6Subnet": "fd00::/64"})),
        "need ipv6: true",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv6": true, "ipv6Subnet": "172.18.0.0/16"})),
        "must be an IPv6 CIDR",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv6": true, "ipv6Subnet": "fd00::1/64"})),
        "without host bits",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv6": true, "ipv6Subnet": "fd00::/126"})),
        "at most 124 bits",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv6": true, "ipv6Subnet": "fd00::/64", "ipv6Gateway": "fd01::1"})),
        "ipv6Gateway needs an ipv6Subnet and must lie within it",
    );
    assert_rejected(
        &schema,
        network(json!({"ipv6": true, "ipv6Subnet": "fd00::/64", "ipv6IpRange": "fd01::/80"})),
        "ipv6IpRange needs an ipv6Subnet and must lie within it",
    );
    assert_rejected(
        &schema,
        network(json!({"driver": "host", "ipv6": true})),
        "only bridge and overlay networks",
    );
    let old = network(json!({"ipv6": true}));
    let found = errors(&schema, &network(json!({"ipv6": false})), Some(&old));
    assert!(
        found.iter().any(|e| e.contains("ipv6 is immutable")),
        "{found:#?}"
    );

    let schema = schema_of(&Endpoint::crd());
    let target = json!({"netns": {"name": "con1"}});
    assert_accepted(
        &schema,
        endpoint(json!({"target": target, "ipv6Address": "fd00::5"})),
    );
    assert_rejected(
        &schema,
        endpoint(json!({"target": target, "ipv6Address": "172.18.0.5"})),
        "ipv6Address must be an IPv6 address",
    );
    let schema = schema_of(&PortPublish::crd());
    for host_ip in ["::", "::1", "2001:db8::7", "0.0.0.0"] {
        assert_accepted(
            &schema,
            portpublish(
                json!({"endpoint": "web", "ports": [{"containerPort": 80, "hostIP": host_ip}]}),
            ),
        );
    }
    assert_rejected(
        &schema,
        portpublish(
            json!({"endpoint": "web", "ports": [{"containerPort": 80, "hostIP": "1:2:3"}]}),
        ),
        "hostIP must be an IPv4 or IPv6 address",
    );
}
