//! DNS views: pure logic from a `NodeState` to "this asking address sees these records".
//!
//! Docker semantics: a name resolves for an asker iff they share a network. The
//! asker is identified by its source address → its endpoint → the namespace that endpoint lives
//! in → every DNS-enabled network attached to that namespace (after `network connect` it sees
//! both). Everything is precomputed here when the state changes, so a query is one or two hash
//! probes and never walks the state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{A, PTR};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::state::{Attachment, EndpointState, Netns, NodeState, RemoteEndpoint};

use super::wire::{self, WireAnswer, WireNames};

/// TTL of local answers: 0, so a reconnect or a removed endpoint is seen by the next query.
pub const LOCAL_TTL: u32 = 0;

/// How deep `container:` sharing chains are followed (a cycle in a broken state must not hang).
const MAX_SHARE_DEPTH: usize = 8;

/// What one namespace's endpoints may see: the union of their DNS-enabled networks.
#[derive(Debug, Default)]
pub struct View {
    /// The networks this view is made of, sorted (for tests and logs).
    pub networks: Vec<String>,
    /// A records by lower-cased FQDN (`con1.`, `web.`, `con1.workshop-tage.`).
    names: HashMap<LowerName, Vec<Record>>,
    /// PTR records by reverse name (`2.0.18.172.in-addr.arpa.`).
    pointers: HashMap<LowerName, Vec<Record>>,
    /// Whether unknown names are forwarded upstream: false when every network is `internal`.
    pub forward: bool,
    /// A hash of everything the view was built from: equal inputs, reuse the view.
    fingerprint: u64,
    /// The A records of `names`, pre-encoded for the wire fast path.
    wire: WireNames,
}

/// The outcome of looking a question up in an asker's view.
#[derive(Debug, PartialEq)]
pub enum Resolution<'a> {
    /// The source address is no endpoint on this node: answer REFUSED (not an open resolver).
    Refused,
    /// A local name: these records (empty: the name exists but has no data of that type).
    Local(&'a [Record]),
    /// No such name here and it must not go upstream: NXDOMAIN.
    NxDomain,
    /// Not a local name: ask the node's upstream resolvers.
    Forward,
}

/// All views of one `NodeState`, keyed by asking address.
#[derive(Debug, Default)]
pub struct Views {
    askers: HashMap<Ipv4Addr, Arc<View>>,
    /// The views by network set, for reuse by the next rebuild.
    by_set: HashMap<Vec<String>, Arc<View>>,
    /// Gateways of DNS-enabled bridge networks: where the server listens.
    pub listen: BTreeSet<Ipv4Addr>,
}

impl Views {
    /// Builds every view of `state`. Names that are not valid DNS names are skipped (the operator
    /// validates names; a bad one must not take the others down).
    pub fn build(state: &NodeState) -> Views {
        Views::rebuild(state, None)
    }

    /// Like `build`, but reuses every view of `previous` whose inputs (its networks' flags and
    /// members) did not change, so an update costs what changed, not the size of the node.
    pub fn rebuild(state: &NodeState, previous: Option<&Views>) -> Views {
        let networks = state.networks_by_name();
        let dns_network = |name: &str| {
            networks
                .get(name)
                .is_some_and(|n| n.driver.has_bridge() && n.dns && n.gateway.is_some())
        };

        // Per namespace: its addresses (the asker keys) and its DNS-enabled networks.
        let mut addresses: BTreeMap<Netns, Vec<Ipv4Addr>> = BTreeMap::new();
        let mut attached: BTreeMap<Netns, BTreeSet<&str>> = BTreeMap::new();
        // Per DNS network: the names and addresses of its endpoints.
        let mut members: BTreeMap<&str, Vec<Member<'_>>> = BTreeMap::new();
        for endpoint in &state.endpoints {
            let Attachment::Bridge(bridge) = &endpoint.attachment else {
                continue;
            };
            let (Some(netns), Some(address)) = (namespace_of(state, endpoint), bridge.address)
            else {
                continue;
            };
            addresses.entry(netns.clone()).or_default().push(address);
            if dns_network(&bridge.network) {
                attached
                    .entry(netns)
                    .or_default()
                    .insert(bridge.network.as_str());
                members
                    .entry(bridge.network.as_str())
                    .or_default()
                    .push(Member::local(endpoint, address));
            }
        }
        // An overlay's endpoints on other nodes are names here too (they ask their own node).
        for remote in &state.remote_endpoints {
            if let (true, Some(address)) = (dns_network(&remote.network), remote.address) {
                members
                    .entry(remote.network.as_str())
                    .or_default()
                    .push(Member::remote(remote, address));
            }
        }

        // One view per distinct set of networks: namespaces on the same networks share it.
        let mut by_set: HashMap<BTreeSet<&str>, Arc<View>> = HashMap::new();
        let mut askers = HashMap::new();
        let forwards = |n: &str| networks.get(n).is_some_and(|n| !n.internal);
        for (netns, set) in &attached {
            // Usually every namespace is on the same few sets: look up before cloning the key.
            let view = match by_set.get(set) {
                Some(view) => view.clone(),
                None => {
                    let fingerprint = fingerprint(set, &members, forwards);
                    let key: Vec<String> = set.iter().map(|n| (*n).to_owned()).collect();
                    let view = match previous.and_then(|p| p.by_set.get(&key)) {
                        Some(old) if old.fingerprint == fingerprint => old.clone(),
                        _ => Arc::new(build_view(set, &members, forwards, fingerprint)),
                    };
                    by_set.insert(set.clone(), view.clone());
                    view
                }
            };
            for address in addresses.get(netns).into_iter().flatten() {
                askers.insert(*address, view.clone());
            }
        }

        let listen = state
            .networks
            .iter()
            .filter(|n| dns_network(&n.name))
            .filter_map(|n| n.gateway)
            .collect();
        let by_set = by_set
            .into_iter()
            .map(|(set, view)| (set.into_iter().map(str::to_owned).collect(), view))
            .collect();
        Views {
            askers,
            by_set,
            listen,
        }
    }

