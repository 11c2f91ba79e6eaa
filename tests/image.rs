//! The image, tested here without a registry: the root filesystem of the Dockerfile's runtime
//! stage, assembled from the same list (image/rootfs.list, by image/rootfs.sh) out of this
//! machine's files (Debian 12, as the build stage), imported into Debian's docker.io and run as
//! `pier up` with host networking and the capabilities the chart grants the node daemon; the
//! lesson's first step (`docker run -P nginx`) then answers on its published port.
//!
//! Nothing touches the machine's own Docker or network namespace: a dockerd of its own runs in a
//! network namespace made here (entered with nsenter: `ip netns exec` would remount /sys and
//! hide the cgroup mounts dockerd needs), with its data, socket and containerd namespace in a
//! temporary directory, as the benches' does (benches/dockerd.sh). Needs root, docker.io
//! (dockerd and /usr/bin/docker), kubectl and busybox.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const LIST: &str = "image/rootfs.list";
const ASSEMBLE: &str = "image/rootfs.sh";
/// Debian's client, matching its daemon (another docker may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";
/// Where the binary lives in the image (the list's first entry, the Dockerfile's ENTRYPOINT).
const IMAGE_BINARY: &str = "/usr/local/bin/pier";

/// The paths of image/rootfs.list.
fn listed() -> Vec<String> {
    std::fs::read_to_string(root().join(LIST))
        .expect("image/rootfs.list")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared libraries `ldd` says `file` loads (resolved paths, and the dynamic loader).
fn loads(file: &Path) -> BTreeSet<String> {
    let out = run("ldd", &[&file.to_string_lossy()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once("=>") {
                Some((_, to)) => to.split_whitespace().next().map(str::to_owned),
                None => l
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/'))
                    .map(str::to_owned),
            }
        })
        .filter(|p| p.starts_with('/'))
        .collect()
}

/// The executables and modules of the list in `rootfs` (files that are not libraries).
fn loaders(rootfs: &Path, paths: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths.iter().filter(|p| !p.contains(".so.")) {
        let at = rootfs.join(path.trim_start_matches('/'));
        if at.is_dir() {
            for entry in std::fs::read_dir(&at).expect("dir").flatten() {
                out.push(entry.path());
            }
        } else {
            out.push(at);
        }
    }
    out
}

/// The list names exactly the libraries its executables and modules load: none missing (the
/// image would not start) and none extra (nothing else in the image).
#[test]
fn the_image_list_holds_the_binary_and_exactly_the_libraries_it_loads() {
    let paths = listed();
    assert_eq!(paths.first().map(String::as_str), Some(IMAGE_BINARY));
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!("{ASSEMBLE} {LIST} /rootfs"))
            && dockerfile.contains("FROM scratch\nCOPY --from=build /rootfs/ /")
            && dockerfile.contains(&format!("ENTRYPOINT [\"{IMAGE_BINARY}\"]")),
        "the Dockerfile's runtime stage is the root filesystem of {LIST}"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = assemble(work.path());
    let mut needed = BTreeSet::new();
    for file in loaders(&rootfs, &paths) {
        for library in loads(&file) {
            needed.insert(library);
        }
    }
    let libraries: BTreeSet<String> = paths
        .iter()
        .filter(|p| p.contains(".so."))
        .cloned()
        .collect();
    // ldd resolves through this machine's links (/lib64/ld-linux... -> /lib/...); the list names
    // the paths the executables ask for, so compare by file name.
    let name = |p: &String| p.rsplit('/').next().unwrap_or_default().to_owned();
    let needed_names: BTreeSet<String> = needed.iter().map(name).collect();
    let listed_names: BTreeSet<String> = libraries.iter().map(name).collect();
    assert_eq!(
        listed_names, needed_names,
        "{LIST}: the libraries listed differ from those loaded ({needed:?})"
    );
}

