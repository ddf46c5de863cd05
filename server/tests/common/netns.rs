//! Network namespaces a test creates for its members: one namespace per
//! member, joined to the test's own namespace by a bridge, so the test's
//! clients reach every member while the faults act on the members' links.
//!
//! Faults, all undone by [`Net::heal`] and by dropping the [`Net`]:
//! - [`Net::link`]: a member's only link goes down (clients lose it too);
//! - [`Net::cut`]: the path between two members is blackholed both ways
//!   (each still talks to everyone else and to clients);
//! - [`Net::throttle`]: a member's outgoing link is slowed and queues, so
//!   its messages are delayed and some are dropped.
//!
//! Needs root and iproute2 (as CI has). Each `Net` takes its own subnet
//! 10.77.`subnet`.0/24, so tests in one binary can run side by side.

use std::path::Path;
use std::process::Command;

/// Runs `ip` with `args`, panicking with its output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2 is installed");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `tc` inside namespace `ns`; failure is returned, not fatal.
fn tc_in(ns: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(["netns", "exec", ns, "tc"]).args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// Whether process `pid` still runs.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links that a killed test process left behind
/// (named after its pid, in hex); those of running processes are left alone.
fn remove_leftovers() {
    let tag_of = |name: &str, prefix: &str| -> Option<u32> {
        let rest = name.strip_prefix(prefix)?;
        let pid: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        u32::from_str_radix(&pid, 16).ok()
    };
    let mine = std::process::id();
    let stale = |pid: u32| pid != mine && !alive(pid);
    let ns = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for name in String::from_utf8_lossy(&ns).split_whitespace() {
        if tag_of(name, "kvdns").is_some_and(stale) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&links).lines() {
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if tag_of(name, "kvb").or_else(|| tag_of(name, "kvv")).is_some_and(stale) {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
}

/// `n` member namespaces on one bridge; removed on drop.
pub struct Net {
    pid: u32,
    subnet: u8,
    n: usize,
}

impl Net {
    /// Creates the bridge (10.77.`subnet`.1) and `n` namespaces, member `i`
    /// at [`Net::addr`]`(i)`.
    pub fn new(subnet: u8, n: usize) -> Net {
        remove_leftovers();
        let net = Net { pid: std::process::id(), subnet, n };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.77.{subnet}.1/24"), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 0..n {
            let (ns, veth) = (net.ns(i), net.veth(i));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &br, "up"]);
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", net.addr(i)), "dev", "eth0"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn len(&self) -> usize {
        self.n
    }

    fn bridge(&self) -> String {
        format!("kvb{:x}x{}", self.pid, self.subnet)
    }

    /// Member `i`'s namespace, for `ip netns exec`.
    pub fn ns(&self, i: usize) -> String {
        format!("kvdns{:x}x{}-{i}", self.pid, self.subnet)
    }

    fn veth(&self, i: usize) -> String {
        format!("kvv{:x}x{}x{i}", self.pid, self.subnet)
    }

    /// Member `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, 10 + i)
    }

    /// Gives every member namespace `text` as its `/etc/hosts` (`ip netns
    /// exec` binds `/etc/netns/NAME/hosts` over it). Written in place, so
    /// running members read the new text at their next lookup.
    pub fn set_hosts(&self, text: &str) {
        for i in 0..self.n {
            let dir = Path::new("/etc/netns").join(self.ns(i));
            std::fs::create_dir_all(&dir).expect("creating /etc/netns/NS");
            std::fs::write(dir.join("hosts"), text).expect("writing /etc/netns/NS/hosts");
        }
    }

    /// Moves member `i` to address `to` (in this net's subnet): its old
    /// address is gone at once, and what was sent to it is dropped unanswered.
    pub fn move_addr(&self, i: usize, to: &str) {
        let ns = self.ns(i);
        ip(&["netns", "exec", &ns, "ip", "addr", "flush", "dev", "eth0"]);
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{to}/24"), "dev", "eth0"]);
    }

    /// Takes member `i`'s only link down (`up == false`) or up again.
    pub fn link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.veth(i), if up { "up" } else { "down" }]);
    }

    /// Blackholes (or restores) the path between members `a` and `b`, in
    /// both directions.
    pub fn cut(&self, a: usize, b: usize, cut: bool) {
        for (from, to) in [(a, b), (b, a)] {
            let route = format!("{}/32", self.addr(to));
            let verb = if cut { "replace" } else { "del" };
            let out = Command::new("ip")
                .args(["netns", "exec", &self.ns(from), "ip", "route", verb, "blackhole", &route])
                .output()
                .expect("iproute2 is installed");
            assert!(out.status.success() || !cut, "cut m{from}->m{to}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    /// Slows everything member `i` sends to `kbit` kbit/s with a queue of
    /// up to `queue_ms`: packets wait in the queue (delay) and are dropped
    /// when it is full (loss), as on a congested link. `kbit == 0` removes
    /// the limit. (A token bucket, `tbf`: this kernel has no `netem`.)
    pub fn throttle(&self, i: usize, kbit: u64, queue_ms: u64) {
        let ns = self.ns(i);
        if kbit == 0 {
            let _ = tc_in(&ns, &["qdisc", "del", "dev", "eth0", "root"]);
        } else {
            let (rate, latency) = (format!("{kbit}kbit"), format!("{queue_ms}ms"));
            tc_in(
                &ns,
                &["qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "4kb", "latency", &latency],
            )
            .unwrap_or_else(|e| panic!("tbf on m{i}: {e}"));
        }
    }

    /// Undoes every fault: links up, no cuts, no throttles.
    pub fn heal(&self) {
        for i in 0..self.n {
            self.link(i, true);
            self.throttle(i, 0, 0);
            for j in 0..self.n {
                if i != j {
                    let route = format!("{}/32", self.addr(j));
                    let _ = Command::new("ip")
                        .args(["netns", "exec", &self.ns(i), "ip", "route", "del", "blackhole", &route])
                        .output();
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).status();
            let _ = Command::new("ip").args(["link", "del", &self.veth(i)]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(self.ns(i)));
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).status();
    }
}
