//! Talking to nf_tables over netlink: reading table `inet pier` back, and sending one batch.
//!
//! Everything here runs on the thread `netns::run_in` made inside the host namespace; the socket
//! is opened there, so it is bound to that namespace.

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use mnl::{Bus, CbResult, Socket};
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
};

use super::FirewallError;
use super::native::{self, Family, NativeChain, NativeChange};
use super::plan::{FirewallPlan, KernelChains, KernelTable, Loopback6Change};
use super::render::{ChainKind, ChainSpec, Hook as PierHook, TABLE};
use super::sys::{self, Dump, ELEMS_PER_MSG, ElemsMsg, ExprMsg, FAMILY_INET, FAMILY_IPV6, SetMsg};

const ENOENT: i32 = 2;

/// Sequence numbers only have to differ between requests on one socket; a process-wide counter
/// seeded from the clock also keeps them apart across restarts, which helps when reading traces.
fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    let _ = SEQ.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A netfilter netlink socket in the calling thread's namespace.
pub fn open() -> Result<Socket, FirewallError> {
    let socket = Socket::new(Bus::Netfilter).map_err(FirewallError::Socket)?;
    sys::set_receive_timeout(&socket, RECEIVE_TIMEOUT).map_err(FirewallError::Socket)?;
    // Acks echo only the header, not the whole request: a batch of thousands of elements would
    // otherwise overrun the receive buffer with copies of itself (ENOBUFS).
    sys::set_int_option(&socket, SOL_NETLINK, NETLINK_CAP_ACK, 1).map_err(FirewallError::Socket)?;
    Ok(socket)
}

const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const SOL_SOCKET: i32 = 1;
const SO_SNDBUFFORCE: i32 = 32;
/// The kernel's default `wmem_default`; a batch larger than this needs a larger send buffer.
const DEFAULT_SNDBUF: usize = 212_992;

/// How long to wait for the kernel's answer to a dump or a batch (it takes microseconds).
const RECEIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn receive_buffer() -> Vec<u8> {
    // The kernel never sends a single datagram larger than this to a reader of this size.
    vec![0u8; nftnl::nft_nlmsg_maxsize() as usize]
}

/// Runs one dump request and collects what `parse` makes of each message.
fn dump<T>(socket: &Socket, what: Dump<'_>, parse: mnl::Callback<Vec<T>>) -> io::Result<Vec<T>> {
    let seq = next_seq();
    socket.send(&sys::dump_request(what, seq))?;
    let portid = socket.portid();
    let mut buf = receive_buffer();
    let mut out = Vec::new();
    loop {
        let len = socket.recv_raw(&mut buf)?;
        if let CbResult::Stop = mnl::cb_run2(&buf[..len], seq, portid, parse, &mut out)? {
            return Ok(out);
        }
    }
}

fn read_error(what: &'static str) -> impl FnOnce(io::Error) -> FirewallError {
    move |source| FirewallError::Read { what, source }
}

/// What the kernel has in tables `inet pier` and `ip6 pier` now; `None` for a missing table.
pub fn read(socket: &Socket) -> Result<(Option<KernelTable>, Option<KernelChains>), FirewallError> {
    let tables = dump(socket, Dump::Tables, sys::parse_table).map_err(read_error("tables"))?;
    let exists = |family: u16| {
        tables
            .iter()
            .any(|t| t.name == TABLE && t.family == u32::from(family))
    };
    let inet = if exists(FAMILY_INET) {
        Some(read_inet(socket)?)
    } else {
        None
    };
    let ip6 = if exists(FAMILY_IPV6) {
        Some(read_ip6(socket)?)
    } else {
        None
    };
    Ok((inet, ip6))
}

