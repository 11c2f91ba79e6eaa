//! Which Endpoints a change of one Endpoint concerns, found by lookup instead of a scan.
//!
//! An Endpoint waits for the one whose namespace it shares (container mode), and Endpoints
//! attaching the same namespace (a Pod's, a named one) follow each other, since the oldest
//! carries the default route. Scanning every Endpoint of the cluster on every Endpoint event
//! made N arriving at once cost N² (with 2,000, the scan and the copies of the store it took were
//! about 5% of `pier up`'s CPU): this index keys each Endpoint by what it attaches, so an event
//! looks up only those.
//!
//! The relation (`depends_on` in the tests is its plain statement) is: `ep` depends on
//! `changed` when `ep` shares `changed`'s namespace, or both target the same Pod (in one
//! Kubernetes namespace), or both target the same named network namespace.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use pier_crds::Endpoint;
use pier_memory::ShrinkIfSparse as _;

/// What an Endpoint attaches, as a key both sides of the relation meet on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Attaches {
    /// The namespace of Endpoint `endpoint` in Kubernetes namespace `namespace`.
    EndpointNamespace {
        namespace: Option<String>,
        endpoint: String,
    },
    /// Pod `pod`'s network namespace, in Kubernetes namespace `namespace`.
    Pod {
        namespace: Option<String>,
        pod: String,
    },
    /// The named network namespace `name` (the node's, so no Kubernetes namespace).
    Named { name: String },
}

/// The keys under which `ep` waits for or follows others.
fn keys_of_dependent(ep: &Endpoint) -> Vec<Attaches> {
    let namespace = &ep.metadata.namespace;
    let target = &ep.spec.target;
    let shares = target
        .endpoint
        .as_ref()
        .map(|t| Attaches::EndpointNamespace {
            namespace: namespace.clone(),
            endpoint: t.name.clone(),
        });
    shares.into_iter().chain(common_keys(ep)).collect()
}

/// The keys under which a change of `changed` concerns others.
fn keys_of_changed(changed: &Endpoint) -> Vec<Attaches> {
    let own = changed
        .metadata
        .name
        .as_ref()
        .map(|name| Attaches::EndpointNamespace {
            namespace: changed.metadata.namespace.clone(),
            endpoint: name.clone(),
        });
    own.into_iter().chain(common_keys(changed)).collect()
}

/// The keys both sides share: the Pod and the named namespace an Endpoint targets.
fn common_keys(ep: &Endpoint) -> impl Iterator<Item = Attaches> + use<> {
    let target = &ep.spec.target;
    let pod = target.pod.as_ref().map(|p| Attaches::Pod {
        namespace: ep.metadata.namespace.clone(),
        pod: p.name.clone(),
    });
    let named = target.netns.as_ref().map(|n| Attaches::Named {
        name: n.name.clone(),
    });
    pod.into_iter().chain(named)
}

/// The Endpoints by what they attach.
#[derive(Debug, Default)]
pub struct Dependents {
    by_key: HashMap<Attaches, HashSet<ObjectRef<Endpoint>>>,
    keys: HashMap<ObjectRef<Endpoint>, Vec<Attaches>>,
}

impl Dependents {
    /// Adds `ep`, or updates it.
    pub fn upsert(&mut self, ep: &Endpoint) {
        self.remove(ep);
        let reference = ObjectRef::from_obj(ep);
        let keys = keys_of_dependent(ep);
        for key in &keys {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(reference.clone());
        }
        self.keys.insert(reference, keys);
    }

    /// Forgets `ep`.
    pub fn remove(&mut self, ep: &Endpoint) {
        let reference = ObjectRef::from_obj(ep);
        for key in self.keys.remove(&reference).unwrap_or_default() {
            if let Some(set) = self.by_key.get_mut(&key) {
                set.remove(&reference);
                if set.is_empty() {
                    self.by_key.remove(&key);
                } else {
                    set.shrink_if_sparse();
                }
            }
        }
        self.keys.shrink_if_sparse();
        self.by_key.shrink_if_sparse();
    }

    /// Holds exactly `endpoints` (after a relist).
    pub fn replace<'a>(&mut self, endpoints: impl IntoIterator<Item = &'a Endpoint>) {
        *self = Dependents::default();
        for ep in endpoints {
            self.upsert(ep);
        }
    }

    /// The Endpoints a change of `changed` concerns (itself too, when it is known).
    pub fn of(&self, changed: &Endpoint) -> Vec<ObjectRef<Endpoint>> {
        let mut found: HashSet<&ObjectRef<Endpoint>> = HashSet::new();
        for key in keys_of_changed(changed) {
            found.extend(self.by_key.get(&key).into_iter().flatten());
        }
        found.into_iter().cloned().collect()
    }
}

