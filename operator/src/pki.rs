//! TLS mode Operator: the certificates the operator issues for a cluster, and
//! the pure decision of which to (re)issue. A CA per cluster (10 years) signs
//! the members' serving and peer certificates and two client certificates
//! (users and Jobs; the operator's own). A certificate is issued again when
//! it is missing or unreadable, was not signed by the cluster's CA, lacks a
//! name it needs, has a third of its lifetime left, or when the
//! `kvd.io/rotate-certificates` token changed. A new CA re-issues all.
//! Keys are ECDSA P-256 in PKCS#8, fresh for every certificate; serial
//! numbers are rcgen's, a hash of that key.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::naming;

/// Lifetime of the CA.
pub const CA_LIFETIME: SignedDuration = SignedDuration::from_hours(10 * 365 * 24);
/// Default lifetime of the issued certificates (90 days).
pub const DEFAULT_LIFETIME: SignedDuration = SignedDuration::from_hours(90 * 24);
/// The common name of the operator's client certificate: with auth on, the
/// user it authenticates as.
pub const OPERATOR_USER: &str = "kvd-operator";
/// The common name of the users' and the Jobs' client certificate.
pub const CLIENT_USER: &str = "kvd-client";
/// Issued certificates are backdated this much, for clocks a little behind.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);
/// Secret annotation: the rotation token the certificate was issued under.
pub const ROTATION_ANNOTATION: &str = "kvd.io/rotation";
/// KvCluster annotation asking for new certificates now.
pub const ROTATE_ANNOTATION: &str = "kvd.io/rotate-certificates";

/// A PEM certificate and its PKCS#8 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// One certificate of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leaf {
    /// Served on the client port (and usable as a client of it).
    Server,
    /// Presented both ways between members.
    Peer,
    /// Users' and the Jobs' client certificate.
    Client,
    /// The operator's client certificate.
    Operator,
}

impl Leaf {
    pub const ALL: [Leaf; 4] = [Leaf::Server, Leaf::Peer, Leaf::Client, Leaf::Operator];

    /// The Secret holding it.
    pub fn secret(self, cluster: &str) -> String {
        match self {
            Leaf::Server => naming::server_tls_secret(cluster),
            Leaf::Peer => naming::peer_tls_secret(cluster),
            Leaf::Client => naming::client_tls_secret(cluster),
            Leaf::Operator => naming::operator_tls_secret(cluster),
        }
    }

    /// Subject common name (with auth on, a client certificate's CN is
    /// the user it authenticates as).
    pub fn common_name(self, cluster: &str) -> String {
        match self {
            Leaf::Server => format!("{cluster} member"),
            Leaf::Peer => format!("{cluster} peer"),
            Leaf::Client => CLIENT_USER.into(),
            Leaf::Operator => OPERATOR_USER.into(),
        }
    }

    /// DNS names it must hold.
    pub fn names(self, cluster: &str, ns: &str) -> Vec<String> {
        match self {
            Leaf::Server => naming::server_names(cluster, ns),
            Leaf::Peer => naming::peer_names(cluster, ns),
            Leaf::Client | Leaf::Operator => Vec::new(),
        }
    }

    /// Whether it also serves (server and peer certificates); the others
    /// are only for clients.
    pub fn serves(self) -> bool {
        matches!(self, Leaf::Server | Leaf::Peer)
    }

    fn usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Leaf::Server | Leaf::Peer => {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
            Leaf::Client | Leaf::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}: not a PEM certificate")]
    NotPem(&'static str),
    #[error("{0}: not a readable X.509 certificate")]
    BadCertificate(&'static str),
    #[error("time out of range: {0}")]
    Time(String),
    #[error("the system's random source failed")]
    Random,
}

fn offset_time(t: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|e| PkiError::Time(e.to_string()))
}

fn validity(params: &mut CertificateParams, now: Timestamp, lifetime: SignedDuration) -> Result<(), PkiError> {
    params.not_before = offset_time(now - BACKDATE)?;
    params.not_after = offset_time(now + lifetime)?;
    Ok(())
}

/// A new CA for `cluster` in `ns`.
pub fn new_ca(cluster: &str, ns: &str, now: Timestamp) -> Result<Pair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("kvd CA {ns}/{cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, now, CA_LIFETIME)?;
    let cert = params.self_signed(&key)?;
    Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
}

/// `leaf` for `cluster` in `ns`, signed by `ca`, valid for `lifetime`.
pub fn issue(
    ca: &Pair,
    leaf: Leaf,
    cluster: &str,
    ns: &str,
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<Pair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, leaf.common_name(cluster));
    params.subject_alt_names =
        leaf.names(cluster, ns).into_iter().map(|n| n.try_into().map(SanType::DnsName)).collect::<Result<_, _>>()?;
    if leaf == Leaf::Server {
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = leaf.usages();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, lifetime)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair { cert: cert.pem(), key: key.serialize_pem() })
}

