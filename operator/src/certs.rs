//! Keeps a cluster's certificates before each reconcile's observation.
//! Mode Operator: reads the certificate Secrets (one list by label), asks
//! `pki::plan` which to (re)issue, writes those (server-side apply, owned
//! by the KvCluster) and records an Event for each. Mode CertManager: keeps
//! the four cert-manager Certificates (`resources::certificate`; one list
//! by label, applied when missing or changed) and reports those not Ready
//! yet, which holds back the first members. Members reload renewed files
//! without a restart; the operator reads its own certificate afresh at
//! every reconcile (tls.rs).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::{KvCluster, TlsMode};
use crate::pki::{self, Found, Leaf, ROTATE_ANNOTATION, ROTATION_ANNOTATION};
use crate::resources::{CERT_COMPONENT, SPEC_HASH};
use crate::{Error, Result, naming, resources};

/// The selector of `cluster`'s certificate Secrets (and Certificates).
fn selector(cluster: &str) -> String {
    format!(
        "app.kubernetes.io/instance={cluster},app.kubernetes.io/managed-by={},app.kubernetes.io/component={CERT_COMPONENT}",
        naming::MANAGER
    )
}

/// The Secret for `w`, issued under rotation `token`.
pub fn secret(kc: &KvCluster, w: &pki::Write, token: &str) -> Secret {
    let mut meta = resources::meta(kc, w.secret.clone());
    meta.labels.get_or_insert_with(BTreeMap::new).insert("app.kubernetes.io/component".into(), CERT_COMPONENT.into());
    meta.annotations = Some(BTreeMap::from([(ROTATION_ANNOTATION.to_string(), token.to_string())]));
    let type_ = if w.data.contains_key("tls.crt") { "kubernetes.io/tls" } else { "Opaque" };
    Secret {
        metadata: meta,
        type_: Some(type_.into()),
        data: Some(w.data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()),
        ..Secret::default()
    }
}

/// The certificates as the observation needs them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CertState {
    /// When the first of the cluster's certificates expires (modes
    /// Operator and CertManager).
    pub not_after: Option<Timestamp>,
    /// Mode CertManager: the certificates cert-manager has not issued yet, and why.
    pub pending: Option<String>,
}

/// Issues and renews `kc`'s certificates in mode Operator, or has
/// cert-manager do it in mode CertManager; nothing in the other modes.
pub async fn ensure(client: &Client, recorder: &Recorder, kc: &KvCluster) -> Result<CertState> {
    if kc.tls_conflict().is_some() {
        return Ok(CertState::default());
    }
    match kc.tls_mode() {
        TlsMode::Operator => issue(client, recorder, kc).await,
        TlsMode::CertManager => request(client, recorder, kc).await,
        TlsMode::Secrets | TlsMode::Disabled => Ok(CertState::default()),
    }
}

/// The certificate Secrets of `kc`: data and rotation token by name.
async fn found(client: &Client, kc: &KvCluster) -> Result<Found> {
    let (name, ns) = (kc.name_any(), kc.namespace().unwrap_or_default());
    let api = Api::<Secret>::namespaced(client.clone(), &ns);
    Ok(api
        .list(&ListParams::default().labels(&selector(&name)))
        .await?
        .items
        .into_iter()
        .map(|s| {
            let token = s.annotations().get(ROTATION_ANNOTATION).cloned().unwrap_or_default();
            let data = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            (s.metadata.name.unwrap_or_default(), (data, token))
        })
        .collect())
}

/// The certificates' lifetime (`spec.tls.certificateDuration`).
fn lifetime(kc: &KvCluster) -> SignedDuration {
    kc.spec
        .tls
        .as_ref()
        .and_then(|t| t.certificate_duration.as_deref())
        .and_then(pki::parse_lifetime)
        .unwrap_or(pki::DEFAULT_LIFETIME)
}

async fn event(recorder: &Recorder, kc: &KvCluster, reason: &str, action: &str, note: String) {
    let ev = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &kc.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

/// Mode Operator: issues what `pki::plan` says.
async fn issue(client: &Client, recorder: &Recorder, kc: &KvCluster) -> Result<CertState> {
    let (name, ns) = (kc.name_any(), kc.namespace().unwrap_or_default());
    let mut found = found(client, kc).await?;
    let token = kc.annotations().get(ROTATE_ANNOTATION).cloned().unwrap_or_default();
    let now = Timestamp::now();
    let writes = pki::plan(&name, &ns, &found, now, lifetime(kc), &token)
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
        event(recorder, kc, reason, action, format!("{}: {}", w.secret, w.reason)).await;
        found.insert(w.secret, (w.data, token.clone()));
    }
    Ok(CertState { not_after: pki::earliest_expiry(&name, &found), pending: None })
}

