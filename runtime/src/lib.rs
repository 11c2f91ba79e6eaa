//! What the operator's and the node agent's controllers share: Events, object keys, per-object
//! backoff with jitter, error chains, the finalizer wrapper, status writes by server-side apply,
//! the admin port (`/livez`, `/readyz`, `/metrics`), and reflector stores that keep no managed
//! fields ([`lean`]).

pub mod admin;
pub mod backoff;
pub mod events;
pub mod finalizer;
pub mod lean;
pub mod status;

use kube::Resource;

pub use backoff::Backoff;
pub use events::Events;

/// The key of an object for backoff and logs: `NAMESPACE/NAME`, or `NAME` when cluster-scoped.
pub fn key<K: Resource>(obj: &K) -> String {
    let name = obj.meta().name.as_deref().unwrap_or_default();
    match obj.meta().namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

/// An error and its sources on one line, outermost first: `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn keys_are_namespace_slash_name_or_name() {
        let namespaced = ConfigMap {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        assert_eq!(key(&namespaced), "default/web");
        let cluster = Namespace {
            metadata: ObjectMeta {
                name: Some("prod".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        assert_eq!(key(&cluster), "prod");
        assert_eq!(key(&ConfigMap::default()), "");
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn chains_read_outermost_first() {
        let error = Layer(
            "applying",
            Some(Box::new(Layer(
                "creating link pv1",
                Some(Box::new(Layer("File exists", None))),
            ))),
        );
        assert_eq!(
            error_chain(&error),
            "applying: creating link pv1: File exists"
        );
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }
}
