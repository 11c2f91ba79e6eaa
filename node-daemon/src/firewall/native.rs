//! Pier's accepts in firewalls written natively in nftables: firewalld's nftables backend (table
//! `inet firewalld`), a hand-written `inet filter` with `policy drop`.
//!
//! Every base chain at a netfilter hook sees the packet and a drop in any of them is final, so a
//! forward chain ending in `reject` drops Pier's traffic whatever table `inet pier` accepts. As
//! [`super::iptables`] does for iptables firewalls, Pier puts a few broad accepts at the top of
//! each such chain:
//!
//! - every base chain of type filter at hook forward: `iifname "pier-*" accept`,
//!   `oifname "pier-*" accept`. Broad on purpose: table `inet pier` decides what passes
//!   (isolation, internal networks, published ports only) and its drops stay final;
//! - every base chain of type filter at hook input: DNS (udp and tcp 53) from Pier's bridges, for
//!   the embedded DNS server on each gateway; no other service of the node is opened.
//!
//! Only tables of family `ip`, `ip6` and `inet` that are neither Pier's nor iptables-nft's or
//! ip6tables-nft's (those are handled through the iptables tools, which cannot read native rules
//! back). Each rule carries a
//! comment `pier:coexist:<fingerprint>` (see `RuleSpec::comment`): it is how Pier finds its own
//! rules again, and the only rules it ever deletes. A table with the `owner` flag (firewalld's
//! `NftablesTableOwner`) can only be changed by its owner: it is left alone and named in a note.
//!
//! Pure: [`select`] picks the chains from a dump, [`diff`] and [`removal`] compare their rules with
//! the desired ones; the batch is built in `kernel.rs`.

use std::collections::BTreeSet;
use std::fmt;

use super::expr::{CmpOp, Expr, MetaKey, REG_1, Verdict};
use super::plan::{KernelChain, KernelRule, KernelTableName};
use super::render::{RuleSpec, TABLE};

/// The `id` of every rule Pier puts in another program's chain.
pub const RULE_ID: &str = "coexist";

/// The start of the comment of every rule Pier puts in another program's chain.
pub fn comment_prefix() -> String {
    format!("pier:{RULE_ID}:")
}

/// What `iifname "pier-*"` compares: a name starting with Pier's bridge prefix (nft's wildcard is
/// a comparison of the prefix bytes only).
const BRIDGE_PREFIX: &[u8] = pier_crds::names::BRIDGE_PREFIX.as_bytes();

/// iptables-nft's and ip6tables-nft's tables: written through the tools only, never natively.
const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// `NFT_TABLE_F_OWNER`.
const TABLE_F_OWNER: u32 = 0x2;

/// `NF_INET_LOCAL_IN`, `NF_INET_FORWARD`.
const HOOK_INPUT: u32 = 1;
const HOOK_FORWARD: u32 = 2;

/// The families Pier's accepts go in: Pier's networks carry IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    fn from_nfproto(family: u32) -> Option<Family> {
        match family {
            1 => Some(Family::Inet),
            2 => Some(Family::Ip),
            10 => Some(Family::Ip6),
            _ => None,
        }
    }

    /// `NFPROTO_*`.
    pub fn nfproto(self) -> u16 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

/// The hooks Pier needs accepts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NativeHook {
    Forward,
    Input,
}

/// A base chain of another program that gets Pier's accepts, with its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeChain {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub hook: NativeHook,
    /// Every rule of the chain, in order.
    pub rules: Vec<KernelRule>,
}

/// What the dump says about the other programs' tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The chains that get Pier's accepts (without their rules yet).
    pub chains: Vec<NativeChain>,
    /// Tables with such chains that only their owner may change.
    pub owned: Vec<String>,
}

/// Whether a table is one Pier may add its accepts to: not Pier's own (`inet pier`, `ip6 pier`),
/// not one of the iptables tools' (`ip`/`ip6` tables named like theirs).
fn eligible(family: Family, table: &str) -> bool {
    match family {
        Family::Inet => table != TABLE,
        Family::Ip => !IPTABLES_TABLES.contains(&table),
        Family::Ip6 => table != TABLE && !IPTABLES_TABLES.contains(&table),
    }
}

