//! The built-in kinds stored as plain objects (pure): ServiceAccounts, Secrets, ConfigMaps,
//! Services, Deployments, DaemonSets, PodDisruptionBudgets, the RBAC kinds and
//! ValidatingAdmissionPolicies, what Helm and Pier's chart create (and ReplicaSets and
//! StatefulSets, which Helm's readiness check reads). Nothing runs them (no
//! kubelet, no controllers, no admission): they are stored, listed, watched and patched, as by
//! a kube-apiserver without its controller manager.
//!
//! Each is decoded into its k8s-openapi type and encoded again, as kube-apiserver decodes a
//! body into its Go type: a field of the wrong type (a non-base64 Secret `data` value, a string
//! `replicas`) is a 400 "cannot be handled as", and fields the type does not know are dropped
//! (or refused with `fieldValidation=Strict`).

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1 as admission;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::rbac::v1 as rbac;

use crate::error::Cause;

/// Decodes an object into its typed form and encodes it again.
pub type RoundTrip = fn(Value) -> Result<Value, serde_json::Error>;

fn round_trip<T: DeserializeOwned + Serialize>(object: Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(serde_json::from_value::<T>(object)?)
}

/// The OpenAPI (v3) schema of `T`, every type inlined: what `kubectl explain` walks.
fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = Value::from(generator.into_root_schema_for::<T>());
    if let Some(m) = schema.as_object_mut() {
        m.remove("$schema");
    }
    schema
}

/// What a kind's k8s-openapi type gives: its decoding and its schema.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    pub round_trip: RoundTrip,
    pub schema: fn() -> Value,
}

fn codec<T: DeserializeOwned + Serialize + JsonSchema>() -> Codec {
    Codec {
        round_trip: round_trip::<T>,
        schema: schema_of::<T>,
    }
}

/// One stored built-in kind: where it is served and how.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub group: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a status subresource (and so a spec whose changes bump `metadata.generation`).
    pub status: bool,
    pub codec: Codec,
}

/// Every stored built-in kind (all in version v1).
pub fn kinds() -> Vec<Kind> {
    let kind = |group, plural, kind, namespaced, short_names, status, codec| Kind {
        group,
        plural,
        kind,
        namespaced,
        short_names,
        status,
        codec,
    };
    vec![
        kind(
            "",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            codec::<core::ServiceAccount>(),
        ),
        kind(
            "",
            "secrets",
            "Secret",
            true,
            &[],
            false,
            codec::<core::Secret>(),
        ),
        kind(
            "",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            codec::<core::ConfigMap>(),
        ),
        kind(
            "",
            "services",
            "Service",
            true,
            &["svc"],
            true,
            codec::<core::Service>(),
        ),
        kind(
            "apps",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
            codec::<apps::Deployment>(),
        ),
        kind(
            "apps",
            "daemonsets",
            "DaemonSet",
            true,
            &["ds"],
            true,
            codec::<apps::DaemonSet>(),
        ),
        // Helm's readiness check (kstatus) reads a Deployment's ReplicaSets, a StatefulSet's Pods.
        kind(
            "apps",
            "replicasets",
            "ReplicaSet",
            true,
            &["rs"],
            true,
            codec::<apps::ReplicaSet>(),
        ),
        kind(
            "apps",
            "statefulsets",
            "StatefulSet",
            true,
            &["sts"],
            true,
            codec::<apps::StatefulSet>(),
        ),
        kind(
            "policy",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
            true,
            codec::<policy::PodDisruptionBudget>(),
        ),
        kind(
            "rbac.authorization.k8s.io",
            "roles",
            "Role",
            true,
            &[],
            false,
            codec::<rbac::Role>(),
        ),
        kind(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
            codec::<rbac::RoleBinding>(),
        ),
        kind(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
            codec::<rbac::ClusterRole>(),
        ),
        kind(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
            codec::<rbac::ClusterRoleBinding>(),
        ),
        kind(
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
            false,
            &[],
            true,
            codec::<admission::ValidatingAdmissionPolicy>(),
        ),
        kind(
            "admissionregistration.k8s.io",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
            &[],
            false,
            codec::<admission::ValidatingAdmissionPolicyBinding>(),
        ),
    ]
}

/// Why a built-in object cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A field of the wrong type: kube-apiserver's 400 "cannot be handled as".
    #[error("{kind} in version \"v1\" cannot be handled as a {kind}: {source}")]
    WrongType {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    /// `fieldValidation=Strict` and fields the type does not have.
    #[error("{kind} in version \"v1\" cannot be handled as a {kind}: strict decoding error: {}", unknown_fields(.fields))]
    UnknownFields { kind: String, fields: Vec<String> },
}

