//! TLS with etcd's flags, using certificates the test generates: etcdctl over
//! https with client-certificate auth; a wrong CA, a missing client
//! certificate and an untrusted server are refused; a rotated server
//! certificate is picked up without a restart; the certificate's common name
//! is the user once auth is enabled; and members talk over https peer URLs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Proc, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    /// Writes `<name>.pem` and `<name>-key.pem`: a leaf for `cn` valid for `sans`.
    fn leaf(&self, dir: &Path, name: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.pem()).unwrap();
        path.to_path_buf()
    }
}

/// kvd serving clients on https `url` with `server` (certificate, key),
/// requiring client certificates signed by `ca`.
fn tls_kvd(data: &Path, url: &str, server: (&Path, &Path), ca: &Path) -> Proc {
    let (cert, key, ca) = (server.0.display().to_string(), server.1.display().to_string(), ca.display().to_string());
    Proc::kvd(
        data,
        &[
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
        ],
    )
}

/// etcdctl over TLS: (ok, stdout + stderr).
fn ctl(ep: &str, ca: Option<&Path>, client: Option<&(PathBuf, PathBuf)>, args: &[&str]) -> (bool, String) {
    let mut a: Vec<String> =
        vec![format!("--endpoints={ep}"), "--dial-timeout=2s".into(), "--command-timeout=3s".into()];
    if let Some(ca) = ca {
        a.push(format!("--cacert={}", ca.display()));
    }
    if let Some((c, k)) = client {
        a.push(format!("--cert={}", c.display()));
        a.push(format!("--key={}", k.display()));
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let out = std::process::Command::new(common::etcdctl_bin()).args(&a).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn wait_ok(what: &str, mut f: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = f();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn client_tls_client_cert_auth_rotation_and_common_name_users() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("kvd test CA");
    let ca_pem = ca.write(&d.join("ca.pem"));
    let other = Ca::new("some other CA");
    let other_pem = other.write(&d.join("other-ca.pem"));
    let (server_cert, server_key) = ca.leaf(d, "server", "kvd", &["127.0.0.1", "localhost"]);
    let root = ca.leaf(d, "root-client", "root", &[]);
    let alice = ca.leaf(d, "alice-client", "alice", &[]);
    let stranger = other.leaf(d, "stranger", "root", &[]);
    let port = free_port();
    let ep = format!("https://127.0.0.1:{port}");
    let url = ep.clone();
    let _kvd = tls_kvd(&d.join("kvd"), &url, (&server_cert, &server_key), &ca_pem);
    wait_ok("kvd over TLS", || ctl(&ep, Some(&ca_pem), Some(&root), &["put", "k", "v"]));
    let (ok, out) = ctl(&ep, Some(&ca_pem), Some(&root), &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "{out}");
    // Refused: no client certificate, one from another CA, a server nobody trusts.
    assert!(!ctl(&ep, Some(&ca_pem), None, &["get", "k"]).0, "no client certificate");
    assert!(!ctl(&ep, Some(&ca_pem), Some(&stranger), &["get", "k"]).0, "client certificate from another CA");
    assert!(!ctl(&ep, Some(&other_pem), Some(&root), &["get", "k"]).0, "server certificate not trusted");
    assert!(!ctl(&format!("http://127.0.0.1:{port}"), None, None, &["get", "k"]).0, "plaintext on a TLS port");

    // The certificate's common name is the user once auth is enabled.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:apw"],
        &["auth", "enable"],
    ] {
        let (ok, out) = ctl(&ep, Some(&ca_pem), Some(&root), args);
        assert!(ok, "{args:?}: {out}");
    }
    let (ok, out) = ctl(&ep, Some(&ca_pem), Some(&root), &["put", "k", "by-root"]);
    assert!(ok, "root by certificate: {out}");
    let (ok, out) = ctl(&ep, Some(&ca_pem), Some(&alice), &["put", "k", "by-alice"]);
    assert!(!ok && out.contains("permission denied"), "alice by certificate: {out}");

    // Rotation: a server certificate from a second CA replaces the first.
    let ca2 = Ca::new("kvd rotated CA");
    let ca2_pem = ca2.write(&d.join("ca2.pem"));
    assert!(!ctl(&ep, Some(&ca2_pem), Some(&root), &["get", "k"]).0);
    let (c2, k2) = ca2.leaf(d, "server2", "kvd", &["127.0.0.1"]);
    std::fs::copy(&k2, &server_key).unwrap();
    std::fs::copy(&c2, &server_cert).unwrap();
    wait_ok("the rotated certificate", || ctl(&ep, Some(&ca2_pem), Some(&root), &["get", "k"]));
    assert!(!ctl(&ep, Some(&ca_pem), Some(&root), &["get", "k"]).0, "the old certificate is gone");
}

/// kvctl's maintenance commands (which kvd-operator's CronJobs run, through
/// the client kvd-operator uses too) speak TLS with etcdctl's flags: with
/// the client certificate they work, on https:// and on bare host:port
/// endpoints; without it the member refuses them.
#[test]
fn kvctl_maintenance_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("kvd test CA");
    let ca_pem = ca.write(&d.join("ca.pem"));
    let (server_cert, server_key) = ca.leaf(d, "server", "kvd", &["127.0.0.1"]);
    let (cert, key) = ca.leaf(d, "client", "root", &[]);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _kvd = tls_kvd(&d.join("kvd"), &url, (&server_cert, &server_key), &ca_pem);
    let identity = (cert.clone(), key.clone());
    wait_ok("kvd over TLS", || ctl(&url, Some(&ca_pem), Some(&identity), &["put", "k", "v1"]));
    assert!(ctl(&url, Some(&ca_pem), Some(&identity), &["put", "k", "v2"]).0);
    let kvctl = |endpoint: &str, with_cert: bool, args: &[&str]| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(["--endpoints".into(), endpoint.into(), format!("--cacert={}", ca_pem.display())]);
        if with_cert {
            a.extend([format!("--cert={}", cert.display()), format!("--key={}", key.display())]);
        }
        a.extend(["--timeout".into(), "3s".into(), "--termination-log".into(), d.join("none").display().to_string()]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl")).args(&a).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = kvctl(&url, true, &["compact"]);
    assert!(ok && out.contains("\"compactedRevision\":3"), "{out}");
    let (ok, out) = kvctl(&format!("127.0.0.1:{port}"), true, &["defrag"]);
    assert!(ok && out.contains("\"bytesFreed\""), "bare host:port with --cacert dials https: {out}");
    let (ok, out) = kvctl(&url, false, &["defrag"]);
    assert!(!ok, "served without a client certificate: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_replicate_over_https_peer_urls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("kvd peer CA");
    let ca_pem = ca.write(&d.join("peer-ca.pem"));
    let ips: Vec<String> = (0..3).map(|i| format!("127.0.0.{}", 171 + i)).collect();
    let peers: Vec<String> = ips.iter().map(|ip| format!("https://{ip}:{}", common::free_port_on(ip))).collect();
    let ic = peers.iter().enumerate().map(|(i, p)| format!("m{i}={p}")).collect::<Vec<_>>().join(",");
    let mut members = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let (c, k) = ca.leaf(d, &format!("peer{i}"), &format!("m{i}"), &[ip.as_str()]);
        let (c, k, ca) = (c.display().to_string(), k.display().to_string(), ca_pem.display().to_string());
        let extra =
            ["--peer-cert-file", &c, "--peer-key-file", &k, "--peer-trusted-ca-file", &ca, "--peer-client-cert-auth"];
        members.push(Proc::member(&d.join(format!("m{i}")), ip, &format!("m{i}"), &peers[i], &ic, &extra));
    }
    for m in &members {
        m.ready().await;
    }
    let (ok, _, err) = common::etcdctl(&members[0].endpoint, &["put", "over", "tls"], None);
    assert!(ok, "{err}");
    for m in &members {
        let (ok, out, _) = common::etcdctl(&m.endpoint, &["get", "over", "--print-value-only"], None);
        assert!(ok && out.trim() == "tls", "{}: {out}", m.endpoint);
    }
    // The peer port answers a client presenting a peer certificate, and
    // refuses the same call without one.
    let peer_call = |identity: Option<(PathBuf, PathBuf)>| {
        let ca = std::fs::read(&ca_pem).unwrap();
        let url = peers[0].clone();
        async move {
            let mut tls =
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
            if let Some((c, k)) = identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    std::fs::read(c).unwrap(),
                    std::fs::read(k).unwrap(),
                ));
            }
            let ch = tonic::transport::Endpoint::from_shared(url).unwrap().tls_config(tls).unwrap().connect_lazy();
            let req = kvd_api::kvdpeerpb::ClusterInfoRequest {};
            kvd_api::kvdpeerpb::peer_client::PeerClient::new(ch).cluster_info(req).await
        }
    };
    let with_cert = ca.leaf(d, "peer-probe", "probe", &[]);
    let answered = peer_call(Some(with_cert)).await.expect("a peer with a certificate is answered");
    assert_ne!(answered.into_inner().cluster_id, 0);
    assert!(peer_call(None).await.is_err(), "a peer call without a certificate was answered");
}
