//! The JSON gateway against etcd's: the same curl-style requests to both give
//! the same JSON (headers aside) and the same HTTP statuses, streams included.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

/// POSTs `body` to `path`; returns (HTTP status, JSON) with the header's
/// member-specific fields removed.
fn post(ep: &str, path: &str, body: &Value) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", &format!("{ep}{path}"), "-d", &body.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let mut v: Value = serde_json::from_str(json).unwrap_or(Value::String(json.to_string()));
    strip(&mut v);
    (code.trim().parse().unwrap_or(0), v)
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["cluster_id", "member_id", "raft_term"] {
                m.remove(k);
            }
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn session(ep: &str) -> Vec<(u16, Value)> {
    let k = |s: &str| b64(s);
    vec![
        post(ep, "/v3/kv/put", &json!({"key": k("a"), "value": k("1")})),
        post(ep, "/v3/kv/put", &json!({"key": k("a/b"), "value": k("2"), "prev_kv": true})),
        post(ep, "/v3/kv/put", &json!({"key": k("a/b"), "value": k("3"), "prev_kv": true})),
        post(ep, "/v3/kv/range", &json!({"key": k("a")})),
        post(ep, "/v3/kv/range", &json!({"key": k("a"), "range_end": k("b"), "limit": 1})),
        post(ep, "/v3/kv/range", &json!({"key": k("a"), "range_end": k("b"), "count_only": true})),
        post(ep, "/v3/kv/range", &json!({"key": ""})),
        post(ep, "/v3/kv/range", &json!({"key": k("a"), "revision": 999})),
        post(
            ep,
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": k("a"), "target": "VALUE", "result": "EQUAL", "value": k("1")}],
                "success": [{"request_put": {"key": k("t"), "value": k("yes")}}],
                "failure": [{"request_range": {"key": k("a")}}]
            }),
        ),
        post(ep, "/v3/kv/deleterange", &json!({"key": k("a/"), "range_end": k("a0"), "prev_kv": true})),
        post(ep, "/v3/lease/grant", &json!({"TTL": 60, "ID": 4242})),
        post(ep, "/v3/lease/grant", &json!({"TTL": 60, "ID": 4242})),
        post(ep, "/v3/kv/put", &json!({"key": k("l"), "value": k("v"), "lease": 4242})),
        post(ep, "/v3/lease/timetolive", &json!({"ID": 4242, "keys": true})),
        post(ep, "/v3/kv/lease/revoke", &json!({"ID": 4242})),
        post(ep, "/v3/lease/revoke", &json!({"ID": 4242})),
        post(ep, "/v3/kv/compaction", &json!({"revision": 3})),
        post(ep, "/v3/kv/range", &json!({"key": k("a"), "revision": 2})),
        post(ep, "/v3/auth/authenticate", &json!({"name": "root", "password": "x"})),
        post(ep, "/v3/kv/put", &json!({"key": k("x"), "value": k("y"), "bogus_field": 1})),
        // Malformed JSON: the status and code match (the text is each parser's own).
        {
            let (status, v) = post(ep, "/v3/kv/put", &json!("not an object"));
            (status, v["code"].clone())
        },
    ]
}

/// The first `n` lines of a streaming gateway call, parsed and stripped.
fn watch_lines(ep: &str, body: &Value, then: impl FnOnce(), n: usize) -> Vec<Value> {
    let child = std::process::Command::new("curl")
        .args(["-s", "-N", "-m", "5", "-X", "POST", &format!("{ep}/v3/watch"), "-d", &body.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    then();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .take(n)
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            strip(&mut v);
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_as_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let (a, b) = (session(&kvd.endpoint), session(&etcd.endpoint));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "request {i}");
    }
    assert_eq!(a.len(), b.len());
    let mut streams = Vec::new();
    for p in [&kvd, &etcd] {
        let ep = p.endpoint.clone();
        let req = json!({"create_request": {"key": b64("w"), "prev_kv": true}});
        let put = || {
            for v in ["1", "2"] {
                post(&ep, "/v3/kv/put", &json!({"key": b64("w"), "value": b64(v)}));
            }
        };
        streams.push(watch_lines(&p.endpoint, &req, put, 3));
    }
    assert_eq!(streams[0].len(), 3, "{:?}", streams[0]);
    assert_eq!(streams[0], streams[1]);
}
