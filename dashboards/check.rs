//! Checks of the dashboards and alert rules in this folder, shared by
//! `server/tests/dashboards.rs` (kvd's names, against a live scrape) and
//! `operator/tests/dashboards.rs` (the operator's names, against its registry).
//! Included with `#[path]`; not a crate of its own.
//!
//! Every PromQL expression is parsed with `promql-parser` and the metric names
//! come from its AST (vector selectors and `__name__` matchers), so an
//! expression that does not parse fails the test as surely as a misspelt name.

#![allow(dead_code)] // each test crate uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};

/// Prefix of every operator metric (operator/src/metrics.rs registry prefix).
pub const OPERATOR_PREFIX: &str = "kvd_operator_";

/// Series Prometheus makes itself for every target (no exporter has them).
pub const SCRAPE_SERIES: &[&str] = &["up"];
/// Labels Prometheus (and the Prometheus Operator's monitors) attach to
/// every scraped series: a matcher on them says nothing of the exporter.
pub const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "app_kubernetes_io_instance"];

/// The folder holding the dashboards (the repository's `dashboards/`).
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Grafana's variables replaced by plausible values, so the expression is the
/// PromQL Prometheus would receive: `$__rate_interval` and the other interval
/// variables become durations, any other `$name` / `${name}` / `[[name]]`
/// becomes a label value.
pub fn substitute_grafana_vars(expr: &str) -> String {
    let value = |name: &str| -> String {
        match name {
            "__rate_interval" | "__interval" | "__range" | "__auto_interval" => "5m".into(),
            "__interval_ms" | "__range_ms" => "300000".into(),
            "__range_s" => "300".into(),
            _ => "x".into(),
        }
    };
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            if b.get(i + 1) == Some(&b'{') {
                if let Some(end) = expr[i + 2..].find('}') {
                    // `${name}` or `${name:format}`
                    let inner = &expr[i + 2..i + 2 + end];
                    out.push_str(&value(inner.split(':').next().unwrap_or(inner)));
                    i += end + 3;
                    continue;
                }
            } else {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j > start {
                    out.push_str(&value(&expr[start..j]));
                    i = j;
                    continue;
                }
            }
        } else if expr[i..].starts_with("[[")
            && let Some(end) = expr[i + 2..].find("]]")
        {
            out.push_str(&value(&expr[i + 2..i + 2 + end]));
            i += end + 4;
            continue;
        }
        let ch = expr[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The metric names `expr` (Grafana variables allowed) reads, or the parse error.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parse(expr)?;
    let mut names = BTreeSet::new();
    for vs in selectors(&ast)? {
        names.insert(selector_name(vs)?);
    }
    Ok(names)
}

/// One label matcher of a selector, with the metric it selects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelMatch {
    pub metric: String,
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: &'static str,
    pub value: String,
}

/// The label matchers (other than `__name__`) of every selector in `expr`.
pub fn label_matches(expr: &str) -> Result<Vec<LabelMatch>, String> {
    let ast = parse(expr)?;
    let mut out = Vec::new();
    for vs in selectors(&ast)? {
        let metric = selector_name(vs)?;
        for m in vs.matchers.matchers.iter().chain(vs.matchers.or_matchers.iter().flatten()) {
            if m.name == "__name__" {
                continue;
            }
            let op = match m.op {
                MatchOp::Equal => "=",
                MatchOp::NotEqual => "!=",
                MatchOp::Re(_) => "=~",
                MatchOp::NotRe(_) => "!~",
            };
            out.push(LabelMatch { metric: metric.clone(), label: m.name.clone(), op, value: m.value.clone() });
        }
    }
    Ok(out)
}

fn parse(expr: &str) -> Result<Expr, String> {
    let promql = substitute_grafana_vars(expr);
    parser::parse(&promql).map_err(|e| format!("{e} in `{promql}`"))
}

