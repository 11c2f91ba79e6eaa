//! IPAM and host-port allocation benchmarks: `cargo bench -p pier-operator --bench ipam`.
//!
//! Owner names are made before timing starts, so the figures are the allocators' own cost
//! (including storing the owner), not `format!`'s.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ipnet::Ipv4Net;
use pier_operator::ipam::ipv6::{AddressPool6, AddressPool6Config, Subnets6, ula_prefix};
use pier_operator::ipam::{
    AddressPool, AddressPoolConfig, Bitmap, Pool, SubnetAllocator, default_pools,
};
use pier_operator::ports::{PortAllocator, Protocol};

/// Usable addresses of a /16 with default reservations (network, broadcast, gateway).
const SLASH16_FREE: usize = 65_536 - 3;

fn slash16() -> AddressPoolConfig {
    AddressPoolConfig::new(Ipv4Net::new_assert(Ipv4Addr::new(172, 18, 0, 0), 16))
}

fn owners(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("default/{prefix}-{i}")).collect()
}

/// A small deterministic PRNG (xorshift64*), so runs are comparable without a rand dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn empty_pool() -> AddressPool {
    AddressPool::new(&slash16()).expect("valid /16")
}

fn bench_fill_slash16(c: &mut Criterion) {
    let names = owners("ep", SLASH16_FREE);
    let mut g = c.benchmark_group("ipam");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("fill_slash16_65533", |b| {
        b.iter_batched(
            empty_pool,
            |mut pool| {
                for name in &names {
                    black_box(pool.allocate(name, None).expect("free address"));
                }
                pool
            },
            BatchSize::PerIteration,
        )
    });

    // The bitmap alone, to show how much of the above is owner bookkeeping.
    g.bench_function("bitmap_only_fill_65536", |b| {
        b.iter_batched(
            || Bitmap::new(1 << 16),
            |mut bits| {
                while let Some(i) = bits.set_next_clear(0, 1 << 16) {
                    black_box(i);
                }
                bits
            },
            BatchSize::PerIteration,
        )
    });

    // The last 1,024 allocations of a /16, to show allocation does not slow down as it fills.
    let mut almost_full = empty_pool();
    for name in &names[..SLASH16_FREE - 1024] {
        almost_full.allocate(name, None).expect("free address");
    }
    g.bench_function("fill_last_1024_of_slash16", |b| {
        b.iter_batched(
            || almost_full.clone(),
            |mut pool| {
                for name in &names[SLASH16_FREE - 1024..] {
                    black_box(pool.allocate(name, None).expect("free address"));
                }
                pool
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("first_1024_of_slash16", |b| {
        b.iter_batched(
            empty_pool,
            |mut pool| {
                for name in &names[..1024] {
                    black_box(pool.allocate(name, None).expect("free address"));
                }
                pool
            },
            BatchSize::PerIteration,
        )
    });

    // 10,000 random release/allocate pairs on a half-full /16.
    let half = SLASH16_FREE / 2;
    let mut half_full = empty_pool();
    for name in &names[..half] {
        half_full.allocate(name, None).expect("free address");
    }
    let fresh = owners("new", 10_000);
    g.bench_function(
        "random_10000_release_allocate_pairs_half_full_slash16",
        |b| {
            b.iter_batched(
                || {
                    // Which held owner each pair releases, chosen before timing.
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
                    let mut held: Vec<&str> = names[..half].iter().map(String::as_str).collect();
                    let mut victims = Vec::with_capacity(10_000);
                    for new in &fresh {
                        let i = rng.below(held.len());
                        victims.push(held[i]);
                        held[i] = new;
                    }
                    (half_full.clone(), victims)
                },
                |(mut pool, victims)| {
                    for (victim, new) in victims.iter().zip(&fresh) {
                        black_box(pool.release(victim));
                        black_box(pool.allocate(new, None).expect("free address"));
                    }
                    pool
                },
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

/// The IPv6 figure: the first 1,000 allocations in an empty /64 (2^64 addresses, none
/// of which may be listed), and a /64 for each of 1,000 Networks from a ULA /48.
fn bench_ipv6(c: &mut Criterion) {
    let names = owners("ep6", 1000);
    let slash64 = AddressPool6Config {
        subnet: "fd12:3456:789a:1::/64".parse().expect("a /64"),
        gateway: None,
        ip_range: None,
    };
    let mut g = c.benchmark_group("ipam");
    g.bench_function("first_1000_of_slash64", |b| {
        b.iter_batched(
            || AddressPool6::new(&slash64).expect("valid /64"),
            |mut pool| {
                for name in &names {
                    black_box(pool.allocate(name, None).expect("free address"));
                }
                pool
            },
            BatchSize::PerIteration,
        )
    });
    let networks = owners("net", 1000);
    g.bench_function("1000_slash64_from_ula_slash48", |b| {
        b.iter_batched(
            || Subnets6::new(ula_prefix("bench")),
            |mut subnets| {
                for name in &networks {
                    black_box(subnets.allocate(name, None).expect("a free /64"));
                }
                subnets
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_host_ports(c: &mut Criterion) {
    let names = owners("pub", 28_232);
    let mut g = c.benchmark_group("ports");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("auto_fill_32768_60999", |b| {
        b.iter_batched(
            PortAllocator::default,
            |mut ports| {
                for name in &names {
                    black_box(
                        ports
                            .allocate(
                                name,
                                "node-a",
                                Protocol::Tcp,
                                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                            )
                            .expect("free port"),
                    );
                }
                ports
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_subnets(c: &mut Criterion) {
    let mut g = c.benchmark_group("subnets");
    let names = owners("net", 4096);
    g.bench_function("all_31_default_pool_subnets", |b| {
        b.iter_batched(
            SubnetAllocator::default,
            |mut subnets| {
                for name in &names[..31] {
                    black_box(subnets.allocate(name, None).expect("free subnet"));
                }
                subnets
            },
            BatchSize::SmallInput,
        )
    });
    let big: Pool = "base=10.0.0.0/8,size=24".parse().expect("valid pool");
    g.bench_function("4096_slash24_from_10_0_0_0_8", |b| {
        b.iter_batched(
            || SubnetAllocator::new(vec![big]),
            |mut subnets| {
                for name in &names {
                    black_box(subnets.allocate(name, None).expect("free subnet"));
                }
                subnets
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("rebuild_30_exclude_route_then_allocate", |b| {
        let mut full = SubnetAllocator::default();
        for name in &names[..30] {
            full.allocate(name, None).expect("free subnet");
        }
        let existing: Vec<(String, Ipv4Net)> =
            full.iter().map(|(n, s)| (n.to_owned(), s)).collect();
        let routes = [Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16)];
        let run = || {
            let mut rebuilt =
                SubnetAllocator::rebuild(default_pools(), existing.iter().cloned()).allocator;
            rebuilt.set_excluded(routes);
            rebuilt.allocate("late", None).is_err()
        };
        assert!(run(), "the only free pool subnet is routed on the host");
        b.iter(|| {
            let mut rebuilt =
                SubnetAllocator::rebuild(default_pools(), existing.iter().cloned()).allocator;
            rebuilt.set_excluded(routes);
            black_box(rebuilt.allocate("late", None).is_err())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_fill_slash16,
    bench_ipv6,
    bench_host_ports,
    bench_subnets
);
criterion_main!(benches);
