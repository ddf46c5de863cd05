//! TLS mode CertManager: the cert-manager `Certificate` (cert-manager.io/v1)
//! of each of the cluster's four certificates, asking for what mode
//! Operator issues itself (`pki.rs`): the same Secret names, DNS and IP
//! names, key usages, common names and lifetime, renewed when a third of it
//! is left, with a fresh ECDSA P-256 key each time. The Secrets carry the
//! labels the operator lists its certificate Secrets by.

use jiff::SignedDuration;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{SPEC_HASH, fnv, meta};
use crate::crd::{IssuerRef, KvCluster};
use crate::naming;
use crate::pki::Leaf;

/// Label value (`app.kubernetes.io/component`) of the certificate Secrets
/// and of the Certificates.
pub const CERT_COMPONENT: &str = "certificate";

/// cert-manager's Certificate resource.
pub fn certificate_api() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"))
}

/// Go-style duration of whole seconds, as cert-manager reads it.
fn go_duration(d: SignedDuration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// The Certificate of `leaf`, from `issuer`, valid for `lifetime`, with the
/// hash of its spec in `kvd.io/spec-hash` (applied again only when it changes).
pub fn certificate(kc: &KvCluster, leaf: Leaf, issuer: &IssuerRef, lifetime: SignedDuration) -> DynamicObject {
    let (name, ns) = (kc.name_any(), kc.namespace().unwrap_or_default());
    let secret = leaf.secret(&name);
    let ar = certificate_api();
    let mut obj = DynamicObject::new(&secret, &ar);
    obj.metadata = meta(kc, secret.clone());
    let mut labels = naming::labels(&name);
    labels.insert("app.kubernetes.io/component".into(), CERT_COMPONENT.into());
    obj.metadata.labels = Some(labels.clone());
    let mut usages = vec!["digital signature", "key encipherment", "client auth"];
    if leaf.serves() {
        usages.push("server auth");
    }
    let mut spec = json!({
        "secretName": secret,
        "secretTemplate": { "labels": labels },
        "commonName": leaf.common_name(&name),
        "usages": usages,
        "duration": go_duration(lifetime),
        "renewBefore": go_duration(lifetime / 3),
        "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
        "issuerRef": { "name": issuer.name, "kind": issuer.kind, "group": issuer.group },
    });
    let dns = leaf.names(&name, &ns);
    if !dns.is_empty() {
        spec["dnsNames"] = json!(dns);
    }
    if leaf == Leaf::Server {
        spec["ipAddresses"] = json!(["127.0.0.1"]);
    }
    let hash = fnv(spec.to_string().as_bytes());
    obj.metadata.annotations = Some([(SPEC_HASH.to_string(), hash)].into());
    obj.data = json!({ "spec": spec });
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    fn issuer() -> IssuerRef {
        IssuerRef { name: "ca".into(), kind: "ClusterIssuer".into(), group: "cert-manager.io".into() }
    }

    /// The four Certificates ask for what mode Operator issues.
    #[test]
    fn certificates_ask_for_what_mode_operator_issues() {
        let kc = kvcluster("demo", 3);
        let lifetime = SignedDuration::from_hours(2160);
        let server = certificate(&kc, Leaf::Server, &issuer(), lifetime);
        let spec = &server.data["spec"];
        assert_eq!(server.metadata.name.as_deref(), Some("demo-server-tls"));
        assert_eq!(spec["secretName"], "demo-server-tls");
        assert_eq!(spec["dnsNames"], json!(naming::server_names("demo", "ns")));
        assert_eq!(spec["ipAddresses"], json!(["127.0.0.1"]));
        assert_eq!(spec["usages"], json!(["digital signature", "key encipherment", "client auth", "server auth"]));
        assert_eq!((spec["duration"].as_str(), spec["renewBefore"].as_str()), (Some("7776000s"), Some("2592000s")));
        assert_eq!(spec["issuerRef"], json!({ "name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io" }));
        assert_eq!(spec["secretTemplate"]["labels"]["app.kubernetes.io/component"], CERT_COMPONENT);
        let client = certificate(&kc, Leaf::Operator, &issuer(), lifetime);
        let spec = &client.data["spec"];
        assert_eq!(spec["commonName"], crate::pki::OPERATOR_USER);
        assert!(spec.get("dnsNames").is_none() && spec.get("ipAddresses").is_none());
        assert_eq!(spec["usages"], json!(["digital signature", "key encipherment", "client auth"]));
        assert_eq!(client.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        // The hash follows the spec.
        let other = IssuerRef { name: "other".into(), ..issuer() };
        let h = |o: &DynamicObject| o.metadata.annotations.as_ref().expect("annotations")[SPEC_HASH].clone();
        assert_ne!(h(&client), h(&certificate(&kc, Leaf::Operator, &other, lifetime)));
        assert_eq!(h(&client), h(&certificate(&kc, Leaf::Operator, &issuer(), lifetime)));
    }
}
