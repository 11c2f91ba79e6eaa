//! HTTP routing: a `tower::Service` over `http` 1 types, used in-process (kube::Client::new) and
//! behind hyper for HTTPS.

pub mod body;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::api::{Api, Params, WriteCtx};
use crate::error::ApiError;
use crate::patch::PatchKind;
use crate::resources::Resource;
use crate::token::Token;
use crate::{discovery, openapi, protobuf, reviews, table, watch};
pub use body::ResponseBody;

/// Largest request body accepted (the real server's limit is 3 MiB).
pub const MAX_BODY: usize = 3 << 20;

/// The API as a `tower::Service`.
#[derive(Clone, Debug)]
pub struct ApiService {
    api: Arc<Api>,
    /// Bearer token required on every request, if set.
    token: Option<Token>,
}

impl ApiService {
    /// The service; with a token, every request must carry it (a [`Token`] is long enough by
    /// construction: [`Token::parse`]).
    pub fn new(api: Arc<Api>, token: Option<Token>) -> ApiService {
        ApiService { api, token }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> tower::Service<Request<B>> for ApiService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if svc.authorize(&parts.headers).is_ok() && ct.starts_with("application/cbor") {
                // JSON, YAML (apply) and protobuf (kubectl's typed commands) are spoken.
                return Ok(error_response(&ApiError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, {}; got {ct}",
                    protobuf::MEDIA_TYPE
                ))));
            }
            let protobuf_body = protobuf::is_protobuf(ct)
                && (parts.method == Method::POST || parts.method == Method::PUT);
            let resp = match svc.authorize(&parts.headers) {
                Err(e) => error_response(&e),
                Ok(()) => match read_body(body).await.and_then(|bytes| {
                    if protobuf_body {
                        protobuf_to_json(&bytes)
                    } else {
                        Ok(bytes)
                    }
                }) {
                    Ok(bytes) => svc
                        .route(&parts, bytes)
                        .await
                        .unwrap_or_else(|e| error_response(&e)),
                    Err(e) => error_response(&e),
                },
            };
            let resp = if wants_protobuf_only(header_str(&parts, header::ACCEPT)) {
                in_protobuf(resp)
            } else {
                resp
            };
            Ok(resp)
        })
    }
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(upper) = body.size_hint().upper()
        && upper > MAX_BODY as u64
    {
        return Err(ApiError::PayloadTooLarge(MAX_BODY));
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge(MAX_BODY))
        }
        Err(e) => Err(ApiError::BadRequest(format!("reading the body: {e}"))),
    }
}

/// A JSON response.
pub fn json_response(code: u16, v: &Value) -> Response<ResponseBody> {
    json_bytes_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// A response of JSON already encoded.
pub fn json_bytes_response(code: u16, json: Vec<u8>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from(json)));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A protobuf request body as the JSON the routes take.
fn protobuf_to_json(body: &[u8]) -> Result<Bytes, ApiError> {
    let obj = protobuf::decode(body).map_err(|e| match e {
        protobuf::ProtobufError::UnknownKind { .. } => {
            ApiError::UnsupportedMediaType(format!("the body of the request cannot be read: {e}"))
        }
        e => ApiError::BadRequest(format!("the protobuf body is invalid: {}", error_chain(&e))),
    })?;
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|e| ApiError::BadRequest(format!("the protobuf body has no JSON form: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Whether the client accepts protobuf and nothing JSON serves (kubectl lists both, and gets
/// JSON; client-go decodes either).
fn wants_protobuf_only(accept: &str) -> bool {
    let types: Vec<&str> = accept
        .split(',')
        .filter_map(|t| t.split(';').next())
        .map(str::trim)
        .collect();
    types.iter().any(|t| protobuf::is_protobuf(t))
        && !types.iter().any(|t| {
            t.eq_ignore_ascii_case("application/json")
                || t.eq_ignore_ascii_case("application/*")
                || *t == "*/*"
        })
}

/// A JSON response re-encoded in protobuf; 406 for what has no protobuf form (custom
/// resources, watch streams), as kube-apiserver answers.
fn in_protobuf(resp: Response<ResponseBody>) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    let not_acceptable = |what: &str| {
        error_response(&ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json, application/yaml ({what} has no protobuf form)"
        )))
    };
    let ResponseBody::Full(Some(bytes)) = body else {
        return not_acceptable("a watch stream");
    };
    let Ok(obj) = serde_json::from_slice::<Value>(&bytes) else {
        return not_acceptable("a plain-text answer");
    };
    match protobuf::encode(&obj) {
        Ok(wire) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(protobuf::MEDIA_TYPE),
            );
            Response::from_parts(parts, ResponseBody::full(Bytes::from(wire)))
        }
        Err(e) => not_acceptable(&error_chain(&e)),
    }
}

