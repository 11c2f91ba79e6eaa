//! The Debian package (`cargo deb`): built from the binary these tests run, installed with
//! `apt install ./pier_*.deb`, its `pier --version` and `pier status` work, it carries the
//! systemd unit and the examples, and `apt remove` takes it away. Needs root, cargo-deb
//! (`cargo install cargo-deb --locked`, as .ci/run does), apt and kubectl.

mod system;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use system::{Pier, sh, sh_ok};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes the package on drop, also when the test fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = sh("apt-get purge -y -qq pier >/dev/null 2>&1 || dpkg --purge pier");
    }
}

/// `cargo deb --no-build`: packages the binary cargo test built, into `out`. cargo-deb takes
/// release builds only, so the tested binary is linked into a release folder of a target
/// directory of the test's own (beside the real one, so a hard link works).
fn build_package(out: &Path) -> PathBuf {
    let version = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: `cargo install cargo-deb --locked` (.ci/run installs it)"
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_pier"));
    let real_target = binary
        .parent()
        .and_then(Path::parent)
        .expect("the target folder");
    let target = tempfile::tempdir_in(real_target).expect("a target folder for cargo deb");
    let release = target.path().join("release");
    std::fs::create_dir(&release).expect("release folder");
    if std::fs::hard_link(binary, release.join("pier")).is_err() {
        std::fs::copy(binary, release.join("pier")).expect("the binary copied");
    }
    let built = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target.path())
        .args(["deb", "--no-build", "--fast", "--output"])
        .arg(out)
        .output()
        .expect("cargo deb runs");
    assert!(
        built.status.success(),
        "cargo deb failed:\n{}",
        text(&built)
    );
    std::fs::read_dir(out)
        .expect("output folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("a .deb in {}:\n{}", out.display(), text(&built)))
}

#[test]
fn the_debian_package_installs_and_its_pier_works() {
    system::require_root_and_tools();
    let already = sh("dpkg-query -W -f='${Status}' pier 2>/dev/null");
    assert!(
        !String::from_utf8_lossy(&already.stdout).contains("install ok installed"),
        "the package pier is installed on this machine already: this test installs and removes \
         it, so remove it first (apt remove pier)"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let deb = build_package(out.path());
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(name.starts_with("pier_0.1.0"), "{name}");

    let _installed = Installed;
    let install = sh(&format!(
        "cd {} && DEBIAN_FRONTEND=noninteractive apt install -y ./{name}",
        out.path().display()
    ));
    assert!(
        install.status.success(),
        "apt install failed:\n{}",
        text(&install)
    );

    let version = sh_ok("/usr/bin/pier --version");
    assert_eq!(version.trim(), "pier 0.1.0");
    let files = sh_ok("dpkg -L pier");
    for expected in [
        "/usr/bin/pier",
        "/usr/lib/systemd/system/pier.service",
        "/usr/share/doc/pier/examples/01-published-webserver/nginx.yaml",
        "/usr/share/doc/pier/examples/dataplane/lesson.json",
        "/usr/share/doc/pier/copyright",
    ] {
        assert!(
            files.lines().any(|l| l.trim() == expected),
            "{expected} in the package:\n{files}"
        );
    }
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/pier.service").expect("the unit");
    assert!(unit.contains("ExecStart=/usr/bin/pier up"), "{unit}");

    // The installed binary reports on a running Pier.
    let pier = Pier::up("pkg", &[]);
    let status = sh_ok(&format!(
        "/usr/bin/pier status --data-dir {} --node-netns {}",
        pier.data_dir.display(),
        pier.node_netns_path()
    ));
    assert!(
        status.contains("Pier:            running: `pier up`"),
        "{status}"
    );
    assert!(status.contains("Nodes:           1\n  node-a"), "{status}");
}