/// The base chains of type filter at hook forward or input in tables Pier may change.
pub fn select(tables: &[KernelTableName], chains: &[KernelChain]) -> Selection {
    let owned: BTreeSet<(Family, &str)> = tables
        .iter()
        .filter(|t| t.flags & TABLE_F_OWNER != 0)
        .filter_map(|t| Some((Family::from_nfproto(t.family)?, t.name.as_str())))
        .collect();
    let mut selection = Selection::default();
    for chain in chains {
        let Some(family) = Family::from_nfproto(chain.family) else {
            continue;
        };
        let hook = match chain.hook {
            Some(HOOK_FORWARD) => NativeHook::Forward,
            Some(HOOK_INPUT) => NativeHook::Input,
            _ => continue,
        };
        if chain.kind.as_deref() != Some("filter") || !eligible(family, &chain.table) {
            continue;
        }
        if owned.contains(&(family, chain.table.as_str())) {
            let name = format!("{} {}", family.as_str(), chain.table);
            if !selection.owned.contains(&name) {
                selection.owned.push(name);
            }
            continue;
        }
        selection.chains.push(NativeChain {
            family,
            table: chain.table.clone(),
            name: chain.name.clone(),
            hook,
            rules: Vec::new(),
        });
    }
    selection
}

/// What a table with the owner flag gets instead of Pier's accepts.
pub fn owned_note(table: &str) -> String {
    format!(
        "table {table} may be changed only by the program that owns it: Pier added no accepts \
         there; allow Pier's bridges in that firewall (firewalld: add the interfaces pier-* to \
         zone trusted)"
    )
}

fn iifname_pier() -> [Expr; 2] {
    [
        Expr::Meta {
            key: MetaKey::IifName,
            dreg: REG_1,
        },
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: BRIDGE_PREFIX.to_vec(),
        },
    ]
}

fn dns_from_pier(protocol: u8) -> Vec<Expr> {
    let mut exprs = iifname_pier().to_vec();
    exprs.extend(Expr::l4_dport(protocol, 53));
    exprs.push(Expr::Verdict(Verdict::Accept));
    exprs
}

/// Pier's rules for a chain at `hook`, in the order they read from the top of the chain.
pub fn desired(hook: NativeHook) -> Vec<RuleSpec> {
    match hook {
        NativeHook::Forward => vec![
            RuleSpec {
                id: RULE_ID,
                text: "iifname \"pier-*\" accept",
                exprs: [iifname_pier().as_slice(), &[Expr::Verdict(Verdict::Accept)]].concat(),
            },
            RuleSpec {
                id: RULE_ID,
                text: "oifname \"pier-*\" accept",
                exprs: vec![
                    Expr::Meta {
                        key: MetaKey::OifName,
                        dreg: REG_1,
                    },
                    Expr::Cmp {
                        op: CmpOp::Eq,
                        sreg: REG_1,
                        data: BRIDGE_PREFIX.to_vec(),
                    },
                    Expr::Verdict(Verdict::Accept),
                ],
            },
        ],
        NativeHook::Input => vec![
            RuleSpec {
                id: RULE_ID,
                text: "iifname \"pier-*\" udp dport 53 accept",
                exprs: dns_from_pier(17),
            },
            RuleSpec {
                id: RULE_ID,
                text: "iifname \"pier-*\" tcp dport 53 accept",
                exprs: dns_from_pier(6),
            },
        ],
    }
}

/// What one chain needs: rules to insert at its top and rules of Pier's to delete by handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeChange {
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// In the order they are to read from the top of the chain.
    pub insert: Vec<RuleSpec>,
    pub delete: Vec<u64>,
    pub summary: Vec<String>,
}

impl NativeChange {
    fn new(chain: &NativeChain) -> NativeChange {
        NativeChange {
            family: chain.family,
            table: chain.table.clone(),
            chain: chain.name.clone(),
            insert: Vec::new(),
            delete: Vec::new(),
            summary: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.insert.is_empty() && self.delete.is_empty()
    }

    /// Where the change goes, as `nft` names it: `inet firewalld filter_FORWARD`.
    pub fn location(&self) -> String {
        format!("{} {} {}", self.family.as_str(), self.table, self.chain)
    }
}

impl fmt::Display for NativeChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.summary {
            writeln!(f, "~ nftables {}: {line}", self.location())?;
        }
        Ok(())
    }
}

fn pier_rules(chain: &NativeChain) -> impl Iterator<Item = &KernelRule> {
    let prefix = comment_prefix();
    chain
        .rules
        .iter()
        .filter(move |r| r.comment.as_deref().is_some_and(|c| c.starts_with(&prefix)))
}

