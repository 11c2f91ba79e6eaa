//! The operator's settings: command-line flags with environment-variable fallbacks (`pier operator
//! --help`), and the [`Config`] they become.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::allocations::AllocConfig;
use crate::ipam::Pool;
use crate::ports::{KUBERNETES_HOST_PORTS, PortRange, PortSet};

/// `pier operator` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// This replica's name in the leader-election Lease (default: the host name, i.e. the Pod).
    #[arg(long, env = "PIER_OPERATOR_IDENTITY")]
    pub identity: Option<String>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "PIER_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PIER_LEASE_NAME", default_value = "pier-operator")]
    pub lease_name: String,
    /// Seconds a leader that stops renewing keeps the lease before a standby takes over.
    #[arg(long, env = "PIER_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u32,
    /// Address of the admin port (/livez, /readyz, /metrics); `off` to disable.
    #[arg(long, env = "PIER_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: String,
    /// Create the default Networks `bridge`, `host` and `none` when absent (never changing
    /// existing ones), and re-create each one deleted at once, with a Warning Event.
    #[arg(long, env = "PIER_DEFAULT_NETWORKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub default_networks: bool,
    /// Subnet of the default `bridge` Network (Docker's `--bip`).
    #[arg(long, env = "PIER_BRIDGE_SUBNET", default_value = "172.17.0.0/16")]
    pub bridge_subnet: Ipv4Net,
    /// Address pools for Networks without a subnet, `base=CIDR,size=N` (repeat, or separate with
    /// `;`); Docker's defaults when absent.
    #[arg(
        long = "address-pool",
        env = "PIER_ADDRESS_POOLS",
        value_delimiter = ';'
    )]
    pub address_pools: Vec<Pool>,
    /// Where Networks with IPv6 but no `ipv6Subnet` get their /64 from (a prefix of at most 64
    /// bits). Default: the cluster's unique local /48, `fd` and 40 bits of a hash of the uid of
    /// the `default` Namespace (stable for the cluster, different between clusters).
    #[arg(long, env = "PIER_IPV6_POOL")]
    pub ipv6_pool: Option<Ipv6Net>,
    /// Range of automatically allocated host ports.
    #[arg(long, env = "PIER_PORT_RANGE", default_value = "32768-60999")]
    pub port_range: PortRange,
    /// Host ports no PortPublish may publish, as ports and ranges (`22,6443,10255-10259`);
    /// refused with `PortNotAllowed`, never picked automatically. Empty: none.
    #[arg(long, env = "PIER_DENIED_HOST_PORTS", default_value = KUBERNETES_HOST_PORTS)]
    pub denied_host_ports: PortSet,
}

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// This replica's identity.
    pub identity: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// How long the lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (and a standby retries).
    pub retry: Duration,
}

