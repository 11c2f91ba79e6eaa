//! The few libnftnl calls the safe `nftnl` crate does not wrap: expressions with 4-byte
//! registers, map lookups, `fib`, named sets and maps with concatenated keys, set elements with
//! values and interval flags, and parsing dumps back into plain Rust data.
//!
//! Everything unsafe in the firewall lives here, behind functions and types whose signatures are
//! safe. Pattern used throughout: allocate a libnftnl object, abort on allocation failure (as the
//! `nftnl` crate does: there is no way to continue after a failed small malloc), fill it from
//! owned Rust values, serialise or read it, and free it before returning, so no libnftnl pointer
//! outlives the function that made it.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_void};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use mnl::mnl_sys::libc::{self, nlmsghdr};
use nftnl::nftnl_sys as sys;
use nftnl::{MsgType, NlMsg, Rule, expr::Expression};

use super::expr::{Checksum, Expr, NFPROTO_IPV6};
use super::plan::{KernelChain, KernelRule, KernelSet, KernelTableName};
use super::render::{Element, SetSpec};

/// `NFPROTO_INET`: the family of table `inet pier`.
pub const FAMILY_INET: u16 = 1;
/// `NFPROTO_IPV4`: the family of iptables-nft's tables.
pub const FAMILY_IPV4: u16 = 2;
/// `NFPROTO_IPV6`: the family of ip6tables-nft's tables and of table `ip6 pier`.
pub const FAMILY_IPV6: u16 = 10;
/// `NFPROTO_UNSPEC`: a dump of every family.
const FAMILY_ANY: u16 = 0;

// Netlink and nf_tables message constants (linux/netlink.h, linux/netfilter/nf_tables.h).
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
/// `NFT_SET_ELEM_INTERVAL_END`.
const ELEM_INTERVAL_END: u32 = 1;
/// Values libmnl callbacks return.
const MNL_CB_ERROR: c_int = -1;
const MNL_CB_OK: c_int = 1;

/// Aborts on a null allocation, like the `nftnl` crate (see the module docs).
fn alloc<T>(ptr: *mut T) -> NonNull<T> {
    NonNull::new(ptr).unwrap_or_else(|| std::process::abort())
}

/// Copies a C string owned by libnftnl; `None` for a null pointer.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string valid for the duration of the call.
unsafe fn owned_str(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Copies `len` bytes at `ptr`; empty for a null pointer.
///
/// # Safety
/// `ptr` is null or valid for reads of `len` bytes.
unsafe fn owned_bytes(ptr: *const c_void, len: u32) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: valid for `len` bytes per this function's contract.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) }.to_vec()
}

fn cstring(s: &str) -> CString {
    // Names here are Pier's constants or come from the kernel, which never contain NUL; an empty
    // name is rejected by the kernel with a clear error instead of panicking here.
    CString::new(s).unwrap_or_default()
}

/// An [`Expr`] that the safe `nftnl::Rule::add_expr` accepts.
#[derive(Debug)]
pub struct ExprMsg<'a>(pub &'a Expr);

/// A raw `nftnl_expr` being filled in; only used inside `to_expr`.
struct RawExpr(NonNull<sys::nftnl_expr>);

impl RawExpr {
    fn u32(&self, attr: u32, value: u32) {
        // SAFETY: the expression is live (allocated in `to_expr`, not yet handed to the rule);
        // libnftnl copies the value.
        unsafe { sys::nftnl_expr_set_u32(self.0.as_ptr(), attr as u16, value) }
    }

    fn bytes(&self, attr: u32, value: &[u8]) {
        // SAFETY: as above; `value` is valid for its length and libnftnl copies it (values here
        // are at most 16 bytes, far below u32::MAX).
        unsafe {
            sys::nftnl_expr_set(
                self.0.as_ptr(),
                attr as u16,
                value.as_ptr().cast(),
                value.len() as u32,
            )
        };
    }

    fn u8(&self, attr: u32, value: u8) {
        // SAFETY: as above; libnftnl copies the value.
        unsafe { sys::nftnl_expr_set_u8(self.0.as_ptr(), attr as u16, value) }
    }

