//! Pod networks: one network namespace per pod (`kvdpod-<n>`), joined to
//! the node's bridge by a veth pair (`kvdpv<n>` on the node, `eth0` in the
//! pod) with address 10.244.0.`n`/24 and a default route through the
//! bridge address. Built with iproute2 (`ip`), as the server's network
//! tests do. Names stay under Linux's 15-character interface limit.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use crate::error::{Error, Result};

const NS_PREFIX: &str = "kvdpod-";
const VETH_PREFIX: &str = "kvdpv";

/// The node's pod network: the bridge and its /24.
#[derive(Clone, Debug)]
pub struct Network {
    pub bridge: String,
    pub gateway: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Command { cmd: format!("ip {}", args.join(" ")), stderr: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        })
    }
}

/// The namespace name of pod slot `n`.
pub fn ns_name(n: u8) -> String {
    format!("{NS_PREFIX}{n}")
}

/// The MAC of slot `n`'s `eth0`: locally administered, unicast, one per slot.
pub fn pod_mac(n: u8) -> String {
    format!("02:6b:76:64:00:{n:02x}")
}

/// The file `setns(2)` opens for slot `n`.
pub fn ns_path(n: u8) -> PathBuf {
    PathBuf::from("/run/netns").join(ns_name(n))
}

impl Network {
    /// The address of slot `n` (2..=254).
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        let o = self.gateway.octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }

    /// Checks the bridge exists (e2e/run creates it before the API server,
    /// which listens on its address).
    pub fn check(&self) -> Result<()> {
        ip(&["link", "show", &self.bridge])
    }

    /// Creates slot `n`'s namespace, veth pair, address and routes.
    pub fn create(&self, n: u8) -> Result<()> {
        let (ns, veth) = (ns_name(n), format!("{VETH_PREFIX}{n}"));
        // A leftover of an earlier run would make `add` fail.
        let _ = ip(&["netns", "del", &ns]);
        let _ = ip(&["link", "del", &veth]);
        ip(&["netns", "add", &ns])?;
        // The pod's MAC follows from its slot, so a pod re-created at the
        // same address is reachable at once: with a new MAC, peers would
        // keep sending to the old one until their neighbour entry expired
        // (up to ~45 s of lost packets).
        let mac = pod_mac(n);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address", &mac, "netns", &ns])?;
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(n)), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &self.gateway.to_string()])?;
        Ok(())
    }

    /// Removes slot `n` (the veth pair goes with the namespace).
    pub fn remove(&self, n: u8) {
        if let Err(e) = ip(&["netns", "del", &ns_name(n)]) {
            tracing::warn!(error = %e, "removing a pod network namespace");
        }
        let _ = ip(&["link", "del", &format!("{VETH_PREFIX}{n}")]);
    }

    /// Removes every pod namespace and veth an earlier agent left.
    pub fn remove_all(&self) {
        let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
        for name in String::from_utf8_lossy(&out).split_whitespace() {
            if name.starts_with(NS_PREFIX) {
                let _ = ip(&["netns", "del", name]);
            }
        }
        let out = Command::new("ip").args(["-o", "link", "show"]).output().map(|o| o.stdout).unwrap_or_default();
        for line in String::from_utf8_lossy(&out).lines() {
            let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
            if name.starts_with(VETH_PREFIX) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::pod_mac;

    #[test]
    fn pod_macs_are_local_unicast_and_one_per_slot() {
        let macs: BTreeSet<String> = (2..=254).map(pod_mac).collect();
        assert_eq!(macs.len(), 253);
        for m in &macs {
            let first = u8::from_str_radix(&m[..2], 16).expect("hex");
            assert_eq!((first & 0x02, first & 0x01), (0x02, 0), "{m}: not locally administered unicast");
            assert_eq!(m.split(':').count(), 6, "{m}");
        }
    }
}