    /// The view of the asker at `source`, if it is an endpoint on a DNS-enabled network here.
    pub fn view_of(&self, source: IpAddr) -> Option<&View> {
        match source {
            IpAddr::V4(v4) => self.askers.get(&v4).map(Arc::as_ref),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .and_then(|v4| self.askers.get(&v4))
                .map(Arc::as_ref),
        }
    }

    /// Looks `name`/`kind` up as the asker at `source` sees it.
    pub fn resolve(&self, source: IpAddr, name: &LowerName, kind: RecordType) -> Resolution<'_> {
        match self.view_of(source) {
            None => Resolution::Refused,
            Some(view) => view.resolve(name, kind),
        }
    }
}

impl View {
    /// Looks a question up. Names of networks the asker is not on are simply absent from the
    /// view, so they take exactly the path of a name that exists nowhere (no leak).
    pub fn resolve(&self, name: &LowerName, kind: RecordType) -> Resolution<'_> {
        let names = self.names.get(name);
        let pointers = self.pointers.get(name);
        match (kind, names, pointers) {
            (RecordType::A | RecordType::ANY, Some(records), _) => Resolution::Local(records),
            (RecordType::PTR | RecordType::ANY, _, Some(records)) => Resolution::Local(records),
            // The name is ours but has no data of this type (AAAA before IPv6, MX, ...): NODATA,
            // never forwarded (the upstream would answer for a different name space).
            (_, Some(_), _) | (_, _, Some(_)) => Resolution::Local(&[]),
            // Single-label names are container names or typos: sending them upstream leaks them
            // and only ever gets NXDOMAIN back.
            _ if name.num_labels() <= 1 => Resolution::NxDomain,
            _ if self.forward => Resolution::Forward,
            _ => Resolution::NxDomain,
        }
    }

    /// The pre-encoded A records of a lower-cased wire-format name.
    pub fn wire(&self, name: &[u8]) -> Option<&WireAnswer> {
        self.wire.get(name)
    }

    /// Number of distinct names (for logs and tests).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }
}

/// One name-holder of a network: an endpoint on this node or (overlay) on another.
#[derive(Debug, Clone, Copy)]
struct Member<'a> {
    name: &'a str,
    aliases: &'a [String],
    address: Ipv4Addr,
}

