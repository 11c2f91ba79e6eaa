//! Pods attached by annotation, as with Multus: the annotation's format, the Endpoints made from
//! it, and the Pod condition Pier sets.
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     pier.dev/networks: "workshop-tage, ch-open@net5"
//!     # or: '[{"network": "workshop-tage", "aliases": ["web"], "interface": "net1"}]'
//! spec:
//!   readinessGates: [{conditionType: pier.dev/attached}]
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};

/// The Pod annotation listing the Networks the Pod joins.
pub const NETWORKS_ANNOTATION: &str = "pier.dev/networks";

/// The Pod condition Pier sets on a Pod it attaches: `True` once every Endpoint of the Pod is
/// attached. A Pod listing it in `spec.readinessGates` is Ready only then.
pub const ATTACHED_CONDITION: &str = "pier.dev/attached";

/// The label on an Endpoint made from a Pod's annotation: the Pod's name.
pub const POD_LABEL: &str = "pier.dev/pod";

/// The reasons of the [`ATTACHED_CONDITION`].
pub mod reason {
    /// Every Endpoint of the Pod is attached.
    pub const ATTACHED: &str = "Attached";
    /// An Endpoint of the Pod is not attached yet (or does not exist yet).
    pub const ATTACHING: &str = "Attaching";
    /// The annotation cannot be read; nothing of it was applied.
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    /// The Pod waits for Pier (its readiness gate) but no Endpoint attaches it.
    pub const NO_ENDPOINTS: &str = "NoEndpoints";
}

/// One entry of the annotation: the fields of an Endpoint's spec that a Pod may choose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodNetwork {
    /// The Network to join.
    pub network: String,
    /// The interface in the Pod (`net1`, `net2`, ... by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// A static IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    /// A static IPv6 address (on a network with IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// A static MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Extra DNS names on the network (shared by replicas: the name resolves to all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
}

/// Why an annotation cannot be read. The fields' values are checked by the Endpoint schema when
/// the Endpoints are created; this is about the annotation's shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    /// A `[`... value that is not a JSON list of entries.
    #[error(
        "{NETWORKS_ANNOTATION} is not a JSON list of {{\"network\": ..., \"interface\", \"ipv4Address\", \"ipv6Address\", \"macAddress\", \"aliases\"}}: {0}"
    )]
    Json(String),
    /// An entry names no network.
    #[error("{NETWORKS_ANNOTATION} has an entry without a network name")]
    NoNetwork,
    /// `namespace/name`: Networks are cluster-scoped.
    #[error(
        "{NETWORKS_ANNOTATION}: {0:?} names a namespace, but Networks are cluster-scoped: write the network's name alone"
    )]
    Namespaced(String),
    /// A network listed twice (a Pod joins a network once, like a container).
    #[error("{NETWORKS_ANNOTATION} lists network {0:?} twice")]
    DuplicateNetwork(String),
    /// An interface name listed twice.
    #[error("{NETWORKS_ANNOTATION} gives interface {0:?} to two networks")]
    DuplicateInterface(String),
}

/// Reads the annotation: a JSON list of [`PodNetwork`]s, or a comma-separated list of network
/// names, each optionally `@INTERFACE` (Multus's short form). Empty: no networks.
pub fn parse_networks(text: &str) -> Result<Vec<PodNetwork>, AnnotationError> {
    let text = text.trim();
    let entries = if text.starts_with('[') {
        serde_json::from_str::<Vec<PodNetwork>>(text)
            .map_err(|e| AnnotationError::Json(e.to_string()))?
    } else {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (network, interface) = match item.split_once('@') {
                    Some((network, interface)) => (network.trim(), Some(interface.trim())),
                    None => (item, None),
                };
                PodNetwork {
                    network: network.to_owned(),
                    interface: interface.map(str::to_owned),
                    ..PodNetwork::default()
                }
            })
            .collect()
    };
    check(&entries)?;
    Ok(entries)
}

fn check(entries: &[PodNetwork]) -> Result<(), AnnotationError> {
    let mut networks = std::collections::HashSet::new();
    let mut interfaces = std::collections::HashSet::new();
    for entry in entries {
        if entry.network.trim().is_empty() {
            return Err(AnnotationError::NoNetwork);
        }
        if entry.network.contains('/') {
            return Err(AnnotationError::Namespaced(entry.network.clone()));
        }
        if !networks.insert(entry.network.as_str()) {
            return Err(AnnotationError::DuplicateNetwork(entry.network.clone()));
        }
        if let Some(interface) = &entry.interface
            && !interfaces.insert(interface.as_str())
        {
            return Err(AnnotationError::DuplicateInterface(interface.clone()));
        }
    }
    Ok(())
}