fn unknown_fields(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes `object` as `kind` (after the writes kube-apiserver makes before decoding: a
/// Secret's `stringData` merged into `data`, its type defaulted), dropping the fields its type does not know.
/// Returns the dropped fields' paths; with `strict`, dropped fields are an error.
pub fn decode(kind: &Kind, object: &mut Value, strict: bool) -> Result<Vec<String>, DecodeError> {
    let wrong_type = |source| DecodeError::WrongType {
        kind: kind.kind.to_owned(),
        source,
    };
    if kind.kind == "Secret" {
        merge_string_data(object).map_err(wrong_type)?;
        // kube-apiserver's defaulting: `kubectl create secret generic` sends no type.
        if object.get("type").is_none_or(|t| t == "") {
            object["type"] = Value::from("Opaque");
        }
    }
    let typed = (kind.codec.round_trip)(object.clone()).map_err(wrong_type)?;
    let mut dropped = Vec::new();
    dropped_fields(object, &typed, "", &mut dropped);
    if strict && !dropped.is_empty() {
        return Err(DecodeError::UnknownFields {
            kind: kind.kind.to_owned(),
            fields: dropped,
        });
    }
    *object = typed;
    Ok(dropped)
}

/// A Secret's `stringData` goes into `data` (base64), winning over the same keys there, and is
/// not stored: as kube-apiserver converts it.
fn merge_string_data(secret: &mut Value) -> Result<(), serde_json::Error> {
    let Some(m) = secret.as_object_mut() else {
        return Ok(());
    };
    let Some(string_data) = m.remove("stringData") else {
        return Ok(());
    };
    let string_data: std::collections::BTreeMap<String, String> =
        serde_json::from_value(string_data)?;
    if string_data.is_empty() {
        return Ok(());
    }
    let data = m.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if data.is_null() {
        *data = Value::Object(Map::new());
    }
    if let Some(data) = data.as_object_mut() {
        for (key, text) in string_data {
            data.insert(key, serde_json::to_value(ByteString(text.into_bytes()))?);
        }
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Paths of the fields of `before` (not null) that `after` lacks.
fn dropped_fields(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, value) in b {
                match a.get(key) {
                    None if !value.is_null() && !is_empty_container(value) => {
                        out.push(join(path, key))
                    }
                    None => {}
                    Some(kept) => dropped_fields(value, kept, &join(path, key), out),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() == b.len() => {
            for (i, (value, kept)) in b.iter().zip(a).enumerate() {
                dropped_fields(value, kept, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `{}` and `[]` of optional fields the types encode as absent.
fn is_empty_container(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.values().all(|v| v.is_null() || is_empty_container(v)),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Keys of a Secret's or ConfigMap's data, checked as kube-apiserver checks them: 422 causes.
pub fn data_key_causes(kind: &Kind, object: &Value) -> Vec<Cause> {
    let fields: &[&str] = match kind.kind {
        "Secret" => &["data"],
        "ConfigMap" => &["data", "binaryData"],
        _ => &[],
    };
    let mut causes = Vec::new();
    for field in fields {
        let keys = object.get(*field).and_then(Value::as_object);
        for key in keys.into_iter().flat_map(|m| m.keys()) {
            if !valid_data_key(key) {
                causes.push(Cause {
                    reason: "FieldValueInvalid".into(),
                    field: format!("{field}[{key}]"),
                    message: format!(
                        "Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
                    ),
                });
            }
        }
    }
    causes
}

fn valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kind(name: &str) -> Kind {
        kinds()
            .into_iter()
            .find(|k| k.kind == name)
            .expect("a stored kind")
    }

    #[test]
    fn secret_string_data_is_merged_into_data() {
        let mut secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "yes", "c": "z"}});
        let dropped = decode(&kind("Secret"), &mut secret, true).expect("decodes");
        assert!(dropped.is_empty());
        assert_eq!(
            secret["data"],
            json!({"a": "eA==", "b": "eWVz", "c": "eg=="})
        );
        assert!(secret.get("stringData").is_none());
    }

    #[test]
    fn wrong_types_are_refused_as_kube_apiserver_does() {
        let mut secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "not base64!"}});
        let error = decode(&kind("Secret"), &mut secret, false).expect_err("not base64");
        assert!(
            error
                .to_string()
                .starts_with("Secret in version \"v1\" cannot be handled as a Secret: "),
            "{error}"
        );
        let mut deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"}, "spec": {"replicas": "two", "selector": {}, "template": {}}});
        assert!(decode(&kind("Deployment"), &mut deployment, false).is_err());
    }

    #[test]
    fn unknown_fields_are_dropped_or_refused_when_strict() {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"a": "b"}, "bogus": 1},
            "data": {"k": "v"}, "extra": {"x": 1}, "empty": null});
        let mut lax = object.clone();
        let dropped = decode(&kind("ConfigMap"), &mut lax, false).expect("decodes");
        assert_eq!(
            dropped,
            vec!["extra".to_owned(), "metadata.bogus".to_owned()]
        );
        assert_eq!(
            lax,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}})
        );
        let mut strict = object;
        let error = decode(&kind("ConfigMap"), &mut strict, true).expect_err("strict");
        assert!(
            error.to_string().ends_with(
                "strict decoding error: unknown field \"extra\", unknown field \"metadata.bogus\""
            ),
            "{error}"
        );
    }

    #[test]
    fn timestamps_and_managed_fields_survive_the_round_trip() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
            "name": "d", "creationTimestamp": "2026-01-02T03:04:05Z", "generation": 3,
            "managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "apps/v1",
                "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                    {"name": "c", "image": "i", "resources": {"limits": {"memory": "256Mi"}},
                     "ports": [{"containerPort": 80}]}]}}}});
        let mut decoded = object.clone();
        decode(&kind("Deployment"), &mut decoded, true).expect("decodes");
        assert_eq!(decoded, object);
    }

    #[test]
    fn data_keys_are_checked() {
        let cm = json!({"data": {"ok.key_1": "", "bad key": ""}, "binaryData": {"..": ""}});
        let causes = data_key_causes(&kind("ConfigMap"), &cm);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["data[bad key]", "binaryData[..]"]);
        assert!(data_key_causes(&kind("Service"), &cm).is_empty());
    }
}
