//! What `.ci/run` installs on a fresh machine that lacks it: kubectl, from `.ci/install-kubectl`.
//! This machine may have kubectl already, so the installer runs here into a folder of its own,
//! and the kubectl it leaves there must run and be the version the tests need. Needs python3
//! with pip and access to PyPI, as `.ci/run` does.

use std::path::Path;
use std::process::Command;

#[test]
fn the_kubectl_installer_leaves_a_working_kubectl_1_33() {
    let dest = tempfile::tempdir().expect("temporary folder");
    let installer = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-kubectl");
    let out = Command::new(&installer)
        .arg(dest.path())
        .output()
        .expect("run .ci/install-kubectl");
    assert!(
        out.status.success(),
        ".ci/install-kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new(dest.path().join("kubectl"))
        .args(["version", "--client"])
        .output()
        .expect("run the installed kubectl");
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success() && text.contains("Client Version: v1.33."),
        "the installed kubectl says: {text}{}",
        String::from_utf8_lossy(&version.stderr)
    );
}
