//! The API semantics over the store: create, get, list, update, patch, apply, delete, as the real
//! server does them (uid, timestamps, generation, status subresource, finalizers, managed fields,
//! validation). Transport-free: [`crate::http`] maps requests onto these.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::event_budget::EventBudget;
use crate::names::{self, NameRule};
use crate::patch::apply::{self, Scope, Writer};
use crate::patch::fields::Schema;
use crate::patch::{self as patches, PatchKind};
use crate::resources::{Registry, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{CommitError, Expect, NamespacedName, Page, Store};
use crate::validation::invalid_message;

/// How many deletes of one collection (or of one deleted namespace's objects) are in flight at
/// once. Each waits for its write to be durable, and the writes in flight share one fsync (the
/// log's group commit): deleted one after another, 500 Endpoints waited for 500 fsyncs in a row.
const DELETES_IN_FLIGHT: usize = 64;

/// Query parameters, decoded.
pub type Params = HashMap<String, String>;

/// The engine behind every route.
#[derive(Debug)]
pub struct Api {
    pub store: Store,
    /// The resources served, built from the CRDs as of the version with it.
    registry: RwLock<(u64, Arc<Registry>)>,
    /// Concurrent watches allowed.
    pub watch_slots: Arc<tokio::sync::Semaphore>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: std::time::Duration,
    /// A watch whose client takes none of its events for this long is closed.
    pub watch_stall_timeout: std::time::Duration,
    /// Watches answered with 410 Gone (for tests and metrics).
    gone: std::sync::atomic::AtomicU64,
    /// Bumped to end every open watch.
    pub(crate) closer: tokio::sync::watch::Sender<u64>,
}

const CRDS: &str = "apiextensions.k8s.io/customresourcedefinitions";
const NAMESPACES: &str = "/namespaces";
const RETRIES: usize = 16;
/// The registry's version before its first build.
const NEVER_BUILT: u64 = u64::MAX;

/// The current time as Kubernetes writes it.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A body that is JSON or YAML. Clients send JSON (kubectl, kube-rs), which is YAML too, and
/// people with curl sometimes YAML: the JSON parser goes first, it is several times faster.
pub(crate) fn json_or_yaml(body: &[u8]) -> Result<Value, serde_yaml::Error> {
    serde_json::from_slice(body).or_else(|_| serde_yaml::from_slice(body))
}

/// Whether `a` and `b` are the same object but for their resourceVersion and managedFields: a
/// write that changes nothing else is no change. Compared in place, without copies.
fn same_but_version_and_managers(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let empty = Map::new();
    let meta_a = a
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let meta_b = b
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    same_entries_but(a, b, &["metadata"])
        && same_entries_but(meta_a, meta_b, &["resourceVersion", "managedFields"])
}

/// Whether two maps have the same entries, those named in `ignored` aside (in any order).
fn same_entries_but(a: &Map<String, Value>, b: &Map<String, Value>, ignored: &[&str]) -> bool {
    let kept = |(key, _): &(&String, &Value)| !ignored.contains(&key.as_str());
    a.iter().filter(kept).count() == b.iter().filter(kept).count()
        && a.iter()
            .filter(kept)
            .all(|(key, value)| b.get(key) == Some(value))
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Value::Object(root) = obj else {
        unreachable!("made an object above")
    };
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(key)).and_then(Value::as_str)
}