/// What a certificate says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub dns_names: Vec<String>,
    /// Signed by the given CA (checked against its key).
    pub signed_by_ca: bool,
}

fn der_of(pem_text: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    let p = pem::parse(pem_text).map_err(|_| PkiError::NotPem(what))?;
    if p.tag() != "CERTIFICATE" {
        return Err(PkiError::NotPem(what));
    }
    Ok(p.into_contents())
}

/// Reads `cert_pem` and checks it against `ca_pem`.
pub fn facts(cert_pem: &str, ca_pem: &str) -> Result<Facts, PkiError> {
    use x509_parser::prelude::*;
    let der = der_of(cert_pem, "certificate")?;
    let ca_der = der_of(ca_pem, "CA certificate")?;
    let (_, cert) = parse_x509_certificate(&der).map_err(|_| PkiError::BadCertificate("certificate"))?;
    let (_, ca) = parse_x509_certificate(&ca_der).map_err(|_| PkiError::BadCertificate("CA certificate"))?;
    let ts = |t: ASN1Time| Timestamp::from_second(t.timestamp()).map_err(|e| PkiError::Time(e.to_string()));
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Facts {
        not_before: ts(cert.validity().not_before)?,
        not_after: ts(cert.validity().not_after)?,
        dns_names,
        signed_by_ca: cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok(),
    })
}

/// Why `leaf`'s current certificate must be issued again, if it must.
/// `current`: its PEM and the rotation token it was issued under.
pub fn renewal_reason(
    leaf: Leaf,
    current: Option<(&str, &str)>,
    ca: &Pair,
    cluster: &str,
    ns: &str,
    now: Timestamp,
    token: &str,
) -> Option<String> {
    let Some((pem_text, issued_token)) = current else { return Some("missing".into()) };
    let f = match facts(pem_text, &ca.cert) {
        Ok(f) => f,
        Err(e) => return Some(e.to_string()),
    };
    if !f.signed_by_ca {
        return Some("not signed by the cluster's CA".into());
    }
    let missing: Vec<String> = leaf.names(cluster, ns).into_iter().filter(|n| !f.dns_names.contains(n)).collect();
    if !missing.is_empty() {
        return Some(format!("lacks the names {}", missing.join(", ")));
    }
    if issued_token != token {
        return Some(format!("rotation requested ({ROTATE_ANNOTATION}={token})"));
    }
    let lifetime = f.not_after.duration_since(f.not_before);
    let left = f.not_after.duration_since(now);
    if left < lifetime / 3 {
        return Some(format!("expires at {} (a third of its lifetime left)", f.not_after));
    }
    None
}

/// Why the CA must be made anew, if it must: missing, unreadable, a key
/// that is not its own, or a third of its lifetime left.
pub fn ca_renewal_reason(current: Option<&Pair>, now: Timestamp) -> Option<String> {
    let Some(ca) = current else { return Some("missing".into()) };
    let f = match facts(&ca.cert, &ca.cert) {
        Ok(f) => f,
        Err(e) => return Some(e.to_string()),
    };
    match KeyPair::from_pem(&ca.key) {
        Ok(k) if pem_public_key_matches(&ca.cert, &k) => {}
        _ => return Some("its key does not match its certificate".into()),
    }
    let lifetime = f.not_after.duration_since(f.not_before);
    if f.not_after.duration_since(now) < lifetime / 3 {
        return Some(format!("expires at {}", f.not_after));
    }
    None
}

fn pem_public_key_matches(cert_pem: &str, key: &KeyPair) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::*;
    let Ok(der) = der_of(cert_pem, "CA certificate") else { return false };
    let Ok((_, cert)) = parse_x509_certificate(&der) else { return false };
    cert.public_key().subject_public_key.data.as_ref() == key.der_bytes()
}

/// What the operator finds of a cluster's certificates: per Secret name,
/// its data and rotation token.
pub type Found = BTreeMap<String, (BTreeMap<String, Vec<u8>>, String)>;

/// A Secret to write: its name, data, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub secret: String,
    pub data: BTreeMap<String, Vec<u8>>,
    pub reason: String,
    /// It replaces a Secret that was there.
    pub renewal: bool,
}

