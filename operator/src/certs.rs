//! Keeps the certificates of TLS mode Operator before each reconcile's
//! observation: reads the cluster's certificate Secrets (one list by
//! label), asks `pki::plan` which to (re)issue, writes those (server-side
//! apply, owned by the KvCluster) and records an Event for each. Members
//! reload renewed files without a restart; the operator reads its own
//! certificate afresh at every reconcile (tls.rs).

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::{KvCluster, TlsMode};
use crate::pki::{self, Found, ROTATE_ANNOTATION, ROTATION_ANNOTATION};
use crate::{Error, Result, naming, resources};

/// Label value (`app.kubernetes.io/component`) of the certificate Secrets.
const COMPONENT: &str = "certificate";

/// The selector of `cluster`'s certificate Secrets.
fn selector(cluster: &str) -> String {
    format!(
        "app.kubernetes.io/instance={cluster},app.kubernetes.io/managed-by={},app.kubernetes.io/component={COMPONENT}",
        naming::MANAGER
    )
}

/// The Secret for `w`, issued under rotation `token`.
pub fn secret(kc: &KvCluster, w: &pki::Write, token: &str) -> Secret {
    let mut meta = resources::meta(kc, w.secret.clone());
    meta.labels.get_or_insert_with(BTreeMap::new).insert("app.kubernetes.io/component".into(), COMPONENT.into());
    meta.annotations = Some(BTreeMap::from([(ROTATION_ANNOTATION.to_string(), token.to_string())]));
    let type_ = if w.data.contains_key("tls.crt") { "kubernetes.io/tls" } else { "Opaque" };
    Secret {
        metadata: meta,
        type_: Some(type_.into()),
        data: Some(w.data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()),
        ..Secret::default()
    }
}

/// Issues and renews `kc`'s certificates in mode Operator; returns when the
/// first expires (None in other modes).
pub async fn ensure(client: &Client, recorder: &Recorder, kc: &KvCluster) -> Result<Option<Timestamp>> {
    if kc.tls_mode() != TlsMode::Operator || kc.tls_conflict().is_some() {
        return Ok(None);
    }
    let (name, ns) = (kc.name_any(), kc.namespace().unwrap_or_default());
    let api = Api::<Secret>::namespaced(client.clone(), &ns);
    let mut found: Found = api
        .list(&ListParams::default().labels(&selector(&name)))
        .await?
        .items
        .into_iter()
        .map(|s| {
            let token = s.annotations().get(ROTATION_ANNOTATION).cloned().unwrap_or_default();
            let data = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            (s.metadata.name.unwrap_or_default(), (data, token))
        })
        .collect();
    let token = kc.annotations().get(ROTATE_ANNOTATION).cloned().unwrap_or_default();
    let lifetime = kc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.certificate_duration.as_deref())
        .and_then(pki::parse_lifetime)
        .unwrap_or(pki::DEFAULT_LIFETIME);
    let now = Timestamp::now();
    let writes = pki::plan(&name, &ns, &found, now, lifetime, &token)
        .map_err(|e| Error::Invalid(format!("certificates of {ns}/{name}: {e}")))?;
    for w in writes {
        let s = secret(kc, &w, &token);
        crate::act::apply(client, &ns, &s).await?;
        info!(secret = %w.secret, reason = %w.reason, "issued certificate");
        // Events of one reason are aggregated (a count, the first note), so
        // a first issue and a renewal are told apart by their reason.
        let (reason, action) = if w.renewal {
            ("CertificateRenewed", "RenewCertificate")
        } else {
            ("CertificateIssued", "IssueCertificate")
        };
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(format!("{}: {}", w.secret, w.reason)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &kc.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
        found.insert(w.secret, (w.data, token.clone()));
    }
    Ok(pki::earliest_expiry(&name, &found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    #[test]
    fn certificate_secrets_are_owned_labelled_and_typed() {
        let kc = kvcluster("demo", 3);
        let writes =
            pki::plan("demo", "ns", &Found::new(), Timestamp::now(), pki::DEFAULT_LIFETIME, "t").expect("plan");
        let ca = secret(&kc, &writes[0], "t");
        assert_eq!(ca.type_.as_deref(), Some("Opaque"));
        assert!(ca.data.as_ref().expect("data").contains_key("ca.key"));
        let server = secret(&kc, &writes[1], "t");
        assert_eq!(server.metadata.name.as_deref(), Some("demo-server-tls"));
        assert_eq!(server.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&String> = server.data.as_ref().expect("data").keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(server.annotations()[ROTATION_ANNOTATION], "t");
        assert_eq!(server.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        // The list selector finds exactly what is written.
        let labels = server.labels();
        for pair in selector("demo").split(',') {
            let (k, v) = pair.split_once('=').expect("k=v");
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
    }
}