/// Every vector selector in `e` (those inside range selectors included).
fn selectors(e: &Expr) -> Result<Vec<&VectorSelector>, String> {
    fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a VectorSelector>) -> Result<(), String> {
        match e {
            Expr::Aggregate(a) => {
                walk(&a.expr, out)?;
                if let Some(p) = &a.param {
                    walk(p, out)?;
                }
            }
            Expr::Unary(u) => walk(&u.expr, out)?,
            Expr::Binary(b) => {
                walk(&b.lhs, out)?;
                walk(&b.rhs, out)?;
            }
            Expr::Paren(p) => walk(&p.expr, out)?,
            Expr::Subquery(s) => walk(&s.expr, out)?,
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            Expr::VectorSelector(vs) => out.push(vs),
            Expr::MatrixSelector(ms) => out.push(&ms.vs),
            Expr::Call(c) => {
                for a in &c.args.args {
                    walk(a, out)?;
                }
            }
            Expr::Extension(_) => return Err("extension node in a parsed expression".into()),
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(e, &mut out)?;
    Ok(out)
}

/// A selector must name its metric exactly (`foo{..}` or `{__name__="foo"}`):
/// a regex over names could not be checked.
fn selector_name(vs: &VectorSelector) -> Result<String, String> {
    if let Some(n) = &vs.name {
        return Ok(n.clone());
    }
    let by_name: Vec<_> = vs.matchers.matchers.iter().filter(|m| m.name == "__name__").collect();
    match by_name.as_slice() {
        [m] if matches!(m.op, MatchOp::Equal) => Ok(m.value.clone()),
        _ => Err(format!("selector `{vs}` does not name one metric exactly")),
    }
}

/// Metric names of the samples in a Prometheus / OpenMetrics text exposition.
pub fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':'))
        .map(str::to_string)
        .collect()
}

/// `(metric, label, value)` of every label of every sample in a text exposition.
pub fn scraped_labels(text: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else { continue };
        let mut rest = rest;
        // label="value", ... } with \\, \" and \n escapes in values
        while let Some((label, after)) = rest.split_once("=\"") {
            let label = label.trim_start_matches([',', ' ']).to_string();
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(if e == 'n' { '\n' } else { e });
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            out.insert((name.to_string(), label, value));
            rest = &after[end..];
            if rest.starts_with('}') {
                break;
            }
        }
    }
    out
}

/// The `=` and `!=` matchers among `matches` that no sample in `labels`
/// carries (a misspelt label or value); regex matchers are not checked.
pub fn missing_label_values(
    matches: &[(LabelMatch, String)],
    labels: &BTreeSet<(String, String, String)>,
) -> Vec<String> {
    let mut out: Vec<String> = matches
        .iter()
        .filter(|(m, _)| matches!(m.op, "=" | "!=") && !TARGET_LABELS.contains(&m.label.as_str()))
        .filter(|(m, _)| !SCRAPE_SERIES.contains(&m.metric.as_str()))
        .filter(|(m, _)| !labels.contains(&(m.metric.clone(), m.label.clone(), m.value.clone())))
        .map(|(m, at)| format!("{}{{{}{}\"{}\"}} (used by {at})", m.metric, m.label, m.op, m.value))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Each label matcher of `queries` on a metric that `wanted` selects, with
/// where it is used; panics on an expression that does not parse.
pub fn matchers_used(queries: &[Query], wanted: impl Fn(&str) -> bool) -> Vec<(LabelMatch, String)> {
    let mut out = Vec::new();
    for q in queries {
        let ms = label_matches(&q.expr).unwrap_or_else(|e| panic!("{}: {e}", q.source));
        out.extend(ms.into_iter().filter(|m| wanted(&m.metric)).map(|m| (m, q.source.clone())));
    }
    out
}

/// A PromQL expression found in a dashboard or rule file, with where it is.
#[derive(Debug, Clone)]
pub struct Query {
    pub source: String,
    pub expr: String,
}

/// Checks a Grafana dashboard's structure and returns its queries: panel
/// targets and the selectors of `label_values(...)` template variables.
/// Every problem found is returned at once.
pub fn dashboard_queries(file: &str, json: &str) -> Result<Vec<Query>, Vec<String>> {
    let mut errs = Vec::new();
    let d: serde_json::Value = match serde_json::from_str(json) {
        Ok(d) => d,
        Err(e) => return Err(vec![format!("{file}: not JSON: {e}")]),
    };
    let mut queries = Vec::new();
    if d["title"].as_str().unwrap_or("").is_empty() {
        errs.push(format!("{file}: no title"));
    }
    if d["uid"].as_str().unwrap_or("").is_empty() {
        errs.push(format!("{file}: no uid"));
    }
    let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
    let ds = vars.iter().find(|v| v["name"] == "datasource");
    if ds.is_none_or(|v| v["type"] != "datasource" || v["query"] != "prometheus") {
        errs.push(format!("{file}: no `datasource` template variable of type prometheus"));
    }
    for v in &vars {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
        match q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).and_then(|r| r.rsplit_once(',')) {
            Some((selector, _label)) => queries
                .push(Query { source: format!("{file}: variable {}", v["name"]), expr: selector.trim().to_string() }),
            None => errs.push(format!("{file}: variable {} is not label_values(selector, label): {q}", v["name"])),
        }
    }
    let mut ids = BTreeMap::new();
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        panels.push(p);
        // A collapsed row carries its panels inside it.
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    if panels.is_empty() {
        errs.push(format!("{file}: no panels"));
    }
    for p in panels {
        let title = p["title"].as_str().unwrap_or("");
        let where_ = format!("{file}: panel {} `{title}`", p["id"]);
        match p["id"].as_u64() {
            Some(id) => {
                if let Some(prev) = ids.insert(id, title.to_string()) {
                    errs.push(format!("{where_}: id {id} already used by `{prev}`"));
                }
            }
            None => errs.push(format!("{where_}: no numeric id")),
        }
        if title.is_empty() {
            errs.push(format!("{where_}: no title"));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            errs.push(format!("{where_}: datasource is not ${{datasource}}"));
        }
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .filter(|e| !e.trim().is_empty())
            .collect();
        if exprs.is_empty() {
            errs.push(format!("{where_}: no target with an expr"));
        }
        queries.extend(exprs.into_iter().map(|e| Query { source: where_.clone(), expr: e.to_string() }));
    }
    if errs.is_empty() { Ok(queries) } else { Err(errs) }
}

