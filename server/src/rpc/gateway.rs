//! The JSON gateway: etcd's grpc-gateway paths on the client port
//! (`POST /v3/kv/range`, `/v3/watch`, `/v3/lease/grant`, ...), for curl users.
//!
//! A call is turned into the equivalent gRPC request and run in-process
//! through the same gRPC router (so validation, auth, metrics and errors are
//! the same), and each answer is written as etcd's gateway writes it:
//! original field names, 64-bit integers as strings, bytes as base64, default
//! values left out. Streams (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/election/observe`, `/v3/maintenance/snapshot`) answer with one
//! `{"result": ...}` object per line; errors are `{"error", "code", "message"}`
//! with the HTTP status grpc-gateway gives the gRPC code.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::BodyExt;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};

/// Gateway path → (gRPC service, method), as etcd's `google.api.http` options.
const ROUTES: &[(&str, &str, &str)] = &[
    ("/v3/kv/range", "etcdserverpb.KV", "Range"),
    ("/v3/kv/put", "etcdserverpb.KV", "Put"),
    ("/v3/kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("/v3/kv/txn", "etcdserverpb.KV", "Txn"),
    ("/v3/kv/compaction", "etcdserverpb.KV", "Compact"),
    ("/v3/watch", "etcdserverpb.Watch", "Watch"),
    ("/v3/lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("/v3/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("/v3/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("/v3/kv/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("/v3/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    ("/v3/cluster/member/remove", "etcdserverpb.Cluster", "MemberRemove"),
    ("/v3/cluster/member/update", "etcdserverpb.Cluster", "MemberUpdate"),
    ("/v3/cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    ("/v3/cluster/member/promote", "etcdserverpb.Cluster", "MemberPromote"),
    ("/v3/maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("/v3/maintenance/status", "etcdserverpb.Maintenance", "Status"),
    ("/v3/maintenance/defragment", "etcdserverpb.Maintenance", "Defragment"),
    ("/v3/maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    ("/v3/maintenance/hashkv", "etcdserverpb.Maintenance", "HashKV"),
    ("/v3/maintenance/snapshot", "etcdserverpb.Maintenance", "Snapshot"),
    ("/v3/maintenance/transfer-leadership", "etcdserverpb.Maintenance", "MoveLeader"),
    ("/v3/maintenance/downgrade", "etcdserverpb.Maintenance", "Downgrade"),
    ("/v3/auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("/v3/auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("/v3/auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("/v3/auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("/v3/auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("/v3/auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("/v3/auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("/v3/auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    ("/v3/auth/user/changepw", "etcdserverpb.Auth", "UserChangePassword"),
    ("/v3/auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("/v3/auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("/v3/auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("/v3/auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("/v3/auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("/v3/auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    ("/v3/auth/role/grant", "etcdserverpb.Auth", "RoleGrantPermission"),
    ("/v3/auth/role/revoke", "etcdserverpb.Auth", "RoleRevokePermission"),
    ("/v3/election/campaign", "v3electionpb.Election", "Campaign"),
    ("/v3/election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("/v3/election/leader", "v3electionpb.Election", "Leader"),
    ("/v3/election/observe", "v3electionpb.Election", "Observe"),
    ("/v3/election/resign", "v3electionpb.Election", "Resign"),
    ("/v3/lock/lock", "v3lockpb.Lock", "Lock"),
    ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock"),
];

pub fn paths() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().map(|r| r.0)
}

/// grpc-gateway's (v1, as etcd uses) HTTP status for a gRPC code.
fn http_status(code: i32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::REQUEST_TIMEOUT,
        3 | 11 => StatusCode::BAD_REQUEST,
        9 => StatusCode::PRECONDITION_FAILED,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(code: i32, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "code": code, "message": message });
    (http_status(code), [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn to_json(desc: &MessageDescriptor, payload: &[u8]) -> Result<serde_json::Value, String> {
    let msg = DynamicMessage::decode(desc.clone(), payload).map_err(|e| e.to_string())?;
    let opts =
        SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true).skip_default_fields(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts).map_err(|e| e.to_string())
}

/// The JSON objects of a request body, as gRPC frames of `desc`.
fn frames(desc: &MessageDescriptor, body: &[u8]) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    for v in serde_json::Deserializer::from_slice(body).into_iter::<serde_json::Value>() {
        let v = v.map_err(|e| e.to_string())?;
        // Unknown fields are ignored, as etcd's gateway ignores them.
        let opts = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
        let msg = DynamicMessage::deserialize_with_options(desc.clone(), v, &opts).map_err(|e| e.to_string())?;
        super::grpc_frame::put(&mut out, &msg);
    }
    Ok(out)
}

/// Splits complete gRPC frames off the front of `buf`.
fn take_frames(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some((_, len)) = super::grpc_frame::header(buf) {
        if buf.len() < super::grpc_frame::HEADER_LEN + len {
            break;
        }
        buf.advance(super::grpc_frame::HEADER_LEN);
        out.push(buf.split_to(len).freeze());
    }
    out
}

fn grpc_status(h: &axum::http::HeaderMap) -> Option<(i32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let msg = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
    Some((code, percent_encoding::percent_decode_str(msg).decode_utf8_lossy().into_owned()))
}

/// Serves one gateway call through `grpc`, the client port's gRPC side.
pub async fn handle(grpc: super::Grpc, req: Request) -> Response {
    let Some(&(_, service, method)) = ROUTES.iter().find(|r| r.0 == req.uri().path()) else {
        return error(12, "Not Implemented");
    };
    let pool = match super::api_descriptors() {
        Ok(p) => p,
        Err(e) => return error(13, &e),
    };
    let Some(m) = pool.get_service_by_name(service).and_then(|s| s.methods().find(|m| m.name() == method)) else {
        return error(12, "Not Implemented");
    };
    let streaming = m.is_client_streaming() || m.is_server_streaming();
    let (parts, body) = req.into_parts();
    // The JSON of the largest request gRPC takes: its bytes as base64 (4/3),
    // escapes and field names. A larger body is refused as it arrives,
    // never buffered whole.
    let limit = 2 * grpc.max_request_message() + (64 << 10);
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(8, &format!("grpc-gateway: request body larger than max ({limit} bytes)"));
        }
        Err(e) => return error(3, &e.to_string()),
    };
    let frames = match frames(&m.input(), &body) {
        Ok(f) => f.freeze(),
        Err(e) => return error(3, &e),
    };
    // A client stream stays open while the HTTP client waits (a closed
    // request side would end a watch at once, as in etcd).
    let grpc_body = if m.is_client_streaming() {
        let first = futures::stream::once(async move { Ok::<_, std::io::Error>(http_body::Frame::data(frames)) });
        Body::new(http_body_util::StreamBody::new(first.chain(futures::stream::pending())))
    } else {
        Body::from(frames)
    };
    let mut call = axum::http::Request::builder()
        .method("POST")
        .uri(format!("/{service}/{method}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    // The token travels in the Authorization header, as with etcd's gateway.
    if let Some(t) = parts.headers.get(header::AUTHORIZATION) {
        call = call.header("token", t.clone());
    }
    let call = match call.body(grpc_body) {
        Ok(c) => c,
        Err(e) => return error(13, &e.to_string()),
    };
    let resp = grpc.handle(call).await;
    if let Some((code, msg)) = grpc_status(resp.headers())
        && code != 0
    {
        return error(code, &msg);
    }
    let out = m.output();
    if streaming {
        return stream(resp.into_body(), out);
    }
    let collected = match resp.into_body().collect().await {
        Ok(c) => c,
        Err(e) => return error(14, &e.to_string()),
    };
    if let Some((code, msg)) = collected.trailers().and_then(grpc_status)
        && code != 0
    {
        return error(code, &msg);
    }
    let mut buf = BytesMut::from(collected.to_bytes().as_ref());
    let Some(payload) = take_frames(&mut buf).into_iter().next() else { return error(13, "no response") };
    match to_json(&out, &payload) {
        Ok(v) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Err(e) => error(13, &e),
    }
}

/// A streaming answer: one `{"result": ...}` (or `{"error": ...}`) per line.
fn stream(body: Body, desc: MessageDescriptor) -> Response {
    let lines = futures::stream::unfold((body, BytesMut::new(), false), move |(mut body, mut buf, done)| {
        let desc = desc.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match body.frame().await {
                    Some(Ok(f)) if f.is_data() => {
                        if let Ok(d) = f.into_data() {
                            buf.extend_from_slice(&d);
                        }
                        let lines: Vec<Result<Bytes, std::io::Error>> = take_frames(&mut buf)
                            .into_iter()
                            .map(|p| {
                                let v = match to_json(&desc, &p) {
                                    Ok(v) => serde_json::json!({ "result": v }),
                                    Err(e) => serde_json::json!({ "error": { "code": 13, "message": e } }),
                                };
                                Ok(Bytes::from(format!("{v}\n")))
                            })
                            .collect();
                        if !lines.is_empty() {
                            return Some((futures::stream::iter(lines), (body, buf, false)));
                        }
                    }
                    Some(Ok(f)) => {
                        // Trailers: a stream that ended with an error says so.
                        let line = f
                            .trailers_ref()
                            .and_then(grpc_status)
                            .filter(|(code, _)| *code != 0)
                            .map(|(code, msg)| {
                                serde_json::json!({ "error": { "grpc_code": code, "http_code": http_status(code).as_u16(), "message": msg, "http_status": http_status(code).canonical_reason().unwrap_or_default() } })
                            });
                        let lines: Vec<Result<Bytes, std::io::Error>> =
                            line.into_iter().map(|v| Ok(Bytes::from(format!("{v}\n")))).collect();
                        return Some((futures::stream::iter(lines), (body, buf, true)));
                    }
                    _ => return None,
                }
            }
        }
    })
    .flatten();
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
