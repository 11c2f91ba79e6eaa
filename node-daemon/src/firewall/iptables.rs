//! Pier's accepts in the iptables `filter` table of the other firewalls on the node.
//!
//! Every base chain registered at a netfilter hook sees the packet, in priority order, and a drop
//! in any of them is final: an accept in table `inet pier` does not override Docker's `FORWARD`
//! policy DROP, ufw's, or firewalld's on its iptables backend. Docker documents a `DOCKER-USER`
//! chain for other tools' rules, but it exists only where Docker runs; kube-proxy, flannel and
//! Calico instead jump to a chain of their own from the top of `FORWARD`, which works whichever
//! firewall owns the table and survives Docker's restarts (Docker re-inserts only its own
//! jumps). Pier does the same:
//!
//! - chain `PIER-FORWARD` accepts what enters or leaves a Pier bridge (`pier-+`). Broad on
//!   purpose: what may pass is decided in table `inet pier` (isolation, internal networks, only
//!   published ports from outside), and a drop there stays final whatever iptables accepts;
//! - chain `PIER-INPUT` accepts DNS from Pier bridges, for the embedded DNS server on each
//!   gateway (ufw's `INPUT` policy is DROP);
//! - one jump to each from the top of `FORWARD` and `INPUT`, tagged with [`JUMP_COMMENT`].
//!
//! Only where the `filter` table and the built-in chain exist: a machine without iptables rules
//! gets none, and `reset` leaves the other firewall exactly as it was. Both backends are handled,
//! iptables-nft (tables in nf_tables; Debian's default and Docker's) and iptables-legacy.
//!
//! The shape of table `inet pier`: the desired rules are a constant, [`diff`] compares them with
//! what `iptables-save` prints (pure), and the difference goes in one `iptables-restore
//! --noflush` batch. This module is pure; running the tools is in `mod.rs`.

use std::collections::BTreeSet;
use std::fmt;

/// The chain `FORWARD` jumps to.
pub const CHAIN_FORWARD: &str = "PIER-FORWARD";
/// The chain `INPUT` jumps to.
pub const CHAIN_INPUT: &str = "PIER-INPUT";
/// The comment on Pier's jumps: how a reader of `iptables -S` knows whose they are.
pub const JUMP_COMMENT: &str = "pier: accept Pier bridges, filtered in table inet pier";

/// An iptables backend: which kernel tables its tools read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    /// iptables-nft: the `filter` table is nf_tables table `ip filter`.
    Nft,
    /// iptables-legacy: x_tables, listed in `/proc/net/ip_tables_names`.
    Legacy,
    /// ip6tables-nft: nf_tables table `ip6 filter` (Docker 27+ sets its `FORWARD` policy to DROP
    /// when IPv6 is on, as for IPv4).
    Nft6,
    /// ip6tables-legacy: listed in `/proc/net/ip6_tables_names` (ufw's IPv6 rules).
    Legacy6,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::Nft,
        Backend::Legacy,
        Backend::Nft6,
        Backend::Legacy6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
            Backend::Nft6 => "ip6tables-nft",
            Backend::Legacy6 => "ip6tables-legacy",
        }
    }

    pub fn save_tool(self) -> String {
        format!("{}-save", self.name())
    }

    pub fn restore_tool(self) -> String {
        format!("{}-restore", self.name())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One chain of Pier's and the built-in chain that jumps to it.
struct OwnChain {
    name: &'static str,
    from: &'static str,
    /// As `iptables-save` prints them after `-A NAME `.
    rules: &'static [&'static str],
}

const OWN_CHAINS: [OwnChain; 2] = [
    OwnChain {
        name: CHAIN_FORWARD,
        from: "FORWARD",
        rules: &["-o pier-+ -j ACCEPT", "-i pier-+ -j ACCEPT"],
    },
    OwnChain {
        name: CHAIN_INPUT,
        from: "INPUT",
        rules: &[
            "-i pier-+ -p udp -m udp --dport 53 -j ACCEPT",
            "-i pier-+ -p tcp -m tcp --dport 53 -j ACCEPT",
        ],
    },
];

