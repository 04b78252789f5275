//! The Grafana dashboard and the Prometheus alert rules in k8s/monitoring query only what
//! a running hub exports: every `herald_*` name in their expressions is a series of
//! /metrics (after the hub has had a session, a message and a refused handshake, so the
//! labelled series exist), with the series suffix its type gives it (counter `_total`,
//! histogram `_bucket`/`_sum`/`_count`), `rate()` only over counters and histogram parts,
//! and each literal label value the expressions match on present on a series.
//!
//! Series, not `# TYPE` lines, are what count: prometheus-client (0.25) prints no `# HELP`
//! / `# TYPE` at all for a labelled family that has no series yet (herald_registry_entries
//! before the first sweep), so a name is only provably exported once it has a series.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const DASHBOARD: &str = "k8s/monitoring/grafana-dashboard.json";
const ALERTS: &str = "k8s/monitoring/alerts.yaml";

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

// ------------------------------------------------------------------ the expressions

/// Every PromQL text of a dashboard: the `expr` of each panel target (rows may nest
/// panels) and the query of each query variable.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = &var["query"];
            let text = q["query"].as_str().or(q.as_str()).unwrap_or_default();
            out.push(text.to_string());
        }
    }
    out
}

/// The `expr:` values of a rules file, read as text (no YAML parser among the
/// dependencies): plain or quoted scalars on the line, or a `|`/`>` block below it.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start().trim_start_matches("- ");
        i += 1;
        let Some(value) = body.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len()
                && (lines[i].trim().is_empty()
                    || lines[i].len() - lines[i].trim_start().len() > indent)
            {
                block.push(lines[i].trim());
                i += 1;
            }
            out.push(block.join(" ").trim().to_string());
        } else if value.len() >= 2
            && ((value.starts_with('\'') && value.ends_with('\''))
                || (value.starts_with('"') && value.ends_with('"')))
        {
            out.push(value[1..value.len() - 1].to_string());
        } else {
            out.push(value.to_string());
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Op(String),
    Punct(char),
    Num,
}

/// A PromQL tokenizer good enough to find metric names, their label matchers and the
/// function applied to them.
fn tokens(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if "=!~<>".contains(c) {
            let start = i;
            while i < chars.len() && "=!~<>".contains(chars[i]) {
                i += 1;
            }
            out.push(Tok::Op(chars[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// One use of a herald metric in an expression.
#[derive(Debug)]
struct Use {
    name: String,
    /// (label, operator, value) of its selector.
    matchers: Vec<(String, String, String)>,
    /// Inside rate(), irate() or increase().
    rated: bool,
}

fn herald_uses(expr: &str) -> Vec<Use> {
    let t = tokens(expr);
    let mut out = Vec::new();
    for (i, tok) in t.iter().enumerate() {
        let Tok::Ident(name) = tok else { continue };
        if !name.starts_with("herald_") {
            continue;
        }
        let rated = i >= 2
            && t[i - 1] == Tok::Punct('(')
            && matches!(&t[i - 2], Tok::Ident(f) if ["rate", "irate", "increase"].contains(&f.as_str()));
        let mut matchers = Vec::new();
        if t.get(i + 1) == Some(&Tok::Punct('{')) {
            let mut j = i + 2;
            while let (Some(Tok::Ident(k)), Some(Tok::Op(op)), Some(Tok::Str(v))) =
                (t.get(j), t.get(j + 1), t.get(j + 2))
            {
                matchers.push((k.clone(), op.clone(), v.clone()));
                j += 3;
                if t.get(j) == Some(&Tok::Punct(',')) {
                    j += 1;
                }
            }
            assert_eq!(
                t.get(j),
                Some(&Tok::Punct('}')),
                "unreadable selector of {name} in {expr}"
            );
        }
        out.push(Use {
            name: name.clone(),
            matchers,
            rated,
        });
    }
    out
}

// ------------------------------------------------------------------ the exposition

/// What /metrics exposes: `# TYPE` per family, and the label sets of each series name.
struct Exposition {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    end = at + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_matches([',', ' ']).to_string(), value);
        rest = &after[end..];
    }
    labels
}

fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let (name, labels) = match line.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.rsplit_once('}').unwrap().0)),
                None => (line.split_whitespace().next().unwrap(), BTreeMap::new()),
            };
            series.entry(name.to_string()).or_default().push(labels);
        }
    }
    Exposition { types, series }
}