    fn str(&self, attr: u32, value: &CStr) {
        // SAFETY: as above; libnftnl duplicates the NUL-terminated string.
        unsafe { sys::nftnl_expr_set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) };
    }
}

impl Expression for ExprMsg<'_> {
    fn to_expr(&self, _rule: &Rule<'_>) -> NonNull<sys::nftnl_expr> {
        let name: &CStr = match self.0 {
            Expr::Meta { .. } => c"meta",
            Expr::Payload { .. } | Expr::PayloadWrite { .. } => c"payload",
            Expr::Cmp { .. } => c"cmp",
            Expr::Bitwise { .. } => c"bitwise",
            Expr::Lookup { .. } => c"lookup",
            Expr::FibDaddrType { .. } => c"fib",
            Expr::CtStatus { .. }
            | Expr::CtState { .. }
            | Expr::CtDirection { .. }
            | Expr::CtOriginal { .. } => c"ct",
            Expr::Dnat { .. } | Expr::Dnat6 { .. } => c"nat",
            Expr::Immediate { .. } => c"immediate",
            Expr::Dup6 { .. } => c"dup",
            Expr::Masquerade => c"masq",
            Expr::Verdict(_) => c"immediate",
        };
        // SAFETY: `name` is a NUL-terminated expression name libnftnl knows; ownership of the
        // result passes to the caller (`Rule::add_expr` hands it to the rule, which frees it).
        let raw = RawExpr(alloc(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }));
        match self.0 {
            Expr::Meta { key, dreg } => {
                raw.u32(sys::NFTNL_EXPR_META_KEY, *key as u32);
                raw.u32(sys::NFTNL_EXPR_META_DREG, *dreg);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_BASE, *base as u32);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            }
            Expr::Cmp { op, sreg, data } => {
                raw.u32(sys::NFTNL_EXPR_CMP_SREG, *sreg);
                raw.u32(sys::NFTNL_EXPR_CMP_OP, *op as u32);
                raw.bytes(sys::NFTNL_EXPR_CMP_DATA, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                raw.u32(sys::NFTNL_EXPR_BITWISE_SREG, *sreg);
                raw.u32(sys::NFTNL_EXPR_BITWISE_DREG, *dreg);
                raw.u32(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
                raw.bytes(sys::NFTNL_EXPR_BITWISE_MASK, mask);
                raw.bytes(sys::NFTNL_EXPR_BITWISE_XOR, xor);
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                raw.str(sys::NFTNL_EXPR_LOOKUP_SET, &cstring(set));
                raw.u32(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
                if let Some(dreg) = dreg {
                    raw.u32(sys::NFTNL_EXPR_LOOKUP_DREG, *dreg);
                }
                if *invert {
                    // NFT_LOOKUP_F_INV
                    raw.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, 1);
                }
            }
            Expr::FibDaddrType { dreg } => {
                raw.u32(sys::NFTNL_EXPR_FIB_DREG, *dreg);
                // NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_F_DADDR
                raw.u32(sys::NFTNL_EXPR_FIB_RESULT, 3);
                raw.u32(sys::NFTNL_EXPR_FIB_FLAGS, 2);
            }
            Expr::CtStatus { dreg } => {
                // NFT_CT_STATUS
                raw.u32(sys::NFTNL_EXPR_CT_KEY, 2);
                raw.u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
            }
            Expr::CtState { dreg } => {
                // NFT_CT_STATE
                raw.u32(sys::NFTNL_EXPR_CT_KEY, 0);
                raw.u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
            }
            Expr::Dnat { addr, port } => {
                // NFT_NAT_DNAT, NFPROTO_IPV4
                raw.u32(sys::NFTNL_EXPR_NAT_TYPE, 1);
                raw.u32(sys::NFTNL_EXPR_NAT_FAMILY, 2);
                raw.u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *addr);
                raw.u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *port);
            }
            Expr::Dnat6 { addr, port } => {
                // NFT_NAT_DNAT, NFPROTO_IPV6
                raw.u32(sys::NFTNL_EXPR_NAT_TYPE, 1);
                raw.u32(sys::NFTNL_EXPR_NAT_FAMILY, u32::from(NFPROTO_IPV6));
                raw.u32(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *addr);
                raw.u32(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *port);
            }
            Expr::CtDirection { dreg } => {
                // NFT_CT_DIRECTION
                raw.u32(sys::NFTNL_EXPR_CT_KEY, 1);
                raw.u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
            }
            Expr::CtOriginal { key, dreg } => {
                raw.u32(sys::NFTNL_EXPR_CT_KEY, *key as u32);
                raw.u32(sys::NFTNL_EXPR_CT_DREG, *dreg);
                // IP_CT_DIR_ORIGINAL
                raw.u8(sys::NFTNL_EXPR_CT_DIR, 0);
            }
            Expr::PayloadWrite {
                base,
                offset,
                len,
                sreg,
                checksum,
            } => {
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_SREG, *sreg);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_BASE, *base as u32);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
                // NFT_PAYLOAD_CSUM_NONE / _INET, NFT_PAYLOAD_L4CSUM_PSEUDOHDR
                let (kind, csum_offset, flags) = match checksum {
                    Checksum::PseudoHeader => (0, 0, 1),
                    Checksum::Inet { offset } => (1, *offset, 0),
                };
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_CSUM_TYPE, kind);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_CSUM_OFFSET, csum_offset);
                raw.u32(sys::NFTNL_EXPR_PAYLOAD_FLAGS, flags);
            }
            Expr::Immediate { dreg, data } => {
                raw.u32(sys::NFTNL_EXPR_IMM_DREG, *dreg);
                raw.bytes(sys::NFTNL_EXPR_IMM_DATA, data);
            }
            Expr::Dup6 { addr, dev } => {
                raw.u32(sys::NFTNL_EXPR_DUP_SREG_ADDR, *addr);
                raw.u32(sys::NFTNL_EXPR_DUP_SREG_DEV, *dev);
            }
            Expr::Masquerade => {}
            Expr::Verdict(verdict) => {
                raw.u32(sys::NFTNL_EXPR_IMM_DREG, super::expr::REG_VERDICT);
                raw.u32(sys::NFTNL_EXPR_IMM_VERDICT, *verdict as u32);
            }
        }
        raw.0
    }
}

