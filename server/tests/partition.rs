//! Network partitions between real kvd members, each in a network namespace
//! this test creates (joined by a bridge it also creates). Cutting a member's
//! link isolates it in both directions: the minority stops taking writes, the
//! majority goes on, and after healing every member converges.
//!
//! Needs root and iproute2 (as CI has); the namespaces and the bridge are
//! removed when the test ends.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ip` with `args`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2 is installed");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes namespaces and links an earlier, killed run of this test left behind
/// (they would hold the same addresses).
fn remove_leftovers() {
    let ns = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for name in String::from_utf8_lossy(&ns).split_whitespace().filter(|n| n.starts_with("kvdns")) {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&links).lines() {
        if let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n))
            && (name.starts_with("kvdbr") || name.starts_with("kvdv"))
        {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
}

/// Three namespaces on one bridge; removed on drop.
struct Net {
    tag: String,
}

impl Net {
    fn new() -> Net {
        remove_leftovers();
        let tag = format!("{:x}", std::process::id() & 0xffff);
        let net = Net { tag };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", "10.77.0.1/24", "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 1..=3 {
            let (ns, veth) = (net.ns(i), net.veth(i));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &br, "up"]);
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", Net::addr(i)), "dev", "eth0"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("kvdbr{}", self.tag)
    }
    fn ns(&self, i: usize) -> String {
        format!("kvdns{}-{i}", self.tag)
    }
    fn veth(&self, i: usize) -> String {
        format!("kvdv{}-{i}", self.tag)
    }
    fn addr(i: usize) -> String {
        format!("10.77.0.{}", 10 + i)
    }

    /// Cuts (or restores) member `i`'s only link.
    fn link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.veth(i), if up { "up" } else { "down" }]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=3 {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).status();
            let _ = Command::new("ip").args(["link", "del", &self.veth(i)]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).status();
    }
}

struct Member {
    child: Child,
    client: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        .arg(format!("--endpoints={}:2379", Net::addr(i)))
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
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let ic = (1..=3).map(|i| format!("p{i}=http://{}:2380", Net::addr(i))).collect::<Vec<_>>().join(",");
    let members: Vec<Member> = (1..=3)
        .map(|i| {
            let a = Net::addr(i);
            let log = std::fs::File::create(dir.path().join(format!("p{i}.log"))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &net.ns(i)])
                .arg(common::kvd_bin())
                .args(["--name", &format!("p{i}"), "--data-dir", dir.path().join(format!("p{i}")).to_str().unwrap()])
                .args([
                    "--listen-client-urls",
                    &format!("http://{a}:2379"),
                    "--advertise-client-urls",
                    &format!("http://{a}:2379"),
                ])
                .args([
                    "--listen-peer-urls",
                    &format!("http://{a}:2380"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{a}:2380"),
                ])
                .args(["--initial-cluster", &ic, "--heartbeat-interval", "50", "--election-timeout", "500"])
                .env("RUST_LOG", "warn")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            Member { child, client: format!("{a}:2379") }
        })
        .collect();
    let all = members.iter().map(|m| m.client.clone()).collect::<Vec<_>>().join(",");
    wait_until("the cluster serves writes", || etcdctl(&members[0].client, &["put", "k0", "v0"]).0);

    // Isolate member 1 (whoever leads). Its side has no quorum.
    net.link(1, false);
    let majority = format!("{},{}", members[1].client, members[2].client);
    wait_until("the majority takes writes", || etcdctl(&majority, &["put", "during", "partition"]).0);
    for i in 0..20 {
        let (ok, out) = etcdctl(&majority, &["put", &format!("m{i}"), "x"]);
        assert!(ok, "majority write failed: {out}");
    }
    let (ok, out) = etcdctl_in(&net, 1, &["put", "minority", "x"]);
    assert!(!ok, "the isolated member took a write: {out}");
    let (ok, out) = etcdctl_in(&net, 1, &["get", "during"]);
    assert!(!ok, "the isolated member served a linearizable read: {out}");
    // While the partition lasts, nothing the minority was asked reaches the majority.
    // (After healing it may: a timed-out write has an unknown outcome, as in etcd.)
    let (ok, out) = etcdctl(&majority, &["get", "minority"]);
    assert!(ok && !out.contains("minority"), "a minority write reached the majority: {out}");

    // Heal: everyone converges on the majority's history.
    net.link(1, true);
    wait_until("the healed member has the majority's writes", || {
        let (ok, out) = etcdctl_in(&net, 1, &["get", "m19", "--consistency=s", "--print-value-only"]);
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