fn rv_of(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn has_finalizers(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(names::GENERATED_SUFFIX_LEN)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Everything but metadata and status: what bumps `generation`.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Who is writing: the field manager and the operation's scope.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    pub manager: String,
    pub subresource: String,
    pub dry_run: bool,
    /// Whether the request named the manager (apply requires it).
    pub manager_given: bool,
    /// `fieldValidation=Strict`: unknown fields are an error instead of being dropped.
    pub strict: bool,
}

impl WriteCtx {
    pub fn from_params(params: &Params, user_agent: Option<&str>, subresource: &str) -> WriteCtx {
        let manager = params
            .get("fieldManager")
            .cloned()
            .or_else(|| {
                user_agent
                    .and_then(|ua| ua.split('/').next())
                    .map(String::from)
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".into());
        WriteCtx {
            manager_given: params.contains_key("fieldManager"),
            strict: params.get("fieldValidation").is_some_and(|v| v == "Strict"),
            manager,
            subresource: subresource.to_string(),
            dry_run: params.get("dryRun").is_some_and(|d| d == "All"),
        }
    }
}

impl Api {
    pub fn new(store: Store, max_watches: usize) -> Api {
        let api = Api {
            store,
            registry: RwLock::new((NEVER_BUILT, Arc::new(Registry::default()))),
            watch_slots: Arc::new(tokio::sync::Semaphore::new(max_watches)),
            bookmark_interval: std::time::Duration::from_secs(10),
            watch_stall_timeout: std::time::Duration::from_secs(10),
            gone: std::sync::atomic::AtomicU64::new(0),
            closer: tokio::sync::watch::Sender::new(0),
        };
        api.registry();
        api
    }

    /// How many watches were answered with 410 Gone.
    pub fn gone_count(&self) -> u64 {
        self.gone.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// End every open watch (clients resume from their last version, as after a server restart).
    pub fn close_watches(&self) {
        self.closer.send_modify(|g| *g += 1);
    }

    /// Forget the change history: resuming watches get 410 Gone and must re-list.
    pub fn compact_history(&self) {
        self.store.compact_history();
    }

    /// Drops watch history older than its max age ([`crate::Options::history_max_age`]);
    /// returns how many changes went.
    pub fn prune_history(&self) -> usize {
        self.store.prune_history()
    }

    /// How many changes the watch history holds.
    pub fn history_len(&self) -> usize {
        self.store.history_len()
    }

    /// What the store holds: objects, changes and their bytes.
    pub fn store_usage(&self) -> crate::store::Usage {
        self.store.usage()
    }

    pub(crate) fn count_gone(&self) {
        self.gone.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The resources served now: rebuilt once CRD changes are visible (durable), so no request
    /// is served by a CRD that may yet be lost.
    pub fn registry(&self) -> Arc<Registry> {
        let version = self.store.key_version(CRDS);
        {
            let current = self.registry.read().unwrap_or_else(|p| p.into_inner());
            if current.0 == version {
                return current.1.clone();
            }
        }
        self.rebuild_registry()
    }

    fn rebuild_registry(&self) -> Arc<Registry> {
        let mut current = self.registry.write().unwrap_or_else(|p| p.into_inner());
        let version = self.store.key_version(CRDS);
        if current.0 != version {
            let crds = self.store.list(CRDS, None, None, None, &|_| true).items;
            *current = (version, Arc::new(Registry::build(&crds)));
        }
        current.1.clone()
    }

    fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError::not_found(&res.group, &res.plural, name)
    }

    fn invalid(res: &Resource, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::Invalid {
            group: res.group.clone(),
            kind: res.kind.clone(),
            name: name.to_string(),
            message: invalid_message(&res.kind, &res.group, name, &causes),
            causes,
        }
    }

    fn ns_key(res: &Resource, ns: Option<&str>) -> String {
        if res.namespaced {
            ns.unwrap_or("default").to_string()
        } else {
            String::new()
        }
    }

    /// Set the version fields, then prune, default and validate a custom resource.
    fn check(
        &self,
        res: &Resource,
        obj: &mut Value,
        old: Option<&Value>,
        strict: bool,
    ) -> Result<(), ApiError> {
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), json!(res.api_version()));
            m.insert("kind".into(), json!(res.kind));
        }
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(Self::invalid(
                res,
                &name,
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    field: "metadata.name".into(),
                    message: "Required value: name or generateName is required".into(),
                }],
            ));
        }
        if let Some(checks) = &res.checks {
            let pruned = checks.prune_and_default(obj);
            if strict && !pruned.is_empty() {
                let fields: Vec<String> = pruned
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
                return Err(ApiError::BadRequest(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    res.kind,
                    res.version,
                    res.kind,
                    fields.join(", ")
                )));
            }
            let causes = checks.validate(obj, old);
            if !causes.is_empty() {
                return Err(Self::invalid(res, &name, causes));
            }
        }
        if let Some(kind) = &res.typed {
            crate::builtin_kinds::decode(kind, obj, strict)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let causes = crate::builtin_kinds::data_key_causes(kind, obj);
            if !causes.is_empty() {
                return Err(Self::invalid(res, &name, causes));
            }
        }
        if res.storage_key == CRDS {
            crate::resources::from_crd(obj).map_err(|e| {
                Self::invalid(
                    res,
                    &name,
                    vec![Cause {
                        reason: "FieldValueInvalid".into(),
                        field: "spec".into(),
                        message: e,
                    }],
                )
            })?;
            set_crd_status(obj);
        }
        Ok(())
    }

    fn writer<'a>(
        res: &'a Resource,
        ctx: &'a WriteCtx,
        now: &'a str,
        api_version: &'a str,
    ) -> Writer<'a> {
        let scope = if ctx.subresource == "status" {
            Scope::OnlyStatus
        } else if res.status_subresource {
            Scope::ExceptStatus
        } else {
            Scope::All
        };
        Writer {
            manager: &ctx.manager,
            api_version,
            subresource: &ctx.subresource,
            now,
            scope,
            schema: Schema(res.apply_schema()),
        }
    }

    async fn commit(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        expect: Expect,
        new: Option<Value>,
        dry_run: bool,
    ) -> Result<Arc<Value>, CommitError> {
        if dry_run {
            return Ok(Arc::new(new.unwrap_or_default()));
        }
        let new = new.map(|v| Self::to_storage(res, v));
        let (obj, durable) = self.store.commit(&res.storage_key, ns, name, expect, new)?;
        if let Err(e) = durable.wait().await {
            tracing::error!(error = %e, "write not durable");
            return Err(CommitError::NotDurable(e.to_string()));
        }
        Ok(Self::from_storage(res, obj))
    }

    /// The stored form of an object of `res`.
    pub fn to_storage(res: &Resource, v: Value) -> Value {
        if res.events_form {
            crate::convert::event_to_core(v)
        } else {
            v
        }
    }

    /// The served form of a stored object of `res`.
    pub fn from_storage(res: &Resource, v: Arc<Value>) -> Arc<Value> {
        if res.events_form {
            Arc::new(crate::convert::event_from_core((*v).clone()))
        } else {
            v
        }
    }

    /// POST: create.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Arc<Value>, ApiError> {
        self.create_managed(res, ns, body, ctx, None).await
    }

    /// Create, recording `managed` as the managed fields (apply) instead of an Update entry.
    async fn create_managed(
        &self,
        res: &Resource,
        ns: Option<&str>,
        body: Value,
        ctx: &WriteCtx,
        managed: Option<Value>,
    ) -> Result<Arc<Value>, ApiError> {
        if !body.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let nsk = Self::ns_key(res, ns);
        if res.namespaced {
            self.require_namespace(&nsk)?;
        }
        let generate = meta_str(&body, "generateName").map(String::from);
        let given = meta_str(&body, "name")
            .map(String::from)
            .filter(|n| !n.is_empty());
        let rule = if res.storage_key == NAMESPACES {
            NameRule::Label
        } else {
            NameRule::Subdomain
        };
        for attempt in 0..8 {
            let name = match (&given, &generate) {
                (Some(n), _) => n.clone(),
                (None, Some(prefix)) => names::generated(prefix, &random_suffix()),
                (None, None) => String::new(),
            };
            if !name.is_empty() {
                let causes = names::causes(rule, &name, generate.as_deref());
                if !causes.is_empty() {
                    return Err(Self::invalid(res, &name, causes));
                }
            }
            let mut obj = body.clone();
            let now = now();
            {
                let m = meta_mut(&mut obj);
                m.insert("name".into(), json!(name));
                if res.namespaced {
                    m.insert("namespace".into(), json!(nsk));
                } else {
                    m.remove("namespace");
                }
                m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                m.insert("creationTimestamp".into(), json!(now));
                for k in [
                    "resourceVersion",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "managedFields",
                    "selfLink",
                ] {
                    m.remove(k);
                }
                if res.generation {
                    m.insert("generation".into(), json!(1));
                } else {
                    m.remove("generation");
                }
            }
            if res.status_subresource
                && res.generation
                && let Some(m) = obj.as_object_mut()
            {
                m.remove("status");
            }
            if res.storage_key == NAMESPACES {
                obj["status"] = json!({"phase": "Active"});
            }
            self.check(res, &mut obj, None, ctx.strict)?;
            let api_version = res.api_version();
            let w = Self::writer(res, ctx, &now, &api_version);
            match &managed {
                Some(mf) => {
                    meta_mut(&mut obj).insert("managedFields".into(), mf.clone());
                }
                None => apply::track_update(
                    None,
                    &mut obj,
                    &Writer {
                        scope: Scope::All,
                        ..w
                    },
                ),
            }
            match self
                .commit(res, &nsk, &name, Expect::Absent, Some(obj), ctx.dry_run)
                .await
            {
                Ok(o) => return Ok(o),
                Err(CommitError::NotDurable(e)) => return Err(ApiError::Internal(e)),
                Err(CommitError::Exists) if given.is_none() && attempt < 7 => continue,
                Err(_) => {
                    return Err(ApiError::AlreadyExists {
                        group: res.group.clone(),
                        resource: res.plural.clone(),
                        name,
                    });
                }
            }
        }
        Err(ApiError::Internal(
            "could not generate a unique name".into(),
        ))
    }

    fn require_namespace(&self, ns: &str) -> Result<(), ApiError> {
        if !self.store.contains(NAMESPACES, "", ns) {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        Ok(())
    }

    /// GET one.
    pub fn get(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        self.store
            .get(&res.storage_key, &Self::ns_key(res, ns), name)
            .map(|o| Self::from_storage(res, o))
            .ok_or_else(|| Self::not_found(res, name))
    }

    /// Whether one object exists (visible to readers), without decoding it.
    pub fn exists(&self, res: &Resource, ns: Option<&str>, name: &str) -> bool {
        self.store
            .contains(&res.storage_key, &Self::ns_key(res, ns), name)
    }

    /// One object as the next write sees it (pending writes included): the base of updates,
    /// patches and deletions, so they queue behind a write not yet durable instead of
    /// conflicting with it. Never served to readers.
    fn latest(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Arc<Value>, ApiError> {
        self.store
            .latest(&res.storage_key, &Self::ns_key(res, ns), name)
            .map(|o| Self::from_storage(res, o))
            .ok_or_else(|| Self::not_found(res, name))
    }

    /// Whether `obj` is still pending; if so, waits until it is visible or dropped (the caller
    /// then reads again), so an answer never shows a write that is not durable.
    async fn still_pending(&self, obj: &Value) -> bool {
        let rv = rv_of(obj);
        if rv <= self.store.current_rv() {
            return false;
        }
        self.store.settled(rv).await;
        true
    }

    /// The selectors of a list or watch.
    pub fn filter(
        res: &Resource,
        params: &Params,
    ) -> Result<impl Fn(&Value) -> bool + Send + Sync + 'static, ApiError> {
        let labels = LabelSelector::parse(
            params
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or(""),
        )
        .map_err(ApiError::BadRequest)?;
        let fields = FieldSelector::parse(
            params
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or(""),
            &res.selectable_fields(),
        )
        .map_err(ApiError::BadRequest)?;
        Ok(move |o: &Value| labels.matches(o) && fields.matches(o))
    }

    /// GET a collection.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &Params,
    ) -> Result<Value, ApiError> {
        let filter = Self::filter(res, params)?;
        let ListWindow { limit, after } = ListWindow::of(params)?;
        let ns = if res.namespaced { ns } else { None };
        let page = if res.events_form {
            let served = |o: &Value| filter(&Self::from_storage(res, Arc::new(o.clone())));
            let mut page = self.store.list(&res.storage_key, ns, after, limit, &served);
            page.items = page
                .items
                .into_iter()
                .map(|o| Self::from_storage(res, o))
                .collect();
            page
        } else {
            self.store.list(&res.storage_key, ns, after, limit, &filter)
        };
        let metadata = list_metadata(&page);
        // Each item was decoded for this list alone: moved, not copied.
        let items: Vec<Value> = page.items.into_iter().map(Arc::unwrap_or_clone).collect();
        Ok(json!({
            "kind": res.list_kind,
            "apiVersion": res.api_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// GET a collection, as JSON: what [`Api::list`] returns, encoded, made from the items'
    /// stored JSON without decoding them (but to test selectors, one at a time; see
    /// [`Store::list_json`]). Kinds served in another form than stored go through `list`.
    pub fn list_encoded(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &Params,
    ) -> Result<Vec<u8>, ApiError> {
        if res.events_form {
            return Ok(serde_json::to_vec(&self.list(res, ns, params)?).unwrap_or_default());
        }
        let filter = Self::filter(res, params)?;
        let selects = selects(params);
        let ListWindow { limit, after } = ListWindow::of(params)?;
        let ns = if res.namespaced { ns } else { None };
        let page = self.store.list_json(
            &res.storage_key,
            ns,
            after,
            limit,
            selects.then_some(&filter as &dyn Fn(&Value) -> bool),
        );
        Ok(list_json(
            &res.list_kind,
            &res.api_version(),
            &list_metadata(&page),
            &page.items,
        ))
    }

    /// Carry the server-owned parts of `old` into an update and apply status semantics.
    fn prepare_update(res: &Resource, old: &Value, mut new: Value, ctx: &WriteCtx) -> Value {
        if ctx.subresource == "status" {
            // Only status changes on /status (metadata's managed fields come from the writer).
            let status = new.get("status").cloned();
            let managed = meta(&new).and_then(|m| m.get("managedFields")).cloned();
            new = old.clone();
            if let Some(m) = new.as_object_mut() {
                match status {
                    Some(s) => m.insert("status".into(), s),
                    None => m.remove("status"),
                };
            }
            if let Some(mf) = managed {
                meta_mut(&mut new).insert("managedFields".into(), mf);
            }
        } else if res.status_subresource
            && let Some(m) = new.as_object_mut()
        {
            match old.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
        let old_meta = meta(old).cloned().unwrap_or_default();
        let m = meta_mut(&mut new);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        if res.generation && spec_part(old) != spec_part(&new) {
            let g = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        new
    }

    /// Commit an update computed from the current object, retrying when the object changed
    /// meanwhile (unless the caller pinned a resourceVersion). An apply computed its managed
    /// fields; any other `operation` is recorded here.
    async fn update_with(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        ctx: &WriteCtx,
        operation: Operation,
        mut compute: impl FnMut(&Value) -> Result<(Value, bool), ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let nsk = Self::ns_key(res, ns);
        for _ in 0..RETRIES {
            let old = self.latest(res, ns, name)?;
            // `pinned`: the body named a resourceVersion, so a mismatch is the client's conflict.
            let (body, pinned) = compute(&old)?;
            if !body.is_object() {
                return Err(ApiError::BadRequest(
                    "the body must be a JSON object".into(),
                ));
            }
            if let Some(body_name) = meta_str(&body, "name")
                && body_name != name
            {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            let want_rv = meta_str(&body, "resourceVersion")
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|_| pinned);
            if let Some(want) = want_rv
                && want != rv_of(&old)
            {
                return Err(self.conflict(res, name));
            }
            let now = now();
            let api_version = res.api_version();
            let w = Self::writer(res, ctx, &now, &api_version);
            let mut new = Self::prepare_update(res, &old, body, ctx);
            self.check(res, &mut new, Some(&old), ctx.strict)?;
            if operation == Operation::Update {
                apply::track_update(Some(&old), &mut new, &w);
            }
            let deleting = meta(&new).is_some_and(|m| m.contains_key("deletionTimestamp"));
            if deleting
                && let (Some(old_f), Some(new_f)) = (
                    meta(&old)
                        .and_then(|m| m.get("finalizers"))
                        .and_then(Value::as_array),
                    meta(&new)
                        .and_then(|m| m.get("finalizers"))
                        .and_then(Value::as_array),
                )
                && new_f.iter().any(|f| !old_f.contains(f))
            {
                return Err(Self::invalid(res, name, vec![Cause {
                            reason: "FieldValueForbidden".into(),
                            field: "metadata.finalizers".into(),
                            message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                        }]));
            }
            let unchanged = same_but_version_and_managers(&old, &new);
            if unchanged {
                if self.still_pending(&old).await {
                    continue;
                }
                // No-op writes do not bump the resourceVersion, as in Kubernetes.
                return Ok(old);
            }
            let result = if deleting && !has_finalizers(&new) {
                self.commit(res, &nsk, name, Expect::Rv(rv_of(&old)), None, ctx.dry_run)
                    .await
            } else {
                self.commit(
                    res,
                    &nsk,
                    name,
                    Expect::Rv(rv_of(&old)),
                    Some(new),
                    ctx.dry_run,
                )
                .await
            };
            match result {
                Ok(o) => return Ok(o),
                Err(CommitError::NotDurable(e)) => return Err(ApiError::Internal(e)),
                Err(CommitError::Missing) => return Err(Self::not_found(res, name)),
                Err(_) if want_rv.is_some() => return Err(self.conflict(res, name)),
                Err(_) => continue,
            }
        }
        Err(self.conflict(res, name))
    }

    fn conflict(&self, res: &Resource, name: &str) -> ApiError {
        let what = if res.group.is_empty() {
            res.plural.clone()
        } else {
            format!("{}.{}", res.plural, res.group)
        };
        ApiError::Conflict(format!(
            "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ))
    }

    /// PUT (main resource or /status).
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Arc<Value>, ApiError> {
        let pinned = meta_str(&body, "resourceVersion").is_some_and(|s| !s.is_empty());
        if res.custom && !pinned && self.latest(res, ns, name).is_ok() {
            // Custom resources allow no unconditional update, as in Kubernetes.
            return Err(Self::invalid(
                res,
                name,
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    field: "metadata.resourceVersion".into(),
                    message: "Invalid value: 0x0: must be specified for an update".into(),
                }],
            ));
        }
        self.update_with(res, ns, name, ctx, Operation::Update, |_| {
            Ok((body.clone(), pinned))
        })
        .await
    }

    /// PATCH (merge, JSON, apply; strategic merge only for built-ins).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        ctx: &WriteCtx,
        force: bool,
    ) -> Result<Arc<Value>, ApiError> {
        match kind {
            PatchKind::Strategic if res.custom => Err(ApiError::UnsupportedMediaType(
                "strategic merge patch is not supported for custom resources; use application/merge-patch+json, application/json-patch+json or application/apply-patch+yaml".into(),
            )),
            PatchKind::Strategic => {
                let patch: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::BadRequest(format!("invalid strategic merge patch: {e}"))
                })?;
                let pinned = patch.pointer("/metadata/resourceVersion").is_some();
                self.update_with(res, ns, name, ctx, Operation::Update, |old| {
                    let mut new = old.clone();
                    patches::strategic::strategic_merge_patch(&mut new, &patch, &res.kind)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                    Ok((new, pinned))
                })
                .await
            }
            PatchKind::Merge => {
                let patch: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::BadRequest(format!("invalid merge patch: {e}")))?;
                let pinned = patch.pointer("/metadata/resourceVersion").is_some();
                self.update_with(res, ns, name, ctx, Operation::Update, |old| {
                    let mut new = old.clone();
                    patches::merge_patch(&mut new, &patch);
                    Ok((new, pinned))
                })
                .await
            }
            PatchKind::Json => {
                self.update_with(res, ns, name, ctx, Operation::Update, |old| {
                    let mut new = old.clone();
                    patches::json_patch(&mut new, body)?;
                    let pinned = new.pointer("/metadata/resourceVersion") != old.pointer("/metadata/resourceVersion");
                    Ok((new, pinned))
                })
                .await
            }
            PatchKind::Apply => self.apply(res, ns, name, body, ctx, force).await,
        }
    }

    async fn apply(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        body: &[u8],
        ctx: &WriteCtx,
        force: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let applied: Value = json_or_yaml(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid apply configuration: {e}")))?;
        if !applied.is_object() {
            return Err(ApiError::BadRequest(
                "the apply configuration must be an object".into(),
            ));
        }
        if !ctx.manager_given {
            return Err(ApiError::BadRequest(
                "PATCH requests with an apply configuration require a fieldManager".into(),
            ));
        }
        let api_version = res.api_version();
        let exists = self
            .store
            .latest_contains(&res.storage_key, &Self::ns_key(res, ns), name);
        if !exists {
            if ctx.subresource == "status" {
                return Err(Self::not_found(res, name));
            }
            // Apply to a missing object creates it, owned by this manager.
            let now = now();
            let w = Self::writer(res, ctx, &now, &api_version);
            let skeleton =
                json!({"apiVersion": api_version, "kind": res.kind, "metadata": {"name": name}});
            let mut obj = apply::apply(&skeleton, &applied, &w, true)
                .map_err(|c| ApiError::Conflict(apply::conflict_message(&c)))?;
            if res.status_subresource
                && res.generation
                && let Some(m) = obj.as_object_mut()
            {
                m.remove("status");
            }
            let managed = meta(&obj).and_then(|m| m.get("managedFields")).cloned();
            let created = self.create_managed(res, ns, obj, ctx, managed).await;
            match created {
                Ok(o) => return Ok(o),
                Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.update_with(res, ns, name, ctx, Operation::Apply, |old| {
            let now = now();
            let w = Self::writer(res, ctx, &now, &api_version);
            let new = apply::apply(old, &applied, &w, force)
                .map_err(|conflicts| ApiError::Conflict(apply::conflict_message(&conflicts)))?;
            let pinned = applied.pointer("/metadata/resourceVersion").is_some();
            let mut new = new;
            if pinned && let Some(rv) = applied.pointer("/metadata/resourceVersion") {
                meta_mut(&mut new).insert("resourceVersion".into(), rv.clone());
            }
            Ok((new, pinned))
        })
        .await
    }

    /// DELETE one: immediately, or by setting deletionTimestamp while finalizers remain.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        Ok(match self.delete_object(res, ns, name, dry_run).await? {
            Deleted::Marked(o) => o,
            Deleted::Removed(o) => json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": res.group, "kind": res.plural,
                    "uid": meta_str(&o, "uid").unwrap_or_default()},
            }),
        })
    }

    /// Deletes one object: marks it when finalizers hold it, else removes it.
    async fn delete_object(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let nsk = Self::ns_key(res, ns);
        if res.storage_key == NAMESPACES
            && matches!(name, "default" | "kube-system" | "kube-public")
        {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        for _ in 0..RETRIES {
            let old = self.latest(res, ns, name)?;
            let expect = Expect::Rv(rv_of(&old));
            if has_finalizers(&old) {
                if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                    if self.still_pending(&old).await {
                        continue;
                    }
                    return Ok(Deleted::Marked((*old).clone()));
                }
                let mut new = (*old).clone();
                let m = meta_mut(&mut new);
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                    m.insert("generation".into(), json!(g + 1));
                }
                match self
                    .commit(res, &nsk, name, expect, Some(new), dry_run)
                    .await
                {
                    Ok(o) => return Ok(Deleted::Marked((*o).clone())),
                    Err(CommitError::NotDurable(e)) => return Err(ApiError::Internal(e)),
                    Err(CommitError::Missing) => return Err(Self::not_found(res, name)),
                    Err(_) => continue,
                }
            }
            match self.commit(res, &nsk, name, expect, None, dry_run).await {
                Ok(o) => {
                    if !dry_run {
                        self.cascade(res, name, &o).await;
                    }
                    return Ok(Deleted::Removed(o));
                }
                Err(CommitError::NotDurable(e)) => return Err(ApiError::Internal(e)),
                Err(CommitError::Missing) => return Err(Self::not_found(res, name)),
                Err(_) => continue,
            }
        }
        Err(self.conflict(res, name))
    }

    /// What goes with a deleted object: a namespace's objects (each deleted as by a client,
    /// so finalizers still hold them), a CRD's custom resources (removed outright).
    async fn cascade(&self, res: &Resource, name: &str, deleted: &Value) {
        if res.storage_key == NAMESPACES {
            let reg = self.registry();
            let mut keys = std::collections::HashSet::new();
            let namespaced: Vec<Arc<Resource>> = reg
                .groups
                .values()
                .flat_map(|v| v.values())
                .flatten()
                .filter(|r| r.namespaced && keys.insert(r.storage_key.clone()))
                .cloned()
                .collect();
            for r in namespaced {
                let page = self
                    .store
                    .list(&r.storage_key, Some(name), None, None, &|_| true);
                let deletes: Vec<_> = page
                    .items
                    .iter()
                    .filter_map(|o| meta_str(o, "name"))
                    .map(|n| Box::pin(self.delete(&r, Some(name), n, false)))
                    .collect();
                futures::stream::iter(deletes)
                    .buffer_unordered(DELETES_IN_FLIGHT)
                    .for_each(|_| async {})
                    .await;
            }
        } else if res.storage_key == CRDS {
            let group = deleted.pointer("/spec/group").and_then(Value::as_str);
            let plural = deleted
                .pointer("/spec/names/plural")
                .and_then(Value::as_str);
            if let (Some(g), Some(p)) = (group, plural) {
                let key = format!("{g}/{p}");
                let page = self.store.list(&key, None, None, None, &|_| true);
                for o in page.items {
                    let ns = meta_str(&o, "namespace").unwrap_or_default();
                    let n = meta_str(&o, "name").unwrap_or_default();
                    if let Ok((_, durable)) =
                        self.store.commit(&key, ns, n, Expect::Rv(rv_of(&o)), None)
                    {
                        let _ = durable.wait().await;
                    }
                }
            }
        }
    }

    /// DELETE a collection (with selectors): the deleted objects, as the JSON of a list. Only
    /// the names of the objects selected are taken from the store, and each deleted object is
    /// encoded as its delete returns: 500 Endpoints decoded take about 10 MB, twice over
    /// (listed, then deleted), and that peak stayed as fragmentation after the burst (issue 19).
    pub async fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &Params,
    ) -> Result<Vec<u8>, ApiError> {
        let names: Vec<(Option<String>, String)> = {
            let filter = Self::filter(res, params)?;
            let selects = selects(params);
            let ListWindow { limit, after } = ListWindow::of(params)?;
            let ns = if res.namespaced { ns } else { None };
            // Objects are decoded only to test selectors, one at a time (in the form served).
            let select = |(ons, name): &NamespacedName, json: &bytes::Bytes| {
                let chosen =
                    !selects || filter(&Self::from_storage(res, crate::store::decode(json)));
                chosen.then(|| ((!ons.is_empty()).then(|| ons.clone()), name.clone()))
            };
            self.store
                .list_with(&res.storage_key, ns, after, limit, &select)
                .items
        };
        let deletes: Vec<_> = names
            .iter()
            .map(|(ons, name)| self.delete_object(res, ons.as_deref(), name, false))
            .collect();
        // Each as kube-apiserver lists it: the object (marked, or its last state when removed).
        let items: Vec<Vec<u8>> = futures::stream::iter(deletes)
            .buffered(DELETES_IN_FLIGHT)
            .filter_map(|deleted| async move {
                match deleted {
                    Ok(Deleted::Marked(o)) => serde_json::to_vec(&o).ok(),
                    Ok(Deleted::Removed(o)) => serde_json::to_vec(&*o).ok(),
                    Err(_) => None,
                }
            })
            .collect()
            .await;
        Ok(list_json(
            &res.list_kind,
            &res.api_version(),
            &json!({}),
            &items,
        ))
    }

    /// Deletes the Events last seen more than `ttl` ago (kube-apiserver's `--event-ttl`): every
    /// change of a busy cluster writes some, and nothing else ever removes them. Returns how many
    /// went.
    pub async fn expire_events(&self, ttl: std::time::Duration) -> usize {
        let Some(res) = self.events_resource() else {
            return 0;
        };
        let Ok(ttl) = jiff::SignedDuration::try_from(ttl) else {
            return 0; // longer than any timestamp can be old
        };
        let Ok(cutoff) = jiff::Timestamp::now().checked_sub(ttl) else {
            return 0;
        };
        let expired = |o: &Value| last_seen(o).is_some_and(|seen| seen < cutoff);
        let page = self
            .store
            .list(&res.storage_key, None, None, None, &expired);
        self.delete_events(&res, &page.items, "expire").await
    }

    /// Deletes the oldest Events (by when they were last seen) while more are stored than
    /// `budget` allows for the other objects stored ([`EventBudget`]); returns how many went.
    pub async fn trim_events(&self, budget: &EventBudget) -> usize {
        let Some(res) = self.events_resource() else {
            return 0;
        };
        // A count first (cheap, every second); the list only when over.
        let events = self.store.count(&res.storage_key);
        let others = self.store.usage().objects.saturating_sub(events);
        if budget.to_delete(events, others) == 0 {
            return 0;
        }
        // Ones already being deleted (held by a finalizer) are going anyway.
        let going =
            |event: &Value| meta(event).is_some_and(|m| m.contains_key("deletionTimestamp"));
        let mut staying = self
            .store
            .list(&res.storage_key, None, None, None, &|event| !going(event))
            .items;
        // What to delete, from what is there now (expiry may have taken some since the count).
        let to_delete = budget.to_delete(staying.len(), others);
        staying.sort_by_cached_key(|event| last_seen(event));
        staying.truncate(to_delete);
        // An Event recorded again between this list and its delete (a series' count bumped)
        // goes too; its recorder creates it anew.
        self.delete_events(&res, &staying, "trim").await
    }

    /// The Events resource (always served).
    fn events_resource(&self) -> Option<Arc<Resource>> {
        self.registry().find("", "v1", "events")
    }

    /// Deletes `events` ([`DELETES_IN_FLIGHT`] at once, sharing fsyncs), logging the ones that
    /// fail (to be retried by the next run); returns how many went.
    async fn delete_events(&self, res: &Resource, events: &[Arc<Value>], why: &str) -> usize {
        let deletes: Vec<_> = events
            .iter()
            .filter_map(|event| Some((meta_str(event, "namespace")?, meta_str(event, "name")?)))
            .map(|(ns, name)| Box::pin(self.delete_event(res, ns, name, why)))
            .collect();
        futures::stream::iter(deletes)
            .buffer_unordered(DELETES_IN_FLIGHT)
            .filter(|deleted| std::future::ready(*deleted))
            .count()
            .await
    }

    /// Deletes one Event; whether it went (a failure is logged).
    async fn delete_event(&self, res: &Resource, ns: &str, name: &str, why: &str) -> bool {
        match self.delete(res, Some(ns), name, false).await {
            Ok(_) => true,
            Err(ApiError::NotFound { .. }) => false,
            Err(e) => {
                tracing::warn!(event = %name, error = %e, why, "cannot delete event");
                false
            }
        }
    }

    /// Create what a fresh server has: the `default` namespace (and kube-system, kube-public),
    /// and the local node.
    pub async fn bootstrap(&self, node: Option<Value>) -> Result<(), ApiError> {
        let reg = self.registry();
        let ctx = WriteCtx {
            manager: "pier-apiserver".into(),
            subresource: String::new(),
            dry_run: false,
            manager_given: true,
            strict: false,
        };
        if let Some(ns_res) = reg.find("", "v1", "namespaces") {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                if !self.store.contains(NAMESPACES, "", ns) {
                    let body =
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                    self.create(&ns_res, None, body, &ctx).await?;
                }
            }
        }
        if let (Some(node), Some(node_res)) = (node, reg.find("", "v1", "nodes")) {
            let name = meta_str(&node, "name").unwrap_or("localhost").to_string();
            if !self.store.contains("/nodes", "", &name) {
                let status = node.get("status").cloned();
                let created = self.create(&node_res, None, node, &ctx).await?;
                if let Some(status) = status {
                    let mut with_status = (*created).clone();
                    with_status["status"] = status;
                    let sctx = WriteCtx {
                        subresource: "status".into(),
                        ..ctx.clone()
                    };
                    self.update(&node_res, None, &name, with_status, &sctx)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// When an Event (stored as core v1) last happened: the latest of its timestamps (the events.k8s.io
/// form fills `eventTime` and `series.lastObservedTime`, the core form `lastTimestamp`), else its
/// creation.
fn last_seen(event: &Value) -> Option<jiff::Timestamp> {
    [
        "/lastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .filter_map(|path| {
        event
            .pointer(path)?
            .as_str()?
            .parse::<jiff::Timestamp>()
            .ok()
    })
    .max()
}

fn set_crd_status(crd: &mut Value) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let t = crd
        .pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or_else(|| json!(now()));
    let cond = |type_: &str, reason: &str, message: &str| json!({"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": t});
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The opaque `continue` token for a position.
pub fn encode_continue(pos: &(String, String)) -> String {
    hex(format!("{}\u{0}{}", pos.0, pos.1).as_bytes())
}

/// Decode a `continue` token.
pub fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    let s = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    let (ns, name) = s.split_once('\u{0}').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

/// The operation a write records in the managed fields (their `operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// Server-side apply: the applied result carries the manager's `Apply` entry, even when it
    /// is the same as before (an apply that changed values but not the fields it owns, within
    /// the second of its last one).
    Apply,
    /// Any other write (PUT, merge, JSON and strategic merge patches): the fields it changed
    /// become its manager's `Update` entry ([`apply::track_update`]).
    Update,
}

/// What a delete did.
enum Deleted {
    /// Finalizers hold the object: marked for deletion (as it is now).
    Marked(Value),
    /// Removed: its last state.
    Removed(Arc<Value>),
}

/// The part of a collection a list asks for: at most `limit` objects, after the (namespace,
/// name) its `continue` token names.
struct ListWindow {
    limit: Option<usize>,
    after: Option<(String, String)>,
}

impl ListWindow {
    fn of(params: &Params) -> Result<ListWindow, ApiError> {
        let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok());
        let after = match params.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        Ok(ListWindow { limit, after })
    }
}

