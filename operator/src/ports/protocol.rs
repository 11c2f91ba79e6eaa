//! The vocabulary of host ports: protocols and port ranges.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

pub use pier_crds::portpublish::{Protocol, ProtocolParseError};

/// An inclusive range of ports, e.g. where automatic host ports come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// Port 0 is not a port, and `first` must not be past `last`.
    #[error("port range {first}-{last} is invalid: it must be within 1-65535 and not empty")]
    Invalid {
        /// The first port given.
        first: u16,
        /// The last port given.
        last: u16,
    },
    /// The text is not `FIRST-LAST`.
    #[error("cannot parse port range {0:?} (expected e.g. 32768-60999)")]
    Parse(String),
}

/// Linux's default ephemeral port range (`net.ipv4.ip_local_port_range`), which is also where
/// Docker picks `-P` ports from: using it keeps Pier's choices where users expect them.
pub const DEFAULT_AUTO_PORTS: PortRange = PortRange {
    first: 32768,
    last: 60999,
};

impl PortRange {
    /// The ports `first..=last`.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        if first == 0 || first > last {
            return Err(PortRangeError::Invalid { first, last });
        }
        Ok(Self { first, last })
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The last port.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Number of ports.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: a range has at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// As a `RangeInclusive`.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl Default for PortRange {
    fn default() -> Self {
        DEFAULT_AUTO_PORTS
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_err = || PortRangeError::Parse(s.to_owned());
        let (a, b) = s.split_once('-').ok_or_else(parse_err)?;
        let first = a.trim().parse().map_err(|_| parse_err())?;
        let last = b.trim().parse().map_err(|_| parse_err())?;
        PortRange::new(first, last)
    }
}

/// Kubernetes' own host ports (sshd, etcd, the API server, the kubelet, its read-only port,
/// kube-proxy's health port, the controller managers and the scheduler): what the operator
/// refuses to publish unless told otherwise.
pub const KUBERNETES_HOST_PORTS: &str = "22,2379-2380,6443,10250,10255-10259";

/// A set of ports given as ports and ranges, e.g. `22,2379-2380,6443` (empty: no port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    ranges: Vec<PortRange>,
}

impl PortSet {
    /// The empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(port))
    }

    /// Whether the set has no port.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every port of the set (a port in two ranges comes twice).
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(PortRange::ports)
    }
}

impl fmt::Display for PortSet {
    /// `22,2379-2380,6443`: what it was parsed from, normalized.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if range.first() == range.last() {
                write!(f, "{}", range.first())?;
            } else {
                write!(f, "{range}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for PortSet {
    type Err = PortRangeError;

    /// Comma-separated ports and `FIRST-LAST` ranges; blanks around items are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let range = if item.contains('-') {
                item.parse()?
            } else {
                let port = item
                    .parse()
                    .map_err(|_| PortRangeError::Parse(item.to_owned()))?;
                PortRange::new(port, port)?
            };
            ranges.push(range);
        }
        Ok(Self { ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names() {
        assert_eq!("TCP".parse(), Ok(Protocol::Tcp));
        assert_eq!("udp".parse(), Ok(Protocol::Udp));
        assert_eq!("Sctp".parse(), Ok(Protocol::Sctp));
        assert_eq!(Protocol::Tcp.to_string(), "tcp");
        let err = "icmp".parse::<Protocol>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown protocol \"icmp\" (expected TCP, UDP or SCTP)"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(PortRange::default().len(), 28_232);
        assert_eq!("32768-60999".parse(), Ok(DEFAULT_AUTO_PORTS));
        assert_eq!(DEFAULT_AUTO_PORTS.to_string(), "32768-60999");
        assert!(DEFAULT_AUTO_PORTS.contains(32768) && DEFAULT_AUTO_PORTS.contains(60999));
        assert!(!DEFAULT_AUTO_PORTS.contains(61000));
        assert_eq!(
            PortRange::new(0, 10),
            Err(PortRangeError::Invalid { first: 0, last: 10 })
        );
        assert_eq!(
            PortRange::new(10, 9),
            Err(PortRangeError::Invalid { first: 10, last: 9 })
        );
        assert!(PortRange::new(1, 65535).is_ok());
        assert!(matches!(
            "100".parse::<PortRange>(),
            Err(PortRangeError::Parse(_))
        ));
        assert!(matches!(
            "1-70000".parse::<PortRange>(),
            Err(PortRangeError::Parse(_))
        ));
    }

    #[test]
    fn port_sets() {
        let kubernetes: PortSet = KUBERNETES_HOST_PORTS.parse().expect("the default parses");
        for port in [22, 2379, 2380, 6443, 10250, 10255, 10259] {
            assert!(kubernetes.contains(port), "{port}");
        }
        for port in [21, 23, 2381, 8080, 10251, 10254, 10260] {
            assert!(!kubernetes.contains(port), "{port}");
        }
        assert_eq!(kubernetes.to_string(), KUBERNETES_HOST_PORTS);
        assert_eq!(kubernetes.ports().count(), 10);
        let empty: PortSet = "".parse().expect("empty");
        assert!(empty.is_empty() && !empty.contains(22));
        assert_eq!(
            " 22 , 80-81 ".parse::<PortSet>().map(|s| s.to_string()),
            Ok("22,80-81".into())
        );
        assert!(matches!(
            "22,ssh".parse::<PortSet>(),
            Err(PortRangeError::Parse(_))
        ));
        assert!(matches!(
            "0".parse::<PortSet>(),
            Err(PortRangeError::Invalid { .. })
        ));
        assert!(matches!(
            "90-80".parse::<PortSet>(),
            Err(PortRangeError::Invalid { .. })
        ));
    }
}
