//! resolv.conf in both directions: reading the node's (the upstreams, its search domains) and
//! writing `/etc/netns/NAME/resolv.conf` for named-namespace endpoints.
//!
//! `ip netns exec NAME` bind-mounts `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`, so
//! that file is how a netns "container" finds Pier's DNS. Like Docker's embedded DNS the file has
//! one nameserver per network, the gateway (IPv4; IPv6 on an IPv6-only network: Docker writes its
//! one resolver address, 127.0.0.11, whatever the families), the node's search domains, and
//! `options ndots:0` so a name with no dot is tried as is first. A file Pier did not write (a namespace someone else set up, with a
//! resolver of its own) is never overwritten or removed. Pods do not use these files: the node daemon sets their `dnsConfig`
//! (nameservers = the gateway, searches and `ndots:0` the same) with `dnsPolicy: None`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::state::{Netns, NodeState};

use super::views::namespace_gateways;

/// First line of every file Pier writes: only files that start with it are ever removed.
pub const MARKER: &str = "# Written by Pier's embedded DNS";

/// glibc reads at most three nameservers.
const MAX_NAMESERVERS: usize = 3;

/// The parts of a resolv.conf Pier uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Upstream servers, port 53, in file order.
    pub nameservers: Vec<SocketAddr>,
    /// Search domains.
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses the `nameserver` and `search`/`domain` lines; everything else is ignored.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // Zone ids (`fe80::1%eth0`) cannot be used from another namespace: skipped.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                // The last `search` or `domain` line wins, as in glibc.
                Some("search" | "domain") => conf.search = words.map(str::to_owned).collect(),
                _ => {}
            }
        }
        conf
    }

    /// Reads a file; a missing or unreadable file means no upstreams (local names still work).
    pub fn read_or_empty(path: &Path) -> ResolvConf {
        match std::fs::read_to_string(path) {
            Ok(text) => ResolvConf::parse(&text),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the upstream resolv.conf");
                ResolvConf::default()
            }
        }
    }
}

/// What the `Attached` condition says of a namespace whose resolv.conf Pier left alone.
pub const FOREIGN_NOTE: &str = "resolv.conf left as it was: not written by Pier";

/// The owner name of the DNS server of node namespace `host_netns` (`None`: the process's own,
/// named by the kernel's identity of it, `net:[INODE]`). It must tell apart every agent sharing
/// the machine's `/etc/netns` (several `pier node`s in their own namespaces beside `pier up`, as
/// in the multi-node tests): a writer adopts and later removes the files of its owner, so two
/// agents under one name would take each other's files away. It stays the same across restarts
/// of the agent in the same namespace.
pub fn owner_of(host_netns: Option<&Path>) -> String {
    match host_netns {
        Some(path) => path.display().to_string(),
        None => std::fs::read_link("/proc/self/ns/net")
            .map(|target| target.display().to_string())
            .unwrap_or_else(|_| "(own)".to_owned()),
    }
}