/// Whether a list asks for objects by label or field, not all of them.
fn selects(params: &Params) -> bool {
    ["labelSelector", "fieldSelector"]
        .iter()
        .any(|selector| params.get(*selector).is_some_and(|s| !s.is_empty()))
}

/// A list's metadata: its version and, when there is more, where to continue.
fn list_metadata<T>(page: &Page<T>) -> Value {
    let mut metadata = json!({"resourceVersion": page.rv.to_string()});
    if let Some(next) = &page.next {
        metadata["continue"] = json!(encode_continue(next));
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    metadata
}

/// The JSON of a list of `items`, each already encoded, in one allocation of its size.
fn list_json<T: AsRef<[u8]>>(
    kind: &str,
    api_version: &str,
    metadata: &Value,
    items: &[T],
) -> Vec<u8> {
    let head = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let items_len: usize = items.iter().map(|item| item.as_ref().len() + 1).sum();
    let mut out = Vec::with_capacity(head.len() + items_len + 16);
    // `{...}` -> `{...,"items":[a,b]}`
    out.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    out.extend_from_slice(br#","items":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_ref());
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_changes_only_the_version_and_managers_is_no_change() {
        let old = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "labels": {"x": "1"},
                "managedFields": [{"manager": "m"}]},
            "data": {"k": "v"}});
        let mut new = old.clone();
        new["metadata"]["resourceVersion"] = json!("8");
        new["metadata"]["managedFields"] = json!([{"manager": "m"}, {"manager": "n"}]);
        assert!(same_but_version_and_managers(&old, &new));
        new["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("managedFields");
        assert!(same_but_version_and_managers(&old, &new));
        for changed in [
            json!({"data": {"k": "w"}}),
            json!({"data": null}),
            json!({"metadata": {"labels": {"x": "2"}}}),
            json!({"metadata": {"finalizers": ["f"]}}),
            json!({"status": {}}),
        ] {
            let mut other = old.clone();
            json_patch::merge(&mut other, &changed);
            assert!(
                !same_but_version_and_managers(&old, &other),
                "{changed} is a change"
            );
        }
        let without_metadata = json!({"data": {"k": "v"}});
        let empty_metadata = json!({"data": {"k": "v"}, "metadata": {"resourceVersion": "1"}});
        assert!(same_but_version_and_managers(
            &without_metadata,
            &empty_metadata
        ));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let pos = ("ns".to_string(), "a-b".to_string());
        assert_eq!(
            decode_continue(&encode_continue(&pos)).expect("decodes"),
            pos
        );
        assert!(decode_continue("zz").is_err());
    }
}
