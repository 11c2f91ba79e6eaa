//! The service at the HTTP level: body limit, unknown paths, methods, discovery, auth.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use pier_apiserver::ApiServer;
use serde_json::Value;
use tower::ServiceExt;

async fn call(
    svc: pier_apiserver::ApiService,
    method: Method,
    uri: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = svc.oneshot(req).await.expect("infallible");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn bodies_are_bounded_and_errors_are_status_objects() {
    let server = ApiServer::in_memory().await.expect("server");
    let big = vec![b' '; pier_apiserver::http::MAX_BODY + 1];
    let (code, status) = call(
        server.service(),
        Method::POST,
        "/api/v1/namespaces",
        big,
        None,
    )
    .await;
    assert_eq!(code, 413);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "RequestEntityTooLarge");
    let (code, status) = call(
        server.service(),
        Method::GET,
        "/apis/nope/v1/things",
        vec![],
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(status["reason"], "NotFound");
    let (code, _) = call(
        server.service(),
        Method::POST,
        "/api/v1/namespaces/default",
        b"{}".to_vec(),
        None,
    )
    .await;
    assert_eq!(code, 405);
    let (code, status) = call(
        server.service(),
        Method::POST,
        "/api/v1/namespaces",
        b"{not json".to_vec(),
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(status["reason"], "BadRequest");
}

#[tokio::test]
async fn discovery_documents() {
    let server = ApiServer::in_memory().await.expect("server");
    let (code, v) = call(server.service(), Method::GET, "/version", vec![], None).await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
    let (_, api) = call(server.service(), Method::GET, "/api", vec![], None).await;
    assert_eq!(api["versions"][0], "v1");
    let (_, apis) = call(server.service(), Method::GET, "/apis", vec![], None).await;
    let groups: Vec<&str> = apis["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    for g in [
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
    ] {
        assert!(groups.contains(&g), "{groups:?}");
    }
    let (_, core) = call(server.service(), Method::GET, "/api/v1", vec![], None).await;
    let names: Vec<&str> = core["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for r in ["namespaces", "namespaces/status", "nodes", "pods", "events"] {
        assert!(names.contains(&r), "{names:?}");
    }
    let (code, v2) = call(server.service(), Method::GET, "/openapi/v2", vec![], None).await;
    assert_eq!(code, 200);
    assert!(v2["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
    let (_, v3) = call(server.service(), Method::GET, "/openapi/v3", vec![], None).await;
    assert!(v3["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"].is_string());
}

#[tokio::test]
async fn the_authenticated_service_needs_the_token() {
    let server = ApiServer::in_memory().await.expect("server");
    let (code, status) = call(
        server.authenticated_service(),
        Method::GET,
        "/api/v1/namespaces",
        vec![],
        None,
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(status["reason"], "Unauthorized");
    let (code, _) = call(
        server.authenticated_service(),
        Method::GET,
        "/api/v1/namespaces",
        vec![],
        Some("wrong"),
    )
    .await;
    assert_eq!(code, 401);
    let token = server.token().to_string();
    let (code, list) = call(
        server.authenticated_service(),
        Method::GET,
        "/api/v1/namespaces",
        vec![],
        Some(&token),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "NamespaceList");
}

#[tokio::test]
async fn a_bad_name_is_422_invalid_naming_metadata_name() {
    let server = ApiServer::in_memory().await.expect("server");
    let body = br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"Bad_NS"}}"#;
    let (code, status) = call(
        server.service(),
        Method::POST,
        "/api/v1/namespaces",
        body.to_vec(),
        None,
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["name"], "Bad_NS");
    let cause = &status["details"]["causes"][0];
    assert_eq!(cause["field"], "metadata.name");
    assert_eq!(cause["reason"], "FieldValueInvalid");
    assert_eq!(
        cause["message"],
        "Invalid value: \"Bad_NS\": a lowercase RFC 1123 label must consist of lower case \
         alphanumeric characters or '-', and must start and end with an alphanumeric character \
         (e.g. 'my-name',  or '123-abc', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    );
    assert_eq!(
        status["message"],
        format!(
            "Namespace \"Bad_NS\" is invalid: metadata.name: {}",
            cause["message"].as_str().unwrap_or_default()
        )
    );
}
