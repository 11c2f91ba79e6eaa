//! Lean reflector stores: the controllers keep every object they watch in memory for as long as
//! it exists, and an object's managed fields (which field manager set which field, for
//! server-side apply) are most of its size (an Endpoint's are 14 KiB of its 17 KiB decoded) while
//! no controller reads them. These stores drop them as objects arrive.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::channel::mpsc;
use futures::stream::BoxStream;
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

/// One watch of `api`'s objects for several controllers and mappers of a process. Each
/// controller (or `watches` mapper) opening its own watch had every event sent, decoded and
/// slimmed once per watch: with the operator's five watches of Endpoints and the node agent's
/// two, the watch side was about a quarter of `pier up`'s CPU when 2,000 arrived at once (see
/// benches/notes/local.md). Here an event is decoded once, stored
/// (without managed fields) in one store, and handed to every subscriber as the same `Arc`.
///
/// Made by [`shared`]; subscribe first ([`SharedWatch::applied`], [`SharedWatch::touched`]),
/// then drive the watch with [`SharedWatch::run`], polled beside the controllers.
pub struct SharedWatch<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// The watch, through the store (not polled before `run`).
    events: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    reader: Store<K>,
    applied: Vec<mpsc::UnboundedSender<Arc<K>>>,
    touched: Vec<mpsc::UnboundedSender<Arc<K>>>,
    inspectors: Vec<Inspector<K>>,
}

/// One watch of `api` with `config` (retried with the default backoff) for several subscribers;
/// nothing is requested before [`SharedWatch::run`].
pub fn shared<K>(api: Api<K>, config: watcher::Config) -> SharedWatch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Unpin,
{
    let (reader, events) = store(api, config);
    SharedWatch {
        events: events.boxed(),
        reader,
        applied: Vec::new(),
        touched: Vec::new(),
        inspectors: Vec::new(),
    }
}

impl<K> Debug for SharedWatch<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWatch")
            .field("applied", &self.applied.len())
            .field("touched", &self.touched.len())
            .finish_non_exhaustive()
    }
}

/// A function shown every watch event after the store applied it.
type Inspector<K> = Box<dyn Fn(&watcher::Event<K>) + Send + Sync>;

impl<K> SharedWatch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Unpin,
{
    /// The store the watch fills (no managed fields).
    pub fn store(&self) -> Store<K> {
        self.reader.clone()
    }

    /// The objects created or changed, for [`Controller::for_shared_stream`] (what
    /// `applied_objects` yields to [`Controller::new`]).
    pub fn applied(&mut self) -> impl futures::Stream<Item = Arc<K>> + Send + use<K> {
        let (sender, receiver) = mpsc::unbounded();
        self.applied.push(sender);
        receiver
    }

    /// The objects created, changed or deleted, for [`Controller::watches_shared_stream`] (what
    /// `touched_objects` yields to [`Controller::watches`]).
    pub fn touched(&mut self) -> impl futures::Stream<Item = Arc<K>> + Send + use<K> {
        let (sender, receiver) = mpsc::unbounded();
        self.touched.push(sender);
        receiver
    }

    /// Shows `inspect` every event, right after the store applied it.
    pub fn inspect(&mut self, inspect: impl Fn(&watcher::Event<K>) + Send + Sync + 'static) {
        self.inspectors.push(Box::new(inspect));
    }

    /// Runs the watch (with the default backoff on errors) and hands its events out.
    pub async fn run(self) {
        let SharedWatch {
            events,
            applied,
            touched,
            inspectors,
            ..
        } = self;
        events
            .for_each(|event| {
                match event {
                    Ok(event) => {
                        for inspect in &inspectors {
                            inspect(&event);
                        }
                        let (object, is_applied) = match event {
                            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                                (object, true)
                            }
                            watcher::Event::Delete(object) => (object, false),
                            watcher::Event::Init | watcher::Event::InitDone => {
                                return futures::future::ready(());
                            }
                        };
                        let object = Arc::new(object);
                        // A subscriber gone (its controller stopped) is no reason to stop.
                        let receivers = touched.iter().chain(applied.iter().filter(|_| is_applied));
                        for sender in receivers {
                            let _ = sender.unbounded_send(Arc::clone(&object));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(kind = %K::kind(&K::DynamicType::default()), %error, "watch failed; retrying");
                    }
                }
                futures::future::ready(())
            })
            .await;
    }
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
