//! The Helm charts against their sources: the copies charts/kvd-operator
//! holds (the CRD, the dashboards, the alert rules; Helm cannot read outside
//! a chart) equal their sources, the charts' image names are the operator's,
//! and charts/kvd-cluster's values are the KvCluster spec's fields.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kvd_operator::crd::DEFAULT_IMAGE_REPO;
use kvd_operator::naming::{CLIENT_PORT, DATA_DIR, MEMBER_UID, PEER_PORT};
use serde_yaml::Value;

const REFRESH: &str = "scripts/sync-chart";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

/// `p` relative to the repository root, for messages.
fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(p: &Path) -> Value {
    serde_yaml::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (source, copy) pairs under `root`: the CRD, every dashboard, the rules.
fn copies(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let chart = root.join("charts/kvd-operator");
    let mut pairs = vec![
        (root.join("crds/kvcluster.yaml"), chart.join("crds/kvcluster.yaml")),
        (root.join("dashboards/kvd-alerts.yaml"), chart.join("rules/kvd-alerts.yaml")),
    ];
    let mut dashboards: Vec<PathBuf> = fs::read_dir(root.join("dashboards"))
        .expect("dashboards/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    dashboards.sort();
    for d in dashboards {
        let copy = chart.join("dashboards").join(d.file_name().expect("name"));
        pairs.push((d, copy));
    }
    pairs
}

/// The copies that are missing or differ from their source.
fn stale(pairs: &[(PathBuf, PathBuf)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(src, copy)| fs::read(src).ok() != fs::read(copy).ok() || !copy.exists())
        .map(|(src, copy)| format!("{} differs from {}", rel(copy), rel(src)))
        .collect()
}

#[test]
fn chart_copies_equal_their_sources() {
    let root = root();
    let pairs = copies(&root);
    assert!(pairs.len() >= 4, "expected the CRD, the rules and two dashboards: {pairs:?}");
    let stale = stale(&pairs);
    assert!(stale.is_empty(), "{}\nrefresh the chart's copies with: {REFRESH}", stale.join("\n"));
    // No copy whose source is gone.
    for dir in ["crds", "dashboards", "rules"] {
        for e in fs::read_dir(root.join("charts/kvd-operator").join(dir)).expect("chart dir") {
            let p = e.expect("entry").path();
            assert!(pairs.iter().any(|(_, c)| *c == p), "{} has no source; remove it and run {REFRESH}", rel(&p));
        }
    }
}

#[test]
fn stale_copies_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for d in ["crds", "dashboards", "charts/kvd-operator/crds", "charts/kvd-operator/dashboards"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::create_dir_all(root.join("charts/kvd-operator/rules")).expect("mkdir");
    let write = |p: &str, s: &str| fs::write(root.join(p), s).expect("write");
    write("crds/kvcluster.yaml", "a");
    write("charts/kvd-operator/crds/kvcluster.yaml", "a");
    write("dashboards/kvd-alerts.yaml", "rules");
    write("charts/kvd-operator/rules/kvd-alerts.yaml", "rules");
    write("dashboards/x.json", "{}");
    write("charts/kvd-operator/dashboards/x.json", "{}");
    assert!(stale(&copies(root)).is_empty());
    write("crds/kvcluster.yaml", "b");
    write("dashboards/y.json", "{}");
    let found = stale(&copies(root));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("kvcluster.yaml") && found[1].contains("y.json"), "{found:?}");
}

#[test]
fn image_names_are_the_operators() {
    let root = root();
    let values = yaml(&root.join("charts/kvd-operator/values.yaml"));
    let operator_image = format!("{DEFAULT_IMAGE_REPO}-operator");
    assert_eq!(values["image"]["repository"].as_str(), Some(operator_image.as_str()));
    let (registry, name) = DEFAULT_IMAGE_REPO.rsplit_once('/').expect("registry/name");
    let build = read(&root.join("scripts/build-images"));
    // The archives' images are "$registry/$name:$tag", for these names; the
    // member image runs kvd as the user the pods run as, with its data directory.
    let uid = kvd_operator::naming::MEMBER_UID;
    for want in [
        format!("registry={registry}\n"),
        "$registry/$name:$tag".to_string(),
        format!("\nimage {name} kvd "),
        format!("\nimage {name}-operator kvd-operator "),
        format!("--config.user {uid}:{uid}"),
        "--config.volume /var/lib/kvd".to_string(),
    ] {
        assert!(build.contains(&want), "scripts/build-images lacks {want:?}");
    }
    let cluster = read(&root.join("charts/kvd-cluster/values.yaml"));
    assert!(cluster.contains(DEFAULT_IMAGE_REPO), "charts/kvd-cluster/values.yaml does not name {DEFAULT_IMAGE_REPO}");
    // The images carry the release's version, which the charts' appVersion,
    // the plain manifest and a KvCluster without spec.version all name.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(kvd_operator::crd::DEFAULT_VERSION, version);
    for chart in ["kvd-operator", "kvd-cluster"] {
        let meta = yaml(&root.join(format!("charts/{chart}/Chart.yaml")));
        assert_eq!(meta["appVersion"].as_str(), Some(version), "charts/{chart}/Chart.yaml appVersion");
    }
    let manifest = read(&root.join("operator/deploy/operator.yaml"));
    let pinned = format!("image: {operator_image}:{version}\n");
    assert!(manifest.contains(&pinned), "operator/deploy/operator.yaml does not run {operator_image}:{version}");
}

/// The member image serves what the operator's StatefulSet expects: `kvd` on
/// PATH, the client and peer ports, the data directory, the user the pods run
/// as; the operator image the chart's default port and user.
#[test]
fn dockerfiles_match_the_operator() {
    let root = root();
    let server = read(&root.join("server/Dockerfile"));
    for want in [
        format!("EXPOSE {CLIENT_PORT} {PEER_PORT}"),
        format!("VOLUME [\"{DATA_DIR}\"]"),
        "/usr/local/bin/".to_string(),
        "--bin kvd --bin kvctl".to_string(),
        format!("USER {MEMBER_UID}:{MEMBER_UID}"),
    ] {
        assert!(server.contains(&want), "server/Dockerfile lacks {want:?}");
    }
    let operator = read(&root.join("operator/Dockerfile"));
    let values = yaml(&root.join("charts/kvd-operator/values.yaml"));
    let port = values["port"].as_u64().expect("port");
    for want in [format!("EXPOSE {port}"), "--bin kvd-operator".to_string(), format!("USER {MEMBER_UID}:{MEMBER_UID}")]
    {
        assert!(operator.contains(&want), "operator/Dockerfile lacks {want:?}");
    }
    assert_eq!(values["podSecurityContext"]["runAsUser"].as_i64(), Some(MEMBER_UID), "chart's runAsUser");
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping().map(|m| m.keys().filter_map(|k| k.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Fields of the KvCluster spec the chart leaves out, and why.
const NOT_IN_CHART: &[&str] = &[];

#[test]
fn cluster_values_are_the_kvcluster_spec() {
    let root = root();
    let crd = yaml(&root.join("crds/kvcluster.yaml"));
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let values = yaml(&root.join("charts/kvd-cluster/values.yaml"));
    let schema: serde_json::Value =
        serde_json::from_str(&read(&root.join("charts/kvd-cluster/values.schema.json"))).expect("values.schema.json");

    let mut want = keys(spec);
    for k in NOT_IN_CHART {
        assert!(want.remove(*k), "{k} is no longer a KvCluster spec field");
    }
    let mut have = keys(&values);
    assert!(have.remove("name"), "values.yaml has no name");
    // The chart's own object besides the KvCluster.
    assert!(have.remove("networkPolicy"), "values.yaml has no networkPolicy");
    assert_eq!(have, want, "charts/kvd-cluster/values.yaml keys against the KvCluster spec");

    // Nested keys: those in values.yaml and those the schema allows.
    for field in &want {
        let crd_fields = keys(&spec[field.as_str()]["properties"]);
        if crd_fields.is_empty() || field == "resources" {
            continue;
        }
        let in_values = keys(&values[field.as_str()]);
        let in_schema: BTreeSet<String> = schema["properties"][field.as_str()]["properties"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(in_schema, crd_fields, "values.schema.json properties of {field}");
        assert!(in_values.is_subset(&crd_fields), "values.yaml {field}: {in_values:?} not in {crd_fields:?}");
    }
}

/// The `rules:` block of the first ClusterRole in `text` (a manifest or a
/// template: the block itself has no template expressions).
fn cluster_role_rules(text: &str) -> String {
    let from = text.find("kind: ClusterRole\n").expect("a ClusterRole");
    let rest = &text[from..];
    let start = rest.find("rules:\n").expect("rules:") + "rules:\n".len();
    let end = rest[start..].find("\n---").map_or(rest.len(), |e| start + e);
    rest[start..end].trim_end().to_string()
}

/// The rules the chart grants, in its ClusterRole or in each namespace's
/// Role: the body of its `kvd-operator.rules` template.
fn chart_rules(text: &str) -> String {
    let start = text.find("{{- define \"kvd-operator.rules\" }}\n").expect("the rules template")
        + "{{- define \"kvd-operator.rules\" }}\n".len();
    let end = start + text[start..].find("\n{{- end }}").expect("its end");
    text[start..end].trim_end().to_string()
}

#[test]
fn plain_manifest_grants_what_the_chart_grants() {
    let root = root();
    let chart = chart_rules(&read(&root.join("charts/kvd-operator/templates/rbac.yaml")));
    let plain = cluster_role_rules(&read(&root.join("operator/deploy/operator.yaml")));
    assert!(!chart.contains("{{"), "the chart's rules are plain YAML");
    assert_eq!(plain, chart, "operator/deploy/operator.yaml's ClusterRole differs from the chart's");
}

/// `kvd-operator crd` prints the committed CRD.
#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_kvd-operator")).arg("crd").output().expect("kvd-operator crd");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), read(&root().join("crds/kvcluster.yaml")));
}
