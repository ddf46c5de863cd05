use super::*;

const DAY: SignedDuration = SignedDuration::from_hours(24);

fn now() -> Timestamp {
    "2026-12-06T00:00:00Z".parse().expect("time")
}

/// The secrets `writes` leave, as the operator would find them next time.
fn apply(found: &mut Found, writes: Vec<Write>, token: &str) {
    for w in writes {
        found.insert(w.secret, (w.data, token.to_string()));
    }
}

fn text(found: &Found, secret: &str, key: &str) -> String {
    String::from_utf8(found[secret].0[key].clone()).expect("utf-8")
}

#[test]
fn a_new_cluster_gets_a_ca_and_four_certificates_then_nothing_more() {
    let mut found = Found::new();
    let writes = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    let names: Vec<&str> = writes.iter().map(|w| w.secret.as_str()).collect();
    assert_eq!(names, ["demo-ca", "demo-server-tls", "demo-peer-tls", "demo-client-tls", "demo-operator-tls"]);
    assert!(writes.iter().all(|w| !w.renewal));
    apply(&mut found, writes, "");
    let ca = text(&found, "demo-ca", "ca.crt");
    for leaf in Leaf::ALL {
        let secret = leaf.secret("demo");
        assert_eq!(text(&found, &secret, "ca.crt"), ca, "{secret} carries the CA");
        let f = facts(&text(&found, &secret, "tls.crt"), &ca).expect("readable");
        assert!(f.signed_by_ca, "{secret}");
        assert_eq!(f.not_after.duration_since(now()), DEFAULT_LIFETIME);
        for n in leaf.names("demo", "db") {
            assert!(f.dns_names.contains(&n), "{secret} lacks {n}");
        }
    }
    let server = facts(&text(&found, "demo-server-tls", "tls.crt"), &ca).expect("server");
    assert!(server.dns_names.contains(&"*.demo-peer.db.svc".to_string()));
    assert!(server.dns_names.contains(&"demo-client.db.svc".to_string()));
    // The operator's certificate is not the users' one.
    assert_ne!(text(&found, "demo-operator-tls", "tls.crt"), text(&found, "demo-client-tls", "tls.crt"));
    // Found again a day later: current, nothing to write.
    assert_eq!(plan("demo", "db", &found, now() + DAY, DEFAULT_LIFETIME, "").expect("plan"), Vec::new());
}

#[test]
fn certificates_are_renewed_when_a_third_of_their_lifetime_is_left() {
    let mut found = Found::new();
    let first = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    apply(&mut found, first, "");
    let before = found.clone();
    // 90 days: renewed after 60, not at 59.
    let at_59 = now() + DAY * 59;
    assert_eq!(plan("demo", "db", &found, at_59, DEFAULT_LIFETIME, "").expect("plan"), Vec::new());
    let at_61 = now() + DAY * 61;
    let writes = plan("demo", "db", &found, at_61, DEFAULT_LIFETIME, "").expect("plan");
    let names: Vec<&str> = writes.iter().map(|w| w.secret.as_str()).collect();
    assert_eq!(names, ["demo-server-tls", "demo-peer-tls", "demo-client-tls", "demo-operator-tls"], "not the CA");
    assert!(writes[0].reason.contains("a third of its lifetime left"), "{}", writes[0].reason);
    assert!(writes.iter().all(|w| w.renewal));
    apply(&mut found, writes, "");
    assert_eq!(found["demo-ca"], before["demo-ca"]);
    let ca = text(&found, "demo-ca", "ca.crt");
    let renewed = facts(&text(&found, "demo-server-tls", "tls.crt"), &ca).expect("renewed");
    assert!(renewed.signed_by_ca);
    assert_eq!(renewed.not_after.duration_since(at_61), DEFAULT_LIFETIME);
    assert_ne!(found["demo-server-tls"].0["tls.key"], before["demo-server-tls"].0["tls.key"], "a new key");
}

