//! Auth against the real etcd: the same etcdctl session on both gives the
//! same answers (users, roles, permissions, errors); tokens (wrong password,
//! forged, expired); a watch whose permission is revoked; and a member
//! restart keeping users and roles.

mod common;

use std::time::Duration;

use common::watch::WatchStream;
use common::{Proc, etcdctl};
use kvd_api::etcdserverpb::auth_client::AuthClient;
use kvd_api::etcdserverpb::kv_client::KvClient;
use kvd_api::etcdserverpb::{AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest};
use tonic::transport::Channel;

/// etcdctl's answer, without the client's retry log lines.
fn run(ep: &str, args: &[&str]) -> String {
    let (ok, out, err) = etcdctl(ep, args, None);
    let err: Vec<&str> = err.lines().filter(|l| !l.contains("retrying of unary invoker")).collect();
    format!("{ok} {out}{}", err.join("\n"))
}

fn session(ep: &str) -> Vec<String> {
    let root = ["--user", "root:rootpw"];
    let alice = ["--user", "alice:apw"];
    let with = |who: &[&str], args: &[&str]| run(ep, &[who, args].concat());
    vec![
        run(ep, &["user", "add", "root:rootpw"]),
        run(ep, &["auth", "enable"]),
        run(ep, &["user", "grant-role", "root", "root"]),
        run(ep, &["auth", "enable"]),
        run(ep, &["get", "foo"]),
        run(ep, &["put", "foo", "x"]),
        with(&["--user", "root:wrong"], &["get", "foo"]),
        with(&root, &["put", "foo", "bar"]),
        with(&root, &["put", "other", "o"]),
        with(&root, &["user", "add", "alice:apw"]),
        with(&root, &["user", "add", "alice:again"]),
        with(&root, &["role", "add", "reader"]),
        with(&root, &["role", "add", "reader"]),
        with(&root, &["role", "grant-permission", "reader", "read", "foo"]),
        with(&root, &["role", "grant-permission", "reader", "readwrite", "app/", "--prefix"]),
        with(&root, &["role", "grant-permission", "nobody", "read", "x"]),
        with(&root, &["user", "grant-role", "alice", "reader"]),
        with(&root, &["user", "grant-role", "alice", "missing"]),
        with(&alice, &["get", "foo"]),
        with(&alice, &["get", "other"]),
        with(&alice, &["put", "foo", "x"]),
        with(&alice, &["put", "app/1", "a"]),
        with(&alice, &["get", "app/", "--prefix"]),
        with(&alice, &["del", "app/", "--prefix"]),
        with(&alice, &["txn"]).replace('\n', " "),
        with(&alice, &["user", "grant-role", "alice", "root"]),
        with(&alice, &["role", "grant-permission", "reader", "readwrite", "other"]),
        with(&alice, &["user", "get", "alice"]),
        with(&alice, &["role", "get", "reader"]),
        with(&alice, &["user", "list"]),
        with(&alice, &["auth", "disable"]),
        with(&root, &["user", "list"]),
        with(&root, &["role", "list"]),
        with(&root, &["role", "get", "root"]),
        with(&root, &["user", "get", "root"]),
        with(&root, &["role", "revoke-permission", "reader", "foo"]),
        with(&root, &["role", "revoke-permission", "reader", "foo"]),
        with(&alice, &["get", "foo"]),
        with(&root, &["user", "revoke-role", "alice", "reader"]),
        with(&root, &["user", "revoke-role", "alice", "reader"]),
        with(&root, &["user", "add", "bob", "--no-password"]),
        with(&["--user", "bob:"], &["get", "foo"]),
        with(&root, &["user", "passwd", "alice", "--interactive=false"]),
        with(&root, &["user", "delete", "root"]),
        with(&root, &["role", "delete", "root"]),
        with(&root, &["user", "revoke-role", "root", "root"]),
        with(&root, &["role", "delete", "reader"]),
        with(&root, &["user", "delete", "alice"]),
        with(&root, &["user", "delete", "alice"]),
        with(&root, &["auth", "disable"]),
        run(ep, &["get", "foo", "--print-value-only"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_session_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &[]).await;
    let (k, e) = (session(&kvd.endpoint), session(&etcd.endpoint));
    for (i, (a, b)) in k.iter().zip(&e).enumerate() {
        assert_eq!(a, b, "step {i}");
    }
    assert_eq!(k.len(), e.len());
}

async fn token(ep: &str, user: &str, password: &str) -> Result<String, tonic::Status> {
    let ch = Channel::from_shared(ep.to_string()).unwrap().connect_lazy();
    let r =
        AuthClient::new(ch).authenticate(AuthenticateRequest { name: user.into(), password: password.into() }).await;
    r.map(|r| r.into_inner().token)
}

fn status<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

/// Forged and expired tokens, compared with etcd (`--auth-token-ttl 1` on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_tokens_are_refused_as_etcd_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let (kvd, etcd) = common::kvd_and_etcd(dir.path(), &["--auth-token-ttl", "1"]).await;
    let mut seen = Vec::new();
    for p in [&kvd, &etcd] {
        for args in [&["user", "add", "root:rootpw"][..], &["user", "grant-role", "root", "root"], &["auth", "enable"]]
        {
            let (ok, _, err) = etcdctl(&p.endpoint, args, None);
            assert!(ok, "{err}");
        }
        let mut kv = KvClient::new(Channel::from_shared(p.endpoint.clone()).unwrap().connect_lazy());
        let get = || RangeRequest { key: b"k".to_vec(), ..Default::default() };
        let mut out = vec![status(token(&p.endpoint, "root", "nope").await)];
        let t = token(&p.endpoint, "root", "rootpw").await.unwrap();
        out.push(status(kv.range(with_token(get(), &t)).await));
        out.push(status(kv.range(with_token(get(), "forgedtokenabcd.7")).await));
        out.push(status(kv.range(get()).await));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        out.push(status(kv.range(with_token(get(), &t)).await));
        seen.push(out);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0][1], "ok");
    assert!(seen[0][4].contains("invalid auth token"), "{:?}", seen[0]);
}