/// The chains and rules of table `ip6 pier`, which exists.
fn read_ip6(socket: &Socket) -> Result<KernelChains, FirewallError> {
    let what = Dump::FamilyChains {
        family: FAMILY_IPV6,
        table: TABLE,
    };
    let mut chains = dump(socket, what, sys::parse_chain).map_err(read_error("ip6 chains"))?;
    chains.retain(|c| c.table == TABLE && c.family == u32::from(FAMILY_IPV6));
    let what = Dump::TableRules {
        family: FAMILY_IPV6,
        table: TABLE,
    };
    let mut rules = dump(socket, what, sys::parse_rule).map_err(read_error("ip6 rules"))?;
    rules.retain(|r| r.table == TABLE && r.family == u32::from(FAMILY_IPV6));
    Ok(KernelChains { chains, rules })
}

/// Everything in table `inet pier`, which exists.
fn read_inet(socket: &Socket) -> Result<KernelTable, FirewallError> {
    let table = Dump::Chains { table: TABLE };
    let mut chains = dump(socket, table, sys::parse_chain).map_err(read_error("chains"))?;
    chains.retain(|c| c.table == TABLE);
    let table = Dump::Rules { table: TABLE };
    let mut rules = dump(socket, table, sys::parse_rule).map_err(read_error("rules"))?;
    rules.retain(|r| r.table == TABLE);
    let table = Dump::Sets { table: TABLE };
    let mut sets = dump(socket, table, sys::parse_set).map_err(read_error("sets"))?;
    sets.retain(|s| s.table == TABLE);
    let mut elements = std::collections::BTreeMap::new();
    for set in &sets {
        let what = Dump::Elements {
            table: TABLE,
            set: &set.name,
        };
        let found = dump(socket, what, sys::parse_elements).map_err(read_error("set elements"))?;
        elements.insert(set.name.clone(), found.into_iter().collect());
    }
    Ok(KernelTable {
        chains,
        rules,
        sets,
        elements,
    })
}

/// The base chains of iptables-nft's table `ip filter` (`family` IPv4) or ip6tables-nft's `ip6
/// filter` (IPv6): its built-in chains that exist, by name; empty when there is no such table.
pub fn iptables_nft_builtins(socket: &Socket, family: u16) -> Result<Vec<String>, FirewallError> {
    let what = Dump::FamilyChains {
        family,
        table: "filter",
    };
    let chains = dump(socket, what, sys::parse_chain).map_err(read_error("chains of filter"))?;
    Ok(chains
        .into_iter()
        .filter(|c| c.table == "filter" && c.family == u32::from(family) && c.hook.is_some())
        .map(|c| c.name)
        .collect())
}

fn native_read_error(what: &'static str) -> impl FnOnce(io::Error) -> FirewallError {
    move |source| FirewallError::ReadNative { what, source }
}

/// The base chains of other programs' tables that get Pier's accepts, each with its rules, and
/// the tables that only their owner may change (see [`native`]).
pub fn native_read(socket: &Socket) -> Result<(Vec<NativeChain>, Vec<String>), FirewallError> {
    let tables =
        dump(socket, Dump::Tables, sys::parse_table).map_err(native_read_error("tables"))?;
    let chains =
        dump(socket, Dump::AllChains, sys::parse_chain).map_err(native_read_error("chains"))?;
    let mut selection = native::select(&tables, &chains);
    let mut by_table: Vec<(Family, String)> = selection
        .chains
        .iter()
        .map(|c| (c.family, c.table.clone()))
        .collect();
    by_table.sort();
    by_table.dedup();
    for (family, table) in by_table {
        let what = Dump::TableRules {
            family: family.nfproto(),
            table: &table,
        };
        let rules = dump(socket, what, sys::parse_rule).map_err(native_read_error("rules"))?;
        for chain in selection
            .chains
            .iter_mut()
            .filter(|c| c.family == family && c.table == table)
        {
            chain.rules = rules
                .iter()
                .filter(|r| {
                    u32::from(family.nfproto()) == r.family
                        && r.table == table
                        && r.chain == chain.name
                })
                .cloned()
                .collect();
        }
    }
    Ok((selection.chains, selection.owned))
}

