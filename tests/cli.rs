//! The `pier` command as a user meets it: a bad manifest in `pier up -f` is reported and the
//! rest applied, errors name their cause first, `pier status` shows the running system, shell
//! completions, and the context `pier` merged into the sudo user's kubeconfig (owned by that
//! user, usable by their kubectl) and purged again. Needs root, kubectl, iproute2, useradd.

mod system;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use system::{Pier, sh, sh_ok};

/// Runs the `pier` binary with `args`, at most 60 s.
fn pier(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_pier"))
        .args(args)
        .output()
        .expect("pier runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let bash = pier(&["completion", "bash"]);
    assert!(bash.status.success(), "{}", text(&bash.stderr));
    let script = std::env::temp_dir().join(format!("pier-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &bash.stdout).expect("script written");
    // bash loads it, registers it for `pier`, and completes `pier sta` to `pier status`.
    let completed = sh_ok(&format!(
        "bash -c 'source {} && complete -p pier && COMP_WORDS=(pier sta) COMP_CWORD=1 \
         COMP_LINE=\"pier sta\" COMP_POINT=8 && _pier pier sta pier && echo \"${{COMPREPLY[@]}}\"'",
        script.display()
    ));
    let _ = std::fs::remove_file(&script);
    let mut lines = completed.lines();
    assert!(
        lines.next().is_some_and(|l| l.ends_with("-F _pier pier")),
        "{completed}"
    );
    assert_eq!(lines.next(), Some("status"), "{completed}");
    let zsh = text(&pier(&["completion", "zsh"]).stdout);
    assert!(zsh.starts_with("#compdef pier"), "{zsh}");
    let fish = text(&pier(&["completion", "fish"]).stdout);
    assert!(
        fish.contains("complete -c pier") && fish.contains("status"),
        "{fish}"
    );
}

#[test]
fn an_error_names_its_cause_on_the_first_line() {
    system::require_root_and_tools();
    let out = pier(&[
        "down",
        "--data-dir",
        "/nonexistent/pier",
        "--node-netns",
        "/nonexistent/netns",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: reading the identity of network namespace /nonexistent/netns: ")
            && first.contains("No such file or directory"),
        "the first line says what failed and why:\n{stderr}"
    );
    assert!(stderr.contains("  while: pier down"), "{stderr}");
}

/// Writes the manifests of the bad-manifest test into `dir`; the names it must find applied.
fn write_manifests(dir: &Path, tag: &str) -> Vec<String> {
    let network = |name: &str| {
        format!(
            "apiVersion: pier.dev/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{}}\n"
        )
    };
    let good: Vec<String> = ["a1", "a3", "d1"]
        .iter()
        .map(|n| format!("{tag}-{n}"))
        .collect();
    let bad_driver = format!(
        "apiVersion: pier.dev/v1alpha1\nkind: Network\nmetadata: {{name: {tag}-a2}}\nspec: {{driver: warp}}\n"
    );
    let files = [
        (
            "a.yaml",
            format!(
                "{}---\n{bad_driver}---\n{}",
                network(&good[0]),
                network(&good[1])
            ),
        ),
        (
            "b.yaml",
            "kind: Network\nmetadata: {name: [unclosed\n".to_owned(),
        ),
        (
            "c.yaml",
            "apiVersion: pier.dev/v1alpha1\nkind: Gadget\nmetadata: {name: g}\n".to_owned(),
        ),
        ("d.yaml", network(&good[2])),
    ];
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("manifest written");
    }
    good
}

#[test]
fn a_bad_manifest_is_reported_and_the_rest_is_applied() {
    let manifests = tempfile::tempdir().expect("tempdir");
    let tag = format!("cli{}", std::process::id());
    let good = write_manifests(manifests.path(), &tag);
    let mut pier = Pier::prepare("clibad", &[], "true", &[]);
    let folder = manifests.path().display().to_string();
    pier.start(&["-f", &folder]);

    let log = pier.log();
    for (file, document, reason) in [
        ("a.yaml", 2, "warp"),
        ("b.yaml", 1, "parsing YAML"),
        ("c.yaml", 1, "the API serves no Gadget in pier.dev/v1alpha1"),
    ] {
        let prefix = format!("error: {folder}/{file}: document {document}: ");
        let line = log
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix:?} reported; log:\n{log}"));
        assert!(
            line.contains(reason),
            "{line:?} gives the reason {reason:?}"
        );
    }
    // The rest was applied and the system runs on.
    let names = pier.kubectl_ok(&format!("get pnet {} -o name", good.join(" ")));
    assert_eq!(names.lines().count(), 3, "{names}");
    assert!(pier.kubectl(&format!("get pnet {tag}-a2")).status.code() == Some(1));
    assert!(
        pier.pid()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    );
    pier.kubectl_ok("get pnet bridge");
}

#[test]
fn status_shows_the_running_system_and_then_that_it_stopped() {
    let container = format!("cst{}", std::process::id());
    let mut pier = Pier::up("clistat", &[container.as_str()]);
    pier.apply(&format!(
        "apiVersion: pier.dev/v1alpha1\nkind: Endpoint\nmetadata: {{name: {container}}}\n\
         spec: {{target: {{netns: {{name: {container}}}}}}}\n"
    ));
    pier.wait_condition(&format!("pep/{container}"), "Attached", "True");
    let data_dir = pier.data_dir.display().to_string();
    let netns = pier.node_netns_path();
    let status = |pier: &Pier| {
        let out = self::pier(&["status", "--data-dir", &data_dir, "--node-netns", &netns]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let _ = pier;
        text(&out.stdout)
    };

    let running = status(&pier);
    let pid = pier.pid().expect("running");
    let port = pier.api_port();
    for expected in [
        format!("Pier:            running: `pier up` (pid {pid}, data directory {data_dir})"),
        format!("API server:      https://127.0.0.1:{port}"),
        format!("Kubeconfig:      {data_dir}/kubeconfig"),
        "Context:         pier (in ".to_owned(),
        "Nodes:           1\n  node-a\n".to_owned(),
        "  bridge (Bridge, ".to_owned(),
        format!("Endpoints:       1\n  default/{container} (bridge, 172."),
        "  nftables:      table inet pier".to_owned(),
        "  links:         pier-".to_owned(),
        format!("  namespaces:    {container}"),
    ] {
        assert!(running.contains(&expected), "{expected:?} in:\n{running}");
    }

    pier.stop();
    let down = pier_down(&pier, &[]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    let stopped = status(&pier);
    for expected in [
        "Pier:            not running\n",
        "Objects:         unavailable (",
        "  nftables:      none\n",
        "  links:         none\n",
        "  namespaces:    none\n",
    ] {
        assert!(stopped.contains(expected), "{expected:?} in:\n{stopped}");
    }
}

fn pier_down(pier: &Pier, extra: &[&str]) -> Output {
    let data_dir = pier.data_dir.display().to_string();
    let netns = pier.node_netns_path();
    let mut args = vec!["down", "--data-dir", &data_dir, "--node-netns", &netns];
    args.extend_from_slice(extra);
    self::pier(&args)
}

/// A user of the machine for the test, with a home of its own; removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestUser {
    fn create() -> TestUser {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let name = format!("pierkc{}", std::process::id());
        let home = dir.path().join("home");
        let _ = sh(&format!("userdel {name} 2>/dev/null"));
        sh_ok(&format!(
            "useradd --home-dir {0} --create-home --shell /bin/sh {name}",
            home.display()
        ));
        let id = |flag: &str| -> u32 {
            sh_ok(&format!("id {flag} {name}"))
                .trim()
                .parse()
                .expect("a number")
        };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
            home,
            _dir: dir,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.home.join(".kube").join("config")
    }

    /// `kubectl ARGS` as this user, with its own home (so its own ~/.kube/config).
    fn kubectl(&self, args: &str) -> Output {
        sh(&format!(
            "runuser -u {} -- env HOME={} kubectl {args}",
            self.name,
            self.home.display()
        ))
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = sh(&format!("userdel {}", self.name));
    }
}

/// The user's existing kubeconfig: a kind cluster, its current context.
const THEIRS: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: kind-a\n  cluster: {server: 'https://10.0.0.1:6443'}\nusers:\n- name: kind-a\n  user: {token: a}\ncontexts:\n- name: kind-a\n  context: {cluster: kind-a, user: kind-a}\ncurrent-context: kind-a\n";

fn context_names(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("kubeconfig");
    let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    value["contexts"]
        .as_sequence()
        .expect("contexts")
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_context_is_merged_for_the_sudo_user_and_purged_again() {
    system::require_root_and_tools();
    let user = TestUser::create();
    let kube_dir = user.home.join(".kube");
    std::fs::create_dir(&kube_dir).expect("mkdir .kube");
    std::fs::write(user.kubeconfig(), THEIRS).expect("their kubeconfig");
    sh_ok(&format!(
        "chown -R {}:{} {}",
        user.uid,
        user.gid,
        kube_dir.display()
    ));

    // `sudo pier up`: sudo resets KUBECONFIG and keeps root's HOME, and says who ran it.
    let mut pier = Pier::prepare("clikc", &[], "true", &[]);
    pier.env = vec![
        ("SUDO_USER".into(), Some(user.name.clone())),
        ("SUDO_UID".into(), Some(user.uid.to_string())),
        ("SUDO_GID".into(), Some(user.gid.to_string())),
        ("HOME".into(), Some("/root".into())),
        ("KUBECONFIG".into(), None),
    ];
    pier.start(&[]);

    let meta = std::fs::metadata(user.kubeconfig()).expect("merged kubeconfig");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (user.uid, user.gid),
        "owned by the user"
    );
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(context_names(&user.kubeconfig()), ["kind-a", "pier"]);
    let private = std::fs::metadata(&pier.kubeconfig).expect("DATA_DIR/kubeconfig");
    assert_eq!((private.uid(), private.mode() & 0o777), (0, 0o600));
    // The user's own kubectl, not root, reaches Pier through the current context.
    let current = user.kubectl("config current-context");
    assert_eq!(
        text(&current.stdout).trim(),
        "pier",
        "{}",
        text(&current.stderr)
    );
    let networks = user.kubectl("get pnet bridge -o name");
    assert_eq!(
        text(&networks.stdout).trim(),
        "network.pier.dev/bridge",
        "{}",
        text(&networks.stderr)
    );

    pier.stop();
    let purged = pier_down(&pier, &["--purge"]);
    assert!(purged.status.success(), "{}", text(&purged.stderr));
    assert!(
        text(&purged.stdout).contains("context `pier` removed"),
        "{}",
        text(&purged.stdout)
    );
    let meta = std::fs::metadata(user.kubeconfig()).expect("kubeconfig kept");
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_eq!(context_names(&user.kubeconfig()), ["kind-a"]);
    let kept = user.kubectl("config get-contexts -o name");
    assert_eq!(text(&kept.stdout).trim(), "kind-a");

    // --no-merge-kubeconfig leaves the user's kubeconfig alone.
    let before = std::fs::read_to_string(user.kubeconfig()).expect("kubeconfig");
    let mut again = Pier::prepare("clikc2", &[], "true", &[]);
    again.env = pier.env.clone();
    again.start(&["--no-merge-kubeconfig"]);
    assert_eq!(
        std::fs::read_to_string(user.kubeconfig()).expect("kubeconfig"),
        before
    );
    assert!(again.kubeconfig.exists());
}