/// The list's files from this machine, the binary being the one under test (built where the
/// build stage installs it): WORK/rootfs.
fn assemble(work: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join(LIST)).expect("list");
    let without_binary: Vec<&str> = text.lines().filter(|l| l.trim() != IMAGE_BINARY).collect();
    let list = work.join("rootfs.list");
    std::fs::write(&list, without_binary.join("\n")).expect("list written");
    let rootfs = work.join("rootfs");
    run_ok(
        "sh",
        &[
            &root().join(ASSEMBLE).to_string_lossy(),
            &list.to_string_lossy(),
            &rootfs.to_string_lossy(),
        ],
    );
    let binary = rootfs.join(IMAGE_BINARY.trim_start_matches('/'));
    std::fs::create_dir_all(binary.parent().expect("parent")).expect("mkdir");
    std::fs::copy(env!("CARGO_BIN_EXE_pier"), &binary).expect("binary copied");
    // The test build's debug info is most of its size (the image's release build keeps line
    // tables only): without it the import copies a tenth of the bytes. Same code either way.
    let _ = Command::new("strip")
        .args(["--strip-debug", &binary.to_string_lossy()])
        .status();
    rootfs
}

/// A dockerd of its own in a network namespace of its own, and what it ran: all gone on drop.
struct Docker {
    netns: String,
    work: PathBuf,
    dockerd: Option<Killed>,
    mounted: Vec<PathBuf>,
}

