//! The difference between what the kernel has in table `inet pier` and what the state needs.
//!
//! Pure: `diff` takes a snapshot read back from the kernel (never a copy remembered in memory,
//! so a restart or a crash mid-apply converges on the next apply) and the rendered ruleset.
//!
//! Two kinds of change:
//! - the structure (table, chains, rules, set definitions) is a constant of this Pier version, so
//!   any difference there (table missing, flushed or deleted chain, a rule edited by hand, an
//!   older Pier's rules) rebuilds the whole table: delete it and add everything, in the same
//!   atomic batch, so packets never see a half-built table;
//! - set and map contents change element by element: one port is one element.
//!
//! Table `ip6 pier` (one constant chain, no sets; see `render.rs`) is created, replaced whole
//! when it differs in any way, or deleted when the node has no IPv6 network left, in the same
//! batch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::render::{ChainSpec, Element, Ruleset, SetSpec, TABLE};

/// A table name and family as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTableName {
    pub name: String,
    pub family: u32,
    /// `NFTA_TABLE_FLAGS` (`NFT_TABLE_F_OWNER`: only the program that made it may change it).
    pub flags: u32,
}

/// A chain as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelChain {
    /// `NFPROTO_*` of the chain's table.
    pub family: u32,
    pub table: String,
    pub name: String,
    pub hook: Option<u32>,
    pub priority: Option<i32>,
    pub kind: Option<String>,
    pub policy: Option<u32>,
}

/// A rule as dumped by the kernel: only what identifies it (see `RuleSpec::comment`), and its
/// handle, by which it is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    /// `NFPROTO_*` of the rule's table.
    pub family: u32,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// A set or map definition as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSet {
    pub table: String,
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub data: Option<(u32, u32)>,
}

/// Everything in table `inet pier` right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelTable {
    pub chains: Vec<KernelChain>,
    /// In kernel order within each chain.
    pub rules: Vec<KernelRule>,
    pub sets: Vec<KernelSet>,
    /// Elements by set name.
    pub elements: BTreeMap<String, BTreeSet<Element>>,
}

/// The chains and rules of table `ip6 pier`, as the kernel has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelChains {
    pub chains: Vec<KernelChain>,
    pub rules: Vec<KernelRule>,
}

/// Elements shown per set when the whole table is (re)built.
const REBUILD_SHOWN: usize = 20;

/// `NF_ACCEPT`, the policy of every Pier chain (Pier drops with rules, never by policy).
const POLICY_ACCEPT: u32 = 1;

/// Why the whole table is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    pub reason: String,
    /// The table exists and is deleted first (in the same batch).
    pub table_exists: bool,
}

/// Element changes of one set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub set: &'static str,
    pub removed: Vec<Element>,
    pub added: Vec<Element>,
}

/// What happens to table `ip6 pier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loopback6Change {
    Create,
    /// Deleted and made again in the same batch, for this reason.
    Replace(String),
    /// The node has no IPv6 network any more.
    Delete,
}

/// What `apply` will do to table `inet pier` (and table `ip6 pier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallPlan {
    pub(super) rebuild: Option<Rebuild>,
    pub(super) ruleset: Ruleset,
    pub(super) changes: Vec<SetChange>,
    pub(super) loopback6: Option<Loopback6Change>,
}

impl FirewallPlan {
    /// Nothing to do: the kernel already has exactly the desired table.
    pub fn is_empty(&self) -> bool {
        self.rebuild.is_none() && self.changes.is_empty() && self.loopback6.is_none()
    }

    /// Why the table is rebuilt whole, if it is.
    pub fn rebuild(&self) -> Option<&Rebuild> {
        self.rebuild.as_ref()
    }

    /// The element-level changes (empty when the table is rebuilt: then every element is added).
    pub fn changes(&self) -> &[SetChange] {
        &self.changes
    }

    /// Number of elements added plus removed.
    pub fn element_changes(&self) -> usize {
        self.changes
            .iter()
            .map(|c| c.added.len() + c.removed.len())
            .sum()
    }