/// kvd cancels a watch once its user loses read permission (etcd only checks
/// at creation); events after the revoke never reach that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_loses_its_events_when_the_permission_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let mut kvd = Proc::kvd_ready(&dir.path().join("kvd"), &[]).await;
    let ep = kvd.endpoint.clone();
    let root = ["--user", "root:rootpw"];
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["role", "add", "watcher"],
        &["role", "grant-permission", "watcher", "read", "w/", "--prefix"],
        &["user", "grant-role", "alice", "watcher"],
        &["auth", "enable"],
    ] {
        let (ok, _, err) = etcdctl(&ep, args, None);
        assert!(ok, "{args:?}: {err}");
    }
    let t = token(&ep, "alice", "apw").await.unwrap();
    let mut w = WatchStream::open_with_token(&ep, &t).await;
    let denied = w.create(WatchCreateRequest { key: b"x".to_vec(), ..Default::default() }).await;
    assert!(denied.canceled && denied.cancel_reason.contains("permission denied"), "{denied:?}");
    let ok =
        w.create(WatchCreateRequest { key: b"w/".to_vec(), range_end: b"w0".to_vec(), ..Default::default() }).await;
    assert!(!ok.canceled);
    let rt = token(&ep, "root", "rootpw").await.unwrap();
    let mut kv = KvClient::new(Channel::from_shared(ep.clone()).unwrap().connect_lazy());
    kv.put(with_token(PutRequest { key: b"w/1".to_vec(), value: b"1".to_vec(), ..Default::default() }, &rt))
        .await
        .unwrap();
    let first = w.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(first.events[0].kv.as_ref().unwrap().key, b"w/1");
    let (ok, _, err) =
        etcdctl(&ep, &[&root[..], &["role", "revoke-permission", "watcher", "w/", "--prefix"]].concat(), None);
    assert!(ok, "{err}");
    kv.put(with_token(PutRequest { key: b"w/2".to_vec(), value: b"2".to_vec(), ..Default::default() }, &rt))
        .await
        .unwrap();
    let next = w.next(Duration::from_secs(5)).await.expect("a response");
    assert!(next.canceled && next.events.is_empty(), "{next:?}");
    assert!(next.cancel_reason.contains("permission denied"));
    // Users, roles and the enabled flag survive a restart.
    kvd.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !run(&kvd.endpoint, &["--user", "root:rootpw", "get", "w/1"]).starts_with("true") {
        assert!(std::time::Instant::now() < deadline, "kvd did not come back: {}", kvd.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = run(&kvd.endpoint, &["--user", "root:rootpw", "auth", "status"]);
    assert!(status.starts_with("true Authentication Status: true\nAuthRevision: "), "{status}");
    let out = run(&kvd.endpoint, &["--user", "root:rootpw", "role", "get", "watcher"]);
    assert!(out.starts_with("true Role watcher"), "{out}");
    assert!(run(&kvd.endpoint, &["get", "w/1"]).contains("user name is empty"));
}

/// A token issued by one member is accepted by every member (tokens are
/// issued through raft), and permissions hold on followers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_work_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let members = common::cluster(dir.path(), 3, 161);
    for m in &members {
        m.ready().await;
    }
    let eps: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "reader:rpw"],
        &["role", "add", "r"],
        &["role", "grant-permission", "r", "read", "k"],
        &["user", "grant-role", "reader", "r"],
        &["auth", "enable"],
    ] {
        let (ok, _, err) = etcdctl(&eps[0], args, None);
        assert!(ok, "{args:?}: {err}");
    }
    let t = token(&eps[1], "reader", "rpw").await.unwrap();
    for ep in &eps {
        let mut kv = KvClient::new(Channel::from_shared(ep.clone()).unwrap().connect_lazy());
        let get = RangeRequest { key: b"k".to_vec(), ..Default::default() };
        assert_eq!(status(kv.range(with_token(get, &t)).await), "ok", "{ep}");
        let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
        assert_eq!(status(kv.put(with_token(put, &t)).await), "PermissionDenied: etcdserver: permission denied");
    }
}