/// The longest Kubernetes object name.
const MAX_NAME: usize = 253;

/// The Endpoint made for Pod `pod` on `network`: `POD-NETWORK`, shortened with a hash of the whole
/// when that is longer than an object name may be.
pub fn endpoint_name(pod: &str, network: &str) -> String {
    let name = format!("{pod}-{network}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = format!("{:08x}", crate::names::fnv1a32(name.as_bytes()));
    // Object names are ASCII (RFC 1123), so any byte index is a char boundary; a cut that ends
    // in `-` or `.` would not be a valid name.
    let keep = name[..MAX_NAME - hash.len() - 1].trim_end_matches(['-', '.']);
    format!("{keep}-{hash}")
}

/// The Pod an Endpoint was made for from the Pod's annotation: its controller owner reference,
/// when that is a Pod. Such an Endpoint lives and dies with that Pod (that uid).
pub fn made_for(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "Pod" && r.api_version == "v1")
}

/// The owner reference an Endpoint made for Pod `name` (with `uid`) carries: the Pod controls it,
/// so the garbage collector deletes it with the Pod. It does not block the Pod's deletion (that
/// would need the right to set finalizers on Pods).
pub fn owner_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(network: &str, interface: Option<&str>) -> PodNetwork {
        PodNetwork {
            network: network.into(),
            interface: interface.map(Into::into),
            ..PodNetwork::default()
        }
    }

    #[test]
    fn the_text_form_lists_names_and_optional_interfaces() {
        assert_eq!(
            parse_networks(" workshop-tage, ch-open@net5 ,,"),
            Ok(vec![
                named("workshop-tage", None),
                named("ch-open", Some("net5"))
            ])
        );
        assert_eq!(parse_networks(""), Ok(vec![]));
        assert_eq!(parse_networks("  "), Ok(vec![]));
    }

    #[test]
    fn the_json_form_takes_the_endpoint_fields() {
        let parsed = parse_networks(
            r#"[{"network": "workshop-tage", "aliases": ["web"], "interface": "net1",
                 "ipv4Address": "172.18.0.10", "macAddress": "02:42:ac:12:00:0a"}]"#,
        );
        assert_eq!(
            parsed,
            Ok(vec![PodNetwork {
                network: "workshop-tage".into(),
                interface: Some("net1".into()),
                ipv4_address: Some("172.18.0.10".into()),
                ipv6_address: None,
                mac_address: Some("02:42:ac:12:00:0a".into()),
                aliases: Some(vec!["web".into()]),
            }])
        );
    }

    #[test]
    fn bad_annotations_say_what_is_wrong() {
        let typo = parse_networks(r#"[{"network": "a", "alias": ["web"]}]"#);
        assert!(
            matches!(&typo, Err(AnnotationError::Json(m)) if m.contains("unknown field `alias`")),
            "{typo:?}"
        );
        assert!(matches!(
            parse_networks(r#"[{"aliases": []}]"#),
            Err(AnnotationError::Json(_))
        ));
        assert!(matches!(
            parse_networks("[not json"),
            Err(AnnotationError::Json(_))
        ));
        assert_eq!(parse_networks("@net1"), Err(AnnotationError::NoNetwork));
        assert_eq!(
            parse_networks("default/workshop-tage"),
            Err(AnnotationError::Namespaced("default/workshop-tage".into()))
        );
        assert_eq!(
            parse_networks("a, b, a"),
            Err(AnnotationError::DuplicateNetwork("a".into()))
        );
        assert_eq!(
            parse_networks("a@net1, b@net1"),
            Err(AnnotationError::DuplicateInterface("net1".into()))
        );
        let message = parse_networks("a, a").expect_err("a duplicate").to_string();
        assert_eq!(message, "pier.dev/networks lists network \"a\" twice");
    }

    #[test]
    fn endpoint_names_fit_an_object_name() {
        assert_eq!(
            endpoint_name("web-7d4b9-abcde", "workshop-tage"),
            "web-7d4b9-abcde-workshop-tage"
        );
        let long_pod = "p".repeat(250);
        let name = endpoint_name(&long_pod, "workshop-tage");
        assert_eq!(name.len(), MAX_NAME);
        assert_ne!(
            name,
            endpoint_name(&long_pod, "ch-open"),
            "the hash keeps them apart"
        );
        // A cut right after a dot drops the dot.
        let dotted = format!("{}.{}", "a".repeat(243), "b".repeat(20));
        let name = endpoint_name(&dotted, "n");
        assert!(!name.contains(".-"), "{name}");
        assert_eq!(name.len(), MAX_NAME - 1);
    }
}