/// The index shared by the watch that keeps it and the mapper that reads it.
#[derive(Debug, Clone, Default)]
pub struct SharedDependents(Arc<Mutex<Dependents>>);

impl SharedDependents {
    /// Keeps the index in step with a watch of Endpoints, shown each event after `store`
    /// applied it (a relist is taken from the store once complete).
    pub fn follow(
        &self,
        store: kube::runtime::reflector::Store<Endpoint>,
    ) -> impl Fn(&watcher::Event<Endpoint>) + Send + Sync + 'static {
        let shared = self.clone();
        move |event| match event {
            watcher::Event::Apply(ep) => shared.with(|index| index.upsert(ep)),
            watcher::Event::Delete(ep) => shared.with(|index| index.remove(ep)),
            watcher::Event::InitDone => {
                let all = store.state();
                shared.with(|index| index.replace(all.iter().map(|ep| &**ep)));
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// [`Dependents::of`].
    pub fn of(&self, changed: &Endpoint) -> Vec<ObjectRef<Endpoint>> {
        self.with(|index| index.of(changed))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Dependents) -> T) -> T {
        // The index is only ever left consistent (no panics inside): a poisoned lock is usable.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The relation, stated plainly: what the controller scanned every Endpoint with.
    fn depends_on(ep: &Endpoint, changed: &Endpoint) -> bool {
        let same_namespace = ep.metadata.namespace == changed.metadata.namespace;
        let (mine, theirs) = (&ep.spec.target, &changed.spec.target);
        let shares = same_namespace
            && mine
                .endpoint
                .as_ref()
                .is_some_and(|t| changed.metadata.name.as_deref() == Some(t.name.as_str()));
        let same_pod = same_namespace
            && mine
                .pod
                .as_ref()
                .zip(theirs.pod.as_ref())
                .is_some_and(|(a, b)| a.name == b.name);
        let same_netns = mine
            .netns
            .as_ref()
            .zip(theirs.netns.as_ref())
            .is_some_and(|(a, b)| a.name == b.name);
        shares || same_pod || same_netns
    }

    /// An Endpoint `name` in namespace `ns` targeting, by `kind` 0/1/2, the named namespace,
    /// the Pod or the Endpoint called `target`.
    fn endpoint(ns: &str, name: &str, kind: u8, target: &str) -> Endpoint {
        let target = match kind {
            0 => serde_json::json!({"netns": {"name": target}}),
            1 => serde_json::json!({"pod": {"name": target}}),
            _ => serde_json::json!({"endpoint": {"name": target}}),
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pier.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"target": target}}))
        .expect("an Endpoint")
    }

    fn sorted(mut refs: Vec<ObjectRef<Endpoint>>) -> Vec<String> {
        let mut names: Vec<String> = refs.drain(..).map(|r| r.to_string()).collect();
        names.sort();
        names
    }

    proptest! {
        /// After any sequence of upserts and removals, a lookup finds exactly what scanning
        /// the remaining Endpoints with the relation finds.
        #[test]
        fn lookups_equal_the_scan(
            ops in proptest::collection::vec(
                (any::<bool>(), 0..2u8, 0..6u8, 0..3u8, 0..4u8), 1..60),
        ) {
            let mut index = Dependents::default();
            let mut live: HashMap<String, Endpoint> = HashMap::new();
            for (insert, ns, name, kind, target) in ops {
                let (ns, name) = (format!("ns{ns}"), format!("e{name}"));
                // Targets reuse the names of Endpoints, Pods and namespaces so keys collide.
                let ep = endpoint(&ns, &name, kind, &format!("e{target}"));
                if insert {
                    index.upsert(&ep);
                    live.insert(format!("{ns}/{name}"), ep);
                } else {
                    index.remove(&ep);
                    live.remove(&format!("{ns}/{name}"));
                }
            }
            for changed in live.values() {
                let scanned = live
                    .values()
                    .filter(|ep| depends_on(ep, changed))
                    .map(ObjectRef::from_obj)
                    .collect();
                prop_assert_eq!(sorted(index.of(changed)), sorted(scanned));
            }
            // A change of an Endpoint no longer stored still finds those that wait for it.
            let gone = endpoint("ns0", "e9", 0, "e1");
            let scanned = live.values().filter(|ep| depends_on(ep, &gone)).map(ObjectRef::from_obj).collect();
            prop_assert_eq!(sorted(index.of(&gone)), sorted(scanned));
        }
    }

    #[test]
    fn replace_forgets_what_is_not_listed() {
        let mut index = Dependents::default();
        let (a, b) = (endpoint("x", "a", 0, "n"), endpoint("x", "b", 0, "n"));
        index.upsert(&a);
        index.upsert(&b);
        assert_eq!(index.of(&a).len(), 2);
        index.replace([&a]);
        assert_eq!(sorted(index.of(&a)), sorted(vec![ObjectRef::from_obj(&a)]));
    }
}
