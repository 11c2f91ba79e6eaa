//! Protobuf message → the JSON Kubernetes writes for it.

use base64::Engine;
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value as PValue};
use serde_json::{Map, Value};

use super::{ProtobufError, wellknown};

/// Messages whose scalar fields are all `omitempty` in Go: zero values are dropped.
const OMIT_ZERO: &[&str] = &[
    "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta",
];

/// The JSON of a message: its set fields under their (JSON) names.
pub(super) fn message(msg: &DynamicMessage) -> Result<Value, ProtobufError> {
    if let Some(special) = wellknown::to_json(msg)? {
        return Ok(special);
    }
    let omit_zero = OMIT_ZERO.contains(&msg.descriptor().full_name());
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        let json = match value {
            PValue::List(items) => {
                Value::Array(items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?)
            }
            PValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((key(k), scalar(v)?)))
                    .collect::<Result<Map<_, _>, ProtobufError>>()?,
            ),
            v => scalar(v)?,
        };
        match json {
            Value::Object(inner) if super::inlined(&msg.descriptor(), field.name()) => {
                out.extend(inner);
            }
            json if !omitted(&json, omit_zero) => {
                out.insert(field.name().to_string(), json);
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// Go's `omitempty` for what the wire can tell: nulls (zero times), empty strings and lists;
/// `false` and `0` only where every field is `omitempty` and none is a pointer.
fn omitted(v: &Value, omit_zero: bool) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => omit_zero && !b,
        Value::Number(n) => omit_zero && n.as_f64() == Some(0.0),
        Value::Object(_) => false,
    }
}

fn key(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(i) => i.to_string(),
        MapKey::I64(i) => i.to_string(),
        MapKey::U32(i) => i.to_string(),
        MapKey::U64(i) => i.to_string(),
    }
}

fn scalar(v: &PValue) -> Result<Value, ProtobufError> {
    Ok(match v {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(i) => Value::from(*i),
        PValue::I64(i) => Value::from(*i),
        PValue::U32(i) => Value::from(*i),
        PValue::U64(i) => Value::from(*i),
        PValue::F32(f) => Value::from(f64::from(*f)),
        PValue::F64(f) => Value::from(*f),
        PValue::String(s) => Value::String(s.clone()),
        // JSON carries bytes (a Secret's data, a ConfigMap's binaryData) as standard base64.
        PValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => Value::from(*n),
        PValue::Message(m) => message(m)?,
        // Lists and maps never nest directly in protobuf.
        PValue::List(_) | PValue::Map(_) => Value::Null,
    })
}
