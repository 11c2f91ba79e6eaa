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
pub const REG32_02: Register = 10;
/// Where a second 16-byte field of a concatenation starts (after an interface name in 00..03).
pub const REG32_04: Register = 12;

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
/// `RTN_LOCAL`: what `fib daddr type` yields for an address of this host.
pub const RTN_LOCAL: u32 = 2;
/// `IPS_DST_NAT`: the conntrack status bit of a connection whose destination was rewritten.
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `ct state` bits (`NF_CT_STATE_BIT`): a packet of a connection seen in both directions, and
/// one related to a known connection (an ICMP error, an FTP data channel).
pub const CT_STATE_ESTABLISHED: u32 = 1 << 1;
pub const CT_STATE_RELATED: u32 = 1 << 2;

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