fn proto_family(family: Family) -> ProtoFamily {
    match family {
        Family::Ip => ProtoFamily::Ipv4,
        Family::Ip6 => ProtoFamily::Ipv6,
        Family::Inet => ProtoFamily::Inet,
    }
}

fn build_error(what: String) -> FirewallError {
    FirewallError::Build { what }
}

/// One batch for `changes`: deletions by handle, then insertions at the top of each chain.
pub fn native_batch(changes: &[NativeChange]) -> Result<FinalizedBatch, FirewallError> {
    let mut batch = Batch::new();
    for change in changes {
        let table_name = CString::new(change.table.as_str())
            .map_err(|_| build_error(format!("table name {:?}", change.table)))?;
        let chain_name = CString::new(change.chain.as_str())
            .map_err(|_| build_error(format!("chain name {:?}", change.chain)))?;
        let table = Table::new(&table_name, proto_family(change.family));
        let chain = Chain::new(&chain_name, &table);
        for handle in &change.delete {
            let mut rule = Rule::new(&chain);
            rule.set_handle(*handle);
            batch.add(&rule, MsgType::Del);
        }
        // Each insertion goes on top of the previous one: the last rule is inserted first.
        for spec in change.insert.iter().rev() {
            let mut rule = Rule::new(&chain);
            for expr in &spec.exprs {
                rule.add_expr(&ExprMsg(expr));
            }
            let comment = CString::new(spec.comment())
                .map_err(|_| build_error(format!("comment of rule {}", spec.text)))?;
            rule.set_comment(&comment).map_err(|reason| {
                build_error(format!("comment of rule {}: {reason}", spec.text))
            })?;
            batch.add(&sys::InsertRule(rule), MsgType::Add);
        }
    }
    Ok(batch.finalize())
}

fn table() -> Table {
    Table::new(c"pier", ProtoFamily::Inet)
}

fn table6() -> Table {
    Table::new(c"pier", ProtoFamily::Ipv6)
}

/// The one atomic batch that carries out `plan`.
pub fn batch(plan: &FirewallPlan) -> Result<FinalizedBatch, FirewallError> {
    let mut batch = Batch::new();
    let table = table();
    let ruleset = plan.ruleset();
    if let Some(rebuild) = plan.rebuild() {
        // Delete and re-add in the same transaction: no packet ever sees a missing table.
        if rebuild.table_exists {
            batch.add(&table, MsgType::Del);
        }
        batch.add(&table, MsgType::Add);
        for (id, set) in (1u32..).zip(&ruleset.sets) {
            batch.add(&SetMsg::new(TABLE, set, id), MsgType::Add);
            let elements: Vec<_> = set.elements.iter().cloned().collect();
            for chunk in elements.chunks(ELEMS_PER_MSG) {
                batch.add(&ElemsMsg::new(TABLE, set.name, chunk), MsgType::Add);
            }
        }
        for spec in &ruleset.chains {
            add_chain(&mut batch, &table, spec)?;
        }
    } else {
        // Removals first, so a key whose value changed is deleted before it is re-added.
        for change in plan.changes() {
            for chunk in change.removed.chunks(ELEMS_PER_MSG) {
                batch.add(&ElemsMsg::new(TABLE, change.set, chunk), MsgType::Del);
            }
        }
        for change in plan.changes() {
            for chunk in change.added.chunks(ELEMS_PER_MSG) {
                batch.add(&ElemsMsg::new(TABLE, change.set, chunk), MsgType::Add);
            }
        }
    }
    add_loopback6(&mut batch, plan)?;
    Ok(batch.finalize())
}