#[test]
fn a_rotation_token_renews_the_certificates_once() {
    let mut found = Found::new();
    let first = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    apply(&mut found, first, "");
    let writes = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "t1").expect("plan");
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert!(writes.iter().all(|w| w.reason.contains("rotation requested")));
    apply(&mut found, writes, "t1");
    assert_eq!(plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "t1").expect("plan"), Vec::new());
}

#[test]
fn a_lost_or_foreign_ca_reissues_everything_and_damage_is_repaired() {
    let mut found = Found::new();
    let first = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    apply(&mut found, first, "");
    let good = found.clone();

    // The CA Secret deleted: a new CA, and every certificate from it.
    found.remove("demo-ca");
    let writes = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    assert_eq!(writes.len(), 5);
    assert_eq!(writes[0].reason, "CA missing");
    assert!(writes[1..].iter().all(|w| w.reason == "the CA is new"));

    // A certificate signed by another CA (another cluster's, say).
    let mut found = good.clone();
    let other = plan("other", "db", &Found::new(), now(), DEFAULT_LIFETIME, "").expect("plan");
    let foreign = other.iter().find(|w| w.secret == "other-peer-tls").expect("peer").data.clone();
    found.insert("demo-peer-tls".into(), (foreign, String::new()));
    let writes = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    assert_eq!(writes.len(), 1);
    assert_eq!(
        (writes[0].secret.as_str(), writes[0].reason.as_str()),
        ("demo-peer-tls", "not signed by the cluster's CA")
    );

    // Garbage in a certificate, and a CA key that is not the CA's.
    let mut found = good.clone();
    found.get_mut("demo-client-tls").expect("client").0.insert("tls.crt".into(), b"not a pem".to_vec());
    let writes = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    assert_eq!(
        (writes[0].secret.as_str(), writes[0].reason.as_str()),
        ("demo-client-tls", "certificate: not a PEM certificate")
    );
    let mut found = good.clone();
    let stranger = new_ca("x", "y", now()).expect("ca");
    found.get_mut("demo-ca").expect("ca").0.insert("ca.key".into(), stranger.key.into_bytes());
    let writes = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    assert_eq!(writes[0].reason, "CA its key does not match its certificate");
    assert_eq!(writes.len(), 5);
}

#[test]
fn a_certificate_for_another_namespace_lacks_the_names() {
    let mut found = Found::new();
    let first = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    apply(&mut found, first, "");
    let writes = plan("demo", "other", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    let names: Vec<&str> = writes.iter().map(|w| w.secret.as_str()).collect();
    assert_eq!(names, ["demo-server-tls", "demo-peer-tls"], "client certificates name no host");
    assert!(writes[0].reason.starts_with("lacks the names *.demo-peer.other.svc"), "{}", writes[0].reason);
}

#[test]
fn the_earliest_expiry_is_reported() {
    let mut found = Found::new();
    let first = plan("demo", "db", &found, now(), DEFAULT_LIFETIME, "").expect("plan");
    apply(&mut found, first, "");
    assert_eq!(earliest_expiry("demo", &found), Some(now() + DEFAULT_LIFETIME));
    assert_eq!(earliest_expiry("demo", &Found::new()), None);
    // Without the cluster's CA Secret (mode CertManager), each certificate
    // is read with its own Secret's ca.crt.
    found.remove("demo-ca");
    assert_eq!(earliest_expiry("demo", &found), None);
    assert_eq!(earliest_expiry_by_own_ca("demo", &found), Some(now() + DEFAULT_LIFETIME));
    assert_eq!(earliest_expiry_by_own_ca("demo", &Found::new()), None);
}

#[test]
fn lifetimes_parse_as_go_durations() {
    assert_eq!(parse_lifetime("2160h"), Some(DEFAULT_LIFETIME));
    assert_eq!(parse_lifetime("1h30m"), Some(SignedDuration::from_mins(90)));
    for bad in ["", "h", "10", "5d", "0h", "-1h"] {
        assert_eq!(parse_lifetime(bad), None, "{bad}");
    }
}