/// Checks a Prometheus rule file (`groups:`) and returns its expressions.
/// Every rule must be an alert with an expr, `for`, a severity label and a
/// summary and description.
pub fn rule_queries(file: &str, yaml: &str) -> Result<Vec<Query>, Vec<String>> {
    let d: serde_yaml::Value = match serde_yaml::from_str(yaml) {
        Ok(d) => d,
        Err(e) => return Err(vec![format!("{file}: not YAML: {e}")]),
    };
    let mut errs = Vec::new();
    let mut queries = Vec::new();
    let groups = d["groups"].as_sequence().cloned().unwrap_or_default();
    if groups.is_empty() {
        errs.push(format!("{file}: no groups"));
    }
    for g in &groups {
        let gname = g["name"].as_str().unwrap_or("");
        if gname.is_empty() {
            errs.push(format!("{file}: a group without a name"));
        }
        let rules = g["rules"].as_sequence().cloned().unwrap_or_default();
        if rules.is_empty() {
            errs.push(format!("{file}: group {gname} has no rules"));
        }
        for r in &rules {
            let alert = r["alert"].as_str().unwrap_or("");
            let where_ = format!("{file}: {gname}/{alert}");
            if alert.is_empty() {
                errs.push(format!("{where_}: not an alert rule"));
            }
            for (what, ok) in [
                ("for", r["for"].as_str().is_some_and(|f| f.ends_with(['s', 'm', 'h']))),
                ("labels.severity", matches!(r["labels"]["severity"].as_str(), Some("warning" | "critical" | "info"))),
                ("annotations.summary", r["annotations"]["summary"].as_str().is_some_and(|s| !s.is_empty())),
                ("annotations.description", r["annotations"]["description"].as_str().is_some_and(|s| !s.is_empty())),
            ] {
                if !ok {
                    errs.push(format!("{where_}: missing or bad {what}"));
                }
            }
            match r["expr"].as_str() {
                Some(e) if !e.trim().is_empty() => queries.push(Query { source: where_, expr: e.to_string() }),
                _ => errs.push(format!("{where_}: no expr")),
            }
        }
    }
    if errs.is_empty() { Ok(queries) } else { Err(errs) }
}

