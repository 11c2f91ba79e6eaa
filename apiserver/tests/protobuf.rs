//! Kubernetes' protobuf encoding at the HTTP level: bodies of built-in kinds are read, and
//! answers are written in it when the client accepts nothing else.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use pier_apiserver::ApiServer;
use pier_apiserver::protobuf::{self, MEDIA_TYPE};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Answer {
    code: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn object(&self) -> Value {
        if self.content_type == MEDIA_TYPE {
            protobuf::decode(&self.body).expect("a protobuf answer decodes")
        } else {
            serde_json::from_slice(&self.body).expect("a JSON answer")
        }
    }
}

async fn call(server: &ApiServer, method: Method, uri: &str, body: &Value, accept: &str) -> Answer {
    let wire = if body.is_null() {
        Vec::new()
    } else {
        protobuf::encode(body).expect("the request encodes")
    };
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", MEDIA_TYPE)
        .header("accept", accept)
        .body(Full::new(Bytes::from(wire)))
        .expect("request");
    let resp = server.service().oneshot(req).await.expect("infallible");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        code,
        content_type,
        body: body.to_vec(),
    }
}

const KUBECTL_ACCEPT: &str = "application/vnd.kubernetes.protobuf,application/json";

#[tokio::test]
async fn protobuf_bodies_create_objects_and_answers_follow_accept() {
    let server = ApiServer::in_memory().await.expect("server");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}});
    let created = call(&server, Method::POST, "/api/v1/namespaces", &ns, MEDIA_TYPE).await;
    assert_eq!(
        created.code,
        201,
        "{:?}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.content_type, MEDIA_TYPE);
    let obj = created.object();
    assert_eq!(obj["metadata"]["name"], "demo");
    assert_eq!(obj["status"]["phase"], "Active");
    assert!(
        obj["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
                    "data": {"a": "b"}, "binaryData": {"blob": "AAEC/w=="}});
    let uri = "/api/v1/namespaces/demo/configmaps";
    let created = call(&server, Method::POST, uri, &cm, KUBECTL_ACCEPT).await;
    assert_eq!(
        created.code,
        201,
        "{:?}",
        String::from_utf8_lossy(&created.body)
    );
    // kubectl also accepts JSON, and gets it.
    assert_eq!(created.content_type, "application/json");
    let mut stored = created.object();
    assert_eq!(stored["binaryData"]["blob"], "AAEC/w==");

    stored["data"]["a"] = json!("c");
    let uri = "/api/v1/namespaces/demo/configmaps/x";
    let updated = call(&server, Method::PUT, uri, &stored, MEDIA_TYPE).await;
    assert_eq!(
        updated.code,
        200,
        "{:?}",
        String::from_utf8_lossy(&updated.body)
    );
    assert_eq!(updated.object()["data"]["a"], "c");

    let missing = call(
        &server,
        Method::GET,
        "/api/v1/namespaces/nope",
        &Value::Null,
        MEDIA_TYPE,
    )
    .await;
    assert_eq!(missing.code, 404);
    assert_eq!(
        missing.content_type, MEDIA_TYPE,
        "errors are Status objects in protobuf too"
    );
    assert_eq!(missing.object()["reason"], "NotFound");
}

#[tokio::test]
async fn what_has_no_protobuf_form_is_refused_as_kube_apiserver_refuses_it() {
    let server = ApiServer::in_memory().await.expect("server");
    // CustomResourceDefinitions (and custom resources) are JSON only.
    let uri = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let crds = call(&server, Method::GET, uri, &Value::Null, MEDIA_TYPE).await;
    assert_eq!(crds.code, 406);
    let json = call(&server, Method::GET, uri, &Value::Null, KUBECTL_ACCEPT).await;
    assert_eq!(json.code, 200);

    let network = json!({"apiVersion": "pier.dev/v1alpha1", "kind": "Network"});
    assert!(matches!(
        protobuf::encode(&network),
        Err(protobuf::ProtobufError::UnknownKind { .. })
    ));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/namespaces")
        .header("content-type", MEDIA_TYPE)
        .body(Full::new(Bytes::from_static(b"k8s\0\x0a\x00\xff")))
        .expect("request");
    let resp = server.service().oneshot(req).await.expect("infallible");
    assert_eq!(
        resp.status().as_u16(),
        400,
        "a broken envelope is a bad request"
    );
}

#[tokio::test]
async fn access_reviews_are_allowed_and_discovered() {
    let server = ApiServer::in_memory().await.expect("server");
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "create", "group": "pier.dev", "resource": "endpoints"}},
    });
    let uri = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let answered = call(&server, Method::POST, uri, &review, MEDIA_TYPE).await;
    assert_eq!(
        answered.code,
        201,
        "{:?}",
        String::from_utf8_lossy(&answered.body)
    );
    let obj = answered.object();
    assert_eq!(obj["status"]["allowed"], true);
    assert_eq!(obj["spec"]["resourceAttributes"]["resource"], "endpoints");
    let listed = call(&server, Method::GET, uri, &Value::Null, KUBECTL_ACCEPT).await;
    assert_eq!(listed.code, 405, "reviews are create-only");

    let discovery = call(
        &server,
        Method::GET,
        "/apis/authorization.k8s.io/v1",
        &Value::Null,
        KUBECTL_ACCEPT,
    )
    .await;
    let resources = discovery.object()["resources"].clone();
    let review = resources
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "selfsubjectaccessreviews"))
        .cloned()
        .expect("discovered");
    assert_eq!(review["verbs"], json!(["create"]));
    assert_eq!(review["namespaced"], false);
}