/// The built-in chains Pier jumps from.
pub fn builtins() -> impl Iterator<Item = &'static str> {
    OWN_CHAINS.iter().map(|c| c.from)
}

/// The jump to `chain`, as `iptables-save` prints it after `-A FROM `.
fn jump(chain: &str) -> String {
    format!("-m comment --comment \"{JUMP_COMMENT}\" -j {chain}")
}

/// What one backend's `filter` table has now, as far as Pier cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterTable {
    /// Built-in chains that exist (`FORWARD`, `INPUT`); Pier adds no jump where there is none,
    /// since creating a built-in chain would change the other firewall.
    pub builtins: BTreeSet<String>,
    /// User-defined chains.
    pub chains: BTreeSet<String>,
    /// Every rule, in order: (chain, the rest of its `-A CHAIN` line).
    pub rules: Vec<(String, String)>,
}

impl FilterTable {
    /// Reads the `*filter` section of `iptables-save` output. `builtins` says which built-in
    /// chains exist: iptables-nft-save prints all three even where nf_tables has none.
    pub fn parse(save: &str, builtins: impl IntoIterator<Item = String>) -> FilterTable {
        let mut table = FilterTable {
            builtins: builtins.into_iter().collect(),
            ..FilterTable::default()
        };
        let mut in_filter = false;
        for line in save.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                in_filter = name == "filter";
            } else if !in_filter || line == "COMMIT" {
                continue;
            } else if let Some(declaration) = line.strip_prefix(':') {
                // `:NAME POLICY [packets:bytes]`; user chains have policy `-`.
                let mut fields = declaration.split_whitespace();
                if let (Some(name), Some("-")) = (fields.next(), fields.next()) {
                    table.chains.insert(name.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ")
                && let Some((chain, spec)) = rule.split_once(' ')
            {
                table.rules.push((chain.to_owned(), spec.to_owned()));
            }
        }
        table
    }

    fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules
            .iter()
            .filter(move |(c, _)| c == chain)
            .map(|(_, spec)| spec.as_str())
    }
}

/// What one backend needs: an `iptables-restore --noflush` script and what it does, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesChange {
    pub backend: Backend,
    pub script: String,
    pub summary: Vec<String>,
}

impl fmt::Display for IptablesChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.summary {
            writeln!(f, "~ {} filter: {line}", self.backend)?;
        }
        Ok(())
    }
}

