//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) of the built-in kinds,
//! converted to and from the JSON the store keeps.
//!
//! kubectl's typed commands (`create namespace`, `create configmap`, `auth can-i`, ...) send
//! their bodies this way: the magic `k8s\0`, then a `runtime.Unknown` envelope naming the
//! apiVersion and kind around the object's own message. The conversion is driven by the
//! descriptors of Kubernetes' `.proto` files (vendored in `proto/`, compiled by `build.rs`), so
//! every kind of the groups there is covered; field names in those files are the JSON names.
//!
//! JSON keeps what Go's encoding of the decoded object would keep, as far as the wire tells:
//! zero values of `ObjectMeta`/`ListMeta` and empty strings are dropped (Go's `omitempty`), so
//! an explicitly empty string in a pointer field (a PVC's `storageClassName: ""`) is lost;
//! `false` and `0` elsewhere are kept (they may be explicit pointer values: `replicas: 0`).

mod from_json;
mod to_json;
mod wellknown;

use std::sync::LazyLock;

use prost_reflect::prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::Value;

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every protobuf body starts with these bytes.
const MAGIC: &[u8] = b"k8s\0";

const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";
/// Kinds of meta.k8s.io (Status, DeleteOptions, ...) travel with apiVersion `v1` too.
const META_PACKAGE: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// Fields of embedded Go structs (`json:""` in k8s.io/api's types.go): their message's fields
/// sit in the parent's JSON object, as Go's encoding/json inlines them.
const INLINE: &[(&str, &str)] = &[
    ("k8s.io.api.core.v1.Volume", "volumeSource"),
    (
        "k8s.io.api.core.v1.PersistentVolumeSpec",
        "persistentVolumeSource",
    ),
    ("k8s.io.api.core.v1.Probe", "handler"),
    (
        "k8s.io.api.core.v1.EphemeralContainer",
        "ephemeralContainerCommon",
    ),
    (
        "k8s.io.api.core.v1.SecretProjection",
        "localObjectReference",
    ),
    (
        "k8s.io.api.core.v1.SecretKeySelector",
        "localObjectReference",
    ),
    ("k8s.io.api.core.v1.SecretEnvSource", "localObjectReference"),
    (
        "k8s.io.api.core.v1.ConfigMapVolumeSource",
        "localObjectReference",
    ),
    (
        "k8s.io.api.core.v1.ConfigMapProjection",
        "localObjectReference",
    ),
    (
        "k8s.io.api.core.v1.ConfigMapKeySelector",
        "localObjectReference",
    ),
    (
        "k8s.io.api.core.v1.ConfigMapEnvSource",
        "localObjectReference",
    ),
    ("k8s.io.api.networking.v1.IngressRule", "ingressRuleValue"),
];

/// Whether `field` of `message` is an embedded Go struct ([`INLINE`]).
fn inlined(message: &MessageDescriptor, field: &str) -> bool {
    INLINE.contains(&(message.full_name(), field))
}

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // Built by build.rs from the vendored files: a failure here is a build defect, and the unit
    // tests load it.
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.descriptors"))[..])
        .expect("the descriptor set compiled by build.rs decodes")
});

/// Why a body could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("the body does not start with Kubernetes' protobuf prefix \"k8s\\0\"")]
    NoMagic,
    #[error("the body is not a valid protobuf message")]
    Decode(#[source] prost_reflect::prost::DecodeError),
    #[error("the protobuf envelope names no apiVersion and kind")]
    NoType,
    #[error("no protobuf encoding is known for kind {kind} of {api_version}")]
    UnknownKind { api_version: String, kind: String },
    #[error("{message}.{field}: {reason}")]
    Field {
        message: String,
        field: String,
        reason: String,
    },
    #[error("an embedded JSON document is invalid")]
    EmbeddedJson(#[source] serde_json::Error),
}

/// Whether a Content-Type or Accept entry names the protobuf encoding.
pub fn is_protobuf(media_type: &str) -> bool {
    media_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// The message of `kind` in `api_version` (`v1`, `apps/v1`, `rbac.authorization.k8s.io/v1`):
/// Kubernetes names packages after the group's first label, `core` for the core group.
pub fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group.split('.').next() {
        Some("") | None => "core",
        Some(first) => first,
    };
    let pool = &*DESCRIPTORS;
    pool.get_message_by_name(&format!("k8s.io.api.{package}.{version}.{kind}"))
        .or_else(|| {
            (version == "v1" && (group.is_empty() || group == "meta.k8s.io"))
                .then(|| pool.get_message_by_name(&format!("{META_PACKAGE}.{kind}")))
                .flatten()
        })
}

/// A protobuf body as the JSON object it encodes, with its apiVersion and kind.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let unknown =
        DynamicMessage::decode(descriptor(UNKNOWN), envelope).map_err(ProtobufError::Decode)?;
    let type_meta = unknown
        .get_field_by_name("typeMeta")
        .and_then(|t| t.as_message().cloned());
    let text = |name: &str| {
        type_meta
            .as_ref()
            .and_then(|t| t.get_field_by_name(name))
            .and_then(|v| v.as_str().map(String::from))
            .filter(|s| !s.is_empty())
    };
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        return Err(ProtobufError::NoType);
    };
    let desc = message_for(&api_version, &kind).ok_or_else(|| ProtobufError::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let raw = unknown
        .get_field_by_name("raw")
        .and_then(|r| r.as_bytes().cloned())
        .unwrap_or_default();
    let msg = DynamicMessage::decode(desc, raw).map_err(ProtobufError::Decode)?;
    let mut obj = serde_json::Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    if let Value::Object(fields) = to_json::message(&msg)? {
        obj.extend(fields);
    }
    Ok(Value::Object(obj))
}

/// A JSON object (with apiVersion and kind) in the protobuf encoding.
pub fn encode(obj: &Value) -> Result<Vec<u8>, ProtobufError> {
    let field = |name: &str| obj.get(name).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::NoType);
    }
    let desc = message_for(api_version, kind).ok_or_else(|| ProtobufError::UnknownKind {
        api_version: api_version.into(),
        kind: kind.into(),
    })?;
    let raw = from_json::message(&desc, obj)?.encode_to_vec();
    let unknown_desc = descriptor(UNKNOWN);
    let mut type_meta = DynamicMessage::new(message_field(&unknown_desc, "typeMeta"));
    type_meta.set_field_by_name(
        "apiVersion",
        prost_reflect::Value::String(api_version.into()),
    );
    type_meta.set_field_by_name("kind", prost_reflect::Value::String(kind.into()));
    let mut unknown = DynamicMessage::new(unknown_desc);
    unknown.set_field_by_name("typeMeta", prost_reflect::Value::Message(type_meta));
    unknown.set_field_by_name("raw", prost_reflect::Value::Bytes(raw.into()));
    let mut out = MAGIC.to_vec();
    unknown.encode(&mut out).map_err(|e| ProtobufError::Field {
        message: UNKNOWN.into(),
        field: "raw".into(),
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// A message of the vendored files, by full name (names used here are checked by the tests).
fn descriptor(full_name: &str) -> MessageDescriptor {
    DESCRIPTORS
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the vendored .proto files"))
}

/// The message type of a field of `desc` (names used here are checked by the tests).
fn message_field(desc: &MessageDescriptor, name: &str) -> MessageDescriptor {
    desc.get_field_by_name(name)
        .and_then(|f| f.kind().as_message().cloned())
        .unwrap_or_else(|| panic!("{} has a message field {name}", desc.full_name()))
}

#[cfg(test)]
mod tests;
