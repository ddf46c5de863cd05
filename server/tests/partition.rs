//! Network partitions between real kvd members, each in a network namespace
//! this test creates (joined by a bridge it also creates). Cutting a member's
//! link isolates it in both directions: the minority stops taking writes, the
//! majority goes on, and after healing every member converges.
//!
//! Needs root and iproute2 (as CI has); the namespaces and the bridge are
//! removed when the test ends.

mod common;

use std::process::{Command, Stdio};

use common::netns::Net;
use std::time::{Duration, Instant};

struct Members(Vec<common::Proc>);

impl Members {
    fn client(&self, i: usize) -> String {
        self.0[i].endpoint.trim_start_matches("http://").to_string()
    }
}

/// etcdctl from the root namespace (over the bridge).
fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(common::etcdctl_bin())
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=3s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// etcdctl from inside member `i`'s namespace (the isolated side).
fn etcdctl_in(net: &Net, i: usize, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns(i)])
        .arg(common::etcdctl_bin())
        .arg(format!("--endpoints={}:2379", net.addr(i)))
        .args(["--command-timeout=3s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn minority_stops_majority_goes_on_and_all_converge() {
    let net = Net::new(1, 3);
    let dir = tempfile::tempdir().unwrap();
    let members = Members(common::cluster_in(&net, dir.path(), &[]));
    let all = (0..3).map(|i| members.client(i)).collect::<Vec<_>>().join(",");
    wait_until("the cluster serves writes", || etcdctl(&members.client(0), &["put", "k0", "v0"]).0);

    // Isolate member 1 (whoever leads). Its side has no quorum.
    net.link(0, false);
    let majority = format!("{},{}", members.client(1), members.client(2));
    wait_until("the majority takes writes", || etcdctl(&majority, &["put", "during", "partition"]).0);
    for i in 0..20 {
        let (ok, out) = etcdctl(&majority, &["put", &format!("m{i}"), "x"]);
        assert!(ok, "majority write failed: {out}");
    }
    let (ok, out) = etcdctl_in(&net, 0, &["put", "minority", "x"]);
    assert!(!ok, "the isolated member took a write: {out}");
    let (ok, out) = etcdctl_in(&net, 0, &["get", "during"]);
    assert!(!ok, "the isolated member served a linearizable read: {out}");
    // While the partition lasts, nothing the minority was asked reaches the majority.
    // (After healing it may: a timed-out write has an unknown outcome, as in etcd.)
    let (ok, out) = etcdctl(&majority, &["get", "minority"]);
    assert!(ok && !out.contains("minority"), "a minority write reached the majority: {out}");

    // Heal: everyone converges on the majority's history.
    net.link(0, true);
    wait_until("the healed member has the majority's writes", || {
        let (ok, out) = etcdctl_in(&net, 0, &["get", "m19", "--consistency=s", "--print-value-only"]);
        ok && out.trim() == "x"
    });
    wait_until("HashKV agrees", || {
        let (ok, out) = etcdctl(&all, &["endpoint", "hashkv", "-w", "json"]);
        if !ok {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let hashes: Vec<u64> =
            v.as_array().map(|a| a.iter().filter_map(|e| e["HashKV"]["hash"].as_u64()).collect()).unwrap_or_default();
        hashes.len() == 3 && hashes.windows(2).all(|w| w[0] == w[1])
    });
    drop(members);
}
