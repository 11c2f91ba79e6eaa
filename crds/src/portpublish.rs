//! `PortPublish`: host ports forwarded to an Endpoint, like `docker run -p` and `-P`.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::Condition;

/// The desired published ports of one Endpoint.
#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "pier.dev",
    version = "v1alpha1",
    kind = "PortPublish",
    plural = "portpublishes",
    singular = "portpublish",
    namespaced,
    shortname = "ppub",
    category = "pier",
    status = "PortPublishStatus",
    doc = "A PortPublish forwards ports of the Endpoint's node to the Endpoint, like `docker run -p 8000:80` (fixed host port) or `-P` (allocated host port). Type `kubectl get ppub` or `portpublish.pier.dev`.",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        description = "The Endpoint the ports lead to"
    ),
    printcolumn(
        name = "Ports",
        type_ = "string",
        json_path = ".status.summary",
        description = "hostIP:hostPort->containerPort/protocol, as docker ps shows"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.node",
        description = "The node whose ports are published"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the ports are allocated and live on their node"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why not ready: the operator's reason (such as PortConflict) or the node's (such as PortInUseOnNode), whichever failed first"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.endpoint",
    selectable = ".status.node"
)]
#[serde(rename_all = "camelCase")]
pub struct PortPublishSpec {
    /// The Endpoint (in this namespace) the ports lead to.
    #[schemars(length(min = 1, max = 253), pattern(crate::schema::OBJECT_NAME))]
    pub endpoint: String,
    /// The ports to publish.
    #[schemars(length(min = 1, max = 1024))]
    pub ports: Vec<PortSpec>,
}

/// One published port: `[hostIP:][hostPort:]containerPort[/protocol]`.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// The port the workload listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
    /// The port on the node. Allocated from the ephemeral range (32768-60999) when absent, like
    /// `docker run -P` or `-p 80`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub host_port: Option<i32>,
    /// TCP (default), UDP or SCTP.
    #[serde(default)]
    pub protocol: Protocol,
    /// The node address to bind (`-p 127.0.0.1:8000:80`, `-p [::1]:8000:80`): `0.0.0.0` every
    /// IPv4 address, `::` every IPv6 one. Absent: every address of both families the Endpoint
    /// has (Docker's default), the same host port on each.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 39), pattern(crate::schema::IP_CHARS))]
    #[x_kube(validation = Rule::new("isIP(self)").message("hostIP must be an IPv4 or IPv6 address"))]
    pub host_ip: Option<String>,
}

/// A transport protocol.
#[derive(
    JsonSchema,
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Lower case, as `docker ps` prints it (`80/tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected TCP, UDP or SCTP)")]
pub struct ProtocolParseError(pub String);

impl std::str::FromStr for Protocol {
    type Err = ProtocolParseError;

    /// Case-insensitive: Kubernetes writes `TCP`, Docker `tcp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ProtocolParseError(s.to_owned()))
    }
}

/// A published port in `docker ps` form: `0.0.0.0:32772->80/tcp`, `[::]:32772->80/tcp`.
pub fn docker_form(
    host_ip: impl std::fmt::Display,
    host_port: impl std::fmt::Display,
    container_port: impl std::fmt::Display,
    protocol: Protocol,
) -> String {
    let host_ip = host_ip.to_string();
    if host_ip.contains(':') {
        format!("[{host_ip}]:{host_port}->{container_port}/{protocol}")
    } else {
        format!("{host_ip}:{host_port}->{container_port}/{protocol}")
    }
}

/// What the operator allocated and what the node daemon made of it.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPublishStatus {
    /// The node whose ports are published (the Endpoint's node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node's addresses, to reach published ports from elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_addresses: Vec<String>,
    /// The ports as allocated, one per spec port, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPortStatus>,
    /// The ports in `docker ps` form: `0.0.0.0:32772->80/tcp, 127.0.0.1:8443->443/tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The `.metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The latest observations: `Allocated` (operator; reasons such as `PortConflict`,
    /// `EndpointNotFound`, `InternalNetwork`), `Published` (node daemon: live on the node;
    /// reasons such as `PortInUseOnNode`) and `Ready`: both, or the reason of whichever failed
    /// first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One allocated port.
#[derive(KubeSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPortStatus {
    /// The port the workload listens on.
    pub container_port: i32,
    /// The protocol.
    pub protocol: Protocol,
    /// The node address bound (`0.0.0.0`: every address).
    #[serde(rename = "hostIP")]
    pub host_ip: String,
    /// The allocated port on the node.
    pub host_port: i32,
}

impl PublishedPortStatus {
    /// `0.0.0.0:32772->80/tcp`, as the PORTS column of `docker ps`.
    pub fn docker_form(&self) -> String {
        docker_form(
            &self.host_ip,
            self.host_port,
            self.container_port,
            self.protocol,
        )
    }
}