/// What gives each chain exactly one of each of Pier's rules; chains in sync are left out. A
/// rule of Pier's need not be first: whoever inserted theirs above it later keeps that place.
pub fn diff(chains: &[NativeChain]) -> Vec<NativeChange> {
    let mut changes = Vec::new();
    for chain in chains {
        let mut change = NativeChange::new(chain);
        let wanted = desired(chain.hook);
        let comments: Vec<String> = wanted.iter().map(RuleSpec::comment).collect();
        let mut seen = BTreeSet::new();
        for rule in pier_rules(chain) {
            let comment = rule.comment.as_deref().unwrap_or_default();
            if !comments.iter().any(|c| c == comment) {
                change.delete.push(rule.handle);
                change.summary.push(format!(
                    "stale rule {comment:?} deleted (handle {})",
                    rule.handle
                ));
            } else if !seen.insert(comment.to_owned()) {
                change.delete.push(rule.handle);
                change.summary.push(format!(
                    "duplicate rule {comment:?} deleted (handle {})",
                    rule.handle
                ));
            }
        }
        for (spec, comment) in wanted.into_iter().zip(&comments) {
            if !seen.contains(comment) {
                change
                    .summary
                    .push(format!("rule `{}` inserted at the top", spec.text));
                change.insert.push(spec);
            }
        }
        if !change.is_empty() {
            changes.push(change);
        }
    }
    changes
}