fn error_response(e: &ApiError) -> Response<ResponseBody> {
    json_response(e.code(), &e.status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decode a query string.
pub fn parse_query(q: Option<&str>) -> Params {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn header_str(parts: &http::request::Parts, name: header::HeaderName) -> &str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

impl ApiService {
    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if token.matches(g) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    async fn route(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let path = parts.uri.path();
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let params = parse_query(parts.uri.query());
        let reg = self.api.registry();
        let get = parts.method == Method::GET;
        match segs.as_slice() {
            ["version"] if get => Ok(json_response(200, &discovery::version())),
            ["healthz" | "readyz" | "livez"] if get => {
                Ok(Response::new(ResponseBody::full(Bytes::from_static(b"ok"))))
            }
            ["api"] if get => Ok(json_response(200, &discovery::core_versions())),
            ["apis"] if get => Ok(json_response(200, &discovery::groups(&reg))),
            ["api", "v1"] if get => discovery::resources(&reg, "", "v1")
                .map(|d| json_response(200, &d))
                .ok_or(ApiError::PathNotFound),
            ["apis", g] if get => discovery::group(&reg, g)
                .map(|d| json_response(200, &d))
                .ok_or(ApiError::PathNotFound),
            ["apis", g, v] if get => discovery::resources(&reg, g, v)
                .map(|d| json_response(200, &d))
                .ok_or(ApiError::PathNotFound),
            ["openapi", "v2"] if get => Ok(json_response(200, &openapi::v2(&reg))),
            ["openapi", "v3"] if get => Ok(json_response(200, &openapi::v3_index(&reg))),
            ["openapi", "v3", "api", "v1"] if get => openapi::v3_group_version(&reg, "", "v1")
                .map(|d| json_response(200, &d))
                .ok_or(ApiError::PathNotFound),
            ["openapi", "v3", "apis", g, v] if get => openapi::v3_group_version(&reg, g, v)
                .map(|d| json_response(200, &d))
                .ok_or(ApiError::PathNotFound),
            ["api", "v1", rest @ ..] => self.resource(parts, &params, "", "v1", rest, body).await,
            ["apis", g, v, rest @ ..] => self.resource(parts, &params, g, v, rest, body).await,
            _ => Err(ApiError::PathNotFound),
        }
    }

    async fn resource(
        &self,
        parts: &http::request::Parts,
        params: &Params,
        group: &str,
        version: &str,
        rest: &[&str],
        body: Bytes,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let reg = self.api.registry();
        let (ns, rest) = match rest {
            ["namespaces", ns, plural, tail @ ..]
                if reg
                    .find(group, version, plural)
                    .is_some_and(|r| r.namespaced) =>
            {
                (
                    Some(ns.to_string()),
                    std::iter::once(*plural)
                        .chain(tail.iter().copied())
                        .collect::<Vec<_>>(),
                )
            }
            other => (None, other.to_vec()),
        };
        let Some((plural, tail)) = rest.split_first() else {
            return Err(ApiError::PathNotFound);
        };
        let res = reg
            .find(group, version, plural)
            .ok_or(ApiError::PathNotFound)?;
        let ns = ns.as_deref();
        let accept = header_str(parts, header::ACCEPT);
        let ua = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let m = &parts.method;
        if res.review {
            return review(&res, tail, m, &body);
        }
        match tail {
            [] if *m == Method::GET => {
                if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    let rx = watch::start(
                        self.api.clone(),
                        res.clone(),
                        ns.map(String::from),
                        params,
                        table::wants_table(accept),
                    )?;
                    let mut resp = Response::new(ResponseBody::stream(rx));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    return Ok(resp);
                }
                if table::wants_table(accept) {
                    let list = self.api.list(&res, ns, params)?;
                    return Ok(json_response(200, &list_table(&res, &list, params)));
                }
                Ok(json_bytes_response(
                    200,
                    self.api.list_encoded(&res, ns, params)?,
                ))
            }
            [] if *m == Method::POST => {
                let ctx = WriteCtx::from_params(params, ua, "");
                let obj = self.api.create(&res, ns, parse_json(&body)?, &ctx).await?;
                Ok(json_response(201, &obj))
            }
            [] if *m == Method::DELETE => {
                let out = self.api.delete_collection(&res, ns, params).await?;
                Ok(json_bytes_response(200, out))
            }
            [name] | [name, "status"] => {
                let sub = if tail.len() == 2 { "status" } else { "" };
                if sub == "status" && !res.status_subresource {
                    return Err(ApiError::PathNotFound);
                }
                let ctx = WriteCtx::from_params(params, ua, sub);
                self.object(parts, params, &res, ns, name, &ctx, body).await
            }
            _ => Err(ApiError::PathNotFound),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn object(
        &self,
        parts: &http::request::Parts,
        params: &Params,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        ctx: &WriteCtx,
        body: Bytes,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let m = &parts.method;
        if *m == Method::GET {
            let obj = self.api.get(res, ns, name)?;
            if table::wants_table(header_str(parts, header::ACCEPT)) {
                let include = params
                    .get("includeObject")
                    .map(String::as_str)
                    .unwrap_or("");
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                return Ok(json_response(
                    200,
                    &table::table(res, &[&obj], &rv, None, include),
                ));
            }
            return Ok(json_response(200, &obj));
        }
        if *m == Method::PUT {
            let obj = self
                .api
                .update(res, ns, name, parse_json(&body)?, ctx)
                .await?;
            return Ok(json_response(200, &obj));
        }
        if *m == Method::PATCH {
            let kind = PatchKind::from_content_type(header_str(parts, header::CONTENT_TYPE))?;
            let force = params.get("force").is_some_and(|f| f == "true");
            let existed = self.api.exists(res, ns, name);
            let obj = self
                .api
                .patch(res, ns, name, kind, &body, ctx, force)
                .await?;
            return Ok(json_response(if existed { 200 } else { 201 }, &obj));
        }
        if *m == Method::DELETE && ctx.subresource.is_empty() {
            let out = self.api.delete(res, ns, name, ctx.dry_run).await?;
            return Ok(json_response(200, &out));
        }
        Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {m}"
        )))
    }
}

/// A review: create-only, answered and never stored.
fn review(
    res: &Resource,
    tail: &[&str],
    m: &Method,
    body: &[u8],
) -> Result<Response<ResponseBody>, ApiError> {
    match tail {
        [] if *m == Method::POST => {
            let answered = reviews::answer(&res.kind, parse_json(body)?)?;
            Ok(json_response(201, &answered))
        }
        _ => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {m}"
        ))),
    }
}

fn list_table(res: &Resource, list: &Value, params: &Params) -> Value {
    let items: Vec<&Value> = list["items"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cont = list.pointer("/metadata/continue").and_then(Value::as_str);
    let include = params
        .get("includeObject")
        .map(String::as_str)
        .unwrap_or("");
    table::table(res, &items, rv, cont, include)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    crate::api::json_or_yaml(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a valid object: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let p = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=true&x"));
        assert_eq!(p["labelSelector"], "app=web,tier in (a)");
        assert_eq!(p["watch"], "true");
        assert_eq!(p["x"], "");
    }
}
