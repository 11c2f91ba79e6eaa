//! Cluster-wide subnet allocation, keyed by Network name.
//!
//! IPAM is cluster-wide: even though bridge networks are node-scoped, no two
//! Networks may overlap, so an address never means two different endpoints. Subnets are kept as
//! disjoint `[start, end]` intervals in a `BTreeMap`, so an overlap check is one range look-up and
//! automatic allocation jumps straight past whatever is in the way instead of trying every subnet.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Rebuilt;
use super::pools::{Pool, default_pools};

/// Why a subnet could not be allocated (or why a rebuild entry was not kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// The subnet overlaps one that another Network holds.
    #[error(
        "subnet {subnet} of network {network:?} overlaps subnet {holder_subnet} of network {holder:?}"
    )]
    Overlap {
        /// The Network asking.
        network: String,
        /// The subnet it asked for.
        subnet: Ipv4Net,
        /// The Network that holds the overlapping subnet.
        holder: String,
        /// The subnet it holds.
        holder_subnet: Ipv4Net,
    },
    /// The Network already has a different subnet (a Network's subnet never changes).
    #[error("network {network:?} already has subnet {current}; it cannot change to {requested}")]
    Changed {
        /// The Network asking.
        network: String,
        /// The subnet it holds.
        current: Ipv4Net,
        /// The subnet it asked for.
        requested: Ipv4Net,
    },
    /// Every subnet of every pool overlaps a Network or an excluded (host-routed) subnet.
    #[error(
        "no free subnet left in the address pools for network {network:?} \
         (all overlap other networks or routes on the host); give spec.subnet or add a pool"
    )]
    PoolsExhausted {
        /// The Network asking.
        network: String,
    },
    /// The subnet has bits set past its prefix length (e.g. `172.18.0.5/16`).
    #[error("subnet {subnet} of network {network:?} has host bits set (did you mean {}?)", subnet.trunc())]
    HostBitsSet {
        /// The Network asking.
        network: String,
        /// The subnet as given.
        subnet: Ipv4Net,
    },
    /// Rebuild only: the same Network appears more than once in the input.
    #[error(
        "network {network:?} is listed again with subnet {subnet}; keeping its first subnet {kept}"
    )]
    Duplicate {
        /// The Network.
        network: String,
        /// The subnet of the repeated entry (dropped).
        subnet: Ipv4Net,
        /// The subnet of the first entry (kept).
        kept: Ipv4Net,
    },
}

/// True if `net` has bits set past its prefix length.
pub(crate) fn has_host_bits(net: Ipv4Net) -> bool {
    net.addr() != net.network()
}

/// The first address of a pool's base, where its search starts.
fn pool_start(pool: &Pool) -> u64 {
    u64::from(u32::from(pool.base().network()))
}