/// A named set or map of the table, for `NFT_MSG_NEWSET` (its elements go in [`ElemsMsg`]s).
#[derive(Debug)]
pub struct SetMsg {
    table: CString,
    name: CString,
    id: u32,
    flags: u32,
    key: (u32, u32),
    data: Option<(u32, u32)>,
    userdata: Vec<u8>,
}

impl SetMsg {
    /// `id` must be unique within the batch.
    pub fn new(table: &str, spec: &SetSpec, id: u32) -> Self {
        SetMsg {
            table: cstring(table),
            name: cstring(spec.name),
            id,
            flags: spec.flags(),
            key: (spec.key_type(), spec.key_len()),
            data: spec.data_type_len(),
            userdata: spec.userdata(),
        }
    }
}

/// Fills in a fresh `nftnl_set` with the table and name every set message carries.
fn new_set(table: &CStr, name: &CStr) -> NonNull<sys::nftnl_set> {
    // SAFETY: allocation with no preconditions; the caller frees it.
    let set = alloc(unsafe { sys::nftnl_set_alloc() });
    // SAFETY: `set` is live; libnftnl copies the strings.
    unsafe {
        sys::nftnl_set_set_str(set.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(set.as_ptr(), sys::NFTNL_SET_NAME as u16, name.as_ptr());
        sys::nftnl_set_set_u32(
            set.as_ptr(),
            sys::NFTNL_SET_FAMILY as u16,
            u32::from(FAMILY_INET),
        );
    }
    set
}

// SAFETY: a set definition serialises to a few hundred bytes, far below `nft_nlmsg_maxsize`.
unsafe impl NlMsg for SetMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let set = new_set(&self.table, &self.name);
        let (kind, flags) = match msg_type {
            MsgType::Add => (NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_ACK),
            MsgType::Del => (NFT_MSG_DELSET, NLM_F_ACK),
        };
        // SAFETY: `set` is live until freed at the end; `buf` has room for the largest netlink
        // message per the `NlMsg` contract.
        unsafe {
            let s = set.as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, self.id);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, self.flags);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, self.key.0);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, self.key.1);
            if let Some((data_type, data_len)) = self.data {
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, data_type);
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, data_len);
            }
            if !self.userdata.is_empty() {
                sys::nftnl_set_set_data(
                    s,
                    sys::NFTNL_SET_USERDATA as u16,
                    self.userdata.as_ptr().cast(),
                    self.userdata.len() as u32,
                );
            }
            let header = sys::nftnl_nlmsg_build_hdr(buf.cast(), kind, FAMILY_INET, flags, seq);
            sys::nftnl_set_nlmsg_build_payload(header, s);
            sys::nftnl_set_free(s);
        }
    }
}

