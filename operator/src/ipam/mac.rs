//! MAC addresses: Docker's derivation from the IPv4 address, formatting and parsing.
//!
//! Docker gives each endpoint `02:42:` followed by the four bytes of its IPv4 address. Deriving it
//! (rather than letting the kernel pick a random one) means an address that moves to a new
//! endpoint keeps its MAC, so neighbours' ARP caches stay right, and a user reading `ip link`
//! can tell which address an interface carries. `02` is a locally administered unicast prefix,
//! so it cannot clash with a vendor's address.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {text:?}: expected six two-digit hex bytes separated by ':' or '-' (e.g. 02:42:ac:11:00:02)"
)]
pub struct MacParseError {
    /// The text as given.
    pub text: String,
}

impl MacAddr {
    /// Docker's MAC for an endpoint with IPv4 address `ip`: `02:42:` and the address's bytes.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Self([0x02, 0x42, a, b, c, d])
    }

    /// The MAC of an endpoint with only an IPv6 address: `02:42:` and the address's last four
    /// bytes (unique on the network as long as its addresses differ there, as the pool's do).
    pub fn from_ipv6(ip: std::net::Ipv6Addr) -> Self {
        let o = ip.octets();
        Self([0x02, 0x42, o[12], o[13], o[14], o[15]])
    }

    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// True for a group (multicast or broadcast) address, which no interface may have.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for a locally administered address (as Docker's and Pier's are).
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl From<Ipv4Addr> for MacAddr {
    fn from(ip: Ipv4Addr) -> Self {
        Self::from_ipv4(ip)
    }
}

impl fmt::Display for MacAddr {
    /// Lower-case, colon-separated, as `ip link` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `02:42:AC:11:00:02` or `02-42-ac-11-00-02` (hex in either case, one separator
    /// kind throughout).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            text: text.to_owned(),
        };
        let sep = if text.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut parts = text.split(sep);
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn derives_dockers_mac() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(172, 18, 0, 10));
        assert_eq!(mac.to_string(), "02:42:ac:12:00:0a");
        assert!(mac.is_local());
        assert!(!mac.is_multicast());
    }

    #[test]
    fn parses_both_separators_and_cases() {
        let want = MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!("02:42:ac:11:00:02".parse(), Ok(want));
        assert_eq!("02:42:AC:11:00:02".parse(), Ok(want));
        assert_eq!("02-42-ac-11-00-02".parse(), Ok(want));
        assert!(
            "01:00:5e:00:00:01"
                .parse::<MacAddr>()
                .map(|m| m.is_multicast())
                .unwrap_or(false)
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "02:42:ac:11:00:2",
            "02:42:ac:11:00:002",
            "02:42:ac:11:00:0g",
            "02:42-ac:11:00:02",
            "+2:42:ac:11:00:02",
            "0242ac110002",
        ] {
            let err = bad.parse::<MacAddr>().expect_err(bad);
            assert!(err.to_string().contains("invalid MAC address"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 6]>()) {
            let mac = MacAddr(bytes);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
        }

        #[test]
        fn derived_macs_are_distinct_per_address(a in any::<u32>(), b in any::<u32>()) {
            prop_assume!(a != b);
            prop_assert_ne!(MacAddr::from_ipv4(Ipv4Addr::from(a)), MacAddr::from_ipv4(Ipv4Addr::from(b)));
        }
    }
}