/// What deletes every rule of Pier's from `chains`, and nothing else.
pub fn removal(chains: &[NativeChain]) -> Vec<NativeChange> {
    chains
        .iter()
        .filter_map(|chain| {
            let mut change = NativeChange::new(chain);
            for rule in pier_rules(chain) {
                change.delete.push(rule.handle);
                change.summary.push(format!(
                    "rule {:?} deleted",
                    rule.comment.as_deref().unwrap_or_default()
                ));
            }
            (!change.is_empty()).then_some(change)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET: u32 = 1;
    const IP: u32 = 2;
    const IP6: u32 = 10;

    fn table(family: u32, name: &str, flags: u32) -> KernelTableName {
        KernelTableName {
            name: name.into(),
            family,
            flags,
        }
    }

    fn chain(family: u32, table: &str, name: &str, hook: Option<u32>, kind: &str) -> KernelChain {
        KernelChain {
            family,
            table: table.into(),
            name: name.into(),
            hook,
            priority: hook.map(|_| 0),
            kind: hook.map(|_| kind.into()),
            policy: hook.map(|_| 1),
        }
    }

    fn rule(handle: u64, comment: Option<String>) -> KernelRule {
        KernelRule {
            family: INET,
            table: "firewalld".into(),
            chain: "filter_FORWARD".into(),
            handle,
            comment,
        }
    }

    fn forward(rules: Vec<KernelRule>) -> NativeChain {
        NativeChain {
            family: Family::Inet,
            table: "firewalld".into(),
            name: "filter_FORWARD".into(),
            hook: NativeHook::Forward,
            rules,
        }
    }

    fn ours(hook: NativeHook) -> Vec<String> {
        desired(hook).iter().map(RuleSpec::comment).collect()
    }

    #[test]
    fn only_filter_base_chains_at_forward_and_input_of_other_programs_tables() {
        let tables = [
            table(INET, "firewalld", 0),
            table(INET, "pier", 0),
            table(IP, "filter", 0),
            table(IP, "mine", 0),
            table(IP6, "mine6", 0),
            table(IP6, "filter", 0),
            table(IP6, "pier", 0),
        ];
        let chains = [
            chain(
                INET,
                "firewalld",
                "filter_FORWARD",
                Some(HOOK_FORWARD),
                "filter",
            ),
            chain(
                INET,
                "firewalld",
                "filter_INPUT",
                Some(HOOK_INPUT),
                "filter",
            ),
            chain(INET, "firewalld", "filter_OUTPUT", Some(3), "filter"),
            chain(INET, "firewalld", "nat_PREROUTING", Some(0), "nat"),
            chain(INET, "firewalld", "filter_FWD_public", None, ""),
            chain(INET, "pier", "forward", Some(HOOK_FORWARD), "filter"),
            chain(IP, "filter", "FORWARD", Some(HOOK_FORWARD), "filter"),
            chain(IP, "mine", "fwd", Some(HOOK_FORWARD), "filter"),
            chain(IP6, "mine6", "fwd", Some(HOOK_FORWARD), "filter"),
            // ip6tables-nft's (Docker's IPv6 FORWARD DROP goes through the tools).
            chain(IP6, "filter", "FORWARD", Some(HOOK_FORWARD), "filter"),
            // Pier's own IPv6 table, whatever hook a later Pier might give it.
            chain(IP6, "pier", "loopback6", Some(HOOK_INPUT), "filter"),
        ];
        let selection = select(&tables, &chains);
        let picked: Vec<_> = selection
            .chains
            .iter()
            .map(|c| (c.family, c.table.as_str(), c.name.as_str(), c.hook))
            .collect();
        assert_eq!(
            picked,
            [
                (
                    Family::Inet,
                    "firewalld",
                    "filter_FORWARD",
                    NativeHook::Forward
                ),
                (Family::Inet, "firewalld", "filter_INPUT", NativeHook::Input),
                (Family::Ip, "mine", "fwd", NativeHook::Forward),
                (Family::Ip6, "mine6", "fwd", NativeHook::Forward),
            ]
        );
        assert!(selection.owned.is_empty());
    }

    #[test]
    fn an_owned_table_is_left_alone_and_named() {
        let tables = [table(INET, "firewalld", TABLE_F_OWNER | 0x1)];
        let chains = [
            chain(
                INET,
                "firewalld",
                "filter_FORWARD",
                Some(HOOK_FORWARD),
                "filter",
            ),
            chain(
                INET,
                "firewalld",
                "filter_INPUT",
                Some(HOOK_INPUT),
                "filter",
            ),
        ];
        let selection = select(&tables, &chains);
        assert!(selection.chains.is_empty());
        assert_eq!(selection.owned, ["inet firewalld"]);
    }

    #[test]
    fn a_chain_without_pier_rules_gets_both_inserted_in_order() {
        let changes = diff(&[forward(vec![rule(4, None), rule(5, Some("theirs".into()))])]);
        assert_eq!(changes.len(), 1);
        let change = &changes[0];
        assert_eq!(change.location(), "inet firewalld filter_FORWARD");
        assert!(change.delete.is_empty());
        let texts: Vec<_> = change.insert.iter().map(|r| r.text).collect();
        assert_eq!(
            texts,
            ["iifname \"pier-*\" accept", "oifname \"pier-*\" accept"]
        );
        assert!(
            change
                .insert
                .iter()
                .all(|r| r.comment().starts_with("pier:coexist:")),
            "{:?}",
            change.insert
        );
    }

    #[test]
    fn in_sync_wherever_pier_rules_sit() {
        let comments = ours(NativeHook::Forward);
        let chain = forward(vec![
            rule(9, Some("someone inserted above".into())),
            rule(2, Some(comments[0].clone())),
            rule(3, Some(comments[1].clone())),
            rule(1, None),
        ]);
        assert_eq!(diff(&[chain]), []);
    }

    #[test]
    fn missing_duplicated_and_stale_rules_are_repaired_by_handle() {
        let comments = ours(NativeHook::Forward);
        let chain = forward(vec![
            rule(2, Some(comments[1].clone())),
            rule(3, Some(comments[1].clone())),
            rule(4, Some("pier:coexist:00000000".into())),
            rule(5, Some("not pier's".into())),
        ]);
        let changes = diff(&[chain]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].delete, [3, 4]);
        let texts: Vec<_> = changes[0].insert.iter().map(|r| r.text).collect();
        assert_eq!(texts, ["iifname \"pier-*\" accept"]);
    }

    #[test]
    fn input_chains_get_dns_only() {
        let mut chain = forward(Vec::new());
        chain.hook = NativeHook::Input;
        let changes = diff(&[chain]);
        let texts: Vec<_> = changes[0].insert.iter().map(|r| r.text).collect();
        assert_eq!(
            texts,
            [
                "iifname \"pier-*\" udp dport 53 accept",
                "iifname \"pier-*\" tcp dport 53 accept"
            ]
        );
    }

    #[test]
    fn removal_deletes_exactly_pier_rules() {
        let comments = ours(NativeHook::Forward);
        let chain = forward(vec![
            rule(1, None),
            rule(2, Some(comments[0].clone())),
            rule(3, Some("pier:coexist:00000000".into())),
            rule(4, Some("pier:other".into())),
        ]);
        let changes = removal(&[chain, forward(vec![rule(7, None)])]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].delete, [2, 3]);
        assert!(changes[0].insert.is_empty());
    }

    #[test]
    fn the_texts_match_the_bridge_prefix() {
        let wildcard = format!("\"{}*\"", pier_crds::names::BRIDGE_PREFIX);
        for hook in [NativeHook::Forward, NativeHook::Input] {
            assert!(desired(hook).iter().all(|r| r.text.contains(&wildcard)));
        }
    }
}
