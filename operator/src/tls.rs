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