/// The plan: which Secrets to (re)write so that every certificate of
/// `cluster` is current. Pure but for key generation.
pub fn plan(
    cluster: &str,
    ns: &str,
    found: &Found,
    now: Timestamp,
    lifetime: SignedDuration,
    token: &str,
) -> Result<Vec<Write>, PkiError> {
    let text = |secret: &str, key: &str| {
        found.get(secret).and_then(|(d, _)| d.get(key)).and_then(|b| String::from_utf8(b.clone()).ok())
    };
    let ca_name = naming::ca_secret(cluster);
    let current_ca = match (text(&ca_name, "ca.crt"), text(&ca_name, "ca.key")) {
        (Some(cert), Some(key)) => Some(Pair { cert, key }),
        _ => None,
    };
    let mut writes = Vec::new();
    let (ca, new_ca_reason) = match ca_renewal_reason(current_ca.as_ref(), now) {
        None => (current_ca.expect("a CA without a reason to renew exists"), None),
        Some(why) => (new_ca(cluster, ns, now)?, Some(why)),
    };
    if let Some(why) = &new_ca_reason {
        let data = BTreeMap::from([
            ("ca.crt".to_string(), ca.cert.clone().into_bytes()),
            ("ca.key".to_string(), ca.key.clone().into_bytes()),
        ]);
        let renewal = found.contains_key(&ca_name);
        writes.push(Write { secret: ca_name, data, reason: format!("CA {why}"), renewal });
    }
    for leaf in Leaf::ALL {
        let secret = leaf.secret(cluster);
        let current = text(&secret, "tls.crt");
        let issued_token = found.get(&secret).map(|(_, t)| t.as_str()).unwrap_or_default();
        let stale_ca = text(&secret, "ca.crt").as_deref() != Some(ca.cert.as_str());
        let why = match (
            &new_ca_reason,
            renewal_reason(leaf, current.as_deref().map(|c| (c, issued_token)), &ca, cluster, ns, now, token),
        ) {
            (Some(_), _) => Some("the CA is new".to_string()),
            (None, Some(why)) => Some(why),
            (None, None) if stale_ca => Some("its ca.crt is not the cluster's CA".to_string()),
            (None, None) => None,
        };
        if let Some(why) = why {
            let pair = issue(&ca, leaf, cluster, ns, now, lifetime)?;
            let data = BTreeMap::from([
                ("ca.crt".to_string(), ca.cert.clone().into_bytes()),
                ("tls.crt".to_string(), pair.cert.into_bytes()),
                ("tls.key".to_string(), pair.key.into_bytes()),
            ]);
            let renewal = found.contains_key(&secret);
            writes.push(Write { secret, data, reason: why, renewal });
        }
    }
    Ok(writes)
}

/// The earliest expiry of the issued certificates in `found`.
pub fn earliest_expiry(cluster: &str, found: &Found) -> Option<Timestamp> {
    let ca = found.get(&naming::ca_secret(cluster))?.0.get("ca.crt")?;
    let ca = String::from_utf8(ca.clone()).ok()?;
    Leaf::ALL
        .iter()
        .filter_map(|l| found.get(&l.secret(cluster))?.0.get("tls.crt").cloned())
        .filter_map(|c| facts(&String::from_utf8(c).ok()?, &ca).ok())
        .map(|f| f.not_after)
        .min()
}

/// When the first of `cluster`'s certificates expires, each read with the
/// `ca.crt` of its own Secret (mode CertManager: the issuer's CA, there is
/// no `<name>-ca`).
pub fn earliest_expiry_by_own_ca(cluster: &str, found: &Found) -> Option<Timestamp> {
    Leaf::ALL
        .iter()
        .filter_map(|l| {
            let data = &found.get(&l.secret(cluster))?.0;
            let text = |k: &str| String::from_utf8(data.get(k)?.clone()).ok();
            facts(&text("tls.crt")?, &text("ca.crt")?).ok()
        })
        .map(|f| f.not_after)
        .min()
}

/// A random password: 24 bytes from the system's generator, in hex.
pub fn random_password() -> Result<String, PkiError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| PkiError::Random)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A Go-style duration of hours and minutes (`"2160h"`, `"1h30m"`).
pub fn parse_lifetime(s: &str) -> Option<SignedDuration> {
    let (mut total, mut num) = (0i64, String::new());
    for c in s.chars() {
        match c {
            '0'..='9' => num.push(c),
            'h' | 'm' => {
                let n: i64 = num.parse().ok()?;
                total = total.checked_add(n.checked_mul(if c == 'h' { 3600 } else { 60 })?)?;
                num.clear();
            }
            _ => return None,
        }
    }
    (num.is_empty() && total > 0).then(|| SignedDuration::from_secs(total))
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
