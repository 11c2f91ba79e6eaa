//! OpenAPI documents (v2 and v3) built from the served resources: the CRD schemas, the stored
//! built-in kinds' schemas from their k8s-openapi types, plus minimal schemas for the other
//! built-ins, enough for `kubectl explain`, client-side apply and kubectl's check that the
//! server does field validation.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, Resource};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn reverse_domain(group: &str) -> String {
    if group.is_empty() {
        return "io.k8s.api.core".into();
    }
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    parts.join(".")
}

/// The definition name of a resource's kind (`dev.pier.v1alpha1.Network`).
pub fn definition_name(r: &Resource) -> String {
    format!("{}.{}.{}", reverse_domain(&r.group), r.version, r.kind)
}

fn object_meta() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "type": "object",
        "properties": {
            "name": s("Name must be unique within a namespace."),
            "generateName": s("An optional prefix used to generate a unique name."),
            "namespace": s("The namespace of the object."),
            "uid": s("The unique id of the object."),
            "resourceVersion": s("An opaque value for optimistic concurrency and watches."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When the object will be deleted."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Labels to organize and select objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Annotations: arbitrary metadata."},
            "finalizers": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "description": "Must be empty before the object is deleted."},
            "ownerReferences": {"type": "array", "items": {"type": "object"}, "description": "Objects this object depends on."},
            "managedFields": {"type": "array", "items": {"type": "object"}, "description": "Field ownership (server-side apply)."},
        }
    })
}

fn kind_schema(r: &Resource, meta_ref: &str) -> Value {
    let mut schema = r
        .schema()
        .cloned()
        .or_else(|| r.typed.map(|kind| (kind.codec.schema)()))
        .unwrap_or_else(|| json!({"type": "object", "description": format!("{} (served by Pier's embedded API server).", r.kind), "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }}));
    if let Some(m) = schema.as_object_mut() {
        let props = m
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(p) = props.as_object_mut() {
            p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            p.insert("metadata".into(), json!({"allOf": [{"$ref": meta_ref}], "description": "Standard object's metadata."}));
        }
        m.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
        );
    }
    schema
}

fn all(reg: &Registry) -> impl Iterator<Item = &std::sync::Arc<Resource>> {
    reg.groups.values().flat_map(|v| v.values()).flatten()
}

/// `/openapi/v2`.
pub fn v2(reg: &Registry) -> Value {
    let mut defs = Map::new();
    defs.insert(OBJECT_META.into(), object_meta());
    let mut paths = Map::new();
    for r in all(reg) {
        defs.insert(
            definition_name(r),
            kind_schema(r, &format!("#/definitions/{OBJECT_META}")),
        );
        paths.insert(object_path(r), path_item(r, "#/definitions/"));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "definitions": defs,
    })
}

fn object_path(r: &Resource) -> String {
    let base = if r.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

fn path_item(r: &Resource, prefix: &str) -> Value {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let q = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true});
    let op = |action: &str| {
        json!({
            "operationId": format!("{action}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [q("dryRun"), q("fieldManager"), q("fieldValidation"), q("force")],
            "responses": {"200": {"description": "OK", "schema": {"$ref": format!("{prefix}{}", definition_name(r))}}},
        })
    };
    json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")})
}

/// `/openapi/v3`: the index of group-version documents.
pub fn v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in &reg.groups {
        for version in versions.keys() {
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            let hash = doc_hash(reg, group, version);
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

fn doc_hash(reg: &Registry, group: &str, version: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v3_group_version(reg, group, version)
        .map(|d| d.to_string())
        .unwrap_or_default()
        .hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3/apis/GROUP/VERSION` (and `/openapi/v3/api/v1`).
pub fn v3_group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let list = reg.versions(group)?.get(version)?;
    let mut schemas = Map::new();
    schemas.insert(OBJECT_META.into(), object_meta());
    let mut paths = Map::new();
    for r in list {
        schemas.insert(
            definition_name(r),
            kind_schema(r, &format!("#/components/schemas/{OBJECT_META}")),
        );
        paths.insert(object_path(r), path_item(r, "#/components/schemas/"));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