impl Docker {
    fn start(work: &Path) -> Docker {
        let netns = format!("pim{}", std::process::id());
        run_ok("ip", &["netns", "add", &netns]);
        let mut docker = Docker {
            netns,
            work: work.to_owned(),
            dockerd: None,
            mounted: Vec::new(),
        };
        docker.in_netns_ok(&["ip", "link", "set", "lo", "up"]);
        let log = std::fs::File::create(work.join("dockerd.log")).expect("log");
        let w = |p: &str| work.join(p).to_string_lossy().into_owned();
        let dockerd = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", docker.netns))
            .args([
                "dockerd",
                "--data-root",
                &w("data"),
                "--exec-root",
                &w("exec"),
            ])
            .args(["--pidfile", &w("dockerd.pid"), "-H", &docker.host()])
            .args(["--storage-driver", "vfs", "--bridge", "none"])
            .args(["--containerd-namespace", &docker.netns])
            .args([
                "--containerd-plugins-namespace",
                &format!("{}-plugins", docker.netns),
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        docker.dockerd = Some(Killed(dockerd));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !docker.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                std::fs::read_to_string(work.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        docker
    }

    fn host(&self) -> String {
        format!("unix://{}", self.work.join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .env("DOCKER_HOST", self.host())
            .args(args)
            .output()
            .expect("docker runs")
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn in_netns(&self, args: &[&str]) -> Output {
        let net = format!("--net=/run/netns/{}", self.netns);
        let mut all = vec![net.as_str()];
        all.extend_from_slice(args);
        run("nsenter", &all)
    }

    fn in_netns_ok(&self, args: &[&str]) -> String {
        let out = self.in_netns(args);
        assert!(
            out.status.success(),
            "{args:?} in the namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        // Stops dockerd (SIGKILL; its containers are gone already) and reaps it.
        self.dockerd.take();
        for dir in self.mounted.iter().rev() {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let _ = run("umount", &["-l", &entry.path().to_string_lossy()]);
                }
            }
            let _ = run("umount", &["-l", &dir.to_string_lossy()]);
        }
        // What dockerd mounted under its directories (exec-root/netns/default) and did not
        // unmount, being killed: deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.work))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in under {
            let _ = run("umount", &["-l", mount]);
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}

fn require_tools() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "tests/image.rs needs root (a dockerd of its own, network namespaces): run as root"
    );
    for tool in [DOCKER, "/usr/sbin/dockerd"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install docker.io (as .ci/run does)"
        );
    }
    for tool in ["kubectl", "busybox", "nsenter", "ldd", "socat"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing (.ci/run installs it)"
        );
    }
}

/// Kills and reaps a process started here when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `docker import` of the assembled root filesystem, `pier up` from it with host networking
/// (the dockerd's namespace) and the capabilities the chart grants its node daemon when not
/// privileged (`node.privileged: false`; this machine's bounding set lacks CAP_SYS_RESOURCE, so
/// `--privileged`, which asks for every capability, cannot start here), and `docker run -P
/// nginx` from the lesson: its web server answers on the published port.
#[test]
fn the_image_runs_pier_up_and_the_first_lesson_step_answers() {
    require_tools();
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let rootfs = assemble(work);
    let mut docker = Docker::start(work);
    let mut tar = Command::new("tar")
        .args(["-C", &rootfs.to_string_lossy(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let archive = tar.stdout.take().expect("tar output");
    let imported = Command::new(DOCKER)
        .env("DOCKER_HOST", docker.host())
        .args([
            "import",
            "-c",
            &format!("ENTRYPOINT [\"{IMAGE_BINARY}\"]"),
            "-",
            "pier:test",
        ])
        .stdin(archive)
        .output()
        .expect("docker import");
    assert!(
        tar.wait().is_ok_and(|s| s.success()),
        "tar of the root filesystem"
    );
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    // Named namespaces Pier creates in the container show up here (shared propagation), so the
    // test can serve from "the container" as the lesson does.
    let netns_dir = work.join("netns");
    let data_dir = work.join("pier");
    std::fs::create_dir_all(&netns_dir).expect("mkdir");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    let netns = netns_dir.to_string_lossy().into_owned();
    run_ok("mount", &["--bind", &netns, &netns]);
    docker.mounted.push(netns_dir.clone());
    run_ok("mount", &["--make-shared", &netns]);
    // /proc/sys is read-only in the container, as with the chart's `node.privileged: false`:
    // the settings Pier needs are made on the node beforehand (new bridges inherit `default`).
    for setting in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.default.route_localnet=1",
        "net.ipv6.conf.default.accept_ra=0",
    ] {
        docker.in_netns_ok(&["sysctl", "-q", "-w", setting]);
    }
    let examples = root().join("examples/01-published-webserver");
    docker.docker_ok(&[
        "run",
        "-d",
        "--name",
        "pier",
        "--network",
        "host",
        "--user",
        "0",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "NET_BIND_SERVICE",
        "--cap-add",
        "SYS_PTRACE",
        "-v",
        &format!("{netns}:/var/run/netns:rshared"),
        "-v",
        &format!("{}:/var/lib/pier", data_dir.display()),
        "-v",
        &format!("{}:/lesson:ro", examples.display()),
        "pier:test",
        "up",
        "-f",
        "/lesson",
    ]);

    let kubeconfig = data_dir.join("kubeconfig").to_string_lossy().into_owned();
    let kubectl = |args: &[&str]| {
        let mut all = vec!["kubectl", "--kubeconfig", &kubeconfig];
        all.extend_from_slice(args);
        docker.in_netns(&all)
    };
    let logs = || String::from_utf8_lossy(&docker.docker(&["logs", "pier"]).stderr).into_owned();
    let port: u16 = wait_for("the published port", Duration::from_secs(90), || {
        let out = kubectl(&[
            "get",
            "ppub",
            "nginx",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Published\")].status} {.status.ports[0].hostPort}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (published, port) = text.split_once(' ')?;
        (published == "True").then(|| port.parse().ok()).flatten()
    });
    assert!(
        netns_dir.join("nginx").exists(),
        "the nginx namespace Pier created is not visible here; pier's log:\n{}",
        logs()
    );

    let site = work.join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    std::fs::write(site.join("index.html"), "hello from the image\n").expect("page");
    let _httpd = Killed(
        Command::new("nsenter")
            .arg(format!("--net={netns}/nginx"))
            .args([
                "busybox",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                &site.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("httpd in the nginx namespace"),
    );
    let url = format!("http://127.0.0.1:{port}/");
    // As the lesson's tests ask (tests/system: http_from_node).
    let get = format!(
        "printf 'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | socat -T2 -t5 - TCP:127.0.0.1:{port},connect-timeout=2"
    );
    let page = wait_until(Duration::from_secs(20), || {
        let out = docker.in_netns(&["sh", "-c", &get]);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        page.contains("hello from the image").then_some(page)
    });
    let diagnose = || {
        let show = |out: Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let nginx = format!("--net={netns}/nginx");
        format!(
            "node:\n{}{}{}\nnginx:\n{}{}\npier's log:\n{}",
            show(docker.in_netns(&["ip", "addr"])),
            show(docker.in_netns(&[
                "sh",
                "-c",
                "grep . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/route_localnet"
            ])),
            show(docker.in_netns(&["sh", "-c", &get])),
            show(run("nsenter", &[&nginx, "ip", "addr"])),
            show(run("nsenter", &[&nginx, "busybox", "netstat", "-ltn"])),
            logs()
        )
    };
    let page = page.unwrap_or_else(|| panic!("no answer on {url}\n{}", diagnose()));
    assert!(page.starts_with("HTTP/1."), "{page}");
    let rows = String::from_utf8_lossy(&kubectl(&["get", "pep", "nginx"]).stdout).into_owned();
    assert!(
        rows.contains("True"),
        "kubectl get pep nginx:\n{rows}\n{}",
        logs()
    );
}
