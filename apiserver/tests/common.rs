//! Shared helpers of the integration tests.
#![allow(dead_code)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use pier_apiserver::{ApiServer, Options};

/// A client on a fresh in-memory server with Pier's CRDs installed.
pub async fn server_with_crds(opts: Options) -> (ApiServer, kube::Client) {
    let server = ApiServer::in_memory_with(opts)
        .await
        .expect("server starts");
    let client = kube::Client::new(server.service(), "default");
    install_crds(&client).await;
    (server, client)
}

pub async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in pier_crds::manifests::all_crds() {
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("CRD created");
    }
}