/// The most elements put in one message: each takes well under 100 bytes, so this stays far
/// below the 64 KiB a netlink attribute can hold.
pub const ELEMS_PER_MSG: usize = 256;

/// Adds (`MsgType::Add`) or deletes (`MsgType::Del`) up to [`ELEMS_PER_MSG`] elements of a set.
#[derive(Debug)]
pub struct ElemsMsg {
    table: CString,
    set: CString,
    elements: Vec<Element>,
}

impl ElemsMsg {
    /// Callers chunk by [`ELEMS_PER_MSG`]; a longer slice is a bug (debug-asserted) and is cut
    /// rather than overflowing the netlink message.
    pub fn new(table: &str, set: &str, elements: &[Element]) -> Self {
        debug_assert!(elements.len() <= ELEMS_PER_MSG);
        ElemsMsg {
            table: cstring(table),
            set: cstring(set),
            elements: elements.iter().take(ELEMS_PER_MSG).cloned().collect(),
        }
    }
}

// SAFETY: at most ELEMS_PER_MSG elements of at most 32 bytes of key and 20 of value, with their
// attribute headers, stay far below `nft_nlmsg_maxsize`.
unsafe impl NlMsg for ElemsMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let set = new_set(&self.table, &self.set);
        for element in &self.elements {
            // SAFETY: allocation; ownership passes to `set` by `nftnl_set_elem_add` below.
            let elem = alloc(unsafe { sys::nftnl_set_elem_alloc() });
            // SAFETY: `elem` and `set` are live; libnftnl copies key and value bytes.
            unsafe {
                let e = elem.as_ptr();
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    element.key.as_ptr().cast(),
                    element.key.len() as u32,
                );
                if element.interval_end {
                    sys::nftnl_set_elem_set_u32(
                        e,
                        sys::NFTNL_SET_ELEM_FLAGS as u16,
                        ELEM_INTERVAL_END,
                    );
                }
                // A delete is by key; the kernel ignores a value there.
                if let (Some(data), MsgType::Add) = (&element.data, msg_type) {
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_DATA as u16,
                        data.as_ptr().cast(),
                        data.len() as u32,
                    );
                }
                sys::nftnl_set_elem_add(set.as_ptr(), e);
            }
        }
        let (kind, flags) = match msg_type {
            MsgType::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK),
            MsgType::Del => (NFT_MSG_DELSETELEM, NLM_F_ACK),
        };
        // SAFETY: `buf` has room for the largest netlink message per the `NlMsg` contract;
        // freeing the set frees its elements.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(buf.cast(), kind, FAMILY_INET, flags, seq);
            sys::nftnl_set_elems_nlmsg_build_payload(header, set.as_ptr());
            sys::nftnl_set_free(set.as_ptr());
        }
    }
}

/// Inserts the rule at the top of its chain: the same message as `MsgType::Add` of the `nftnl`
/// crate (which always appends) without `NLM_F_APPEND`; with neither a position nor that flag,
/// the kernel puts a new rule before every other rule of the chain.
pub struct InsertRule<'a>(pub Rule<'a>);

// SAFETY: writes exactly what `Rule` writes (same buffer contract), then clears one flag bit in
// the header that write just built at the start of `buf`.
unsafe impl NlMsg for InsertRule<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.write(buf, seq, msg_type) };
        if let MsgType::Add = msg_type {
            // SAFETY: `buf` now starts with the `nlmsghdr` written above; it may be unaligned.
            unsafe {
                let header = buf.cast::<nlmsghdr>();
                let mut value = header.read_unaligned();
                value.nlmsg_flags &= !NLM_F_APPEND;
                header.write_unaligned(value);
            }
        }
    }
}