/// Why a Certificate is not Ready, if it is not.
pub fn not_ready(c: &DynamicObject) -> Option<String> {
    let conds = c.data.get("status").and_then(|s| s.get("conditions")).and_then(|c| c.as_array());
    let ready = conds.into_iter().flatten().find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"));
    match ready {
        Some(r) if r.get("status").and_then(|s| s.as_str()) == Some("True") => None,
        Some(r) => Some(r.get("message").and_then(|m| m.as_str()).unwrap_or("not ready").to_string()),
        None => Some("not issued yet".into()),
    }
}

/// Mode CertManager: applies the Certificates that are missing or
/// changed, and reports those cert-manager has not made Ready.
async fn request(client: &Client, recorder: &Recorder, kc: &KvCluster) -> Result<CertState> {
    let (name, ns) = (kc.name_any(), kc.namespace().unwrap_or_default());
    let issuer = kc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.cert_manager.as_ref())
        .map(|c| c.issuer_ref.clone())
        .ok_or_else(|| Error::Invalid("TLS mode CertManager without spec.tls.certManager".into()))?;
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resources::certificate_api());
    let existing: BTreeMap<String, DynamicObject> =
        match api.list(&ListParams::default().labels(&selector(&name))).await {
            Ok(l) => l.items.into_iter().map(|c| (c.name_any(), c)).collect(),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(Error::Invalid(
                    "TLS mode CertManager needs cert-manager: the API cert-manager.io/v1 Certificate is not served"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
    let mut pending = Vec::new();
    for leaf in Leaf::ALL {
        let want = resources::certificate(kc, leaf, &issuer, lifetime(kc));
        let secret = leaf.secret(&name);
        let hash = |c: &DynamicObject| c.annotations().get(SPEC_HASH).cloned();
        let current = existing.get(&secret).filter(|c| hash(c) == hash(&want));
        let cert = match current {
            Some(c) => c.clone(),
            None => {
                let applied =
                    api.patch(&secret, &PatchParams::apply(naming::MANAGER).force(), &Patch::Apply(&want)).await?;
                info!(certificate = %secret, issuer = %issuer.name, "certificate requested");
                event(
                    recorder,
                    kc,
                    "CertificateRequested",
                    "RequestCertificate",
                    format!("{secret} from {} {}", issuer.kind, issuer.name),
                )
                .await;
                applied
            }
        };
        if let Some(why) = not_ready(&cert) {
            pending.push(format!("{secret}: {why}"));
        }
    }
    let found = found(client, kc).await?;
    Ok(CertState {
        not_after: pki::earliest_expiry_by_own_ca(&name, &found),
        pending: (!pending.is_empty()).then(|| format!("cert-manager has not issued {}", pending.join("; "))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::kvcluster;

    /// A Certificate is pending until cert-manager says Ready, with its reason.
    #[test]
    fn certificates_are_pending_until_ready() {
        let cert = |status: serde_json::Value| {
            let mut c = DynamicObject::new("demo-server-tls", &resources::certificate_api());
            c.data = serde_json::json!({ "spec": {}, "status": status });
            c
        };
        assert_eq!(not_ready(&cert(serde_json::json!({}))).as_deref(), Some("not issued yet"));
        let waiting = cert(serde_json::json!({ "conditions": [
            { "type": "Issuing", "status": "True" },
            { "type": "Ready", "status": "False", "message": "Issuer ca not found" } ] }));
        assert_eq!(not_ready(&waiting).as_deref(), Some("Issuer ca not found"));
        let ready = cert(serde_json::json!({ "conditions": [ { "type": "Ready", "status": "True" } ] }));
        assert_eq!(not_ready(&ready), None);
    }

    /// The Certificates' Secrets carry the labels the Secrets are listed by.
    #[test]
    fn certificate_secrets_are_listed_by_the_same_labels() {
        let kc = kvcluster("demo", 3);
        let issuer =
            crate::crd::IssuerRef { name: "ca".into(), kind: "Issuer".into(), group: "cert-manager.io".into() };
        for leaf in Leaf::ALL {
            let c = resources::certificate(&kc, leaf, &issuer, pki::DEFAULT_LIFETIME);
            let labels = &c.data["spec"]["secretTemplate"]["labels"];
            for pair in selector("demo").split(',') {
                let (k, v) = pair.split_once('=').expect("k=v");
                assert_eq!(labels[k].as_str(), Some(v), "{leaf:?} {k}");
                assert_eq!(c.labels().get(k).map(String::as_str), Some(v), "{leaf:?} Certificate {k}");
            }
        }
    }

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