/// Table `ip6 pier`'s part of the batch: made whole, replaced whole or deleted.
fn add_loopback6(batch: &mut Batch, plan: &FirewallPlan) -> Result<(), FirewallError> {
    let table = table6();
    let (delete, create) = match plan.loopback6() {
        None => return Ok(()),
        Some(Loopback6Change::Create) => (false, true),
        Some(Loopback6Change::Replace(_)) => (true, true),
        Some(Loopback6Change::Delete) => (true, false),
    };
    if delete {
        batch.add(&table, MsgType::Del);
    }
    if let (true, Some(chain)) = (create, &plan.ruleset().loopback6) {
        batch.add(&table, MsgType::Add);
        add_chain(batch, &table, chain)?;
    }
    Ok(())
}

/// A base chain of `table` with its rules.
fn add_chain(batch: &mut Batch, table: &Table, spec: &ChainSpec) -> Result<(), FirewallError> {
    let name = CString::new(spec.name).map_err(|_| FirewallError::Build {
        what: format!("chain name {:?}", spec.name),
    })?;
    let mut chain = Chain::new(&name, table);
    let hook = match spec.hook {
        PierHook::Prerouting => Hook::PreRouting,
        PierHook::Input => Hook::In,
        PierHook::Forward => Hook::Forward,
        PierHook::Output => Hook::Out,
        PierHook::Postrouting => Hook::PostRouting,
    };
    chain.set_hook(hook, spec.priority);
    chain.set_type(match spec.kind {
        ChainKind::Filter => ChainType::Filter,
        ChainKind::Nat => ChainType::Nat,
    });
    chain.set_policy(Policy::Accept);
    batch.add(&chain, MsgType::Add);
    for rule_spec in &spec.rules {
        let mut rule = Rule::new(&chain);
        for expr in &rule_spec.exprs {
            rule.add_expr(&ExprMsg(expr));
        }
        let comment = CString::new(rule_spec.comment()).map_err(|_| FirewallError::Build {
            what: format!("comment of rule {}", rule_spec.id),
        })?;
        rule.set_comment(&comment)
            .map_err(|reason| FirewallError::Build {
                what: format!("comment of rule {}: {reason}", rule_spec.id),
            })?;
        batch.add(&rule, MsgType::Add);
    }
    Ok(())
}

/// A batch that deletes table `inet pier` (and so everything in it).
pub fn delete_table_batch() -> FinalizedBatch {
    let mut batch = Batch::new();
    batch.add(&table(), MsgType::Del);
    batch.finalize()
}

/// A batch that deletes table `ip6 pier`.
pub fn delete_table6_batch() -> FinalizedBatch {
    let mut batch = Batch::new();
    batch.add(&table6(), MsgType::Del);
    batch.finalize()
}

/// Sends a batch and waits for the kernel's answer to every message in it. The kernel commits all
/// or nothing; the first error it reports is returned.
pub fn send(socket: &Socket, batch: &FinalizedBatch) -> io::Result<()> {
    // nfnetlink treats one datagram as one transaction, so the batch goes in one send even
    // when libnftnl built it in several pages (thousands of ports when the table is rebuilt).
    let bytes: Vec<u8> = batch.iter().flatten().copied().collect();
    if bytes.len() + 1024 > DEFAULT_SNDBUF {
        let size = i32::try_from(2 * bytes.len()).unwrap_or(i32::MAX);
        sys::set_int_option(socket, SOL_SOCKET, SO_SNDBUFFORCE, size)?;
    }
    if socket.send(&bytes)? < bytes.len() {
        return Err(io::Error::other("netlink sent only part of the batch"));
    }
    let portid = socket.portid();
    let mut buf = receive_buffer();
    let mut expected = batch.sequence_numbers().len();
    while expected > 0 {
        let len = socket.recv_raw(&mut buf)?;
        for message in mnl::NlMessages::new(&buf[..len]) {
            // Sequence 0: accept any; on failure the kernel answers out of order, and the errno
            // it reports is what matters.
            mnl::cb_run(message?, 0, portid)?;
            expected = expected.saturating_sub(1);
        }
    }
    Ok(())
}

/// Whether an error from the kernel means "no such table/set".
pub fn is_not_found(err: &io::Error) -> bool {
    err.raw_os_error() == Some(ENOENT)
}