/// What to dump from the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Dump<'a> {
    /// Every table of every family.
    Tables,
    Chains {
        table: &'a str,
    },
    /// Every chain of every table and family.
    AllChains,
    /// The rules of one table of any family.
    TableRules {
        family: u16,
        table: &'a str,
    },
    /// Chains of a table of one family (`ip filter`, where iptables-nft keeps its chains).
    FamilyChains {
        family: u16,
        table: &'a str,
    },
    Rules {
        table: &'a str,
    },
    Sets {
        table: &'a str,
    },
    Elements {
        table: &'a str,
        set: &'a str,
    },
}

/// A netlink dump request for `what`, ready to send.
pub fn dump_request(what: Dump<'_>, seq: u32) -> Vec<u8> {
    let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
    let kind = match what {
        Dump::Tables => NFT_MSG_GETTABLE,
        Dump::Chains { .. } | Dump::FamilyChains { .. } | Dump::AllChains => NFT_MSG_GETCHAIN,
        Dump::Rules { .. } | Dump::TableRules { .. } => NFT_MSG_GETRULE,
        Dump::Sets { .. } => NFT_MSG_GETSET,
        Dump::Elements { .. } => NFT_MSG_GETSETELEM,
    };
    // SAFETY: `buf` holds `nft_nlmsg_maxsize` bytes, more than any request below needs; every
    // libnftnl object is freed right after serialising it.
    let family = match what {
        Dump::Tables | Dump::AllChains => FAMILY_ANY,
        Dump::FamilyChains { family, .. } | Dump::TableRules { family, .. } => family,
        _ => FAMILY_INET,
    };
    let len = unsafe {
        let header =
            sys::nftnl_nlmsg_build_hdr(buf.as_mut_ptr().cast(), kind, family, NLM_F_DUMP, seq);
        match what {
            Dump::Tables | Dump::AllChains => {}
            Dump::Chains { table } | Dump::FamilyChains { table, .. } => {
                let chain = alloc(sys::nftnl_chain_alloc());
                let table = cstring(table);
                sys::nftnl_chain_set_str(
                    chain.as_ptr(),
                    sys::NFTNL_CHAIN_TABLE as u16,
                    table.as_ptr(),
                );
                sys::nftnl_chain_nlmsg_build_payload(header, chain.as_ptr());
                sys::nftnl_chain_free(chain.as_ptr());
            }
            Dump::Rules { table } | Dump::TableRules { table, .. } => {
                let rule = alloc(sys::nftnl_rule_alloc());
                let table = cstring(table);
                sys::nftnl_rule_set_str(
                    rule.as_ptr(),
                    sys::NFTNL_RULE_TABLE as u16,
                    table.as_ptr(),
                );
                sys::nftnl_rule_nlmsg_build_payload(header, rule.as_ptr());
                sys::nftnl_rule_free(rule.as_ptr());
            }
            Dump::Sets { table } => {
                let set = alloc(sys::nftnl_set_alloc());
                let table = cstring(table);
                sys::nftnl_set_set_str(set.as_ptr(), sys::NFTNL_SET_TABLE as u16, table.as_ptr());
                sys::nftnl_set_nlmsg_build_payload(header, set.as_ptr());
                sys::nftnl_set_free(set.as_ptr());
            }
            Dump::Elements { table, set } => {
                let set = new_set(&cstring(table), &cstring(set));
                sys::nftnl_set_elems_nlmsg_build_payload(header, set.as_ptr());
                sys::nftnl_set_free(set.as_ptr());
            }
        }
        (*header).nlmsg_len as usize
    };
    buf.truncate(len);
    buf
}

/// libmnl callback: one `NFT_MSG_NEWTABLE` of a dump.
pub fn parse_table(nlh: &nlmsghdr, out: &mut Vec<KernelTableName>) -> c_int {
    // SAFETY: `nlh` is a complete message validated by libmnl; the table is freed before return
    // and its strings are copied out first.
    unsafe {
        let table = alloc(sys::nftnl_table_alloc());
        let t = table.as_ptr();
        if sys::nftnl_table_nlmsg_parse(nlh, t) < 0 {
            sys::nftnl_table_free(t);
            return MNL_CB_ERROR;
        }
        if let Some(name) = owned_str(sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16)) {
            let flags = if sys::nftnl_table_is_set(t, sys::NFTNL_TABLE_FLAGS as u16) {
                sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FLAGS as u16)
            } else {
                0
            };
            out.push(KernelTableName {
                name,
                family: sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FAMILY as u16),
                flags,
            });
        }
        sys::nftnl_table_free(t);
    }
    MNL_CB_OK
}

