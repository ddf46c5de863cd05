//! The cluster's name resolution, standing in for CoreDNS and kube-proxy:
//! one hosts file, bind-mounted at `/etc/hosts` in every pod, mapping
//! `<hostname>.<subdomain>.<ns>.svc[.cluster.local]` to each pod's address
//! and `<service>.<ns>.svc[.cluster.local]` to the address of one ready
//! endpoint of the Service (headless or not: there is no ClusterIP
//! routing). The file is rewritten in place, never replaced, so the bind
//! mounts keep seeing it.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::error::{Result, io};

/// A pod that has an address: its DNS name parts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRecord {
    pub ip: String,
    pub namespace: String,
    pub name: String,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
}

/// `(namespace, service) -> address` of one ready endpoint per Service,
/// from its EndpointSlices (the lowest ready address, so it stays put).
pub fn service_addresses(slices: &[EndpointSlice]) -> BTreeMap<(String, String), String> {
    let mut out: BTreeMap<(String, String), String> = BTreeMap::new();
    for s in slices {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) else { continue };
        for e in s.endpoints.iter().flatten() {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let Some(ip) = e.addresses.first() else { continue };
            let slot = out.entry((ns.clone(), svc.clone())).or_insert_with(|| ip.clone());
            if ip < slot {
                *slot = ip.clone();
            }
        }
    }
    out
}

/// The hosts file for these pods and Services.
pub fn render(pods: &[PodRecord], services: &BTreeMap<(String, String), String>) -> String {
    let mut out = String::from(
        "# Written by kvd-node-agent: the cluster's DNS.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n",
    );
    let mut pods = pods.to_vec();
    pods.sort();
    for p in &pods {
        let mut names = Vec::new();
        if let (Some(h), Some(sd)) = (&p.hostname, &p.subdomain) {
            let base = format!("{h}.{sd}.{}.svc", p.namespace);
            names.push(format!("{base}.cluster.local"));
            names.push(base);
        }
        names.push(p.hostname.clone().unwrap_or_else(|| p.name.clone()));
        out.push_str(&format!("{}\t{}\n", p.ip, names.join(" ")));
    }
    for ((ns, svc), ip) in services {
        out.push_str(&format!("{ip}\t{svc}.{ns}.svc.cluster.local {svc}.{ns}.svc\n"));
    }
    out
}

/// Rewrites `path` in place with `content` (the inode stays, so bind
/// mounts of it see the new text).
pub fn write_in_place(path: &Path, content: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    f.seek(SeekFrom::Start(0)).map_err(io("seeking the hosts file"))?;
    f.write_all(content.as_bytes()).map_err(io("writing the hosts file"))?;
    f.set_len(content.len() as u64).map_err(io("truncating the hosts file"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ep(ip: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions { ready, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn renders_pods_and_ready_service_endpoints() {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                labels: Some([("kubernetes.io/service-name".to_string(), "demo-client".to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(vec![ep("10.244.0.9", Some(false)), ep("10.244.0.4", Some(true)), ep("10.244.0.3", None)]),
            ports: None,
        };
        let svcs = service_addresses(&[slice]);
        assert_eq!(svcs.get(&("ns".into(), "demo-client".into())).map(String::as_str), Some("10.244.0.3"));
        let pods = vec![
            PodRecord {
                ip: "10.244.0.3".into(),
                namespace: "ns".into(),
                name: "demo-0".into(),
                hostname: Some("demo-0".into()),
                subdomain: Some("demo-peer".into()),
            },
            PodRecord {
                ip: "10.244.0.2".into(),
                namespace: "ns".into(),
                name: "op-x".into(),
                hostname: None,
                subdomain: None,
            },
        ];
        let text = render(&pods, &svcs);
        assert!(
            text.contains("10.244.0.3\tdemo-0.demo-peer.ns.svc.cluster.local demo-0.demo-peer.ns.svc demo-0\n"),
            "{text}"
        );
        assert!(text.contains("10.244.0.2\top-x\n"), "{text}");
        assert!(text.contains("10.244.0.3\tdemo-client.ns.svc.cluster.local demo-client.ns.svc\n"), "{text}");
        assert!(text.find("10.244.0.2").expect("op") < text.find("10.244.0.3").expect("demo"));
    }

    #[test]
    fn rewrites_keep_the_inode() {
        let dir = std::env::temp_dir().join(format!("kvd-hosts-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("hosts");
        write_in_place(&p, "a long first version\n").expect("write");
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&p).expect("meta").ino();
        write_in_place(&p, "short\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "short\n");
        assert_eq!(std::fs::metadata(&p).expect("meta").ino(), ino);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
