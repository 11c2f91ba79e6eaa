use prost_reflect::Value as PValue;
use serde_json::json;

use super::*;

fn round_trip(obj: &Value) -> Value {
    let wire = encode(obj).expect("encodes");
    assert!(wire.starts_with(MAGIC));
    decode(&wire).expect("decodes")
}

#[test]
fn namespace_round_trips() {
    let ns = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "labels": {"team": "net"},
                     "creationTimestamp": "2026-01-02T03:04:05Z", "uid": "u-1", "generation": 2},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    assert_eq!(round_trip(&ns), ns);
}

#[test]
fn configmap_binary_data_is_raw_bytes_on_the_wire() {
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "default"},
        "data": {"a": "b"},
        "binaryData": {"blob": "AAEC/w=="},
        "immutable": false,
    });
    let wire = encode(&cm).expect("encodes");
    assert!(
        wire.windows(4).any(|w| w == [0, 1, 2, 255]),
        "bytes, not base64"
    );
    // `immutable: false` is a pointer in Go: explicit false stays.
    assert_eq!(decode(&wire).expect("decodes"), cm);
}

#[test]
fn deployment_with_quantities_and_int_or_strings_round_trips() {
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "nginx",
                    "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                    "resources": {"limits": {"cpu": "500m", "memory": "128Mi"},
                                  "requests": {"cpu": "1"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                       "periodSeconds": 5},
                    "envFrom": [{"configMapRef": {"name": "settings"}}],
                }],
                "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}]},
            },
        },
        "status": {},
    });
    assert_eq!(round_trip(&deploy), deploy);
}

/// Go writes every non-pointer field, empty ones included, and a zero time as an empty message:
/// JSON drops them as Go's `omitempty` does.
#[test]
fn go_zero_values_are_omitted_as_in_go_json() {
    let ns = message_for("v1", "Namespace").expect("known");
    let meta_desc = message_field(&ns, "metadata");
    let mut meta = DynamicMessage::new(meta_desc.clone());
    meta.set_field_by_name("name", PValue::String("demo".into()));
    meta.set_field_by_name("generateName", PValue::String(String::new()));
    meta.set_field_by_name("generation", PValue::I64(0));
    let time = DynamicMessage::new(message_field(&meta_desc, "creationTimestamp"));
    meta.set_field_by_name("creationTimestamp", PValue::Message(time));
    let mut status = DynamicMessage::new(message_field(&ns, "status"));
    status.set_field_by_name("phase", PValue::String(String::new()));
    let mut msg = DynamicMessage::new(ns.clone());
    msg.set_field_by_name("metadata", PValue::Message(meta));
    msg.set_field_by_name(
        "spec",
        PValue::Message(DynamicMessage::new(message_field(&ns, "spec"))),
    );
    msg.set_field_by_name("status", PValue::Message(status));
    let wire = envelope("v1", "Namespace", &msg.encode_to_vec());
    assert_eq!(
        decode(&wire).expect("decodes"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"},
               "spec": {}, "status": {}})
    );
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let unknown = descriptor(UNKNOWN);
    let mut type_meta = DynamicMessage::new(message_field(&unknown, "typeMeta"));
    type_meta.set_field_by_name("apiVersion", PValue::String(api_version.into()));
    type_meta.set_field_by_name("kind", PValue::String(kind.into()));
    let mut msg = DynamicMessage::new(unknown);
    msg.set_field_by_name("typeMeta", PValue::Message(type_meta));
    msg.set_field_by_name("raw", PValue::Bytes(raw.to_vec().into()));
    [MAGIC, &msg.encode_to_vec()].concat()
}

#[test]
fn inlined_go_structs_are_fields_of_their_parent() {
    let every = DESCRIPTORS.all_messages().count();
    assert!(every > 500, "{every} messages");
    for (message, field) in INLINE {
        let desc = descriptor(message);
        assert!(desc.get_field_by_name(field).is_some(), "{message}.{field}");
    }
}

#[test]
fn kinds_of_every_group_are_found() {
    for (api_version, kind) in [
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("v1", "Service"),
        ("apps/v1", "DaemonSet"),
        ("policy/v1", "PodDisruptionBudget"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
        ("batch/v1", "CronJob"),
        ("networking.k8s.io/v1", "Ingress"),
        ("coordination.k8s.io/v1", "Lease"),
        ("events.k8s.io/v1", "Event"),
        ("v1", "Status"),
        ("meta.k8s.io/v1", "DeleteOptions"),
    ] {
        assert!(
            message_for(api_version, kind).is_some(),
            "{api_version} {kind}"
        );
    }
    assert!(message_for("pier.dev/v1alpha1", "Endpoint").is_none());
}

#[test]
fn access_review_and_role_round_trip() {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "metadata": {},
        "spec": {"resourceAttributes": {"verb": "create", "group": "pier.dev",
                                        "resource": "endpoints", "namespace": "default"}},
        "status": {"allowed": true, "reason": "cluster-admin"},
    });
    assert_eq!(round_trip(&review), review);
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]},
    });
    // An empty string in a list is kept: only empty fields are dropped.
    assert_eq!(round_trip(&role), role);
}

#[test]
fn micro_times_embedded_objects_and_managed_fields_round_trip() {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l", "namespace": "default", "managedFields": [{
            "manager": "kubectl", "operation": "Update", "apiVersion": "coordination.k8s.io/v1",
            "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:holderIdentity": {}}}}]},
        "spec": {"holderIdentity": "node-a", "renewTime": "2026-01-02T03:04:05.123456Z",
                 "leaseDurationSeconds": 15},
    });
    assert_eq!(round_trip(&lease), lease);
    let revision = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "r"},
        "data": {"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}},
        "revision": 3,
    });
    assert_eq!(round_trip(&revision), revision);
}

#[test]
fn durations_use_go_notation() {
    for (nanos, text) in [
        (0, "0s"),
        (1_500_000, "1.5ms"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_500_000_000, "1h2m3.5s"),
        (-2_000, "-2µs"),
    ] {
        assert_eq!(wellknown::format_duration(nanos), text);
        assert_eq!(wellknown::parse_duration(text), Some(nanos), "{text}");
    }
    assert_eq!(wellknown::parse_duration("5x"), None);
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert!(matches!(
        decode(b"{\"kind\":1}"),
        Err(ProtobufError::NoMagic)
    ));
    assert!(matches!(
        decode(b"k8s\0\xff\xff"),
        Err(ProtobufError::Decode(_))
    ));
    assert!(matches!(
        decode(&envelope("pier.dev/v1alpha1", "Endpoint", b"")),
        Err(ProtobufError::UnknownKind { .. })
    ));
    assert!(matches!(
        decode(&envelope("", "", b"")),
        Err(ProtobufError::NoType)
    ));
    let wrong = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": 1}});
    assert!(matches!(encode(&wrong), Err(ProtobufError::Field { .. })));
    let quantity = json!({"apiVersion": "v1", "kind": "ResourceQuota",
                          "spec": {"hard": {"pods": true}}});
    assert!(matches!(
        encode(&quantity),
        Err(ProtobufError::Field { .. })
    ));
}

#[test]
fn media_types() {
    assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
    assert!(is_protobuf(
        "application/vnd.kubernetes.protobuf;stream=watch"
    ));
    assert!(!is_protobuf("application/json"));
}