fn script(lines: &[String]) -> String {
    let mut out = String::from("*filter\n");
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// What makes `current` hold Pier's chains and exactly one jump to each from every existing
/// built-in chain; `None` when it already does. Rules of other chains are never touched.
pub fn diff(backend: Backend, current: &FilterTable) -> Option<IptablesChange> {
    let mut lines = Vec::new();
    let mut summary = Vec::new();
    for own in OWN_CHAINS
        .iter()
        .filter(|c| current.builtins.contains(c.from))
    {
        let rules: Vec<&str> = current.rules_of(own.name).collect();
        if !current.chains.contains(own.name) || rules != own.rules {
            // With --noflush, declaring a chain creates it or flushes it: the rules that follow
            // are then all it has.
            lines.push(format!(":{} - [0:0]", own.name));
            lines.extend(own.rules.iter().map(|r| format!("-A {} {r}", own.name)));
            summary.push(format!(
                "chain {} set to its {} rules",
                own.name,
                own.rules.len()
            ));
        }
        let spec = jump(own.name);
        let jumps = current.rules_of(own.from).filter(|r| *r == spec).count();
        if jumps == 0 {
            lines.push(format!("-I {} 1 {spec}", own.from));
            summary.push(format!("jump {} -> {} inserted first", own.from, own.name));
        }
        for _ in 1..jumps {
            lines.push(format!("-D {} {spec}", own.from));
            summary.push(format!(
                "duplicate jump {} -> {} deleted",
                own.from, own.name
            ));
        }
    }
    (!lines.is_empty()).then(|| IptablesChange {
        backend,
        script: script(&lines),
        summary,
    })
}

/// What removes everything Pier added to `current` (jumps first, then its chains); `None` when
/// there is nothing of Pier's.
pub fn removal(backend: Backend, current: &FilterTable) -> Option<IptablesChange> {
    let mut lines = Vec::new();
    let mut summary = Vec::new();
    for own in &OWN_CHAINS {
        let spec = jump(own.name);
        for _ in current.rules_of(own.from).filter(|r| *r == spec) {
            lines.push(format!("-D {} {spec}", own.from));
            summary.push(format!("jump {} -> {} deleted", own.from, own.name));
        }
    }
    for own in OWN_CHAINS
        .iter()
        .filter(|c| current.chains.contains(c.name))
    {
        // A jump to Pier's chain that is not Pier's own (someone copied it) would make `-X`
        // fail; it is removed too, since the chain it targets goes.
        for (chain, rule) in &current.rules {
            if rule.ends_with(&format!("-j {}", own.name)) && *rule != jump(own.name) {
                lines.push(format!("-D {chain} {rule}"));
                summary.push(format!("foreign jump {chain} -> {} deleted", own.name));
            }
        }
        lines.push(format!("-F {}", own.name));
        lines.push(format!("-X {}", own.name));
        summary.push(format!("chain {} deleted", own.name));
    }
    (!lines.is_empty()).then(|| IptablesChange {
        backend,
        script: script(&lines),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What iptables-nft-save prints on a fresh Docker host (docker.io 26 on Debian).
    const DOCKER_HOST: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [12:720]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
"#;

    fn builtins() -> Vec<String> {
        super::builtins().map(str::to_owned).collect()
    }

    fn with_pier() -> String {
        let ours = format!(
            ":PIER-FORWARD - [0:0]\n:PIER-INPUT - [0:0]\n-A INPUT {}\n-A FORWARD {}\n\
             -A PIER-FORWARD -o pier-+ -j ACCEPT\n-A PIER-FORWARD -i pier-+ -j ACCEPT\n\
             -A PIER-INPUT -i pier-+ -p udp -m udp --dport 53 -j ACCEPT\n\
             -A PIER-INPUT -i pier-+ -p tcp -m tcp --dport 53 -j ACCEPT\n",
            jump(CHAIN_INPUT),
            jump(CHAIN_FORWARD)
        );
        DOCKER_HOST.replace(
            ":DOCKER - [0:0]\n:DOCKER-ISO",
            &format!(":DOCKER - [0:0]\n{ours}:DOCKER-ISO"),
        )
    }

    #[test]
    fn parse_reads_only_the_filter_section() {
        let table = FilterTable::parse(DOCKER_HOST, builtins());
        assert_eq!(
            table.chains,
            ["DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-USER"]
                .map(String::from)
                .into()
        );
        assert_eq!(table.rules.len(), 5);
        assert_eq!(table.rules[0], ("FORWARD".into(), "-j DOCKER-USER".into()));
    }

    #[test]
    fn a_docker_host_gets_both_chains_and_jumps_first() {
        let table = FilterTable::parse(DOCKER_HOST, builtins());
        let change = diff(Backend::Nft, &table).expect("changes");
        let expected = format!(
            "*filter\n:PIER-FORWARD - [0:0]\n-A PIER-FORWARD -o pier-+ -j ACCEPT\n\
             -A PIER-FORWARD -i pier-+ -j ACCEPT\n-I FORWARD 1 {}\n:PIER-INPUT - [0:0]\n\
             -A PIER-INPUT -i pier-+ -p udp -m udp --dport 53 -j ACCEPT\n\
             -A PIER-INPUT -i pier-+ -p tcp -m tcp --dport 53 -j ACCEPT\n-I INPUT 1 {}\nCOMMIT\n",
            jump(CHAIN_FORWARD),
            jump(CHAIN_INPUT)
        );
        assert_eq!(change.script, expected);
        assert_eq!(change.summary.len(), 4);
    }

    #[test]
    fn in_sync_is_no_change_wherever_the_jump_sits() {
        // Docker re-inserts its DOCKER-USER jump first on restart: Pier's second place is fine.
        let table = FilterTable::parse(&with_pier(), builtins());
        assert_eq!(diff(Backend::Nft, &table), None);
    }

    #[test]
    fn damage_is_repaired_and_duplicates_removed() {
        let edited = with_pier()
            .replace("-A PIER-FORWARD -i pier-+ -j ACCEPT\n", "")
            .replace(
                &format!("-A INPUT {}\n", jump(CHAIN_INPUT)),
                &format!("-A INPUT {0}\n-A INPUT {0}\n", jump(CHAIN_INPUT)),
            );
        let change =
            diff(Backend::Legacy, &FilterTable::parse(&edited, builtins())).expect("changes");
        assert!(change.script.contains(":PIER-FORWARD - [0:0]\n-A PIER-FORWARD -o pier-+ -j ACCEPT\n-A PIER-FORWARD -i pier-+ -j ACCEPT\n"), "{}", change.script);
        assert!(
            change
                .script
                .contains(&format!("-D INPUT {}\n", jump(CHAIN_INPUT)))
        );
        assert!(!change.script.contains("-I "), "{}", change.script);
        assert!(
            !change.script.contains("PIER-INPUT - [0:0]"),
            "{}",
            change.script
        );
    }

    #[test]
    fn no_builtin_chain_no_jump() {
        // iptables-nft where only FORWARD exists (e.g. `iptables -P FORWARD DROP` alone).
        let table = FilterTable::parse(DOCKER_HOST, ["FORWARD".to_owned()]);
        let change = diff(Backend::Nft, &table).expect("changes");
        assert!(!change.script.contains("INPUT"), "{}", change.script);
        assert!(change.script.contains("-I FORWARD 1"));
    }

    #[test]
    fn removal_takes_exactly_what_pier_added() {
        let table = FilterTable::parse(&with_pier(), builtins());
        let change = removal(Backend::Nft, &table).expect("changes");
        let expected = format!(
            "*filter\n-D FORWARD {}\n-D INPUT {}\n-F PIER-FORWARD\n-X PIER-FORWARD\n\
             -F PIER-INPUT\n-X PIER-INPUT\nCOMMIT\n",
            jump(CHAIN_FORWARD),
            jump(CHAIN_INPUT)
        );
        assert_eq!(change.script, expected);
        assert_eq!(
            removal(Backend::Nft, &FilterTable::parse(DOCKER_HOST, builtins())),
            None
        );
    }

    /// What ip6tables-nft-save prints on a Docker 27+ host with IPv6 on: the same chains and
    /// the same FORWARD policy DROP as for IPv4.
    const DOCKER_HOST6: &str = r#"# Generated by ip6tables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [3:240]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
"#;

    #[test]
    fn ipv6_backends_get_the_same_accepts_through_the_ip6tables_tools() {
        assert_eq!(Backend::ALL.len(), 4);
        assert_eq!(Backend::Nft6.save_tool(), "ip6tables-nft-save");
        assert_eq!(Backend::Legacy6.restore_tool(), "ip6tables-legacy-restore");
        let table = FilterTable::parse(DOCKER_HOST6, builtins());
        let v6 = diff(Backend::Nft6, &table).expect("changes");
        let v4 = diff(Backend::Nft, &FilterTable::parse(DOCKER_HOST, builtins())).expect("changes");
        assert_eq!(v6.script, v4.script);
        assert!(
            v6.to_string().starts_with("~ ip6tables-nft filter: "),
            "{v6}"
        );
        let synced = DOCKER_HOST6.replace(":DOCKER-USER - [0:0]\n", &format!(
            ":DOCKER-USER - [0:0]\n:PIER-FORWARD - [0:0]\n:PIER-INPUT - [0:0]\n-A INPUT {}\n-A FORWARD {}\n\
             -A PIER-FORWARD -o pier-+ -j ACCEPT\n-A PIER-FORWARD -i pier-+ -j ACCEPT\n\
             -A PIER-INPUT -i pier-+ -p udp -m udp --dport 53 -j ACCEPT\n\
             -A PIER-INPUT -i pier-+ -p tcp -m tcp --dport 53 -j ACCEPT\n",
            jump(CHAIN_INPUT),
            jump(CHAIN_FORWARD)
        ));
        let table = FilterTable::parse(&synced, builtins());
        assert_eq!(diff(Backend::Legacy6, &table), None);
        assert!(removal(Backend::Legacy6, &table).is_some());
    }
}
