use super::*;

fn net(s: &str) -> Ipv6Net {
    s.parse().expect("test CIDR")
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

fn pool(subnet: &str) -> AddressPool6 {
    AddressPool6::new(&AddressPool6Config {
        subnet: net(subnet),
        gateway: None,
        ip_range: None,
    })
    .expect("a valid pool")
}

#[test]
fn the_ula_prefix_is_fd_and_40_bits_of_the_cluster_id() {
    let prefix = ula_prefix("0b5c7e9e-3f0d-4c1a-9e2b-5d6f7a8b9c0d");
    assert_eq!(prefix.prefix_len(), 48);
    assert_eq!(prefix.network().octets()[0], 0xfd);
    assert_eq!(
        prefix,
        ula_prefix("0b5c7e9e-3f0d-4c1a-9e2b-5d6f7a8b9c0d"),
        "stable"
    );
    assert_ne!(prefix, ula_prefix("another cluster"));
    // Pinned: changing the formula would move every automatic IPv6 subnet of a cluster.
    assert_eq!(ula_prefix("").to_string(), "fdcb:f29c:e484::/48");
}

#[test]
fn networks_get_consecutive_64s_and_explicit_subnets_must_not_overlap() {
    let mut subnets = Subnets6::new(net("fd00:1:2::/48"));
    assert_eq!(subnets.allocate("a", None), Ok(net("fd00:1:2::/64")));
    assert_eq!(subnets.allocate("b", None), Ok(net("fd00:1:2:1::/64")));
    assert_eq!(
        subnets.allocate("a", None),
        Ok(net("fd00:1:2::/64")),
        "idempotent"
    );
    // An explicit subnet inside the pool: the automatic ones go round it.
    assert_eq!(
        subnets.allocate("c", Some(net("fd00:1:2:2::/64"))),
        Ok(net("fd00:1:2:2::/64"))
    );
    assert_eq!(subnets.allocate("d", None), Ok(net("fd00:1:2:3::/64")));
    assert_eq!(
        subnets.allocate("e", Some(net("fd00:1:2:1::/80"))),
        Err(Subnet6Error::Overlap {
            requested: net("fd00:1:2:1::/80"),
            existing: net("fd00:1:2:1::/64"),
            holder: "b".into(),
        })
    );
    assert_eq!(
        subnets.allocate("f", Some(net("2001:db8::/126"))),
        Err(Subnet6Error::Invalid(net("2001:db8::/126")))
    );
    assert_eq!(subnets.release("b"), Some(net("fd00:1:2:1::/64")));
    assert_eq!(
        subnets.allocate("e", Some(net("fd00:1:2:1::/80"))),
        Ok(net("fd00:1:2:1::/80"))
    );
}

#[test]
fn a_rebuilt_allocator_keeps_the_recorded_subnets_and_continues_after_them() {
    let recorded = vec![
        ("a".to_owned(), net("fd00:1:2:5::/64")),
        ("b".to_owned(), net("2001:db8::/64")),
        ("clash".to_owned(), net("2001:db8::/96")),
    ];
    let rebuilt = Subnets6::rebuild(net("fd00:1:2::/48"), recorded);
    assert_eq!(rebuilt.rejected.len(), 1);
    let mut subnets = rebuilt.allocator;
    assert_eq!(subnets.get("a"), Some(net("fd00:1:2:5::/64")));
    assert_eq!(subnets.allocate("c", None), Ok(net("fd00:1:2:6::/64")));
}

#[test]
fn addresses_come_in_order_and_the_gateway_and_subnet_address_are_never_handed_out() {
    let mut p = pool("fd00::/64");
    assert_eq!(p.gateway(), ip("fd00::1"));
    assert_eq!(p.allocate("a", None), Ok(ip("fd00::2")));
    assert_eq!(p.allocate("b", None), Ok(ip("fd00::3")));
    assert_eq!(p.allocate("a", None), Ok(ip("fd00::2")), "idempotent");
    assert_eq!(
        p.allocate("c", Some(ip("fd00::1"))),
        Err(Address6Error::Reserved(ip("fd00::1")))
    );
    assert_eq!(
        p.allocate("c", Some(ip("fd00::"))),
        Err(Address6Error::Reserved(ip("fd00::")))
    );
    assert_eq!(
        p.allocate("c", Some(ip("fd00::3"))),
        Err(Address6Error::Taken {
            address: ip("fd00::3"),
            holder: "b".into()
        })
    );
    assert_eq!(
        p.allocate("c", Some(ip("fd01::3"))),
        Err(Address6Error::OutOfSubnet {
            address: ip("fd01::3"),
            subnet: net("fd00::/64")
        })
    );
    // A static address ahead of the cursor is skipped by it.
    assert_eq!(p.allocate("c", Some(ip("fd00::4"))), Ok(ip("fd00::4")));
    assert_eq!(p.allocate("d", None), Ok(ip("fd00::5")));
    // Released addresses are not reused while the cursor has fresh ones.
    assert_eq!(p.release("b"), Some(ip("fd00::3")));
    assert_eq!(p.allocate("e", None), Ok(ip("fd00::6")));
    assert_eq!(p.len(), 4);
}

#[test]
fn a_small_range_reuses_released_addresses_once_the_cursor_is_through() {
    let mut p = AddressPool6::new(&AddressPool6Config {
        subnet: net("fd00::/124"),
        gateway: Some(ip("fd00::f")),
        ip_range: Some(net("fd00::/126")),
    })
    .expect("a valid pool");
    let got: Vec<_> = (0..3).map(|i| p.allocate(&format!("o{i}"), None)).collect();
    assert_eq!(
        got,
        [Ok(ip("fd00::1")), Ok(ip("fd00::2")), Ok(ip("fd00::3"))]
    );
    assert_eq!(
        p.allocate("o3", None),
        Err(Address6Error::Exhausted(net("fd00::/124")))
    );
    p.release("o1");
    assert_eq!(p.allocate("o3", None), Ok(ip("fd00::2")));
}

#[test]
fn pools_refuse_a_gateway_or_range_outside_the_subnet() {
    let bad_gateway = AddressPool6::new(&AddressPool6Config {
        subnet: net("fd00::/64"),
        gateway: Some(ip("fd01::1")),
        ip_range: None,
    });
    assert!(matches!(bad_gateway, Err(PoolConfig6Error::Gateway { .. })));
    let bad_range = AddressPool6::new(&AddressPool6Config {
        subnet: net("fd00::/64"),
        gateway: None,
        ip_range: Some(net("fd01::/80")),
    });
    assert!(matches!(bad_range, Err(PoolConfig6Error::Range { .. })));
}

#[test]
fn a_64_is_never_walked() {
    // A static address at the far end and thousands of allocations: the cost stays per
    // allocation, not per address of the subnet.
    let mut p = pool("fd00::/64");
    p.allocate("far", Some(ip("fd00::ffff:ffff:ffff:fffe")))
        .expect("far address");
    for i in 0..10_000 {
        p.allocate(&format!("o{i}"), None).expect("an address");
    }
    assert_eq!(p.address_of("o9999"), Some(ip("fd00::2711")));
}