/// `[first, last]` address of a subnet as integers.
fn bounds(net: Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// Allocates non-overlapping subnets to Networks, from configured pools or as requested.
#[derive(Debug, Clone)]
pub struct SubnetAllocator {
    pools: Vec<Pool>,
    /// Network name → its subnet.
    by_network: HashMap<String, Ipv4Net>,
    /// Subnet start → (subnet end, Network name); the intervals are disjoint.
    by_start: BTreeMap<u32, (u32, String)>,
    /// Start → end of subnets the pools must skip (e.g. routes already on the host), merged so
    /// that the intervals are disjoint.
    excluded: BTreeMap<u32, u32>,
    /// Per pool, where the search for a free subnet starts: every subnet of the pool before it
    /// is known to be taken. Without it, the n-th automatic subnet of a big pool would jump over
    /// the n-1 before it (quadratic); with it, filling a pool is linear.
    hints: Vec<u64>,
}

impl Default for SubnetAllocator {
    /// An allocator over Docker's default pools.
    fn default() -> Self {
        Self::new(default_pools())
    }
}

impl SubnetAllocator {
    /// An empty allocator handing out subnets from `pools`, in order.
    pub fn new(pools: Vec<Pool>) -> Self {
        let hints = pools.iter().map(pool_start).collect();
        Self {
            pools,
            by_network: HashMap::new(),
            by_start: BTreeMap::new(),
            excluded: BTreeMap::new(),
            hints,
        }
    }

    /// Rebuilds the allocator from the `(network, subnet)` pairs recorded in Network statuses —
    /// how a restarted operator recovers.
    ///
    /// Entries are taken in order; an entry that repeats a Network, overlaps an earlier entry or
    /// has host bits set is not kept and is reported, so the first holder keeps its subnet and
    /// every bad entry is named (not just the first).
    pub fn rebuild<I, S>(pools: Vec<Pool>, existing: I) -> Rebuilt<Self, SubnetError>
    where
        I: IntoIterator<Item = (S, Ipv4Net)>,
        S: AsRef<str>,
    {
        let mut this = Self::new(pools);
        let mut rejected = Vec::new();
        for (network, subnet) in existing {
            let network = network.as_ref();
            if let Some(&kept) = this.by_network.get(network) {
                rejected.push(SubnetError::Duplicate {
                    network: network.to_owned(),
                    subnet,
                    kept,
                });
                continue;
            }
            if let Err(e) = this.allocate(network, Some(subnet)) {
                rejected.push(e);
            }
        }
        Rebuilt {
            allocator: this,
            rejected,
        }
    }

    /// The pools, in the order they are tried.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// Replaces the set of subnets automatic allocation must skip, e.g. the destinations of the
    /// routes present on the host (a pool subnet that is already routed somewhere would make
    /// that destination unreachable from the node). Existing allocations and explicit requests
    /// are not affected: a user who names a subnet is trusted to know the host.
    ///
    /// Callers should leave out the default route (0.0.0.0/0), which overlaps everything.
    pub fn set_excluded<I: IntoIterator<Item = Ipv4Net>>(&mut self, subnets: I) {
        let mut spans: Vec<(u32, u32)> = subnets.into_iter().map(bounds).collect();
        spans.sort_unstable();
        self.excluded.clear();
        let mut current: Option<(u32, u32)> = None;
        for (start, end) in spans {
            current = match current {
                Some((s, e)) if u64::from(start) <= u64::from(e) + 1 => Some((s, e.max(end))),
                Some((s, e)) => {
                    self.excluded.insert(s, e);
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            self.excluded.insert(s, e);
        }
        // The new set may exclude less than the old one: search every pool from its start again.
        self.hints = self.pools.iter().map(pool_start).collect();
    }

    /// The excluded subnets' spans as `(first, last)` addresses, merged.
    pub fn excluded(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.excluded
            .iter()
            .map(|(s, e)| (Ipv4Addr::from(*s), Ipv4Addr::from(*e)))
    }

    /// Gives `network` a subnet: `requested` if given (and free), else the first pool subnet
    /// that overlaps no other Network and no excluded subnet.
    ///
    /// Idempotent: a Network that already has a subnet gets it back (asking for a different one
    /// is [`SubnetError::Changed`]).
    pub fn allocate(
        &mut self,
        network: &str,
        requested: Option<Ipv4Net>,
    ) -> Result<Ipv4Net, SubnetError> {
        if let Some(&current) = self.by_network.get(network) {
            return match requested {
                Some(requested) if requested != current => Err(SubnetError::Changed {
                    network: network.to_owned(),
                    current,
                    requested,
                }),
                _ => Ok(current),
            };
        }
        let subnet = match requested {
            Some(subnet) => {
                if has_host_bits(subnet) {
                    return Err(SubnetError::HostBitsSet {
                        network: network.to_owned(),
                        subnet,
                    });
                }
                if let Some((holder, holder_subnet)) = self.holder_overlapping(subnet) {
                    return Err(SubnetError::Overlap {
                        network: network.to_owned(),
                        subnet,
                        holder: holder.to_owned(),
                        holder_subnet,
                    });
                }
                subnet
            }
            None => self
                .first_free()
                .ok_or_else(|| SubnetError::PoolsExhausted {
                    network: network.to_owned(),
                })?,
        };
        let (start, end) = bounds(subnet);
        self.by_start.insert(start, (end, network.to_owned()));
        self.by_network.insert(network.to_owned(), subnet);
        Ok(subnet)
    }

    /// The subnet `network` holds.
    pub fn get(&self, network: &str) -> Option<Ipv4Net> {
        self.by_network.get(network).copied()
    }

    /// Frees `network`'s subnet, returning it.
    pub fn release(&mut self, network: &str) -> Option<Ipv4Net> {
        let subnet = self.by_network.remove(network)?;
        let (start, end) = bounds(subnet);
        self.by_start.remove(&start);
        // The subnets of each pool that overlap the released one may be free again.
        for (pool, hint) in self.pools.iter().zip(&mut self.hints) {
            let first = pool_start(pool);
            let last = u64::from(u32::from(pool.base().broadcast()));
            if u64::from(end) < first || u64::from(start) > last {
                continue;
            }
            let block = pool.block();
            let aligned = u64::from(start).max(first) / block * block;
            *hint = (*hint).min(aligned);
        }
        Some(subnet)
    }

    /// Every `(network, subnet)` held, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Ipv4Net)> + '_ {
        self.by_start.iter().filter_map(|(start, (_, network))| {
            let subnet = self.by_network.get(network)?;
            (bounds(*subnet).0 == *start).then_some((network.as_str(), *subnet))
        })
    }

    /// Number of Networks holding a subnet.
    pub fn len(&self) -> usize {
        self.by_network.len()
    }

    /// True when no Network holds a subnet.
    pub fn is_empty(&self) -> bool {
        self.by_network.is_empty()
    }

    /// The Network (and its subnet) whose subnet overlaps `subnet`, if any.
    pub fn holder_overlapping(&self, subnet: Ipv4Net) -> Option<(&str, Ipv4Net)> {
        let (start, end) = bounds(subnet);
        let (_, (e, holder)) = self.by_start.range(..=end).next_back()?;
        if *e < start {
            return None;
        }
        let holder_subnet = *self.by_network.get(holder)?;
        Some((holder.as_str(), holder_subnet))
    }

    /// End of the interval in `map` overlapping `[start, end]`, if any (intervals disjoint).
    fn overlap_end<V>(
        map: &BTreeMap<u32, V>,
        start: u32,
        end: u32,
        end_of: impl Fn(&V) -> u32,
    ) -> Option<u32> {
        let (_, v) = map.range(..=end).next_back()?;
        let e = end_of(v);
        (e >= start).then_some(e)
    }

    /// The first pool subnet free of Networks and exclusions (moving the hints past every
    /// subnet found taken on the way).
    fn first_free(&mut self) -> Option<Ipv4Net> {
        for (pool, hint) in self.pools.iter().zip(&mut self.hints) {
            let block = pool.block();
            let last = u64::from(u32::from(pool.base().broadcast()));
            let start = hint;
            while *start + block - 1 <= last {
                let (s, e) = (
                    u32::try_from(*start).ok()?,
                    u32::try_from(*start + block - 1).ok()?,
                );
                let blocker = Self::overlap_end(&self.by_start, s, e, |(end, _)| *end)
                    .into_iter()
                    .chain(Self::overlap_end(&self.excluded, s, e, |end| *end))
                    .max();
                match blocker {
                    None => return pool.subnet_at(s),
                    // Every block starting at or before the blocker's end overlaps it.
                    Some(b) => *start = (u64::from(b) / block + 1) * block,
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn first_networks_get_docker_subnets() {
        let mut a = SubnetAllocator::default();
        assert_eq!(a.allocate("bridge", None), Ok(net("172.17.0.0/16")));
        assert_eq!(a.allocate("one", None), Ok(net("172.18.0.0/16")));
        assert_eq!(a.allocate("two", None), Ok(net("172.19.0.0/16")));
        // Idempotent.
        assert_eq!(a.allocate("one", None), Ok(net("172.18.0.0/16")));
        assert_eq!(
            a.allocate("one", Some(net("172.18.0.0/16"))),
            Ok(net("172.18.0.0/16"))
        );
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn skips_explicit_and_excluded_subnets() {
        let mut a = SubnetAllocator::default();
        a.allocate("custom", Some(net("172.17.5.0/24")))
            .expect("free");
        a.set_excluded([net("172.18.0.0/15"), net("172.20.3.0/24")]);
        // 172.17/16 overlaps "custom", 172.18-19 are routed, 172.20/16 overlaps a route.
        assert_eq!(a.allocate("auto", None), Ok(net("172.21.0.0/16")));
    }

    #[test]
    fn all_default_pools_then_exhausted() {
        let mut a = SubnetAllocator::default();
        for i in 0..31 {
            a.allocate(&format!("n{i}"), None).expect("pool subnet");
        }
        assert_eq!(a.get("n15"), Some(net("192.168.0.0/20")));
        assert_eq!(a.get("n30"), Some(net("192.168.240.0/20")));
        let err = a.allocate("n31", None).expect_err("exhausted");
        assert_eq!(
            err,
            SubnetError::PoolsExhausted {
                network: "n31".into()
            }
        );
        assert!(err.to_string().contains("n31"));
        // Release makes room again, at the same place.
        assert_eq!(a.release("n3"), Some(net("172.20.0.0/16")));
        assert_eq!(a.allocate("n31", None), Ok(net("172.20.0.0/16")));
    }

    #[test]
    fn explicit_overlap_names_the_holder() {
        let mut a = SubnetAllocator::default();
        a.allocate("workshop", Some(net("10.1.0.0/16")))
            .expect("free");
        let err = a
            .allocate("other", Some(net("10.1.2.0/24")))
            .expect_err("overlap");
        assert_eq!(
            err,
            SubnetError::Overlap {
                network: "other".into(),
                subnet: net("10.1.2.0/24"),
                holder: "workshop".into(),
                holder_subnet: net("10.1.0.0/16"),
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("\"workshop\"") && msg.contains("10.1.0.0/16"),
            "{msg}"
        );
        // Containing the holder is an overlap too.
        assert!(matches!(
            a.allocate("big", Some(net("10.0.0.0/8"))),
            Err(SubnetError::Overlap { .. })
        ));
        // Adjacent is fine.
        assert!(a.allocate("next", Some(net("10.2.0.0/16"))).is_ok());
    }

    #[test]
    fn explicit_subnet_must_be_a_network_address_and_cannot_change() {
        let mut a = SubnetAllocator::default();
        assert!(matches!(
            a.allocate("x", Some(net("172.18.0.5/16"))),
            Err(SubnetError::HostBitsSet { .. })
        ));
        a.allocate("x", Some(net("172.18.0.0/16"))).expect("free");
        assert!(matches!(
            a.allocate("x", Some(net("172.19.0.0/16"))),
            Err(SubnetError::Changed { .. })
        ));
    }

    #[test]
    fn explicit_subnets_ignore_exclusions() {
        let mut a = SubnetAllocator::default();
        a.set_excluded([net("10.0.0.0/8")]);
        assert!(a.allocate("x", Some(net("10.1.0.0/16"))).is_ok());
    }

    #[test]
    fn excluded_spans_are_merged() {
        let mut a = SubnetAllocator::default();
        a.set_excluded([
            net("10.0.1.0/24"),
            net("10.0.0.0/24"),
            net("10.0.0.0/16"),
            net("10.2.0.0/16"),
            net("10.1.0.0/16"),
        ]);
        let spans: Vec<_> = a.excluded().collect();
        assert_eq!(
            spans,
            vec![(Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 2, 255, 255))]
        );
    }

    #[test]
    fn released_subnet_in_a_big_pool_is_found_again() {
        let pool: Pool = "base=10.0.0.0/8,size=24".parse().expect("pool");
        let mut a = SubnetAllocator::new(vec![pool]);
        for i in 0..1000 {
            a.allocate(&format!("n{i}"), None).expect("free");
        }
        assert_eq!(a.get("n999"), Some(net("10.3.231.0/24")));
        assert_eq!(a.release("n500"), Some(net("10.1.244.0/24")));
        // A bigger explicit subnet that covers several pool subnets, released again.
        a.allocate("wide", Some(net("10.8.0.0/16"))).expect("free");
        assert_eq!(a.allocate("x", None), Ok(net("10.1.244.0/24")));
        assert_eq!(a.allocate("y", None), Ok(net("10.3.232.0/24")));
        a.release("wide");
        a.release("n3");
        assert_eq!(a.allocate("z", None), Ok(net("10.0.3.0/24")));
    }

    #[test]
    fn excluding_everything_exhausts_pools() {
        let mut a = SubnetAllocator::default();
        a.set_excluded([net("0.0.0.0/0")]);
        assert!(matches!(
            a.allocate("x", None),
            Err(SubnetError::PoolsExhausted { .. })
        ));
    }

    #[test]
    fn rebuild_reports_every_bad_entry_and_keeps_first_holder() {
        let entries = vec![
            ("a", net("172.17.0.0/16")),
            ("b", net("172.17.0.0/24")), // overlaps a
            ("c", net("172.18.0.0/16")),
            ("a", net("172.19.0.0/16")), // duplicate network
            ("d", net("172.18.0.0/16")), // duplicate subnet
            ("e", net("172.20.0.9/16")), // host bits
        ];
        let rebuilt = SubnetAllocator::rebuild(default_pools(), entries);
        assert_eq!(rebuilt.rejected.len(), 4, "{:?}", rebuilt.rejected);
        assert!(
            matches!(&rebuilt.rejected[0], SubnetError::Overlap { network, holder, .. } if network == "b" && holder == "a")
        );
        assert!(
            matches!(&rebuilt.rejected[1], SubnetError::Duplicate { network, .. } if network == "a")
        );
        assert!(
            matches!(&rebuilt.rejected[2], SubnetError::Overlap { network, holder, .. } if network == "d" && holder == "c")
        );
        assert!(matches!(
            &rebuilt.rejected[3],
            SubnetError::HostBitsSet { .. }
        ));
        let a = rebuilt.allocator;
        assert_eq!(a.get("a"), Some(net("172.17.0.0/16")));
        assert_eq!(a.get("b"), None);
        assert_eq!(a.get("c"), Some(net("172.18.0.0/16")));
        let held: Vec<_> = a.iter().map(|(n, _)| n.to_owned()).collect();
        assert_eq!(held, vec!["a", "c"]);
        // Allocation after rebuild skips the rebuilt subnets.
        let mut a = a;
        assert_eq!(a.allocate("f", None), Ok(net("172.19.0.0/16")));
    }

    fn arb_net() -> impl Strategy<Value = Ipv4Net> {
        // Small space so that overlaps are frequent: 10.0.0.0/16 .. 10.3.255.255, /14../24.
        (0u32..4, 0u32..256, 14u8..=24).prop_map(|(b, c, len)| {
            Ipv4Net::new(Ipv4Addr::new(10, b as u8, c as u8, 0), len)
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 16))
        })
    }

    fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
        a.contains(&b) || b.contains(&a)
    }

    proptest! {
        /// Whatever mix of explicit and automatic requests and releases, held subnets never overlap.
        #[test]
        fn held_subnets_never_overlap(ops in proptest::collection::vec((0usize..12, proptest::option::of(arb_net()), any::<bool>()), 0..80)) {
            let pools = vec![Pool::new(net("10.0.0.0/14"), 20).expect("pool")];
            let mut a = SubnetAllocator::new(pools);
            for (n, req, release) in ops {
                let name = format!("n{n}");
                if release {
                    a.release(&name);
                } else {
                    let held_before: Vec<Ipv4Net> = a.iter().map(|(_, s)| s).collect();
                    let fresh = a.get(&name).is_none();
                    match (a.allocate(&name, req), req) {
                        (Ok(got), Some(r)) => prop_assert_eq!(got, r),
                        (Ok(got), None) if fresh => {
                            // The first free pool subnet, by brute force.
                            let first = a.pools()[0].subnets().find(|c| !held_before.iter().any(|h| overlaps(*c, *h)));
                            prop_assert_eq!(Some(got), first);
                        }
                        (Err(SubnetError::PoolsExhausted { .. }), None) => {
                            prop_assert!(a.pools()[0].subnets().all(|c| held_before.iter().any(|h| overlaps(c, *h))));
                        }
                        _ => {}
                    }
                }
                let held: Vec<Ipv4Net> = a.iter().map(|(_, s)| s).collect();
                prop_assert_eq!(held.len(), a.len());
                for (i, x) in held.iter().enumerate() {
                    for y in &held[i + 1..] {
                        prop_assert!(!overlaps(*x, *y), "{} overlaps {}", x, y);
                    }
                }
            }
        }

        /// Rebuild keeps a non-overlapping first-come subset, reports every other entry, and
        /// later automatic allocations never overlap a kept entry.
        #[test]
        fn rebuild_then_allocate_never_collides(entries in proptest::collection::vec((0usize..20, arb_net()), 0..30)) {
            let pools = vec![Pool::new(net("10.0.0.0/14"), 22).expect("pool")];
            let input: Vec<(String, Ipv4Net)> = entries.iter().map(|(n, s)| (format!("n{n}"), *s)).collect();
            let rebuilt = SubnetAllocator::rebuild(pools, input.clone());
            let mut a = rebuilt.allocator;
            prop_assert_eq!(a.len() + rebuilt.rejected.len(), input.len());
            let kept: Vec<Ipv4Net> = a.iter().map(|(_, s)| s).collect();
            for i in 0..300 {
                match a.allocate(&format!("auto{i}"), None) {
                    Ok(s) => for k in &kept { prop_assert!(!overlaps(s, *k)); },
                    Err(SubnetError::PoolsExhausted { .. }) => break,
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
    }
}