/// Everything the operator runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Leader election.
    pub lease: LeaseConfig,
    /// The admin port, if served.
    pub admin_addr: Option<SocketAddr>,
    /// Whether to create `bridge`, `host` and `none`.
    pub default_networks: bool,
    /// The `bridge` Network's subnet.
    pub bridge_subnet: Ipv4Net,
    /// Pools, port range and the default network.
    pub alloc: AllocConfig,
    /// Whether `alloc.ipv6_pool` is the cluster's own ULA /48, read from the cluster when the
    /// operator starts leading (no `--ipv6-pool`).
    pub derive_ipv6_pool: bool,
    /// How soon an object waiting on something no watch reports (e.g. a node to be named) is
    /// looked at again.
    pub wait_requeue: Duration,
    /// Per-object retry delay after an error: doubles per failure up to `max_backoff`; jitter
    /// adds up to as much again.
    pub min_backoff: Duration,
    /// The longest retry delay before jitter.
    pub max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease: LeaseConfig {
                identity: host_name(),
                namespace: "default".into(),
                name: "pier-operator".into(),
                duration: Duration::from_secs(15),
                retry: Duration::from_secs(5),
            },
            admin_addr: None,
            default_networks: true,
            bridge_subnet: Ipv4Net::new_assert(std::net::Ipv4Addr::new(172, 17, 0, 0), 16),
            alloc: AllocConfig::default(),
            derive_ipv6_pool: true,
            wait_requeue: Duration::from_secs(30),
            min_backoff: pier_runtime::backoff::DEFAULT_MIN,
            max_backoff: pier_runtime::backoff::DEFAULT_MAX,
        }
    }
}

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--ipv6-pool` has host bits or is too small to hold a /64.
    #[error("--ipv6-pool {0} must be a network address with a prefix of at most 64 bits")]
    Ipv6Pool(Ipv6Net),
    /// `--admin-addr` is neither an address nor `off`.
    #[error("--admin-addr {0:?} is not an address like 0.0.0.0:9090 (or `off`)")]
    AdminAddr(String),
    /// The lease duration is too short to renew in time.
    #[error("--lease-duration-seconds must be at least 3")]
    LeaseDuration,
}

impl TryFrom<&OperatorArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: &OperatorArgs) -> Result<Self, ConfigError> {
        let admin_addr = match args.admin_addr.as_str() {
            "off" | "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| ConfigError::AdminAddr(a.to_owned()))?,
            ),
        };
        if args.lease_duration_seconds < 3 {
            return Err(ConfigError::LeaseDuration);
        }
        if let Some(pool) = args.ipv6_pool
            && (pool.prefix_len() > crate::ipam::ipv6::DEFAULT_SUBNET_PREFIX_LEN
                || pool.trunc() != pool)
        {
            return Err(ConfigError::Ipv6Pool(pool));
        }
        let duration = Duration::from_secs(u64::from(args.lease_duration_seconds));
        let defaults = Config::default();
        Ok(Config {
            lease: LeaseConfig {
                identity: args.identity.clone().unwrap_or_else(host_name),
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                duration,
                // Renew three times per lease, as client-go's defaults do (15 s / 5 s... 2 s).
                retry: duration / 3,
            },
            admin_addr,
            default_networks: args.default_networks,
            bridge_subnet: args.bridge_subnet,
            alloc: AllocConfig {
                pools: if args.address_pools.is_empty() {
                    crate::ipam::default_pools()
                } else {
                    args.address_pools.clone()
                },
                port_range: args.port_range,
                denied_ports: args.denied_host_ports.clone(),
                default_network: crate::defaults::BRIDGE.to_owned(),
                excluded: Vec::new(),
                ipv6_pool: args.ipv6_pool.unwrap_or(defaults.alloc.ipv6_pool),
            },
            derive_ipv6_pool: args.ipv6_pool.is_none(),
            ..defaults
        })
    }
}

/// The host name (in a Pod: the Pod's name), this replica's default identity.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pier-operator".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    #[test]
    fn flags_make_a_config() {
        let cli = Cli::parse_from([
            "pier",
            "--identity",
            "op-1",
            "--lease-duration-seconds",
            "9",
            "--admin-addr",
            "127.0.0.1:9191",
            "--address-pool",
            "base=10.10.0.0/16,size=24",
            "--port-range",
            "40000-40100",
            "--default-networks",
            "false",
            "--denied-host-ports",
            "22,8000-8080",
        ]);
        let config = Config::try_from(&cli.args).expect("valid flags");
        assert_eq!(config.lease.identity, "op-1");
        assert_eq!(config.lease.duration, Duration::from_secs(9));
        assert_eq!(config.lease.retry, Duration::from_secs(3));
        assert_eq!(config.admin_addr, "127.0.0.1:9191".parse().ok());
        assert_eq!(config.alloc.pools.len(), 1);
        assert_eq!(config.alloc.port_range.first(), 40000);
        assert!(!config.default_networks);
        assert_eq!(config.alloc.denied_ports.to_string(), "22,8000-8080");

        let defaults = Cli::parse_from(["pier", "--admin-addr", "off"]);
        let config = Config::try_from(&defaults.args).expect("defaults");
        assert_eq!(config.admin_addr, None);
        assert_eq!(config.alloc.pools, crate::ipam::default_pools());
        assert_eq!(config.bridge_subnet.to_string(), "172.17.0.0/16");
        assert_eq!(
            config.alloc.denied_ports.to_string(),
            KUBERNETES_HOST_PORTS,
            "Kubernetes' own ports by default"
        );
        let none = Cli::parse_from(["pier", "--denied-host-ports", ""]);
        let config = Config::try_from(&none.args).expect("empty list");
        assert!(config.alloc.denied_ports.is_empty());

        let bad = Cli::parse_from(["pier", "--admin-addr", "nowhere"]);
        assert!(Config::try_from(&bad.args).is_err());
    }
}
