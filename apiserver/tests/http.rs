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

#[tokio::test]
async fn a_short_token_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(ApiServer::open(dir.path()).await.expect("first start"));
    std::fs::write(dir.path().join("token"), "not-32-bytes-long\n").expect("shorten");
    let e = ApiServer::open(dir.path()).await.expect_err("refused");
    assert!(
        e.to_string()
            .contains("has 17 bytes; at least 32 are required"),
        "{e}"
    );
    assert!(pier_apiserver::token::Token::parse("short", "a flag").is_err());
}

async fn client_for(
    server: &ApiServer,
    addr: std::net::SocketAddr,
) -> (tempfile::TempDir, kube::Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&path, &format!("https://{addr}"))
        .expect("kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    (dir, kube::Client::try_from(cfg).expect("client"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let server = ApiServer::in_memory_with(pier_apiserver::Options {
        max_connections: 2,
        ..Default::default()
    })
    .await
    .expect("server");
    let (addr, _task) = server
        .serve_https("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("https");
    // Two idle connections take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let (_dir, client) = client_for(&server, addr).await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(1500),
        namespaces.list(&Default::default()),
    )
    .await;
    assert!(waited.is_err(), "a third connection was served: {waited:?}");
    // Once one closes, the waiting client is served.
    drop(held);
    let list = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        namespaces.list(&Default::default()),
    )
    .await
    .expect("served once a slot is free")
    .expect("list");
    assert!(
        list.items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("default"))
    );
}

/// Server-side apply answers 201 when it created the object and 200 when it changed one, as
/// Kubernetes does (kubectl prints "created" or "configured" from it); its body is JSON or YAML.
#[tokio::test]
async fn apply_answers_created_then_ok() {
    let server = ApiServer::in_memory().await.expect("server");
    let apply = |body: String| async {
        let request = Request::builder()
            .method(Method::PATCH)
            .uri("/api/v1/namespaces/default/configmaps/c?fieldManager=test")
            .header("content-type", "application/apply-patch+yaml")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = server.service().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let object: Value = serde_json::from_slice(&bytes).expect("json");
        (status, object["data"]["k"].clone())
    };
    let json = |data: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c"}},"data":{{"k":"{data}"}}}}"#
        )
    };
    assert_eq!(apply(json("1")).await, (201, Value::from("1")));
    assert_eq!(apply(json("2")).await, (200, Value::from("2")));
    // YAML as well as JSON.
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: \"3\"\n";
    assert_eq!(apply(yaml.to_owned()).await, (200, Value::from("3")));
}