/// libmnl callback: one `NFT_MSG_NEWCHAIN` of a dump.
pub fn parse_chain(nlh: &nlmsghdr, out: &mut Vec<KernelChain>) -> c_int {
    // SAFETY: as in `parse_table`; optional attributes are read only when set.
    unsafe {
        let chain = alloc(sys::nftnl_chain_alloc());
        let c = chain.as_ptr();
        if sys::nftnl_chain_nlmsg_parse(nlh, c) < 0 {
            sys::nftnl_chain_free(c);
            return MNL_CB_ERROR;
        }
        let is_set = |attr: u32| sys::nftnl_chain_is_set(c, attr as u16);
        let parsed = KernelChain {
            family: sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_FAMILY as u16),
            table: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16))
                .unwrap_or_default(),
            name: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16))
                .unwrap_or_default(),
            hook: is_set(sys::NFTNL_CHAIN_HOOKNUM)
                .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16)),
            priority: is_set(sys::NFTNL_CHAIN_PRIO)
                .then(|| sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16)),
            kind: if is_set(sys::NFTNL_CHAIN_TYPE) {
                owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16))
            } else {
                None
            },
            policy: is_set(sys::NFTNL_CHAIN_POLICY)
                .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16)),
        };
        sys::nftnl_chain_free(c);
        out.push(parsed);
    }
    MNL_CB_OK
}

/// libmnl callback: one `NFT_MSG_NEWRULE` of a dump; keeps its chain and comment.
pub fn parse_rule(nlh: &nlmsghdr, out: &mut Vec<KernelRule>) -> c_int {
    // SAFETY: as in `parse_table`; the user data is copied out by its reported length.
    unsafe {
        let rule = alloc(sys::nftnl_rule_alloc());
        let r = rule.as_ptr();
        if sys::nftnl_rule_nlmsg_parse(nlh, r) < 0 {
            sys::nftnl_rule_free(r);
            return MNL_CB_ERROR;
        }
        let userdata = if sys::nftnl_rule_is_set(r, sys::NFTNL_RULE_USERDATA as u16) {
            let mut len = 0u32;
            let ptr = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut len);
            owned_bytes(ptr, len)
        } else {
            Vec::new()
        };
        out.push(KernelRule {
            family: sys::nftnl_rule_get_u32(r, sys::NFTNL_RULE_FAMILY as u16),
            table: owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16))
                .unwrap_or_default(),
            chain: owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16))
                .unwrap_or_default(),
            handle: sys::nftnl_rule_get_u64(r, sys::NFTNL_RULE_HANDLE as u16),
            comment: comment_from_userdata(&userdata),
        });
        sys::nftnl_rule_free(r);
    }
    MNL_CB_OK
}

