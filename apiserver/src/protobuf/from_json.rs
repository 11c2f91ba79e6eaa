//! JSON as the store keeps it → the protobuf message of its kind.

use std::collections::HashMap;

use base64::Engine;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value as PValue,
};
use serde_json::Value;

use super::{ProtobufError, wellknown};

/// The message `desc` for a JSON value; fields the message lacks (apiVersion, kind) are
/// skipped, as Go's decoder does.
pub(super) fn message(
    desc: &MessageDescriptor,
    v: &Value,
) -> Result<DynamicMessage, ProtobufError> {
    if let Some(special) = wellknown::from_json(desc, v)? {
        return Ok(special);
    }
    let obj = v.as_object().ok_or_else(|| ProtobufError::Field {
        message: desc.full_name().into(),
        field: String::new(),
        reason: format!("expected an object, got {v}"),
    })?;
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields().filter(|f| super::inlined(desc, f.name())) {
        // The embedded struct takes its fields from the parent's object.
        if let Kind::Message(inner) = field.kind() {
            msg.set_field(&field, PValue::Message(message(&inner, v)?));
        }
    }
    for (name, value) in obj {
        if super::inlined(desc, name) {
            continue;
        }
        let Some(field) = desc.get_field_by_name(name) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        msg.set_field(&field, field_value(&field, value)?);
    }
    Ok(msg)
}

fn field_value(field: &FieldDescriptor, v: &Value) -> Result<PValue, ProtobufError> {
    let bad = |expected: &str| ProtobufError::Field {
        message: field.parent_message().full_name().into(),
        field: field.name().into(),
        reason: format!("expected {expected}, got {v}"),
    };
    if field.is_map() {
        let value_kind = match field.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            _ => return Err(bad("a map")),
        };
        let entries = v.as_object().ok_or_else(|| bad("an object"))?;
        let map = entries
            .iter()
            .map(|(k, v)| Ok((MapKey::String(k.clone()), scalar(field, &value_kind, v)?)))
            .collect::<Result<HashMap<_, _>, ProtobufError>>()?;
        return Ok(PValue::Map(map));
    }
    if field.is_list() {
        let items = v.as_array().ok_or_else(|| bad("a list"))?;
        let kind = field.kind();
        let list = items
            .iter()
            .map(|item| scalar(field, &kind, item))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(PValue::List(list));
    }
    scalar(field, &field.kind(), v)
}

fn scalar(field: &FieldDescriptor, kind: &Kind, v: &Value) -> Result<PValue, ProtobufError> {
    let bad = |expected: &str| ProtobufError::Field {
        message: field.parent_message().full_name().into(),
        field: field.name().into(),
        reason: format!("expected {expected}, got {v}"),
    };
    let int = || v.as_i64().ok_or_else(|| bad("an integer"));
    let narrow = |i: i64| i32::try_from(i).map_err(|_| bad("a 32-bit integer"));
    Ok(match kind {
        Kind::Bool => PValue::Bool(v.as_bool().ok_or_else(|| bad("a boolean"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(narrow(int()?)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(int()?),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(
            v.as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .ok_or_else(|| bad("an unsigned 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => {
            PValue::U64(v.as_u64().ok_or_else(|| bad("an unsigned integer"))?)
        }
        Kind::Float => PValue::F32(v.as_f64().ok_or_else(|| bad("a number"))? as f32),
        Kind::Double => PValue::F64(v.as_f64().ok_or_else(|| bad("a number"))?),
        Kind::String => PValue::String(v.as_str().ok_or_else(|| bad("a string"))?.into()),
        Kind::Bytes => PValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or_else(|| bad("a base64 string"))?)
                .map_err(|_| bad("standard base64"))?
                .into(),
        ),
        Kind::Enum(_) => PValue::EnumNumber(narrow(int()?)?),
        Kind::Message(desc) => PValue::Message(message(desc, v)?),
    })
}
