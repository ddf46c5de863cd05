//! The certificate the operator presents to a cluster's members when
//! clients need TLS: its own (`<name>-operator-tls`) in mode Operator, the
//! client Secret's in mode Secrets; `tls.crt` and `tls.key`, with `ca.crt`
//! to verify the members. Read at every reconcile, so a rotated Secret is
//! used from the next one on.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use kvd_api::client::ClientTls;

use crate::crd::KvCluster;

/// Keys a TLS secret must hold.
pub const KEYS: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// The client TLS of `kc`: None without client TLS, Err(why) when the
/// Secret is missing or incomplete (reported as Degraded, TLSSecretInvalid).
pub async fn client_tls(client: &kube::Client, kc: &KvCluster) -> Result<Option<ClientTls>, String> {
    let Some(name) = kc.tls().operator else { return Ok(None) };
    let ns = kc.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|e| format!("secret {ns}/{name}: {e}"))?
        .ok_or_else(|| format!("secret {ns}/{name} does not exist"))?;
    from_data(&format!("{ns}/{name}"), secret.data.unwrap_or_default()).map(Some)
}

/// The users the operator and the Jobs authenticate as (the common names
/// of the certificates they present): in TLS modes Operator and
/// CertManager those the operator issues or asks for; in mode Secrets the
/// client Secret's.
pub async fn certificate_users(client: &kube::Client, kc: &KvCluster) -> Result<Vec<String>, String> {
    if matches!(kc.tls_mode(), crate::crd::TlsMode::Operator | crate::crd::TlsMode::CertManager) {
        return Ok(vec![crate::pki::OPERATOR_USER.to_string(), crate::pki::CLIENT_USER.to_string()]);
    }
    let Some(tls) = client_tls(client, kc).await? else { return Err("no client TLS".into()) };
    let (cert, _) = tls.identity.ok_or("no client certificate")?;
    common_name(&cert).map(|cn| vec![cn]).ok_or_else(|| "the client certificate has no common name".into())
}

/// The subject common name of a PEM certificate.
pub fn common_name(pem_text: &[u8]) -> Option<String> {
    let p = pem::parse(pem_text).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(p.contents()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The three PEM entries of a TLS secret's data.
pub fn from_data(name: &str, mut data: BTreeMap<String, ByteString>) -> Result<ClientTls, String> {
    let mut take = |key: &str| {
        data.remove(key).map(|b| b.0).filter(|b| !b.is_empty()).ok_or_else(|| format!("secret {name} has no key {key}"))
    };
    let ca = take("ca.crt")?;
    let cert = take("tls.crt")?;
    let key = take("tls.key")?;
    Ok(ClientTls { ca, identity: Some((cert, key)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let found = crate::pki::plan(
            "demo",
            "ns",
            &Default::default(),
            jiff::Timestamp::now(),
            crate::pki::DEFAULT_LIFETIME,
            "",
        )
        .expect("plan");
        let of = |secret: &str| found.iter().find(|w| w.secret == secret).expect(secret).data["tls.crt"].clone();
        assert_eq!(common_name(&of("demo-operator-tls")).as_deref(), Some(crate::pki::OPERATOR_USER));
        assert_eq!(common_name(&of("demo-client-tls")).as_deref(), Some(crate::pki::CLIENT_USER));
        assert_eq!(common_name(b"not a certificate"), None);
    }

    #[test]
    fn every_key_is_needed() {
        let full: BTreeMap<String, ByteString> =
            KEYS.iter().map(|k| (k.to_string(), ByteString(format!("pem of {k}").into_bytes()))).collect();
        let tls = from_data("ns/s", full.clone()).expect("complete");
        assert_eq!(tls.ca, b"pem of ca.crt");
        assert_eq!(tls.identity, Some((b"pem of tls.crt".to_vec(), b"pem of tls.key".to_vec())));
        for k in KEYS {
            let mut data = full.clone();
            data.remove(k);
            assert_eq!(from_data("ns/s", data), Err(format!("secret ns/s has no key {k}")));
            let mut data = full.clone();
            data.insert(k.to_string(), ByteString(Vec::new()));
            assert_eq!(from_data("ns/s", data), Err(format!("secret ns/s has no key {k}")));
        }
    }
}