impl<'a> Member<'a> {
    fn local(endpoint: &'a EndpointState, address: Ipv4Addr) -> Member<'a> {
        Member {
            name: &endpoint.name,
            aliases: &endpoint.aliases,
            address,
        }
    }

    fn remote(endpoint: &'a RemoteEndpoint, address: Ipv4Addr) -> Member<'a> {
        Member {
            name: &endpoint.name,
            aliases: &endpoint.aliases,
            address,
        }
    }
}

/// What a view depends on: its networks (names, whether they forward) and their members' names,
/// aliases and addresses, in state order.
fn fingerprint(
    set: &BTreeSet<&str>,
    members: &BTreeMap<&str, Vec<Member<'_>>>,
    forwards: impl Fn(&str) -> bool,
) -> u64 {
    use std::hash::{Hash, Hasher};
    // Fixed keys: fingerprints are compared within one process only, but must be stable there.
    let mut hasher = std::hash::DefaultHasher::new();
    for network in set {
        network.hash(&mut hasher);
        forwards(network).hash(&mut hasher);
        for member in members.get(network).into_iter().flatten() {
            member.name.hash(&mut hasher);
            member.aliases.hash(&mut hasher);
            member.address.hash(&mut hasher);
        }
    }
    hasher.finish()
}

fn build_view(
    set: &BTreeSet<&str>,
    members: &BTreeMap<&str, Vec<Member<'_>>>,
    forwards: impl Fn(&str) -> bool,
    fingerprint: u64,
) -> View {
    let endpoints: usize = set
        .iter()
        .filter_map(|n| members.get(n))
        .map(Vec::len)
        .sum();
    let mut view = View {
        networks: set.iter().map(|n| (*n).to_owned()).collect(),
        forward: set.iter().any(|n| forwards(n)),
        fingerprint,
        // Two names (NAME, NAME.NETWORK) per endpoint at least; growing the tables costs more.
        names: HashMap::with_capacity(endpoints * 2),
        pointers: HashMap::with_capacity(endpoints),
        ..View::default()
    };
    for network in set {
        for member in members.get(network).into_iter().flatten() {
            let short =
                std::iter::once(member.name).chain(member.aliases.iter().map(String::as_str));
            for label in short {
                for fqdn in [format!("{label}."), format!("{label}.{network}.")] {
                    add_a(&mut view.names, &fqdn, member.address);
                }
            }
            // PTR answers with `NAME.NETWORK.`, as Docker does.
            if let Ok(target) = Name::from_ascii(format!("{}.{network}.", member.name)) {
                let reverse = Name::from(member.address);
                let record =
                    Record::from_rdata(reverse.clone(), LOCAL_TTL, RData::PTR(PTR(target)));
                push_unique(
                    view.pointers.entry(LowerName::new(&reverse)).or_default(),
                    record,
                );
            }
        }
    }
    view.wire = view
        .names
        .iter()
        .filter_map(|(name, records)| Some((wire::wire_name(name), wire::encode(records)?)))
        .collect();
    view
}

fn add_a(names: &mut HashMap<LowerName, Vec<Record>>, fqdn: &str, address: Ipv4Addr) {
    let Ok(name) = Name::from_ascii(fqdn.to_ascii_lowercase()) else {
        tracing::warn!(name = fqdn, "skipping a name that is not a valid DNS name");
        return;
    };
    let record = Record::from_rdata(name.clone(), LOCAL_TTL, RData::A(A(address)));
    push_unique(names.entry(LowerName::new(&name)).or_default(), record);
}

fn push_unique(records: &mut Vec<Record>, record: Record) {
    if !records.contains(&record) {
        records.push(record);
    }
}

/// The namespace an endpoint's traffic comes from: its own, or for container mode the one of the
/// endpoint it shares (followed through chains).
pub fn namespace_of(state: &NodeState, endpoint: &EndpointState) -> Option<Netns> {
    let mut current = endpoint;
    for _ in 0..MAX_SHARE_DEPTH {
        match &current.attachment {
            Attachment::Shared { endpoint: target } => {
                current = state.endpoints.iter().find(|e| &e.id == target)?;
            }
            _ => return Some(current.netns.clone()),
        }
    }
    None
}

/// Per namespace, the gateways its resolver should ask: the gateway of each DNS-enabled network
/// it is attached to, the default-route network first, then in state order.
pub fn namespace_gateways(state: &NodeState) -> BTreeMap<Netns, Vec<Ipv4Addr>> {
    let networks = state.networks_by_name();
    let mut out: BTreeMap<Netns, Vec<(bool, Ipv4Addr)>> = BTreeMap::new();
    for endpoint in &state.endpoints {
        let Attachment::Bridge(bridge) = &endpoint.attachment else {
            continue;
        };
        let Some(network) = networks.get(bridge.network.as_str()) else {
            continue;
        };
        let (true, true, Some(gateway)) =
            (network.dns, network.driver.has_bridge(), network.gateway)
        else {
            continue;
        };
        let Some(netns) = namespace_of(state, endpoint) else {
            continue;
        };
        let gateways = out.entry(netns).or_default();
        if !gateways.iter().any(|(_, g)| *g == gateway) {
            gateways.push((bridge.default_route, gateway));
        }
    }
    out.into_iter()
        .map(|(netns, mut gateways)| {
            // Stable: the default-route network first, the rest keep their order.
            gateways.sort_by_key(|(default, _)| !*default);
            (netns, gateways.into_iter().map(|(_, g)| g).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BridgeAttachment, Driver, NetworkState};

    fn network(name: &str, subnet: &str, gateway: &str) -> NetworkState {
        NetworkState {
            name: name.into(),
            uid: format!("uid-{name}"),
            driver: Driver::Bridge,
            subnet: Some(subnet.parse().expect("subnet")),
            gateway: Some(gateway.parse().expect("gateway")),
            mtu: 1500,
            internal: false,
            dns: true,
            vxlan_id: None,
            subnet6: None,
            gateway6: None,
        }
    }

    fn endpoint(id: &str, ns: &str, network: &str, address: &str) -> EndpointState {
        EndpointState {
            id: id.into(),
            uid: format!("uid-{id}"),
            name: id.rsplit('/').next().unwrap_or(id).into(),
            aliases: vec![],
            netns: Netns::Named(ns.into()),
            attachment: Attachment::Bridge(BridgeAttachment {
                network: network.into(),
                interface: "eth0".into(),
                address: address.parse().ok(),
                address6: None,
                mac: "02:42:00:00:00:01".into(),
                default_route: true,
            }),
        }
    }

    /// The lesson: con1, con2 on workshop-tage; con3 on ch-open.
    fn lesson() -> NodeState {
        NodeState {
            networks: vec![
                network("workshop-tage", "172.18.0.0/16", "172.18.0.1"),
                network("ch-open", "172.19.0.0/16", "172.19.0.1"),
            ],
            endpoints: vec![
                endpoint("default/con1", "con1", "workshop-tage", "172.18.0.2"),
                endpoint("default/con2", "con2", "workshop-tage", "172.18.0.3"),
                endpoint("default/con3", "con3", "ch-open", "172.19.0.2"),
            ],
            ports: vec![],
            ..NodeState::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn name(s: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(s).expect("name"))
    }

    fn addresses(resolution: Resolution<'_>) -> Vec<Ipv4Addr> {
        match resolution {
            Resolution::Local(records) => records
                .iter()
                .filter_map(|r| match r.data {
                    RData::A(A(a)) => Some(a),
                    _ => None,
                })
                .collect(),
            other => panic!("expected local records, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_on_one_network_see_each_other() {
        let views = Views::build(&lesson());
        let got = views.resolve(ip("172.18.0.3"), &name("con1."), RecordType::A);
        assert_eq!(addresses(got), vec![ip4("172.18.0.2")]);
        let got = views.resolve(
            ip("172.18.0.2"),
            &name("CON2.workshop-tage."),
            RecordType::A,
        );
        assert_eq!(addresses(got), vec![ip4("172.18.0.3")]);
    }

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().expect("ipv4")
    }

    #[test]
    fn other_networks_names_are_exactly_like_unknown_names() {
        let views = Views::build(&lesson());
        let from_con3 = ip("172.19.0.2");
        for kind in [RecordType::A, RecordType::AAAA, RecordType::PTR] {
            assert_eq!(
                views.resolve(from_con3, &name("con1."), kind),
                views.resolve(from_con3, &name("nosuchname."), kind),
            );
            assert_eq!(
                views.resolve(from_con3, &name("con1.workshop-tage."), kind),
                views.resolve(from_con3, &name("nosuch.workshop-tage."), kind),
            );
            assert_eq!(
                views.resolve(from_con3, &name("2.0.18.172.in-addr.arpa."), kind),
                views.resolve(from_con3, &name("99.0.18.172.in-addr.arpa."), kind),
            );
        }
        assert_eq!(
            views.resolve(from_con3, &name("con1."), RecordType::A),
            Resolution::NxDomain
        );
        assert_eq!(
            views.resolve(from_con3, &name("con1.workshop-tage."), RecordType::A),
            Resolution::Forward
        );
    }

    /// An overlay's endpoints on other nodes resolve for its endpoints here, and only for them;
    /// they never ask this node (no view is keyed by their address).
    #[test]
    fn remote_overlay_endpoints_resolve_within_their_network() {
        let mut state = lesson();
        state.networks[0].driver = Driver::Overlay;
        state.networks[0].vxlan_id = Some(4096);
        state.remote_endpoints = vec![RemoteEndpoint {
            id: "default/far".into(),
            name: "far".into(),
            aliases: vec!["web".into()],
            network: "workshop-tage".into(),
            address: Some(ip4("172.18.0.9")),
            address6: None,
            mac: "02:42:ac:12:00:09".into(),
            node: "node-b".into(),
            tunnel: ip4("10.0.0.2"),
        }];
        let views = Views::build(&state);
        let from_con1 = ip("172.18.0.2");
        for asked in ["far.", "web.", "far.workshop-tage."] {
            let got = views.resolve(from_con1, &name(asked), RecordType::A);
            assert_eq!(addresses(got), vec![ip4("172.18.0.9")], "{asked}");
        }
        let ptr = views.resolve(
            from_con1,
            &name("9.0.18.172.in-addr.arpa."),
            RecordType::PTR,
        );
        assert!(matches!(ptr, Resolution::Local(records) if records.len() == 1));
        let from_con3 = ip("172.19.0.2");
        assert_eq!(
            views.resolve(from_con3, &name("far."), RecordType::A),
            Resolution::NxDomain
        );
        assert_eq!(
            views.resolve(ip("172.18.0.9"), &name("con1."), RecordType::A),
            Resolution::Refused
        );
        assert!(views.listen.contains(&ip4("172.18.0.1")));
    }

    #[test]
    fn connecting_a_second_network_shows_both() {
        let mut state = lesson();
        let mut second = endpoint("default/con3-wt", "con3", "workshop-tage", "172.18.0.4");
        second.name = "con3".into();
        if let Attachment::Bridge(b) = &mut second.attachment {
            b.default_route = false;
        }
        state.endpoints.push(second);
        let views = Views::build(&state);
        // From either of con3's addresses: names of both networks.
        for source in ["172.19.0.2", "172.18.0.4"] {
            let got = views.resolve(ip(source), &name("con1."), RecordType::A);
            assert_eq!(addresses(got), vec![ip4("172.18.0.2")], "from {source}");
        }
        let mut both = addresses(views.resolve(ip("172.19.0.2"), &name("con3."), RecordType::A));
        both.sort();
        assert_eq!(both, vec![ip4("172.18.0.4"), ip4("172.19.0.2")]);
        // con1 now sees con3's workshop-tage address only.
        let got = views.resolve(ip("172.18.0.2"), &name("con3."), RecordType::A);
        assert_eq!(addresses(got), vec![ip4("172.18.0.4")]);
        assert_eq!(
            namespace_gateways(&state)[&Netns::Named("con3".into())],
            vec![ip4("172.19.0.1"), ip4("172.18.0.1")]
        );
    }

    #[test]
    fn one_alias_on_several_endpoints_gives_every_address() {
        let mut state = lesson();
        state.endpoints[0].aliases = vec!["web".into()];
        state.endpoints[1].aliases = vec!["web".into(), "www".into()];
        let views = Views::build(&state);
        let mut got = addresses(views.resolve(ip("172.18.0.2"), &name("web."), RecordType::A));
        got.sort();
        assert_eq!(got, vec![ip4("172.18.0.2"), ip4("172.18.0.3")]);
        let got =
            addresses(views.resolve(ip("172.18.0.2"), &name("www.workshop-tage."), RecordType::A));
        assert_eq!(got, vec![ip4("172.18.0.3")]);
        assert!(matches!(
            views.resolve(ip("172.19.0.2"), &name("web."), RecordType::A),
            Resolution::NxDomain
        ));
    }

    #[test]
    fn ptr_answers_name_dot_network_with_ttl_zero() {
        let views = Views::build(&lesson());
        let Resolution::Local(records) = views.resolve(
            ip("172.18.0.3"),
            &name("2.0.18.172.in-addr.arpa."),
            RecordType::PTR,
        ) else {
            panic!("expected a PTR record");
        };
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].ttl, LOCAL_TTL);
        assert_eq!(
            records[0].data,
            RData::PTR(PTR(Name::from_ascii("con1.workshop-tage.").expect("name")))
        );
    }

    #[test]
    fn nodata_for_other_types_refused_for_strangers_internal_not_forwarded() {
        let mut state = lesson();
        let views = Views::build(&state);
        assert_eq!(
            views.resolve(ip("172.18.0.2"), &name("con2."), RecordType::AAAA),
            Resolution::Local(&[])
        );
        assert_eq!(
            views.resolve(ip("10.9.9.9"), &name("con2."), RecordType::A),
            Resolution::Refused
        );
        assert_eq!(
            views.resolve(ip("172.18.0.2"), &name("example.com."), RecordType::A),
            Resolution::Forward
        );
        state.networks[0].internal = true;
        let views = Views::build(&state);
        assert_eq!(
            views.resolve(ip("172.18.0.2"), &name("example.com."), RecordType::A),
            Resolution::NxDomain
        );
    }

    #[test]
    fn dns_disabled_networks_serve_nothing_and_get_no_listener() {
        let mut state = lesson();
        state.networks[1].dns = false;
        let views = Views::build(&state);
        assert_eq!(views.listen, BTreeSet::from([ip4("172.18.0.1")]));
        assert_eq!(
            views.resolve(ip("172.19.0.2"), &name("con3."), RecordType::A),
            Resolution::Refused
        );
    }

    #[test]
    fn a_rebuild_reuses_the_views_of_unchanged_networks() {
        let state = lesson();
        let first = Views::build(&state);
        let mut next = state.clone();
        next.endpoints
            .push(endpoint("default/con4", "con4", "ch-open", "172.19.0.3"));
        let second = Views::rebuild(&next, Some(&first));
        let view =
            |views: &Views, source: &str| views.askers.get(&ip4(source)).cloned().expect("asker");
        // workshop-tage did not change: the very same view; ch-open did: a new one.
        assert!(Arc::ptr_eq(
            &view(&first, "172.18.0.2"),
            &view(&second, "172.18.0.2")
        ));
        assert!(!Arc::ptr_eq(
            &view(&first, "172.19.0.2"),
            &view(&second, "172.19.0.2")
        ));
        let got = second.resolve(ip("172.19.0.2"), &name("con4."), RecordType::A);
        assert_eq!(addresses(got), vec![ip4("172.19.0.3")]);
        // An alias change on workshop-tage makes its view new too.
        let mut third = next.clone();
        third.endpoints[0].aliases = vec!["web".into()];
        let third_views = Views::rebuild(&third, Some(&second));
        assert!(!Arc::ptr_eq(
            &view(&second, "172.18.0.2"),
            &view(&third_views, "172.18.0.2")
        ));
    }

    #[test]
    fn container_mode_asks_with_the_shared_namespace() {
        let mut state = lesson();
        state.endpoints.push(EndpointState {
            id: "default/side".into(),
            uid: "uid-side".into(),
            name: "side".into(),
            aliases: vec![],
            netns: Netns::Named("side".into()),
            attachment: Attachment::Shared {
                endpoint: "default/con1".into(),
            },
        });
        assert_eq!(
            namespace_of(&state, &state.endpoints[3]),
            Some(Netns::Named("con1".into()))
        );
        // Like Docker, a container-mode sharer has no name of its own.
        let views = Views::build(&state);
        assert_eq!(
            views.resolve(ip("172.18.0.3"), &name("side."), RecordType::A),
            Resolution::NxDomain
        );
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::state::{BridgeAttachment, Driver, NetworkState};

    /// `cargo test --release -p pier-node --lib dns::views::timing -- --ignored --nocapture`:
    /// how long a rebuild of 200 endpoints' views takes (the update path's main cost).
    #[test]
    #[ignore = "timing, not a test"]
    fn rebuild_200_endpoints() {
        let state = NodeState {
            networks: vec![NetworkState {
                name: "bench".into(),
                uid: "u".into(),
                driver: Driver::Bridge,
                subnet: Some("172.30.0.0/24".parse().expect("subnet")),
                gateway: Some("172.30.0.1".parse().expect("gateway")),
                mtu: 1500,
                internal: false,
                dns: true,
                vxlan_id: None,
                subnet6: None,
                gateway6: None,
            }],
            endpoints: (0..200u8)
                .map(|i| EndpointState {
                    id: format!("default/svc{i}"),
                    uid: format!("u{i}"),
                    name: format!("svc{i}"),
                    aliases: vec![],
                    netns: Netns::Named(format!("ns{i}")),
                    attachment: Attachment::Bridge(BridgeAttachment {
                        network: "bench".into(),
                        interface: "eth0".into(),
                        address: Some(Ipv4Addr::new(172, 30, 0, i.wrapping_add(2))),
                        address6: None,
                        mac: "02:42:00:00:00:01".into(),
                        default_route: true,
                    }),
                })
                .collect(),
            ports: vec![],
            ..NodeState::default()
        };
        let rounds = 2000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(Views::build(&state));
        }
        println!(
            "Views::build, 200 endpoints: {:?} each",
            started.elapsed() / rounds
        );
    }
}