/// The named namespaces of `state` that get a resolv.conf (endpoints on DNS-enabled networks).
pub fn served_namespaces(state: &NodeState) -> BTreeSet<String> {
    namespace_gateways(state)
        .into_keys()
        .filter_map(|netns| match netns {
            Netns::Named(name) if is_plain_name(&name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Whether `ROOT/NAME/resolv.conf` exists and was not written by `owner`'s DNS server: Pier then
/// leaves it as it is.
pub fn is_foreign(root: &Path, name: &str, owner: &str) -> bool {
    match std::fs::read_to_string(root.join(name).join("resolv.conf")) {
        Ok(text) => !text.starts_with(&header(owner)),
        Err(error) => error.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The first line of the files written by the DNS server of node namespace `owner`.
fn header(owner: &str) -> String {
    format!("{MARKER} of node namespace {owner}")
}

/// The file for a namespace whose resolver asks `gateways`, written by `owner`'s DNS server.
pub fn render(owner: &str, namespace: &str, gateways: &[IpAddr], search: &[String]) -> String {
    let mut text = format!(
        "{} for namespace {namespace}; removed when it has no endpoint\n",
        header(owner)
    );
    for gateway in gateways.iter().take(MAX_NAMESERVERS) {
        text.push_str(&format!("nameserver {gateway}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text.push_str("options ndots:0\n");
    text
}

/// Writing or removing a namespace's resolv.conf failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("creating {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Keeps `ROOT/NAME/resolv.conf` in line with the state (ROOT is `/etc/netns` in production).
#[derive(Debug)]
pub struct ResolvConfWriter {
    root: PathBuf,
    /// The node namespace whose DNS server writes: several node namespaces on one machine (local
    /// mode, tests) share `/etc/netns`, and each must only ever touch its own files.
    owner: String,
    /// Namespaces whose file Pier wrote, with the content (rewritten only when it changes).
    written: BTreeMap<String, String>,
    /// How often the files written are looked for (one removed behind Pier's back is written
    /// again): not at every change of the state, which during a burst of Endpoints would stat
    /// every namespace's file for each of them.
    recheck: Duration,
    /// When they were last looked for.
    checked: Option<Instant>,
}

/// The default of [`ResolvConfWriter::recheck`].
pub const RECHECK: Duration = Duration::from_secs(10);

impl ResolvConfWriter {
    /// A writer for `root`; files a previous run for the same `owner` left are adopted, so a
    /// restarted daemon removes those whose endpoints went while it was down.
    pub fn new(root: PathBuf, owner: String) -> ResolvConfWriter {
        let mine = format!("{} for namespace ", header(&owner));
        let mut written = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let file = entry.path().join("resolv.conf");
                if let Ok(text) = std::fs::read_to_string(&file)
                    && text.starts_with(&mine)
                {
                    written.insert(entry.file_name().to_string_lossy().into_owned(), text);
                }
            }
        }
        ResolvConfWriter {
            root,
            owner,
            written,
            recheck: RECHECK,
            checked: None,
        }
    }

    /// Looks for the files written every `recheck` (see the field).
    pub fn with_recheck(mut self, recheck: Duration) -> ResolvConfWriter {
        self.recheck = recheck;
        self
    }

    /// The file of namespace `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(name).join("resolv.conf")
    }

    /// Writes the files `state` needs and removes the ones no longer needed. Returns one error per
    /// failed namespace; the others are still done.
    pub fn sync(&mut self, state: &NodeState, search: &[String]) -> Vec<ResolvConfError> {
        let desired: BTreeMap<String, String> = namespace_gateways(state)
            .into_iter()
            .filter_map(|(netns, gateways)| match netns {
                Netns::Named(name) if is_plain_name(&name) => {
                    let text = render(&self.owner, &name, &gateways, search);
                    Some((name, text))
                }
                _ => None,
            })
            .collect();
        let mut errors = Vec::new();
        let recheck = self.checked.is_none_or(|at| at.elapsed() >= self.recheck);
        if recheck {
            self.checked = Some(Instant::now());
        }
        for (name, text) in &desired {
            let unchanged = self.written.get(name) == Some(text);
            if unchanged && (!recheck || self.path_of(name).exists()) {
                continue;
            }
            if is_foreign(&self.root, name, &self.owner) {
                // Someone else's resolver (or a file replaced since): never Pier's to change.
                self.written.remove(name);
                continue;
            }
            match self.write(name, text) {
                Ok(()) => {
                    self.written.insert(name.clone(), text.clone());
                }
                Err(error) => errors.push(error),
            }
        }
        let gone: BTreeSet<String> = self
            .written
            .keys()
            .filter(|name| !desired.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            match self.remove(&name) {
                Ok(()) => {
                    self.written.remove(&name);
                }
                Err(error) => errors.push(error),
            }
        }
        errors
    }

    /// Removes every file this writer owns (on shutdown).
    pub fn remove_all(&mut self) -> Vec<ResolvConfError> {
        self.sync(&NodeState::default(), &[])
    }

    fn write(&self, name: &str, text: &str) -> Result<(), ResolvConfError> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(|source| ResolvConfError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        // Write-then-rename: a resolver never reads half a file.
        let path = dir.join("resolv.conf");
        let temporary = dir.join(".resolv.conf.pier");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| ResolvConfError::Write { path, source })
    }

    fn remove(&self, name: &str) -> Result<(), ResolvConfError> {
        let path = self.path_of(name);
        match std::fs::read_to_string(&path) {
            // Someone replaced the file: it is theirs now, leave it.
            Ok(text) if !text.starts_with(&header(&self.owner)) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            _ => std::fs::remove_file(&path).or_else(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(ResolvConfError::Remove {
                        path: path.clone(),
                        source,
                    })
                }
            })?,
        }
        // The directory goes too if nothing else is in it.
        let _ = std::fs::remove_dir(self.root.join(name));
        Ok(())
    }
}

/// A namespace name that is one path component (never `..` or `a/b`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agents in different namespaces never share an owner name (they would take each other's
    /// files away); the process's own namespace is named by the kernel's identity of it.
    #[test]
    fn the_own_namespace_is_named_by_its_identity() {
        let own = owner_of(None);
        assert!(own.starts_with("net:["), "{own}");
        assert_eq!(own, owner_of(None), "stable");
        assert_eq!(owner_of(Some(Path::new("/run/netns/a"))), "/run/netns/a");
    }
    use std::net::Ipv4Addr;

    use crate::state::{Attachment, BridgeAttachment, Driver, EndpointState, NetworkState};

    #[test]
    fn parses_nameservers_and_search() {
        let conf = ResolvConf::parse(
            "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\n\
             domain a.example\nsearch b.example c.example ; trailing\noptions ndots:2\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.2:53".parse().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
        assert_eq!(conf.search, vec!["b.example", "c.example"]);
    }

    #[test]
    fn renders_like_docker() {
        let text = render(
            "(own)",
            "con1",
            &["172.18.0.1".parse().expect("ip")],
            &["corp.example".into()],
        );
        assert!(text.starts_with(MARKER));
        assert!(text.contains("nameserver 172.18.0.1\n"));
        assert!(text.contains("search corp.example\n"));
        assert!(text.ends_with("options ndots:0\n"));
    }

    /// One nameserver per network, of the family it has: IPv4 on a dual-stack network (what
    /// Docker's one resolver address stands for), the IPv6 gateway on an IPv6-only one.
    #[test]
    fn ipv6_only_networks_get_their_ipv6_gateway_dual_stack_the_ipv4_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut dual = state(&["d"]);
        dual.networks[0].subnet6 = Some("fd00:18::/64".parse().expect("subnet6"));
        dual.networks[0].gateway6 = Some("fd00:18::1".parse().expect("gateway6"));
        let mut writer = ResolvConfWriter::new(dir.path().to_path_buf(), "node-a".into());
        assert!(writer.sync(&dual, &[]).is_empty());
        let read = || std::fs::read_to_string(dir.path().join("d/resolv.conf")).expect("d");
        let nameservers = |text: String| {
            text.lines()
                .filter(|l| l.starts_with("nameserver "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(nameservers(read()), vec!["nameserver 172.18.0.1"]);

        let mut only6 = dual.clone();
        only6.networks[0].subnet = None;
        only6.networks[0].gateway = None;
        if let Attachment::Bridge(bridge) = &mut only6.endpoints[0].attachment {
            bridge.address = None;
            bridge.address6 = Some("fd00:18::2".parse().expect("address6"));
        }
        assert!(writer.sync(&only6, &[]).is_empty());
        assert_eq!(nameservers(read()), vec!["nameserver fd00:18::1"]);
        assert!(writer.remove_all().is_empty());
    }

    fn state(endpoint_ns: &[&str]) -> NodeState {
        NodeState {
            networks: vec![NetworkState {
                name: "n".into(),
                uid: "u".into(),
                driver: Driver::Bridge,
                subnet: Some("172.18.0.0/16".parse().expect("subnet")),
                gateway: Some("172.18.0.1".parse().expect("gw")),
                mtu: 1500,
                internal: false,
                dns: true,
                vxlan_id: None,
                subnet6: None,
                gateway6: None,
            }],
            endpoints: endpoint_ns
                .iter()
                .enumerate()
                .map(|(i, ns)| EndpointState {
                    id: format!("default/{ns}"),
                    uid: format!("u{i}"),
                    name: (*ns).into(),
                    aliases: vec![],
                    netns: Netns::Named((*ns).into()),
                    attachment: Attachment::Bridge(BridgeAttachment {
                        network: "n".into(),
                        interface: "eth0".into(),
                        address: Some(Ipv4Addr::new(172, 18, 0, 2 + i as u8)),
                        address6: None,
                        mac: "02:42:00:00:00:01".into(),
                        default_route: true,
                    }),
                })
                .collect(),
            ports: vec![],
            ..NodeState::default()
        }
    }

    /// A namespace set up with a resolver of its own: Pier neither overwrites nor removes it,
    /// and a file replaced after Pier wrote it is the replacer's from then on.
    #[test]
    fn never_overwrites_or_removes_a_file_it_did_not_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        let own = "nameserver 10.0.0.53\nsearch corp.example\n";
        std::fs::write(root.join("a/resolv.conf"), own).expect("write");
        assert!(is_foreign(&root, "a", "node-a"));
        assert!(!is_foreign(&root, "missing", "node-a"));
        assert_eq!(
            served_namespaces(&state(&["a", "b"])),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );

        let mut writer = ResolvConfWriter::new(root.clone(), "node-a".into());
        assert!(writer.sync(&state(&["a", "b"]), &[]).is_empty());
        let read = |name: &str| std::fs::read_to_string(root.join(name).join("resolv.conf"));
        assert_eq!(read("a").expect("a"), own, "not overwritten");
        assert!(!is_foreign(&root, "b", "node-a"), "b's is Pier's");
        assert!(is_foreign(&root, "b", "node-b"), "but not node-b's");
        assert!(writer.sync(&state(&[]), &[]).is_empty());
        assert_eq!(read("a").expect("a"), own, "not removed");
        assert!(read("b").is_err(), "Pier's own file goes");

        // Written by Pier, then replaced by hand: a changed state leaves it too.
        assert!(writer.sync(&state(&["b"]), &[]).is_empty());
        std::fs::write(root.join("b/resolv.conf"), own).expect("replace");
        let mut changed = state(&["b"]);
        changed.networks[0].gateway = Some("172.18.0.254".parse().expect("gw"));
        assert!(writer.sync(&changed, &[]).is_empty());
        assert_eq!(read("b").expect("b"), own);
        assert!(writer.remove_all().is_empty());
        assert_eq!(read("b").expect("b"), own);
    }

    #[test]
    fn writes_removes_and_leaves_foreign_files_alone() {
        let root = std::env::temp_dir().join(format!("pier-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("foreign")).expect("mkdir");
        std::fs::write(root.join("foreign/resolv.conf"), "nameserver 9.9.9.9\n").expect("write");

        let mut writer = ResolvConfWriter::new(root.clone(), "node-a".into());
        // Another node's DNS server on the same machine writes beside it.
        let mut other = ResolvConfWriter::new(root.clone(), "node-b".into());
        assert!(other.sync(&state(&["c"]), &[]).is_empty());
        assert!(writer.sync(&state(&["a", "b"]), &[]).is_empty());
        let a = std::fs::read_to_string(root.join("a/resolv.conf")).expect("a written");
        assert!(a.contains("nameserver 172.18.0.1"));
        assert!(root.join("b/resolv.conf").exists());

        assert!(writer.sync(&state(&["a"]), &[]).is_empty());
        assert!(
            !root.join("b").exists(),
            "b's file and directory are removed"
        );

        // A restarted writer adopts a's file and removes it when a is gone.
        let mut restarted = ResolvConfWriter::new(root.clone(), "node-a".into());
        assert!(restarted.remove_all().is_empty());
        assert!(!root.join("a").exists());
        assert!(
            root.join("c/resolv.conf").exists(),
            "node-b's file is not node-a's"
        );
        assert!(other.remove_all().is_empty());
        assert!(!root.join("c").exists());
        assert!(root.join("foreign/resolv.conf").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_file_removed_behind_the_writers_back_is_written_again_at_the_next_recheck() {
        let root = std::env::temp_dir().join(format!("pier-recheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let file = root.join("a/resolv.conf");
        let hour = Duration::from_secs(3600);
        let mut writer = ResolvConfWriter::new(root.clone(), "node-a".into()).with_recheck(hour);
        assert!(writer.sync(&state(&["a"]), &[]).is_empty());
        std::fs::remove_file(&file).expect("removed by hand");
        assert!(writer.sync(&state(&["a"]), &[]).is_empty());
        assert!(!file.exists(), "not looked for at every change");
        let mut writer = writer.with_recheck(Duration::ZERO);
        assert!(writer.sync(&state(&["a"]), &[]).is_empty());
        assert!(file.exists(), "written again when looked for");
        assert!(writer.remove_all().is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }
}