/// All queries of the dashboards `files` and of `kvd-alerts.yaml`, read from
/// [`dir`]; panics listing every structural problem.
pub fn all_queries(dashboards: &[&str]) -> Vec<Query> {
    let mut queries = Vec::new();
    let mut errs = Vec::new();
    for f in dashboards {
        let text = std::fs::read_to_string(dir().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        match dashboard_queries(f, &text) {
            Ok(q) => queries.extend(q),
            Err(e) => errs.extend(e),
        }
    }
    let f = "kvd-alerts.yaml";
    let text = std::fs::read_to_string(dir().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    match rule_queries(f, &text) {
        Ok(q) => queries.extend(q),
        Err(e) => errs.extend(e),
    }
    assert!(errs.is_empty(), "problems in dashboards/:\n{}", errs.join("\n"));
    queries
}

/// Each metric name the `queries` read that `wanted` selects, with the places
/// that read it; panics on an expression that does not parse.
pub fn names_used(queries: &[Query], wanted: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut errs = Vec::new();
    for q in queries {
        match metric_names(&q.expr) {
            Ok(names) => {
                for n in names.into_iter().filter(|n| wanted(n) && !SCRAPE_SERIES.contains(&n.as_str())) {
                    used.entry(n).or_default().push(q.source.clone());
                }
            }
            Err(e) => errs.push(format!("{}: {e}", q.source)),
        }
    }
    assert!(errs.is_empty(), "PromQL that does not parse:\n{}", errs.join("\n"));
    used
}

/// The names in `used` that `exported` lacks, one line each with its users.
pub fn missing(used: &BTreeMap<String, Vec<String>>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|(n, _)| !exported.contains(*n))
        .map(|(n, at)| format!("{n} (used by {})", at.join("; ")))
        .collect()
}

/// The helpers themselves, so that the checks above demonstrably can fail.
pub fn self_test() {
    let names = metric_names("rate(foo_bar[5m])").expect("parses");
    assert_eq!(names, BTreeSet::from(["foo_bar".to_string()]));
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job",instance=~"${instance}"}[$__rate_interval])))
           / on() group_left {__name__="b"} and increase((max without (instance) (c_total))[15m:1m]) > bool 4"#,
    )
    .expect("parses");
    assert_eq!(names, BTreeSet::from(["a_bucket".into(), "b".into(), "c_total".into()]));
    assert!(metric_names("rate(foo_bar[5m]").is_err(), "unbalanced parenthesis must not parse");
    assert!(metric_names(r#"{__name__=~"foo.*"}"#).is_err(), "a name regex cannot be checked");
    assert_eq!(substitute_grafana_vars("x[$__rate_interval] ${a:csv} [[b]]"), "x[5m] x x");

    let scrape = "# TYPE foo_bar counter\nfoo_bar_total{a=\"1\",b=\"x,\\\"y\\\"\"} 3\nbaz 1\n# EOF\n";
    assert_eq!(scraped_names(scrape), BTreeSet::from(["foo_bar_total".into(), "baz".into()]));
    let labels = scraped_labels(scrape);
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(labels, BTreeSet::from([t("foo_bar_total", "a", "1"), t("foo_bar_total", "b", "x,\"y\"")]));
    let q = [Query { source: "q".into(), expr: r#"foo_bar_total{a="1"} + foo_bar_total{a!="2",b=~"$v"}"#.into() }];
    let m = missing_label_values(&matchers_used(&q, |_| true), &labels);
    assert_eq!(m, vec![r#"foo_bar_total{a!="2"} (used by q)"#.to_string()]);

    let board = r#"{"title": "t", "uid": "u",
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": [
          {"id": 1, "type": "timeseries", "title": "ok", "datasource": {"uid": "${datasource}"},
           "targets": [{"expr": "rate(baz[$__rate_interval])"}]},
          {"id": 2, "type": "timeseries", "title": "missing", "datasource": {"uid": "${datasource}"},
           "targets": [{"expr": "sum(rate(no_such_metric_total[5m]))"}]}]}"#;
    let q = dashboard_queries("good.json", board).expect("well formed");
    let used = names_used(&q, |_| true);
    let m = missing(&used, &scraped_names(scrape));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("no_such_metric_total (used by good.json: panel 2 `missing`)"), "{m:?}");

    let dup = board.replace(r#""id": 2"#, r#""id": 1"#).replace(r#""title": "ok""#, r#""title": """#);
    let errs = dashboard_queries("bad.json", &dup).expect_err("duplicate id and empty title");
    assert!(errs.iter().any(|e| e.contains("already used")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("no title")), "{errs:?}");
    let no_target = board.replace(r#""targets": [{"expr": "rate(baz[$__rate_interval])"}]"#, r#""targets": []"#);
    let errs = dashboard_queries("bad.json", &no_target).expect_err("a panel without targets");
    assert!(errs.iter().any(|e| e.contains("no target with an expr")), "{errs:?}");

    let rules = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    labels: {severity: page}\n    annotations: {summary: s}\n";
    let errs = rule_queries("bad.yaml", rules).expect_err("no for, bad severity, no description");
    assert_eq!(errs.len(), 3, "{errs:?}");
}