impl Exposition {
    /// The family a series name belongs to and its type, e.g. `herald_closes_total` ->
    /// (`herald_closes`, `counter`).
    fn family_of(&self, name: &str) -> Option<(String, String)> {
        if let Some(kind) = self.types.get(name) {
            return Some((name.to_string(), kind.clone()));
        }
        for (suffix, kinds) in [
            ("_total", &["counter"][..]),
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix) {
                if let Some(kind) = self.types.get(base) {
                    return kinds
                        .contains(&kind.as_str())
                        .then(|| (base.to_string(), kind.clone()));
                }
            }
        }
        None
    }
}

/// Every problem with the herald metrics that `exprs` (from `origin`) use.
fn problems(origin: &str, exprs: &[String], exp: &Exposition) -> Vec<String> {
    let mut out = Vec::new();
    for expr in exprs {
        for u in herald_uses(expr) {
            let Some(series) = exp.series.get(&u.name) else {
                let family = exp.family_of(&u.name);
                out.push(match family {
                    Some((f, kind)) => format!(
                        "{origin}: {} ({kind} {f}) has no series on /metrics in `{expr}`",
                        u.name
                    ),
                    None => format!(
                        "{origin}: {} is no series of /metrics (counters are <name>_total, \
                         histograms <name>_bucket/_sum/_count) in `{expr}`",
                        u.name
                    ),
                });
                continue;
            };
            let Some((family, kind)) = exp.family_of(&u.name) else {
                out.push(format!("{origin}: {} has no # TYPE line", u.name));
                continue;
            };
            if u.rated && !matches!(kind.as_str(), "counter" | "histogram") {
                out.push(format!(
                    "{origin}: rate() over {} which is a {kind} ({family}) in `{expr}`",
                    u.name
                ));
            }
            for (label, op, value) in &u.matchers {
                // Target labels (namespace, pod) come from Prometheus, not from herald;
                // `$var` values from Grafana. Only herald's own labels can be checked.
                if !series.iter().any(|s| s.contains_key(label)) || value.contains('$') {
                    continue;
                }
                let wanted: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" if value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-|".contains(c)) =>
                    {
                        value.split('|').collect()
                    }
                    _ => continue,
                };
                for w in wanted {
                    if !series
                        .iter()
                        .any(|s| s.get(label).map(String::as_str) == Some(w))
                    {
                        out.push(format!(
                            "{origin}: no series {}{{{label}=\"{w}\"}} on /metrics for `{expr}`",
                            u.name
                        ));
                    }
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------ the test

/// Give the hub one of everything the dashboard and the alerts look at: a session opened
/// and closed, a delivered message, a refused handshake.
async fn exercise(hub: &Hub) {
    let url = hub.ws_url("u1", &format!("token={}", token("u1", 300, None)));
    let (mut ws, _) = connect(&url).await;
    let (status, _) = hub
        .publish(json!({"user": "u1", "event": "order", "data": {"id": "A-1"}}))
        .await;
    assert_eq!(status, 202);
    let msg = next_json(&mut ws).await;
    assert_eq!(msg["type"], "message", "{msg}");
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.send(Message::Close(Some(normal)))
        .await
        .expect("client close");
    let _ = close_code_or_gone(&mut ws, WAIT).await;
    let refused = try_connect(&hub.ws_url("u1", "token=not-a-token"), &[]).await;
    assert_eq!(refused.err().map(|r| r.status), Some(401));
    // The close is counted when the session ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.metric("herald_connections").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let hub = Hub::secured(&[]).await;
    exercise(&hub).await;
    let text = hub.metrics().await;
    for series in [
        "herald_messages_in_total{source=\"user\"}",
        "herald_messages_out_total{source=\"user\"}",
        "herald_delivery_latency_seconds_count",
        "herald_closes_total{code=\"1000\"}",
        "herald_handshake_refusals_total{status=\"401\"}",
    ] {
        assert!(metric_value(&text, series) >= 1.0, "{series} in\n{text}");
    }
    let exp = parse_exposition(&text);

    let dash: Value = serde_json::from_str(&repo_file(DASHBOARD)).expect("dashboard JSON");
    let dash_exprs = dashboard_exprs(&dash);
    let alerts = repo_file(ALERTS);
    let alert_exprs = rule_exprs(&alerts);
    let alert_count = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        alert_exprs.len(),
        alert_count,
        "one expr per alert in {ALERTS}"
    );

    let mut bad = problems(DASHBOARD, &dash_exprs, &exp);
    bad.extend(problems(ALERTS, &alert_exprs, &exp));
    assert!(bad.is_empty(), "{}\n\n/metrics:\n{text}", bad.join("\n"));

    let used: BTreeSet<String> = dash_exprs
        .iter()
        .chain(&alert_exprs)
        .flat_map(|e| herald_uses(e))
        .map(|u| u.name)
        .collect();
    // What the dashboard must show and the alerts must watch (the task's list).
    for name in [
        "herald_connections",
        "herald_users",
        "herald_messages_in_total",
        "herald_messages_out_total",
        "herald_delivery_latency_seconds_bucket",
        "herald_closes_total",
        "herald_handshake_refusals_total",
        "herald_bus_connected",
        "herald_slow_consumer_drops_total",
        "herald_draining",
    ] {
        assert!(used.contains(name), "no panel or alert uses {name}");
    }
}

/// The checker itself: it must catch the mistakes it is there for.
#[test]
fn the_check_catches_wrong_names_types_and_labels() {
    let text = "# HELP herald_closes Sessions closed.\n# TYPE herald_closes counter\n\
                herald_closes_total{code=\"4008\"} 0\n\
                # TYPE herald_connections gauge\nherald_connections 3\n\
                # TYPE herald_delivery_latency_seconds histogram\n\
                herald_delivery_latency_seconds_sum 0.1\n\
                herald_delivery_latency_seconds_bucket{le=\"+Inf\"} 1\n\
                # TYPE herald_registry_entries gauge\n# EOF\n";
    let exp = parse_exposition(text);
    let check = |e: &str| problems("t", &[e.to_string()], &exp);
    assert!(
        check("sum by (code) (rate(herald_closes_total{code=\"4008\", pod=~\"$pod\"}[5m]))")
            .is_empty()
    );
    assert!(check(
        "histogram_quantile(0.99, sum by (le) (rate(herald_delivery_latency_seconds_bucket[5m])))"
    )
    .is_empty());
    assert!(
        check("max by (namespace, pod) (herald_connections{namespace=\"herald\"}) == 0").is_empty()
    );
    // A counter without _total, a misspelt name, a gauge under rate(), an unknown label
    // value, a family with no series yet.
    for wrong in [
        "rate(herald_closes[5m])",
        "herald_conections",
        "rate(herald_connections[5m])",
        "herald_closes_total{code=~\"4008|4009\"}",
        "herald_closes_total{code=\"4009\"}",
        "herald_registry_entries",
        "herald_connections_total",
    ] {
        assert_eq!(check(wrong).len(), 1, "{wrong}: {:?}", check(wrong));
    }
    let rules = "groups:\n  - rules:\n      - alert: A\n        expr: up == 0\n      - alert: B\n        expr: |\n          sum(\n            herald_users)\n        for: 1m\n      - alert: C\n        expr: 'herald_x > 1'\n";
    assert_eq!(
        rule_exprs(rules),
        ["up == 0", "sum( herald_users)", "herald_x > 1"]
    );
}
