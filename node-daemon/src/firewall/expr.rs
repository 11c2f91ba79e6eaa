//! nftables bytecode as plain data.
//!
//! A rule is a list of these expressions, exactly as the kernel evaluates them. Keeping them as
//! data (instead of building libnftnl objects right away) keeps rendering pure and testable; only
//! `sys.rs` turns them into `nftnl_expr`s. Numbers are the kernel's uapi constants
//! (`linux/netfilter/nf_tables.h`), repeated here so this module needs no FFI crate.

/// A register of the nftables VM. Single values use `REG_1` (16 bytes); concatenations use the
/// 4-byte registers `REG32_00..` so each field starts on its own 4-byte slot, which is the layout
/// the kernel expects for set keys built from several fields.
pub type Register = u32;

/// The verdict register.
pub const REG_VERDICT: Register = 0;
/// The first 16-byte data register (same storage as `REG32_00..REG32_03`).
pub const REG_1: Register = 1;
/// 4-byte registers, `NFT_REG32_00 + n`.
pub const REG32_00: Register = 8;
pub const REG32_01: Register = 9;
/// Where a field after a 16-byte one (an interface name, an IPv6 address in `00..03`) starts.
pub const REG32_04: Register = 12;
/// The second 16-byte register (same storage as `REG32_04..REG32_07`).
pub const REG_2: Register = 2;

/// `enum nft_meta_keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

/// `enum nft_payload_bases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

/// `enum nft_cmp_ops` (the two we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// A verdict (`NF_DROP`, `NF_ACCEPT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

/// `NFPROTO_IPV4`: the value of `meta nfproto` for IPv4 and the family of an IPv4 NAT.
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6`: the same for IPv6.
pub const NFPROTO_IPV6: u8 = 10;
/// `RTN_LOCAL`: what `fib daddr type` yields for an address of this host.
pub const RTN_LOCAL: u32 = 2;
/// `IPS_DST_NAT`: the conntrack status bit of a connection whose destination was rewritten.
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `IPS_SRC_NAT`: the same for a rewritten source (masquerade).
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// `ct state` bits (`NF_CT_STATE_BIT`): a packet of a connection seen in both directions, and
/// one related to a known connection (an ICMP error, an FTP data channel).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;

/// What `ct original ...` loads: a field of the connection's original tuple (`enum nft_ct_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtOriginal {
    /// `ct original ip6 daddr` (`NFT_CT_DST_IP6`).
    DaddrIp6 = 22,
    /// `ct original proto-dst` (`NFT_CT_PROTO_DST`).
    ProtoDst = 12,
}

/// How a payload write keeps checksums right (`enum nft_payload_csum_types` and flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// An address of the IPv6 header: no header checksum, but the TCP/UDP checksum covers it
    /// through the pseudo-header (`NFT_PAYLOAD_L4CSUM_PSEUDOHDR`).
    PseudoHeader,
    /// A field the internet checksum at this offset of the same header covers
    /// (`NFT_PAYLOAD_CSUM_INET`): 16 for TCP, 6 for UDP.
    Inet { offset: u32 },
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta KEY` into `dreg`.
    Meta { key: MetaKey, dreg: Register },
    /// `len` bytes at `offset` of the header at `base` into `dreg`.
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Register,
    },
    /// Compares `sreg` with `data`; a mismatch ends the rule.
    Cmp {
        op: CmpOp,
        sreg: Register,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        sreg: Register,
        dreg: Register,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Looks `sreg` up in the named set; with `dreg`, a map lookup that loads the value;
    /// `invert` matches when the key is absent.
    Lookup {
        set: &'static str,
        sreg: Register,
        dreg: Option<Register>,
        invert: bool,
    },
    /// `fib daddr type` (`NFT_FIB_RESULT_ADDRTYPE` with `NFTA_FIB_F_DADDR`) into `dreg`.
    FibDaddrType { dreg: Register },
    /// `ct status` into `dreg`.
    CtStatus { dreg: Register },
    /// `ct state` into `dreg`.
    CtState { dreg: Register },
    /// IPv4 DNAT to the address in `addr` and the port in `port`.
    Dnat { addr: Register, port: Register },
    /// IPv6 DNAT to the address in `addr` (16 bytes) and the port in `port`.
    Dnat6 { addr: Register, port: Register },
    /// `ct direction` into `dreg` (0 original, 1 reply).
    CtDirection { dreg: Register },
    /// A field of the connection's original tuple into `dreg`.
    CtOriginal { key: CtOriginal, dreg: Register },
    /// Writes `len` bytes from `sreg` at `offset` of the header at `base`, fixing `checksum`.
    PayloadWrite {
        base: PayloadBase,
        offset: u32,
        len: u32,
        sreg: Register,
        checksum: Checksum,
    },
    /// Loads constant `data` into `dreg`.
    Immediate { dreg: Register, data: Vec<u8> },
    /// Sends a copy of the packet to the IPv6 address in `addr` through the interface whose
    /// index is in `dev` (`dup`, ip6 tables only); the copy is not tracked by conntrack.
    Dup6 { addr: Register, dev: Register },
    /// Source NAT to the address of the outgoing interface.
    Masquerade,
    /// Ends evaluation of this chain with a verdict.
    Verdict(Verdict),
}

impl Expr {
    /// `meta nfproto ipv4`: the dependency every IPv4 header match needs in an `inet` table.
    pub fn is_ipv4() -> [Expr; 2] {
        [
            Expr::Meta {
                key: MetaKey::NfProto,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: vec![NFPROTO_IPV4],
            },
        ]
    }

    /// `meta nfproto ipv6`.
    pub fn is_ipv6() -> [Expr; 2] {
        [
            Expr::Meta {
                key: MetaKey::NfProto,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: vec![NFPROTO_IPV6],
            },
        ]
    }

    /// `meta l4proto PROTOCOL th dport PORT` (nft prints it as e.g. `udp dport 53`).
    pub fn l4_dport(protocol: u8, port: u16) -> [Expr; 4] {
        [
            Expr::Meta {
                key: MetaKey::L4Proto,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: vec![protocol],
            },
            Expr::Payload {
                base: PayloadBase::Transport,
                offset: 2,
                len: 2,
                dreg: REG_1,
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: port.to_be_bytes().to_vec(),
            },
        ]
    }
}
