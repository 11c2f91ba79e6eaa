//! The kernel's primitives Pier builds on. Nothing here knows Pier's desired state: callers say
//! which namespace, link or port, these modules do it and report the kernel's answer.

pub mod host_ports;
pub mod hostnet;
pub mod named_netns;
pub mod netlink;
pub mod netns;
pub mod node_lock;
pub mod podns;
pub mod sysctl;
pub mod tunnel;
