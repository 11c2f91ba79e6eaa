//! Compiles the vendored Kubernetes `.proto` files (proto/, from k8s.io/api and
//! k8s.io/apimachinery) into one descriptor set, which [`pier_apiserver::protobuf`] uses to read
//! and write kubectl's protobuf bodies for any built-in kind they define.

use std::path::PathBuf;

use prost_reflect::prost::Message;

const GROUPS: &[&str] = &[
    "core",
    "apps",
    "batch",
    "policy",
    "rbac",
    "authorization",
    "coordination",
    "events",
    "networking",
];

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let files: Vec<String> = GROUPS
        .iter()
        .map(|g| format!("k8s.io/api/{g}/v1/generated.proto"))
        .collect();
    let mut set = match protox::compile(&files, ["proto"]) {
        Ok(set) => set,
        Err(e) => panic!("compiling the vendored Kubernetes .proto files: {e}"),
    };
    // Comments are not needed at run time; they would triple the embedded size.
    for file in &mut set.file {
        file.source_code_info = None;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("kubernetes.descriptors"), set.encode_to_vec())
        .expect("writing the descriptor set to OUT_DIR");
}
