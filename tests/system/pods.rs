//! Pods without a kubelet: what the kubelet and the cluster's network plugin give a Pod on a
//! node, made by hand, so that Pier finds the Pod's network namespace the way it does on a
//! cluster (a process in a cgroup named for the Pod's UID).
//!
//! A [`PodSandbox`] is a named network namespace with a "cluster network" `eth0` (a veth to the
//! node namespace, an address of its own and a default route via the node side, as a CNI plugin
//! sets them up), a long-running process in it (the sandbox's pause process) moved into
//! `<cgroup root>/pier-test-<pid>/kubepods/pod<uid>/` (the cgroupfs driver's spelling), and a
//! `/etc/netns/<name>/resolv.conf` pointing at a Pier network's gateway (what the Pod's
//! `dnsConfig` does on a cluster; Pier writes no resolv.conf for Pod targets).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use super::{Pier, in_netns, sh, sh_ok, wait_for};

/// The cgroup the kubelet would give Pods' processes, under the test's own top directory.
const KUBEPODS: &str = "kubepods";

/// The Pod's DNS configuration: a Pier network's gateway as its nameserver, that network as a
/// search domain.
#[derive(Debug, Clone)]
pub struct PodDns {
    pub nameserver: String,
    pub search: String,
}

/// One Pod's sandbox on the node of `pier up`. Dropping it kills the process, removes its cgroup
/// directories (bottom-up, once the process is gone), the namespace, its resolv.conf and the
/// node side of `eth0`.
#[derive(Debug)]
pub struct PodSandbox {
    /// The Pod's name.
    pub pod: String,
    /// The Pod's UID (the cgroup's name).
    pub uid: String,
    /// The named namespace (`/var/run/netns/<netns>`), unique per test and process.
    pub netns: String,
    /// `eth0`'s address on the cluster network (without the prefix length).
    pub cluster_address: String,
    /// The node side of `eth0`, the Pod's default gateway.
    pub cluster_gateway: String,
    node_netns: String,
    node_link: String,
    process: Option<Child>,
    /// The cgroup directories made for this Pod, deepest first.
    cgroup_dirs: Vec<PathBuf>,
}

impl PodSandbox {
    /// The sandbox of Pod `pod` of `pier` (its UID read with kubectl), number `index` (1-250,
    /// unique in the test: it picks the cluster subnet `10.244.<index>.0/24` and the node-side
    /// link name), resolving names with `dns`.
    pub fn for_pod(pier: &Pier, pod: &str, index: u8, dns: &PodDns) -> PodSandbox {
        let uid = pier.jsonpath(&format!("pod {pod}"), "{.metadata.uid}");
        assert!(!uid.is_empty(), "pod {pod} has a uid");
        PodSandbox::start(&pier.node_netns, pod, &uid, index, dns)
    }

    /// The sandbox of the Pod `pod` with UID `uid`, with `eth0` towards `node_netns`.
    pub fn start(node_netns: &str, pod: &str, uid: &str, index: u8, dns: &PodDns) -> PodSandbox {
        // The node namespace's name is unique per test and process.
        let netns = format!("{node_netns}-{pod}");
        let _ = sh(&format!(
            "ip netns del {netns} 2>/dev/null; rm -rf /etc/netns/{netns}"
        ));
        sh_ok(&format!(
            "ip netns add {netns} && ip -n {netns} link set lo up"
        ));
        let mut sandbox = PodSandbox {
            pod: pod.to_owned(),
            uid: uid.to_owned(),
            netns,
            cluster_address: format!("10.244.{index}.2"),
            cluster_gateway: format!("10.244.{index}.1"),
            node_netns: node_netns.to_owned(),
            node_link: format!("cluster{index}"),
            process: None,
            cgroup_dirs: Vec::new(),
        };
        sandbox.wire_cluster_network();
        sandbox.write_resolv_conf(dns);
        sandbox.start_process();
        sandbox.join_pod_cgroup();
        sandbox
    }

    /// `eth0`: a veth to the node namespace, an address of its own and the default route.
    fn wire_cluster_network(&self) {
        let (pod, node, link) = (&self.netns, &self.node_netns, &self.node_link);
        sh_ok(&format!(
            "ip -n {pod} link add eth0 type veth peer name {link} netns {node} && \
             ip -n {node} addr add {gateway}/24 dev {link} && ip -n {node} link set {link} up && \
             ip -n {pod} addr add {address}/24 dev eth0 && ip -n {pod} link set eth0 up && \
             ip -n {pod} route add default via {gateway} dev eth0",
            gateway = self.cluster_gateway,
            address = self.cluster_address,
        ));
    }

