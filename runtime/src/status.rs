//! Status writes by server-side apply on the status subresource: each writer names itself (its
//! field manager) and owns only the fields it sends, so the operator's and the node's entries of
//! one conditions list never overwrite each other.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a status write failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The status does not encode as JSON.
    #[error("encoding the status")]
    Encode(#[source] serde_json::Error),
    /// The API refused the patch.
    #[error("patching the status")]
    Api(#[source] kube::Error),
}

/// The apply patch that sets `status` on an object of kind `K`.
pub fn status_patch<K: Resource<DynamicType = ()>>(status: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Applies `status` to `obj`'s status subresource as `field_manager`, forcing ownership of the
/// fields sent (each field has one writer).
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    field_manager: &str,
    status: &S,
) -> Result<(), StatusError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + ?Sized,
{
    let status = serde_json::to_value(status).map_err(StatusError::Encode)?;
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&status_patch::<K>(status)),
    )
    .await
    .map_err(StatusError::Api)?;
    Ok(())
}

/// Applies one condition of `obj` as `field_manager`: only that entry of the conditions list-map
/// (keyed by type) is this writer's, the other writers' entries stay theirs.
pub async fn apply_condition<K, C>(
    api: &Api<K>,
    obj: &K,
    field_manager: &str,
    condition: &C,
) -> Result<(), StatusError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    C: Serialize,
{
    apply_status(
        api,
        obj,
        field_manager,
        &serde_json::json!({ "conditions": [condition] }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    #[test]
    fn the_patch_names_the_kind_and_carries_only_the_status() {
        let patch = status_patch::<Pod>(serde_json::json!({"phase": "Running"}));
        assert_eq!(
            patch,
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": "Running"}})
        );
    }
}
