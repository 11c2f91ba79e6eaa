//! Table `ip6 pier`: the node's `[::1]:hostPort` connections (see the docs of `render.rs` for
//! why IPv6's loopback needs a table of its own family).

use std::net::Ipv6Addr;

use crate::state::Protocol;

use super::super::expr::{
    Checksum, CmpOp, CtOriginal, Expr, IPS_SRC_NAT, MetaKey, PayloadBase, REG_1, REG_2, Verdict,
};
use super::{
    ChainKind, ChainSpec, Hook, IP6_DADDR_OFFSET, IP6_SADDR_OFFSET, RuleSpec, l4proto, meta,
};

/// The chain of table `ip6 pier` (same name as table `inet pier`, another family). It runs in
/// `prerouting` after NAT (-100), so conntrack has already turned the destination back into `::1`.
pub const LOOPBACK6_CHAIN: &str = "loopback6";
pub const LOOPBACK6_PRIORITY: i32 = -90;

/// `lo`'s interface index: the kernel gives the loopback device index 1 in every namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// What `nft list` prints for each rule of table `ip6 pier`, by transport protocol.
pub const LOOPBACK6_RULES: [&str; 2] = [
    "iifname \"pier-*\" ip6 daddr ::1 ct direction reply ct status snat meta l4proto tcp ip6 saddr set ct original ip6 daddr tcp sport set ct original proto-dst dup to ::1 device \"lo\" drop",
    "iifname \"pier-*\" ip6 daddr ::1 ct direction reply ct status snat meta l4proto udp ip6 saddr set ct original ip6 daddr udp sport set ct original proto-dst dup to ::1 device \"lo\" drop",
];

/// The chain of table `ip6 pier`: answers to the node's `[::1]:hostPort` connections, which
/// conntrack has just given the destination `::1` back, are handed to `lo` (module docs).
///
/// Only these: the destination is `::1` on a Pier bridge, the packet is a reply, and its
/// connection had its source rewritten (the `masquerade-loopback6` of a connection from `::1`).
/// A packet a container sends to `::1` starts a connection of its own (no source NAT), is left
/// alone here and dropped by the kernel like any `::1` packet from outside `lo`: containers never
/// reach the node's loopback-only services. TCP and UDP: their ports and checksums are written
/// here; SCTP's checksum is not, so `[::1]` is not published for SCTP.
pub(super) fn chain() -> ChainSpec {
    let rule =
        |id: &'static str, text: &'static str, protocol: Protocol, checksum_offset| RuleSpec {
            id,
            text,
            exprs: reply(l4proto(protocol), checksum_offset),
        };
    ChainSpec {
        name: LOOPBACK6_CHAIN,
        kind: ChainKind::Filter,
        hook: Hook::Prerouting,
        priority: LOOPBACK6_PRIORITY,
        rules: vec![
            rule("loopback6-tcp", LOOPBACK6_RULES[0], Protocol::Tcp, 16),
            rule("loopback6-udp", LOOPBACK6_RULES[1], Protocol::Udp, 6),
        ],
    }
}

/// The bytecode of one rule of [`chain`], for `protocol` whose checksum is at
/// `checksum_offset` of its header.
fn reply(protocol: u8, checksum_offset: u32) -> Vec<Expr> {
    let mut exprs = answer_to_loopback(protocol);
    exprs.extend(restore_source(checksum_offset));
    exprs.extend(copy_to_lo());
    exprs
}

/// `iifname "pier-*" ip6 daddr ::1 ct direction reply ct status snat meta l4proto PROTOCOL`.
fn answer_to_loopback(protocol: u8) -> Vec<Expr> {
    let cmp = |op, data| Expr::Cmp {
        op,
        sreg: REG_1,
        data,
    };
    vec![
        meta(MetaKey::IifName, REG_1),
        cmp(
            CmpOp::Eq,
            pier_crds::names::BRIDGE_PREFIX.as_bytes().to_vec(),
        ),
        Expr::Payload {
            base: PayloadBase::Network,
            offset: IP6_DADDR_OFFSET,
            len: 16,
            dreg: REG_1,
        },
        cmp(CmpOp::Eq, Ipv6Addr::LOCALHOST.octets().to_vec()),
        Expr::CtDirection { dreg: REG_1 },
        // IP_CT_DIR_REPLY
        cmp(CmpOp::Eq, vec![1]),
        Expr::CtStatus { dreg: REG_1 },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: IPS_SRC_NAT.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(CmpOp::Neq, vec![0; 4]),
        meta(MetaKey::L4Proto, REG_1),
        cmp(CmpOp::Eq, vec![protocol]),
    ]
}

/// `ip6 saddr set ct original ip6 daddr PROTOCOL sport set ct original proto-dst`: the source
/// the client connected to, the published address and port (conntrack would write them only
/// after the route lookup that drops the packet), checksums fixed.
fn restore_source(checksum_offset: u32) -> [Expr; 4] {
    [
        Expr::CtOriginal {
            key: CtOriginal::DaddrIp6,
            dreg: REG_1,
        },
        Expr::PayloadWrite {
            base: PayloadBase::Network,
            offset: IP6_SADDR_OFFSET,
            len: 16,
            sreg: REG_1,
            checksum: Checksum::PseudoHeader,
        },
        Expr::CtOriginal {
            key: CtOriginal::ProtoDst,
            dreg: REG_1,
        },
        Expr::PayloadWrite {
            base: PayloadBase::Transport,
            offset: 0,
            len: 2,
            sreg: REG_1,
            checksum: Checksum::Inet {
                offset: checksum_offset,
            },
        },
    ]
}

/// `dup to ::1 device "lo" drop`: a copy leaves by `lo` and arrives there, the packet itself
/// goes no further.
fn copy_to_lo() -> [Expr; 4] {
    [
        Expr::Immediate {
            dreg: REG_1,
            data: Ipv6Addr::LOCALHOST.octets().to_vec(),
        },
        Expr::Immediate {
            dreg: REG_2,
            data: LOOPBACK_IFINDEX.to_ne_bytes().to_vec(),
        },
        Expr::Dup6 {
            addr: REG_1,
            dev: REG_2,
        },
        Expr::Verdict(Verdict::Drop),
    ]
}