    /// What happens to table `ip6 pier`, if anything.
    pub fn loopback6(&self) -> Option<&Loopback6Change> {
        self.loopback6.as_ref()
    }

    /// The desired ruleset this plan leads to.
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }
}

/// Compares the kernel's tables `inet pier` and `ip6 pier` (`None`: absent) with the desired
/// ruleset.
pub fn diff(
    current: Option<&KernelTable>,
    current6: Option<&KernelChains>,
    desired: Ruleset,
) -> FirewallPlan {
    let rebuild = match current {
        None => Some(Rebuild {
            reason: format!("table inet {TABLE} is missing"),
            table_exists: false,
        }),
        Some(current) => structure_mismatch(current, &desired).map(|reason| Rebuild {
            reason,
            table_exists: true,
        }),
    };
    let changes = match (current, &rebuild) {
        (Some(current), None) => desired
            .sets
            .iter()
            .filter_map(|set| {
                let empty = BTreeSet::new();
                let have = current.elements.get(set.name).unwrap_or(&empty);
                let removed: Vec<_> = have.difference(&set.elements).cloned().collect();
                let added: Vec<_> = set.elements.difference(have).cloned().collect();
                (!removed.is_empty() || !added.is_empty()).then_some(SetChange {
                    set: set.name,
                    removed,
                    added,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    FirewallPlan {
        rebuild,
        loopback6: loopback6_change(current6, desired.loopback6.as_ref()),
        ruleset: desired,
        changes,
    }
}

fn loopback6_change(
    current: Option<&KernelChains>,
    desired: Option<&ChainSpec>,
) -> Option<Loopback6Change> {
    match (current, desired) {
        (None, None) => None,
        (None, Some(_)) => Some(Loopback6Change::Create),
        (Some(_), None) => Some(Loopback6Change::Delete),
        (Some(have), Some(want)) => {
            chains_mismatch(&have.chains, &have.rules, std::slice::from_ref(want))
                .map(Loopback6Change::Replace)
        }
    }
}

/// The first structural difference, described for `pier dataplane plan`.
fn structure_mismatch(current: &KernelTable, desired: &Ruleset) -> Option<String> {
    if let Some(reason) = chains_mismatch(&current.chains, &current.rules, &desired.chains) {
        return Some(reason);
    }
    for set in &desired.sets {
        let Some(have) = current.sets.iter().find(|s| s.name == set.name) else {
            return Some(format!("set {} is missing", set.name));
        };
        if !same_definition(have, set) {
            return Some(format!("set {} has another type or flags", set.name));
        }
    }
    if let Some(extra) = current
        .sets
        .iter()
        .find(|s| !desired.sets.iter().any(|d| d.name == s.name))
    {
        return Some(format!("unexpected set {}", extra.name));
    }
    None
}

/// The first difference between a table's chains and rules and the desired chains.
fn chains_mismatch(
    current: &[KernelChain],
    rules: &[KernelRule],
    desired: &[ChainSpec],
) -> Option<String> {
    for chain in desired {
        let Some(have) = current.iter().find(|c| c.name == chain.name) else {
            return Some(format!("chain {} is missing", chain.name));
        };
        let wanted = (
            Some(chain.hook as u32),
            Some(chain.priority),
            Some(chain.kind.as_str()),
            Some(POLICY_ACCEPT),
        );
        if (have.hook, have.priority, have.kind.as_deref(), have.policy) != wanted {
            return Some(format!(
                "chain {} has another hook, type or policy",
                chain.name
            ));
        }
        let have_rules: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == chain.name)
            .map(|r| r.comment.clone().unwrap_or_default())
            .collect();
        let want_rules: Vec<_> = chain.rules.iter().map(|r| r.comment()).collect();
        if have_rules != want_rules {
            return Some(format!(
                "chain {} has {} rule(s) that differ from Pier's {}",
                chain.name,
                have_rules.len(),
                want_rules.len()
            ));
        }
    }
    current
        .iter()
        .find(|c| !desired.iter().any(|d| d.name == c.name))
        .map(|extra| format!("unexpected chain {}", extra.name))
}

fn same_definition(have: &KernelSet, want: &SetSpec) -> bool {
    have.flags == want.flags()
        && have.key_type == want.key_type()
        && have.key_len == want.key_len()
        && have.data == want.data_type_len()
}

impl fmt::Display for FirewallPlan {
    /// One line per change, for `pier dataplane plan`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_inet(f)?;
        match &self.loopback6 {
            None => Ok(()),
            Some(Loopback6Change::Create) => writeln!(
                f,
                "table ip6 {TABLE}: create (the node has IPv6 networks: [::1]:hostPort)"
            ),
            Some(Loopback6Change::Replace(reason)) => {
                writeln!(f, "table ip6 {TABLE}: replace ({reason})")
            }
            Some(Loopback6Change::Delete) => {
                writeln!(f, "table ip6 {TABLE}: delete (no IPv6 network left)")
            }
        }
    }
}

impl FirewallPlan {
    fn fmt_inet(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(rebuild) = &self.rebuild {
            let verb = if rebuild.table_exists {
                "replace"
            } else {
                "create"
            };
            let elements: usize = self.ruleset.sets.iter().map(|s| s.elements.len()).sum();
            let rules: usize = self.ruleset.chains.iter().map(|c| c.rules.len()).sum();
            writeln!(
                f,
                "table inet {TABLE}: {verb} ({}): {} chains with {rules} rules, {} sets/maps with {elements} elements",
                rebuild.reason,
                self.ruleset.chains.len(),
                self.ruleset.sets.len(),
            )?;
            // A rebuild lists every element; past a screenful per set, only how many.
            for set in &self.ruleset.sets {
                for element in set.elements.iter().take(REBUILD_SHOWN) {
                    writeln!(f, "  + {} {}", set.name, set.show(element))?;
                }
                if set.elements.len() > REBUILD_SHOWN {
                    let more = set.elements.len() - REBUILD_SHOWN;
                    writeln!(f, "  + {} ... and {more} more", set.name)?;
                }
            }
            return Ok(());
        }
        if self.changes.is_empty() {
            return writeln!(f, "table inet {TABLE}: up to date");
        }
        writeln!(
            f,
            "table inet {TABLE}: {} element change(s)",
            self.element_changes()
        )?;
        for change in &self.changes {
            let Some(set) = self.ruleset.set(change.set) else {
                continue;
            };
            for element in &change.removed {
                writeln!(f, "  - {} {}", set.name, set.show(element))?;
            }
            for element in &change.added {
                writeln!(f, "  + {} {}", set.name, set.show(element))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::render::{MAP_PORTS_ANY, render};
    use crate::state::{NetworkState, NodeState, Protocol, PublishedPort};

    fn state(ports: u16) -> NodeState {
        NodeState {
            networks: vec![NetworkState {
                name: "web".into(),
                uid: "uid-web".into(),
                driver: Default::default(),
                subnet: Some("172.18.0.0/16".parse().expect("subnet")),
                gateway: Some("172.18.0.1".parse().expect("gateway")),
                mtu: 1500,
                internal: false,
                dns: true,
                vxlan_id: None,
                subnet6: None,
                gateway6: None,
            }],
            endpoints: vec![],
            ports: (0..ports)
                .map(|i| PublishedPort {
                    id: format!("default/p{i}"),
                    endpoint: "default/web".into(),
                    host_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                    host_port: 8000 + i,
                    protocol: Protocol::Tcp,
                    endpoint_address: "172.18.0.2".parse().expect("address"),
                    container_port: 80,
                })
                .collect(),
            ..NodeState::default()
        }
    }

    /// What the kernel would report after applying `ruleset` faithfully.
    fn as_kernel(ruleset: &Ruleset) -> KernelTable {
        KernelTable {
            chains: ruleset
                .chains
                .iter()
                .map(|c| KernelChain {
                    family: 1,
                    table: TABLE.into(),
                    name: c.name.into(),
                    hook: Some(c.hook as u32),
                    priority: Some(c.priority),
                    kind: Some(c.kind.as_str().into()),
                    policy: Some(POLICY_ACCEPT),
                })
                .collect(),
            rules: ruleset
                .chains
                .iter()
                .flat_map(|c| {
                    c.rules.iter().map(|r| KernelRule {
                        family: 1,
                        table: TABLE.into(),
                        chain: c.name.into(),
                        handle: 0,
                        comment: Some(r.comment()),
                    })
                })
                .collect(),
            sets: ruleset
                .sets
                .iter()
                .map(|s| KernelSet {
                    table: TABLE.into(),
                    name: s.name.into(),
                    flags: s.flags(),
                    key_type: s.key_type(),
                    key_len: s.key_len(),
                    data: s.data_type_len(),
                })
                .collect(),
            elements: ruleset
                .sets
                .iter()
                .map(|s| (s.name.to_owned(), s.elements.clone()))
                .collect(),
        }
    }

    #[test]
    fn missing_table_is_created_whole() {
        let plan = diff(None, None, render(&state(3)));
        assert!(!plan.is_empty());
        let rebuild = plan.rebuild().expect("rebuild");
        assert!(!rebuild.table_exists);
        assert!(plan.to_string().contains("create"), "{plan}");
        assert!(
            plan.to_string().contains("tcp . 8002 : 172.18.0.2 . 80"),
            "{plan}"
        );
    }

    #[test]
    fn a_rebuild_lists_a_screenful_per_set() {
        let plan = diff(None, None, render(&state(100)));
        let text = plan.to_string();
        assert!(text.contains("+ ports_any ... and 80 more"), "{text}");
        // 100 ports, 1 bridge, 1 bridge pair, 1 subnet range (start and end).
        assert!(text.contains("12 sets/maps with 104 elements"), "{text}");
    }

    #[test]
    fn matching_kernel_gives_an_empty_plan() {
        let desired = render(&state(3));
        let plan = diff(Some(&as_kernel(&desired)), None, desired);
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.to_string(), "table inet pier: up to date\n");
    }

    #[test]
    fn one_more_port_is_one_element() {
        let kernel = as_kernel(&render(&state(1000)));
        let plan = diff(Some(&kernel), None, render(&state(1001)));
        assert!(plan.rebuild().is_none());
        assert_eq!(plan.element_changes(), 1);
        assert_eq!(plan.changes()[0].set, MAP_PORTS_ANY);
        assert_eq!(plan.changes()[0].added.len(), 1);
        let plan = diff(Some(&kernel), None, render(&state(999)));
        assert_eq!(plan.element_changes(), 1);
        assert_eq!(plan.changes()[0].removed.len(), 1);
    }

    #[test]
    fn changed_target_replaces_the_element() {
        let kernel = as_kernel(&render(&state(1)));
        let mut moved = state(1);
        moved.ports[0].container_port = 8080;
        let plan = diff(Some(&kernel), None, render(&moved));
        assert_eq!(plan.element_changes(), 2);
        assert!(
            plan.to_string()
                .contains("- ports_any tcp . 8000 : 172.18.0.2 . 80")
        );
        assert!(
            plan.to_string()
                .contains("+ ports_any tcp . 8000 : 172.18.0.2 . 8080")
        );
    }

    #[test]
    fn structural_damage_rebuilds_the_table() {
        let desired = render(&state(1));
        let mut flushed = as_kernel(&desired);
        flushed.rules.clear();
        let plan = diff(Some(&flushed), None, desired.clone());
        assert!(plan.rebuild().expect("rebuild").table_exists);

        let mut edited = as_kernel(&desired);
        edited.rules[0].comment = None;
        assert!(
            diff(Some(&edited), None, desired.clone())
                .rebuild()
                .is_some()
        );

        let mut no_set = as_kernel(&desired);
        no_set.sets.retain(|s| s.name != MAP_PORTS_ANY);
        assert!(
            diff(Some(&no_set), None, desired.clone())
                .rebuild()
                .is_some()
        );

        let mut extra_chain = as_kernel(&desired);
        extra_chain.chains.push(KernelChain {
            family: 1,
            table: TABLE.into(),
            name: "mine".into(),
            hook: None,
            priority: None,
            kind: None,
            policy: None,
        });
        assert!(diff(Some(&extra_chain), None, desired).rebuild().is_some());
    }

    /// `state(ports)` with IPv6 on its network and `ports` more ports published on `::`.
    fn dual_stack(ports: u16) -> NodeState {
        let mut state = state(0);
        state.networks[0].subnet6 = Some("fd00:18::/64".parse().expect("subnet6"));
        state.networks[0].gateway6 = Some("fd00:18::1".parse().expect("gateway6"));
        state.ports = (0..ports)
            .map(|i| PublishedPort {
                id: format!("default/p{i}-v6"),
                endpoint: "default/web".into(),
                host_ip: std::net::Ipv6Addr::UNSPECIFIED.into(),
                host_port: 8000 + i,
                protocol: Protocol::Tcp,
                endpoint_address: "fd00:18::2".parse().expect("address6"),
                container_port: 80,
            })
            .collect();
        state
    }

    /// What the kernel would report for table `ip6 pier` after applying `ruleset` faithfully.
    fn as_kernel6(ruleset: &Ruleset) -> KernelChains {
        let chain = ruleset.loopback6.as_ref().expect("an ip6 table");
        KernelChains {
            chains: vec![KernelChain {
                family: 10,
                table: TABLE.into(),
                name: chain.name.into(),
                hook: Some(chain.hook as u32),
                priority: Some(chain.priority),
                kind: Some(chain.kind.as_str().into()),
                policy: Some(POLICY_ACCEPT),
            }],
            rules: chain
                .rules
                .iter()
                .map(|r| KernelRule {
                    family: 10,
                    table: TABLE.into(),
                    chain: chain.name.into(),
                    handle: 0,
                    comment: Some(r.comment()),
                })
                .collect(),
        }
    }

    #[test]
    fn the_ip6_table_follows_the_ipv6_networks() {
        let desired = render(&dual_stack(1));
        let inet = as_kernel(&desired);
        let plan = diff(Some(&inet), None, desired.clone());
        assert_eq!(plan.loopback6(), Some(&Loopback6Change::Create));
        assert!(plan.rebuild().is_none() && plan.changes().is_empty());
        assert!(
            plan.to_string().contains("table ip6 pier: create"),
            "{plan}"
        );

        let ip6 = as_kernel6(&desired);
        assert!(diff(Some(&inet), Some(&ip6), desired.clone()).is_empty());

        let mut edited = ip6.clone();
        edited.rules.pop();
        let plan = diff(Some(&inet), Some(&edited), desired.clone());
        assert!(
            matches!(plan.loopback6(), Some(Loopback6Change::Replace(r)) if r.contains("rule")),
            "{plan}"
        );

        // The last IPv6 network went: the table goes too, the inet table is updated in place.
        let ipv4_only = render(&state(0));
        let plan = diff(Some(&inet), Some(&ip6), ipv4_only);
        assert_eq!(plan.loopback6(), Some(&Loopback6Change::Delete));
        assert!(plan.rebuild().is_none());
        assert!(
            plan.to_string().contains("table ip6 pier: delete"),
            "{plan}"
        );
        assert!(
            diff(
                Some(&as_kernel(&render(&state(0)))),
                None,
                render(&state(0))
            )
            .is_empty()
        );
    }

    #[test]
    fn one_more_ipv6_port_is_one_element() {
        let desired = render(&dual_stack(100));
        let kernel = as_kernel(&desired);
        let kernel6 = as_kernel6(&desired);
        let plan = diff(Some(&kernel), Some(&kernel6), render(&dual_stack(101)));
        assert!(plan.rebuild().is_none() && plan.loopback6().is_none());
        assert_eq!(plan.element_changes(), 1);
        assert_eq!(
            plan.changes()[0].set,
            crate::firewall::render::MAP_PORTS_ANY6
        );
        assert!(
            plan.to_string()
                .contains("+ ports_any6 tcp . 8100 : fd00:18::2 . 80"),
            "{plan}"
        );
    }
}