/// nft's rule user data is type-length-value records; type 0 is the comment, NUL-terminated.
fn comment_from_userdata(mut data: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = data {
        let len = usize::from(*len);
        if rest.len() < len {
            return None;
        }
        let (value, tail) = rest.split_at(len);
        if *kind == sys::NFTNL_UDATA_RULE_COMMENT as u8 {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        data = tail;
    }
    None
}

/// libmnl callback: one `NFT_MSG_NEWSET` of a dump.
pub fn parse_set(nlh: &nlmsghdr, out: &mut Vec<KernelSet>) -> c_int {
    // SAFETY: as in `parse_table`.
    unsafe {
        let set = alloc(sys::nftnl_set_alloc());
        let s = set.as_ptr();
        if sys::nftnl_set_nlmsg_parse(nlh, s) < 0 {
            sys::nftnl_set_free(s);
            return MNL_CB_ERROR;
        }
        let u32_attr = |attr: u32| {
            sys::nftnl_set_is_set(s, attr as u16).then(|| sys::nftnl_set_get_u32(s, attr as u16))
        };
        let data = match (
            u32_attr(sys::NFTNL_SET_DATA_TYPE),
            u32_attr(sys::NFTNL_SET_DATA_LEN),
        ) {
            (Some(t), Some(l)) => Some((t, l)),
            _ => None,
        };
        out.push(KernelSet {
            table: owned_str(sys::nftnl_set_get_str(s, sys::NFTNL_SET_TABLE as u16))
                .unwrap_or_default(),
            name: owned_str(sys::nftnl_set_get_str(s, sys::NFTNL_SET_NAME as u16))
                .unwrap_or_default(),
            flags: u32_attr(sys::NFTNL_SET_FLAGS).unwrap_or(0),
            key_type: u32_attr(sys::NFTNL_SET_KEY_TYPE).unwrap_or(0),
            key_len: u32_attr(sys::NFTNL_SET_KEY_LEN).unwrap_or(0),
            data,
        });
        sys::nftnl_set_free(s);
    }
    MNL_CB_OK
}

/// libmnl callback: one `NFT_MSG_NEWSETELEM` of a dump (a batch of elements of one set).
pub fn parse_elements(nlh: &nlmsghdr, out: &mut Vec<Element>) -> c_int {
    // SAFETY: as in `parse_table`. The iterator yields elements owned by `set`; each one's key
    // and value are copied out by their reported lengths before the set is freed.
    unsafe {
        let set = alloc(sys::nftnl_set_alloc());
        let s = set.as_ptr();
        if sys::nftnl_set_elems_nlmsg_parse(nlh, s) < 0 {
            sys::nftnl_set_free(s);
            return MNL_CB_ERROR;
        }
        let iter = alloc(sys::nftnl_set_elems_iter_create(s));
        loop {
            let e = sys::nftnl_set_elems_iter_next(iter.as_ptr());
            if e.is_null() {
                break;
            }
            let bytes = |attr: u32| {
                if !sys::nftnl_set_elem_is_set(e, attr as u16) {
                    return None;
                }
                let mut len = 0u32;
                let ptr = sys::nftnl_set_elem_get(e, attr as u16, &mut len);
                Some(owned_bytes(ptr, len))
            };
            let flags = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_FLAGS as u16) {
                sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16)
            } else {
                0
            };
            out.push(Element {
                key: bytes(sys::NFTNL_SET_ELEM_KEY).unwrap_or_default(),
                interval_end: flags & ELEM_INTERVAL_END != 0,
                data: bytes(sys::NFTNL_SET_ELEM_DATA),
            });
        }
        sys::nftnl_set_elems_iter_destroy(iter.as_ptr());
        sys::nftnl_set_free(s);
    }
    MNL_CB_OK
}

/// Makes a blocking receive on `socket` fail with `EAGAIN` after `timeout`, so a kernel that
/// never answers (or an answer Pier miscounted) cannot hang the daemon.
pub fn set_receive_timeout(socket: &mnl::Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: the descriptor belongs to `socket`, which is borrowed (so open) for the call;
    // `tv` is a valid `timeval` and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets an integer socket option.
pub fn set_int_option(socket: &mnl::Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the descriptor belongs to `socket`, which is borrowed (so open) for the call;
    // `value` is a valid `c_int` and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_is_read_from_nft_userdata() {
        let mut data = vec![0u8, 6];
        data.extend_from_slice(b"pier:\0");
        assert_eq!(comment_from_userdata(&data).as_deref(), Some("pier:"));
        // Another record first, then the comment.
        let mut data = vec![7u8, 1, 9, 0, 3];
        data.extend_from_slice(b"ab\0");
        assert_eq!(comment_from_userdata(&data).as_deref(), Some("ab"));
        assert_eq!(comment_from_userdata(&[0, 9, 1]), None);
    }

    #[test]
    fn dump_requests_are_well_formed_netlink() {
        let request = dump_request(
            Dump::Elements {
                table: "pier",
                set: "ports_any",
            },
            7,
        );
        let len = u32::from_ne_bytes([request[0], request[1], request[2], request[3]]);
        assert_eq!(len as usize, request.len());
        assert!(request.windows(9).any(|w| w == b"ports_any"));
    }
}
