//! Lean reflector stores: the controllers keep every object they watch in memory for as long as
//! it exists, and an object's managed fields (which field manager set which field, for
//! server-side apply) are most of its size (an Endpoint's are 14 KiB of its 17 KiB decoded) while
//! no controller reads them. These stores drop them as objects arrive.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Drops what a store does not need to keep of an object: its managed fields.
pub fn drop_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// [`Controller::new`], with a store that keeps no managed fields.
pub fn controller<K>(api: Api<K>, config: watcher::Config) -> Controller<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Debug + Unpin,
{
    let (reader, writer) = reflector::store();
    // As Controller::new builds its trigger, with the objects slimmed before they are stored.
    let trigger = watcher(api, config)
        .modify(drop_managed_fields)
        .reflect(writer)
        .applied_objects()
        .boxed();
    Controller::for_stream(trigger, reader)
}

/// A store of `api`'s objects (no managed fields) and the watch that fills it, which yields
/// every watch event (for callers that wake on them).
pub fn store<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Unpin,
{
    let (reader, writer) = reflector::store();
    let events = watcher(api, config)
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer);
    (reader, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    #[test]
    fn managed_fields_are_dropped_and_nothing_else() {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                labels: Some([("k".to_owned(), "v".to_owned())].into()),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some("pier-operator".into()),
                    ..ManagedFieldsEntry::default()
                }]),
                ..ObjectMeta::default()
            },
            data: Some([("x".to_owned(), "y".to_owned())].into()),
            ..ConfigMap::default()
        };
        let mut expected = cm.clone();
        expected.metadata.managed_fields = None;
        drop_managed_fields(&mut cm);
        assert_eq!(cm, expected);
    }
}
