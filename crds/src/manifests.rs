//! The CustomResourceDefinitions generated from the types: what `pier crds` prints and what is
//! committed under `crds/` and `charts/pier/crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Endpoint, Network, PortPublish};

/// The three CRDs with the file name each is committed under.
pub fn all_crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("networks.yaml", Network::crd()),
        ("endpoints.yaml", Endpoint::crd()),
        ("portpublishes.yaml", PortPublish::crd()),
    ]
}

/// One CRD as a YAML document.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// All three as one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (_, crd) in all_crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// Installs (or updates) the three CRDs on the API server behind `client`, by server-side apply as
/// `field_manager`.
pub async fn install(client: &kube::Client, field_manager: &str) -> Result<(), kube::Error> {
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let params = kube::api::PatchParams::apply(field_manager).force();
    for (_, crd) in all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &kube::api::Patch::Apply(&crd))
            .await?;
    }
    Ok(())
}