    /// `/etc/netns/<netns>/resolv.conf`, which `ip netns exec` puts in place of the machine's.
    fn write_resolv_conf(&self, dns: &PodDns) {
        let dir = Path::new("/etc/netns").join(&self.netns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let text = format!("nameserver {}\nsearch {}\n", dns.nameserver, dns.search);
        std::fs::write(dir.join("resolv.conf"), text)
            .unwrap_or_else(|e| panic!("{}/resolv.conf: {e}", dir.display()));
    }

    /// The sandbox's process, in the namespace (`ip netns exec` execs it: same pid).
    fn start_process(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "sleep", "3600"])
            .spawn()
            .expect("the sandbox process starts");
        let pid = child.id();
        self.process = Some(child);
        let netns_file = Path::new("/var/run/netns").join(&self.netns);
        let want = std::fs::metadata(&netns_file)
            .unwrap_or_else(|e| panic!("{}: {e}", netns_file.display()));
        // Only in the cgroup once it is in the namespace, so that Pier never takes the
        // machine's namespace for the Pod's.
        wait_for(
            &format!("process {pid} to enter {}", self.netns),
            Duration::from_secs(10),
            || {
                let have = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
                (have.dev() == want.dev() && have.ino() == want.ino()).then_some(())
            },
        );
    }

    /// Moves the process into `<root>/pier-test-<pid>/kubepods/pod<uid>/`, on the first cgroup
    /// hierarchy where that works.
    fn join_pod_cgroup(&mut self) {
        let pid = self.process.as_ref().map(Child::id).expect("started");
        let mut tried = Vec::new();
        for root in cgroup_roots() {
            let top = root.join(format!("pier-test-{}", std::process::id()));
            let kubepods = top.join(KUBEPODS);
            let pod = kubepods.join(format!("pod{}", self.uid));
            let joined = std::fs::create_dir_all(&pod)
                .and_then(|()| std::fs::write(pod.join("cgroup.procs"), pid.to_string()));
            match joined {
                Ok(()) => {
                    self.cgroup_dirs = vec![pod, kubepods, top];
                    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .expect("the process's cgroups");
                    assert!(
                        cgroups.contains(&format!("/pod{}", self.uid)),
                        "process {pid} is in the Pod's cgroup: {cgroups}"
                    );
                    return;
                }
                Err(error) => {
                    remove_cgroup_dirs(&[pod, kubepods, top]);
                    tried.push(format!("{}: {error}", root.display()));
                }
            }
        }
        panic!(
            "no writable cgroup hierarchy to put pod {}'s process in (a cgroup2 mount, else a \
             v1 one such as pids, from /proc/self/mountinfo); tried: {tried:?}",
            self.pod
        );
    }

    /// `sh -c script` in the Pod's namespace (with its resolv.conf).
    pub fn exec(&self, script: &str) -> Output {
        in_netns(&self.netns, script)
    }

    /// `script`'s stdout in the Pod's namespace, panicking on failure.
    pub fn exec_ok(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "{script:?} in pod {} failed: {}{}",
            self.pod,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The IPv4 addresses of `interface` (`ADDRESS/PREFIX`), empty when it does not exist.
    pub fn addresses(&self, interface: &str) -> Vec<String> {
        let out = sh(&format!(
            "ip -n {} -4 -br addr show dev {interface}",
            self.netns
        ));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip(2)
            .map(str::to_owned)
            .collect()
    }

    /// Whether the namespace has a link named `interface`.
    pub fn has_link(&self, interface: &str) -> bool {
        sh(&format!("ip -n {} link show dev {interface}", self.netns))
            .status
            .success()
    }

    /// The namespace's IPv4 default routes (`ip route` lines).
    pub fn default_routes(&self) -> Vec<String> {
        sh_ok(&format!("ip -n {} -4 route show default", self.netns))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PodSandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_cgroup_dirs(&self.cgroup_dirs);
        let _ = sh(&format!(
            "ip netns del {ns} 2>/dev/null; rm -rf /etc/netns/{ns}; \
             ip -n {node} link del {link} 2>/dev/null",
            ns = self.netns,
            node = self.node_netns,
            link = self.node_link,
        ));
    }
}

/// Removes cgroup directories, deepest first. A directory another sandbox of this process still
/// uses (`pier-test-<pid>`, `kubepods`) stays for that one's drop; a cgroup whose last process was
/// just reaped may be busy for a moment.
fn remove_cgroup_dirs(dirs: &[PathBuf]) {
    for dir in dirs.iter().filter(|dir| dir.exists()) {
        let mut attempts = 0;
        while let Err(error) = std::fs::remove_dir(dir) {
            let busy = error.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32);
            attempts += 1;
            if !busy || attempts > 50 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The cgroup hierarchies to try, best first: cgroup2 mounts (`/sys/fs/cgroup` itself, or
/// `/sys/fs/cgroup/unified` in hybrid mode), then v1 hierarchies, `pids` first.
fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    let mut roots: Vec<(u8, PathBuf)> = mountinfo.lines().filter_map(cgroup_mount).collect();
    roots.sort_by_key(|(rank, _)| *rank);
    roots.into_iter().map(|(_, root)| root).collect()
}

/// A cgroup mount of a mountinfo line, ranked: 0 cgroup2, 1 v1 `pids`, 2 other v1.
fn cgroup_mount(line: &str) -> Option<(u8, PathBuf)> {
    let (mount, filesystem) = line.split_once(" - ")?;
    let mount_point = mount.split_whitespace().nth(4)?;
    let mut filesystem = filesystem.split_whitespace();
    let rank = match (filesystem.next()?, filesystem.nth(1)) {
        ("cgroup2", _) => 0,
        ("cgroup", Some(options)) if options.split(',').any(|o| o == "pids") => 1,
        ("cgroup", _) => 2,
        _ => return None,
    };
    Some((rank, PathBuf::from(mount_point)))
}
