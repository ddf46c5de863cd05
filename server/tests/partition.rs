//! Network partitions between real kvd members, each in a network namespace
//! this test creates (joined by a bridge it also creates). Cutting a member's
//! link isolates it in both directions: the minority stops taking writes, the
//! majority goes on, and after healing every member converges. A member that
//! vanishes silently and comes back at a new address under its name (as a
//! recreated pod does) is reached again.
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
    etcdctl_in_at(net, i, &net.addr(i), args)
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

/// The member behind `endpoint`: (its id, the leader it knows), from `endpoint status`.
fn status_of(endpoint: &str) -> Option<(u64, u64)> {
    let (ok, out) = etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    let h = &v[0]["Status"];
    Some((h["header"]["member_id"].as_u64()?, h["leader"].as_u64()?))
}

/// A member whose address changes under its name (as a Kubernetes pod's
/// does when it is recreated) vanishes without closing its connections:
/// what the leader sends to its old address is dropped unanswered. The
/// leader must notice, look the name up again and reach it at the new
/// address; it must not wait for TCP to give up (about 15 minutes).
#[test]
fn a_member_back_at_a_new_address_under_its_name_is_reached_again() {
    let net = Net::new(2, 3);
    let dir = tempfile::tempdir().unwrap();
    let name = |i: usize| format!("m{i}.kvd.test");
    let hosts = |addrs: &[String]| {
        let mut text = "127.0.0.1\tlocalhost\n".to_string();
        for (i, a) in addrs.iter().enumerate() {
            text.push_str(&format!("{a}\t{}\n", name(i)));
        }
        text
    };
    let mut addrs: Vec<String> = (0..3).map(|i| net.addr(i)).collect();
    net.set_hosts(&hosts(&addrs));
    let ic = (0..3).map(|i| format!("m{i}=http://{}:2380", name(i))).collect::<Vec<_>>().join(",");
    let start = |i: usize, addr: &str| {
        common::Proc::member_in_ns_as(
            &net.ns(i),
            &dir.path().join(format!("m{i}")),
            addr,
            &format!("m{i}"),
            &format!("http://{}:2380", name(i)),
            &ic,
            &[],
        )
    };
    let mut members = Members((0..3).map(|i| start(i, &addrs[i])).collect());
    wait_until("the cluster serves writes", || etcdctl(&members.client(0), &["put", "k0", "v0"]).0);
    let mut roles = Vec::new();
    wait_until("every member knows the leader", || {
        roles = (0..3).filter_map(|i| status_of(&members.client(i))).collect();
        roles.len() == 3 && roles.iter().all(|r| r.1 != 0 && r.1 == roles[0].1)
    });
    let leader = roles.iter().position(|r| r.0 == r.1).expect("a leader");
    let f = (leader + 1) % 3;
    for i in 0..5 {
        let (ok, out) = etcdctl(&members.client(leader), &["put", &format!("before{i}"), "x"]);
        assert!(ok, "put before the move: {out}");
    }

    // The follower goes without a FIN or RST reaching anyone, and comes
    // back with its data at a new address under the same name.
    net.link(f, false);
    members.0[f].kill9();
    addrs[f] = format!("10.77.2.{}", 50 + f);
    net.move_addr(f, &addrs[f]);
    net.set_hosts(&hosts(&addrs));
    net.link(f, true);
    members.0[f] = start(f, &addrs[f]);

    let (ok, out) = etcdctl(&members.client(leader), &["put", "after-move", "y"]);
    assert!(ok, "put after the move: {out}");
    wait_until("the moved member has the write made after it moved", || {
        let (ok, out) =
            etcdctl_in_at(&net, f, &addrs[f], &["get", "after-move", "--consistency=s", "--print-value-only"]);
        ok && out.trim() == "y"
    });
    drop(members);
}

/// etcdctl inside member `i`'s namespace, against `addr`.
fn etcdctl_in_at(net: &Net, i: usize, addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns(i)])
        .arg(common::etcdctl_bin())
        .arg(format!("--endpoints={addr}:2379"))
        .args(["--command-timeout=3s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
