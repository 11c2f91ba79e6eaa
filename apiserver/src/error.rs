//! API errors and their `Status` bodies.

use serde_json::{Value, json};

/// One field-level cause of a 422 Invalid answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    /// The field path (`spec.subnet`).
    pub field: String,
    /// The message, e.g. the schema's or the CEL rule's.
    pub message: String,
}

/// What a request can fail with; each maps to a Kubernetes `Status` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        group: String,
        resource: String,
        name: String,
    },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        group: String,
        resource: String,
        name: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid {
        group: String,
        kind: String,
        name: String,
        message: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the server could not find the requested resource")]
    PathNotFound,
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        ApiError::NotFound {
            group: group.to_string(),
            resource: resource.to_string(),
            name: name.to_string(),
        }
    }

    fn qualified(group: &str, resource: &str) -> String {
        if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::PathNotFound => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict(_) => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Gone(_) => 410,
            ApiError::TooManyRequests(_) => 429,
            ApiError::Unauthorized => 401,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::NotAcceptable(_) => 406,
            ApiError::Forbidden(_) => 403,
            ApiError::Internal(_) => 500,
        }
    }

    /// The `reason` field of the Status.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::PathNotFound => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::Gone(_) => "Expired",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::PayloadTooLarge(_) => "RequestEntityTooLarge",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The message as the real server words it.
    pub fn message(&self) -> String {
        match self {
            ApiError::NotFound {
                group,
                resource,
                name,
            } => format!("{} \"{name}\" not found", Self::qualified(group, resource)),
            ApiError::AlreadyExists {
                group,
                resource,
                name,
            } => format!(
                "{} \"{name}\" already exists",
                Self::qualified(group, resource)
            ),
            other => other.to_string(),
        }
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound {
                group,
                resource,
                name,
            }
            | ApiError::AlreadyExists {
                group,
                resource,
                name,
            } => Some(json!({"name": name, "group": group, "kind": resource})),
            ApiError::Invalid {
                group,
                kind,
                name,
                causes,
                ..
            } => Some(json!({
                "name": name, "group": group, "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
            map.insert("details".into(), details);
        }
        status
    }
}

/// Errors opening or running the server (not request errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The address to serve on could not be bound (in use, not local).
    #[error("listening on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt state in {path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("weak token: {0}")]
    WeakToken(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("built-in CRD: {0}")]
    Crd(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_worded_like_kubernetes() {
        let e = ApiError::not_found("pier.dev", "networks", "x");
        let s = e.status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "networks.pier.dev \"x\" not found");
        assert_eq!(
            ApiError::not_found("", "pods", "p").message(),
            "pods \"p\" not found"
        );
    }
}
