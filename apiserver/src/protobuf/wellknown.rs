//! The messages whose JSON form is not an object of their fields: quantities, times,
//! durations, int-or-strings, embedded JSON documents and string lists.

use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value as PValue};
use serde_json::Value;

use super::ProtobufError;

const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";
/// intstr.Type of a string.
const INT_OR_STRING_STRING: i64 = 1;

/// Go's zero time (0001-01-01T00:00:00Z) in Unix seconds, which Go encodes as JSON `null`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// The JSON of a special message, or `None` for an ordinary one.
pub(super) fn to_json(msg: &DynamicMessage) -> Result<Option<Value>, ProtobufError> {
    let desc = msg.descriptor();
    let int = |name: &str| {
        msg.get_field_by_name(name)
            .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    let text = |name: &str| {
        msg.get_field_by_name(name)
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let bytes = |name: &str| {
        msg.get_field_by_name(name)
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default()
    };
    let json = match desc.full_name() {
        QUANTITY => Value::String(text("string")),
        TIME | MICRO_TIME => {
            let (seconds, nanos) = (int("seconds"), int("nanos"));
            // Go writes a zero time as an empty message.
            if (seconds == 0 && nanos == 0) || seconds == GO_ZERO_TIME {
                return Ok(Some(Value::Null));
            }
            let micro = desc.full_name() == MICRO_TIME;
            Value::String(format_time(seconds, if micro { nanos } else { 0 }, micro)?)
        }
        DURATION => Value::String(format_duration(int("duration"))),
        INT_OR_STRING if int("type") == INT_OR_STRING_STRING => Value::String(text("strVal")),
        INT_OR_STRING => Value::from(int("intVal")),
        RAW_EXTENSION => embedded(&bytes("raw"))?,
        FIELDS_V1 => embedded(&bytes("Raw"))?,
        _ if string_list(&desc) => Value::Array(
            msg.get_field_by_name("items")
                .and_then(|v| v.as_list().map(<[PValue]>::to_vec))
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.as_str().map(|s| Value::String(s.into())))
                .collect(),
        ),
        _ => return Ok(None),
    };
    Ok(Some(json))
}

/// The message of a special JSON form, or `None` for an ordinary message.
pub(super) fn from_json(
    desc: &MessageDescriptor,
    v: &Value,
) -> Result<Option<DynamicMessage>, ProtobufError> {
    let bad = |reason: &str| ProtobufError::Field {
        message: desc.full_name().into(),
        field: String::new(),
        reason: format!("{reason}, got {v}"),
    };
    let fields: Vec<(&str, PValue)> = match desc.full_name() {
        QUANTITY => match v {
            Value::String(s) => vec![("string", PValue::String(s.clone()))],
            Value::Number(n) => vec![("string", PValue::String(n.to_string()))],
            _ => return Err(bad("a quantity is a string or a number")),
        },
        name @ (TIME | MICRO_TIME) => {
            let ts: jiff::Timestamp = v
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("a time is an RFC 3339 string"))?;
            let mut fields = vec![("seconds", PValue::I64(ts.as_second()))];
            if name == MICRO_TIME {
                fields.push(("nanos", PValue::I32(ts.subsec_nanosecond())));
            }
            fields
        }
        DURATION => {
            let d = v
                .as_str()
                .and_then(parse_duration)
                .ok_or_else(|| bad("a duration is a string like 1h2m3.5s"))?;
            vec![("duration", PValue::I64(d))]
        }
        INT_OR_STRING => int_or_string(v)
            .ok_or_else(|| bad("an int-or-string is a string or a 32-bit integer"))?,
        name @ (RAW_EXTENSION | FIELDS_V1) => {
            let raw = serde_json::to_vec(v).map_err(ProtobufError::EmbeddedJson)?;
            let field = if name == FIELDS_V1 { "Raw" } else { "raw" };
            vec![(field, PValue::Bytes(raw.into()))]
        }
        _ if string_list(desc) => {
            let items = v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|s| Some(PValue::String(s.as_str()?.into())))
                        .collect()
                })
                .ok_or_else(|| bad("a list of strings"))?;
            vec![("items", PValue::List(items))]
        }
        _ => return Ok(None),
    };
    let mut msg = DynamicMessage::new(desc.clone());
    for (name, value) in fields {
        msg.set_field_by_name(name, value);
    }
    Ok(Some(msg))
}

fn int_or_string(v: &Value) -> Option<Vec<(&'static str, PValue)>> {
    Some(match v {
        Value::String(s) => vec![
            ("type", PValue::I64(INT_OR_STRING_STRING)),
            ("strVal", PValue::String(s.clone())),
        ],
        _ => {
            let i = i32::try_from(v.as_i64()?).ok()?;
            vec![("type", PValue::I64(0)), ("intVal", PValue::I32(i))]
        }
    })
}

/// Go string-slice types (`Verbs`, `ExtraValue`) are messages of one `repeated string items`.
fn string_list(desc: &MessageDescriptor) -> bool {
    let mut fields = desc.fields();
    match (fields.next(), fields.next()) {
        (Some(f), None) => {
            f.name() == "items" && f.is_list() && f.kind() == prost_reflect::Kind::String
        }
        _ => false,
    }
}

/// An embedded object: JSON, or itself a protobuf envelope.
fn embedded(raw: &[u8]) -> Result<Value, ProtobufError> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    if raw.starts_with(super::MAGIC) {
        return super::decode(raw);
    }
    serde_json::from_slice(raw).map_err(ProtobufError::EmbeddedJson)
}

/// RFC 3339 in UTC: seconds for metav1.Time, microseconds for metav1.MicroTime (Go's formats).
fn format_time(seconds: i64, nanos: i64, micro: bool) -> Result<String, ProtobufError> {
    let nanos = i32::try_from(nanos).unwrap_or(0);
    let ts = jiff::Timestamp::new(seconds, nanos).map_err(|e| ProtobufError::Field {
        message: TIME.into(),
        field: "seconds".into(),
        reason: e.to_string(),
    })?;
    let format = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(ts.strftime(format).to_string())
}

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
pub(super) fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let fraction = |value: u64, unit: u64| {
        let whole = value / unit;
        let frac = value % unit;
        if frac == 0 {
            return whole.to_string();
        }
        let digits = unit.to_string().len() - 1;
        let frac = format!("{frac:0digits$}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", fraction(n, 1_000));
    }
    if n < NANOS_PER_SECOND as u64 {
        return format!("{sign}{}ms", fraction(n, 1_000_000));
    }
    let (hours, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let seconds = format!("{}s", fraction(rest, NANOS_PER_SECOND as u64));
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}"),
        (0, m) => format!("{sign}{m}m{seconds}"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}"),
    }
}

/// Go's `time.ParseDuration` for the units Kubernetes writes (ns, us/µs, ms, s, m, h).
pub(super) fn parse_duration(s: &str) -> Option<i64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let number: f64 = rest[..number_end].parse().ok()?;
        let unit_end = rest[number_end..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map_or(rest.len(), |i| number_end + i);
        let unit = match &rest[number_end..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * unit;
        rest = &rest[unit_end..];
    }
    Some((sign * total).round() as i64)
}
