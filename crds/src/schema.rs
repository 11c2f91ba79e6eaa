//! Schema fragments shared by the resources: the patterns the API server checks before any
//! controller sees an object.

/// A dotted-quad IPv4 address, each octet 0-255 without leading zeros.
pub(crate) const IPV4: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$";

/// An IPv4 CIDR, `a.b.c.d/len` with len 0-32.
pub(crate) const IPV4_CIDR: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$";

/// A MAC address, six colon-separated hex octets.
pub(crate) const MAC: &str = r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$";

/// A Linux interface name: at most 15 bytes (IFNAMSIZ - 1), no `/`, `:` or whitespace.
pub(crate) const INTERFACE: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$";

/// A DNS label (RFC 1123), used for aliases.
pub(crate) const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A Kubernetes object name (RFC 1123 subdomain).
pub(crate) const OBJECT_NAME: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The characters of an IPv6 address (what CEL's `isIP(self) && ip(self).family() == 6` then
/// checks in full): hex digits and colons, and dots for an embedded IPv4 address.
pub(crate) const IPV6_CHARS: &str = r"^[0-9a-fA-F:.]+$";

/// The characters of an IPv6 CIDR (checked in full by `isCIDR` and `family() == 6` in CEL).
pub(crate) const IPV6_CIDR_CHARS: &str = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$";

/// An IPv4 or IPv6 address, as a PortPublish's `hostIP` takes (`0.0.0.0`, `::`, `::1`, ...).
pub(crate) const IP_CHARS: &str = r"^[0-9a-fA-F:.]+$";
