//! The Grafana dashboard (`dashboards/convoy.json`) and the alerting rules
//! (`dashboards/alerts.yaml`) against the metrics convoy really exports (`src/metrics.rs`):
//! promtool checks and unit tests, metric names, and every dashboard query run through a
//! real Prometheus scraping a populated [`Metrics`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use convoy::metrics::Metrics;
use convoy::plan::Outcome;
use convoy::status::HostStatus;
use convoy::status::Phase;
use serde_json::Value;

use crate::prom::{Prometheus, PrometheusConfig, has_data, promtool, promtool_with_stdin};

const DASHBOARD: &str = "dashboards/convoy.json";
const ALERTS: &str = "dashboards/alerts.yaml";
const ALERTS_TEST: &str = "dashboards/alerts_test.yaml";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn host(name: &str, release: Option<&str>, reachable: bool) -> HostStatus {
    HostStatus {
        name: name.into(),
        stage: "web".into(),
        release: release.map(String::from),
        reachable,
        last_error: None,
    }
}

/// A [`Metrics`] with every family populated, as after convoy deployed two sites:
/// `shop` converged on r2, `blog` blocked with `b2` unreachable.
fn populated_metrics() -> Metrics {
    let m = Metrics::new();
    m.manifests_loaded(false);
    m.manifests_loaded(true);
    m.site_state("shop", Phase::Converged, "r2");
    m.hosts(
        "shop",
        &[host("w1", Some("r2"), true), host("w2", Some("r2"), true)],
    );
    m.site_state("blog", Phase::Blocked, "r7");
    m.hosts(
        "blog",
        &[host("b1", Some("r6"), true), host("b2", None, false)],
    );
    m.backoff("shop", Duration::ZERO);
    m.backoff("blog", Duration::from_secs(30));
    m.drift_corrected("shop", 1);
    show_limits(&m);
    tick(&m);
    m
}

/// The limits of a controller with one site being changed, one of whose hosts is building.
fn show_limits(m: &Metrics) {
    use convoy::execute::{FleetLimits, Limits};
    let fleet = FleetLimits {
        max_sites: Some(4),
        ..FleetLimits::default()
    };
    let groups = BTreeMap::from([("web".to_string(), Some(2)), ("db".to_string(), None)]);
    let hosts = ["w1", "w2", "b1", "b2"].map(String::from);
    let limits = Limits::new(&fleet, &groups, &hosts);
    // Held for the life of the test process: what the gauges show as in use.
    std::mem::forget(limits.try_site_slot());
    m.show_limits(Arc::new(limits));
}

/// One more round of activity: what a reconcile pass of each site records.
fn tick(m: &Metrics) {
    m.reconciled("shop", &Outcome::Converged, Duration::from_millis(120));
    m.reconciled(
        "blog",
        &Outcome::Blocked {
            hosts: vec!["b2".into()],
            reason: "unreachable".into(),
        },
        Duration::from_millis(2500),
    );
    for (op, ms) in [
        ("observe", 40),
        ("fetch", 300),
        ("switch", 20),
        ("health", 80),
    ] {
        m.operation(op, Duration::from_millis(ms));
    }
    m.operation_failed("blog", "observe");
    m.rolled_back("shop");
    m.drift_corrected("shop", 1);
    m.last_success("shop", std::time::SystemTime::now());
}

/// Sample names (what Prometheus stores) in exposition text.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

// ------------------------------------------------------------------ dashboard JSON --

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, refId, expr) of every query of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or_default().to_owned(),
                    t["refId"].as_str().unwrap_or_default().to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    out
}

/// The `query` template variables: name -> (metric, label) of `label_values(metric, label)`.
fn label_values_variables(dashboard: &Value) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().expect("variable name").to_owned();
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name}: no query"));
        let inner = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: expected label_values(...), got {query}"));
        let (metric, label) = inner
            .split_once(',')
            .unwrap_or_else(|| panic!("variable {name}: {query}"));
        out.insert(name, (metric.trim().to_owned(), label.trim().to_owned()));
    }
    out
}

/// Replaces Grafana's template variables with values Prometheus accepts.
fn substitute(expr: &str, values: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {expr}"));
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = values
            .get(name)
            .unwrap_or_else(|| panic!("unknown template variable ${name} in {expr}"));
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

fn test_values(site: &'static str, host: &'static str) -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("site", site),
        ("host", host),
        ("__rate_interval", "5m"),
        ("__interval", "1m"),
        ("__range", "1h"),
    ])
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "inf", "nan", "start", "end",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// ranges, strings and grouping lists that are not functions, aggregations or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to just after its closing one, honouring strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(&chars, i) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open} in {expr}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = chars.get(j) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = skip_group(j, '(', ')');
                }
            } else if !call
                && !AGGREGATIONS.contains(&word.as_str())
                && !KEYWORDS.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    panic!(
        "unterminated string in {}",
        chars.iter().collect::<String>()
    );
}

/// Every alerting/recording rule expression of a rules file: (rule name, expr).
fn rule_exprs(rel: &str) -> Vec<(String, String)> {
    let rules: Value =
        serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    let mut out = vec![];
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

#[test]
fn metric_name_extraction_ignores_labels_functions_and_grouping() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, site) (rate(a_bucket{site=~"x|y", job="b"}[5m] offset 1h)))
           or on() vector(0) unless count without (c) (b_total) > bool 1e3 and time() - c_seconds"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["a_bucket".into(), "b_total".into(), "c_seconds".into()])
    );
}

#[test]
fn dashboard_alert_rules_pass_promtool_check_and_unit_tests() {
    let check = promtool(&["check", "rules", ALERTS]);
    assert!(
        check.status.success(),
        "promtool check rules {ALERTS}:\n{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );
    let test = promtool(&["test", "rules", ALERTS_TEST]);
    assert!(
        test.status.success(),
        "promtool test rules {ALERTS_TEST}:\n{}{}",
        text(&test.stdout),
        text(&test.stderr)
    );
    // Every alert has unit tests.
    let tests = read(ALERTS_TEST);
    for (alert, _) in rule_exprs(ALERTS) {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{ALERTS_TEST} does not test {alert}"
        );
    }
}

#[test]
fn dashboard_is_grafana_json_with_a_datasource_variable_on_every_panel() {
    let d = dashboard();
    assert_eq!(d["uid"], "convoy");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("site")["multi"], true);
    assert_eq!(var("site")["includeAll"], true);
    let expected = BTreeMap::from([
        (
            "host".to_owned(),
            ("convoy_host_up".to_owned(), "host".to_owned()),
        ),
        (
            "site".to_owned(),
            (
                "convoy_site_desired_release_info".to_owned(),
                "site".to_owned(),
            ),
        ),
    ]);
    assert_eq!(label_values_variables(&d), expected);
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "variable {}",
            v["name"]
        );
    }

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert!(!title.is_empty(), "untitled panel {}", p["id"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        assert_eq!(p["datasource"]["type"], "prometheus", "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {title}: empty expr");
        }
    }
    for wanted in [
        "Sites converged",
        "Sites degraded",
        "Sites failed",
        "Sites blocked",
        "Which host runs which release",
        "Reconcile rate by result",
        "Reconcile duration",
        "Host operation duration p95",
        "Current backoff",
        "Rollbacks",
        "Drift corrections",
        "Unreachable hosts",
        "Manifest validity",
        "Last successful reconcile age",
    ] {
        assert!(
            all.iter().any(|p| p["title"] == wanted),
            "no panel titled {wanted:?}"
        );
    }
}

#[test]
fn dashboard_and_alerts_only_use_metrics_convoy_exports() {
    let exported = sample_names(&populated_metrics().encode());
    // Sanity: the family names are not sample names of counters and histograms.
    assert!(exported.contains("convoy_reconciles_total"), "{exported:?}");
    assert!(exported.contains("convoy_reconcile_duration_seconds_bucket"));
    assert!(!exported.contains("convoy_reconciles"));

    let d = dashboard();
    let mut used: Vec<(String, String)> = vec![];
    for (title, ref_id, expr) in dashboard_exprs(&d) {
        let expr = substitute(&expr, &test_values(".*", ".*"));
        for name in metric_names(&expr) {
            used.push((format!("{DASHBOARD}: {title} {ref_id}: {expr}"), name));
        }
    }
    for (var, (metric, _)) in label_values_variables(&d) {
        used.push((format!("{DASHBOARD}: variable {var}"), metric));
    }
    for (alert, expr) in rule_exprs(ALERTS) {
        for name in metric_names(&expr) {
            used.push((format!("{ALERTS}: {alert}: {expr}"), name));
        }
    }
    assert!(used.len() > 30, "too few metric references found: {used:?}");
    let unknown: Vec<String> = used
        .iter()
        .filter(|(_, name)| !exported.contains(name))
        .map(|(where_, name)| format!("{name} in {where_}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "not exported by src/metrics.rs:\n{}\nexported: {exported:?}",
        unknown.join("\n")
    );
    // And every metric convoy exports shows up somewhere.
    let used: BTreeSet<&str> = used.iter().map(|(_, n)| n.as_str()).collect();
    let families: BTreeSet<String> = exported
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    let unused: Vec<&String> = families
        .iter()
        .filter(|f| !used.iter().any(|u| u.starts_with(f.as_str())))
        .collect();
    assert!(unused.is_empty(), "exported but never shown: {unused:?}");
}

#[test]
fn dashboard_metrics_pass_promtool_check_metrics() {
    let m = populated_metrics();
    let openmetrics = m.encode();
    // The classic text format, as `/metrics` serves it to clients that do not ask for
    // OpenMetrics, and the gauges alone as `write_textfile` writes them for node_exporter.
    let classic = m.encode_text();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("convoy.prom");
    m.write_textfile(&path).expect("write the textfile");
    let textfile = std::fs::read_to_string(&path).expect("read the textfile");
    let problems = |input: &str| -> Vec<String> {
        let out = promtool_with_stdin(&["check", "metrics"], Some(input));
        let lines: Vec<String> = text(&out.stdout)
            .lines()
            .chain(text(&out.stderr).lines())
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            out.status.success(),
            lines.is_empty(),
            "promtool's exit status matches its findings: {lines:?}\n--- input:\n{input}"
        );
        lines
    };
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    assert!(counters.contains(&"convoy_reconciles"), "{openmetrics}");

    // The classic text format: no `# EOF`, and each counter's HELP/TYPE lines named like
    // its `_total` samples. promtool finds nothing wrong with it, nor with the textfile.
    assert!(!classic.contains("# EOF"));
    for c in &counters {
        assert!(
            classic.contains(&format!("# TYPE {c}_total counter\n")),
            "{c}: {classic}"
        );
    }
    assert_eq!(problems(&classic), Vec::<String>::new(), "{classic}");
    assert!(!textfile.contains("# EOF"));
    assert!(
        textfile.contains("# TYPE convoy_site_phase gauge"),
        "{textfile}"
    );
    assert_eq!(problems(&textfile), Vec::<String>::new(), "{textfile}");

    // promtool reads the OpenMetrics text with the classic parser; the only findings it
    // may have are the counters' family names (OpenMetrics `X`, classic `X_total`).
    let known: BTreeSet<String> = counters
        .iter()
        .map(|c| format!("{c}_total no help text"))
        .collect();
    let unexpected: Vec<String> = problems(&openmetrics)
        .into_iter()
        .filter(|p| !known.contains(p))
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool check metrics on the OpenMetrics text: {unexpected:?}"
    );
}

// ------------------------------------------------------------------ real Prometheus --

/// Serves `Metrics::encode()` as OpenMetrics on `/metrics`, recording one more round of
/// activity before every scrape so that rates and quantiles have something to show.
struct Exporter {
    addr: SocketAddr,
    scrapes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    fn start(metrics: Metrics) -> Exporter {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the exporter");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let scrapes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (scrapes, stop) = (scrapes.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if serve(stream, &metrics).is_ok() {
                                scrapes.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Exporter {
            addr,
            scrapes,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    let (status, content_type, body) = if path == "/metrics" {
        tick(metrics);
        ("200 OK", OPENMETRICS, metrics.encode())
    } else {
        ("404 Not Found", "text/plain", "not found\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The numeric values of an instant query's result.
fn values(data: &Value) -> Vec<String> {
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["value"][1].as_str().unwrap_or_default().to_owned())
            .collect(),
        Some("scalar") => vec![data["result"][1].as_str().unwrap_or_default().to_owned()],
        _ => vec![],
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(80);
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let exporter = Exporter::start(populated_metrics());
    let prom = Prometheus::start_with(&PrometheusConfig {
        targets: vec![exporter.addr.to_string()],
        rule_files: vec![repo_path(ALERTS)],
    });
    prom.wait_for_targets_up(remaining());
    // Rates need two samples in their window; a few scrapes make them non-zero.
    prom.wait_for("count_over_time(convoy_build_info[1m]) >= 3", remaining());
    // Prometheus parsed OpenMetrics: counters keep `_total`, histograms have `_bucket`.
    let targets = prom.api("/api/v1/targets").expect("targets");
    assert_eq!(targets["activeTargets"][0]["health"], "up", "{targets}");

    // Scraped as OpenMetrics: the counter family `convoy_reconciles` (samples `_total`) keeps
    // its type and help.
    let metadata = prom
        .api("/api/v1/metadata?metric=convoy_reconciles")
        .expect("metadata");
    assert_eq!(
        metadata["convoy_reconciles"][0]["type"], "counter",
        "{metadata}"
    );

    let d = dashboard();
    let mut failures = vec![];
    let mut checked = 0;
    for (site, host) in [(".*", ".*"), ("shop", "w1"), ("(shop|blog)", "(b1|b2)")] {
        for (title, ref_id, expr) in dashboard_exprs(&d) {
            let promql = substitute(&expr, &test_values(site, host));
            // Everything has been scraped already: a query gets a few more seconds at most.
            let give_up = Instant::now() + remaining().min(Duration::from_secs(5));
            let data = loop {
                match prom.try_query(&promql) {
                    Ok(data) if has_data(&data) || Instant::now() >= give_up => break Ok(data),
                    Ok(_) => thread::sleep(Duration::from_millis(200)),
                    Err(e) => break Err(e),
                }
            };
            checked += 1;
            match data {
                Err(e) => failures.push(format!("{title} {ref_id}: `{promql}`: {e}")),
                Ok(data) if !has_data(&data) => {
                    failures.push(format!("{title} {ref_id}: `{promql}`: no data"));
                }
                Ok(data) => {
                    let bad: Vec<String> = values(&data)
                        .into_iter()
                        .filter(|v| v.parse::<f64>().map_or(true, |f| !f.is_finite()))
                        .collect();
                    if !bad.is_empty() {
                        failures.push(format!(
                            "{title} {ref_id}: `{promql}`: values {bad:?}: {data}"
                        ));
                    }
                }
            }
        }
    }
    // The template variables' label_values() have values.
    for (var, (metric, label)) in label_values_variables(&d) {
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            crate::prom::url_encode(&metric)
        );
        match prom.api(&path) {
            Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {}
            other => failures.push(format!("variable {var}: {path}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The alerting rules load and evaluate without errors against real data.
    let groups = loop {
        let rules = prom.api("/api/v1/rules").expect("rules");
        let groups = rules["groups"].as_array().cloned().unwrap_or_default();
        let evaluated = groups.iter().all(|g| {
            g["rules"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["health"] != "unknown"))
        });
        if (!groups.is_empty() && evaluated) || remaining().is_zero() {
            break groups;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let rules: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), rule_exprs(ALERTS).len(), "{groups:?}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
    }
    // blog is Blocked with b2 down: pending for 5m. shop rolled back: firing at once.
    prom.wait_for(
        r#"ALERTS{alertname="ConvoyRequiredHostDown", alertstate="pending", site="blog"}"#,
        remaining(),
    );
    prom.wait_for(
        r#"ALERTS{alertname="ConvoyRollback", alertstate="firing", site="shop"}"#,
        remaining(),
    );
    let firing = prom.query(r#"ALERTS{alertstate="firing"}"#);
    let firing: BTreeSet<&str> = firing["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["metric"]["alertname"].as_str())
        .collect();
    assert_eq!(
        firing,
        BTreeSet::from(["ConvoyRollback"]),
        "only the rollback fires at once"
    );
    assert!(
        exporter.scrapes.load(Ordering::Relaxed) >= 3,
        "scraped the exporter"
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

// ------------------------------------------------------------------ the real daemon --

/// The daemon deploys to lab hosts (one release, then one whose health check fails on a
/// host and is rolled back) while a real Prometheus scrapes it: `promtool check metrics` on
/// a real scrape is clean, and every dashboard query returns data through Prometheus' API.
#[test]
fn a_real_prometheus_scrapes_the_daemon_during_a_lab_deploy() {
    use crate::daemon_tests::{Daemon, Upstream, wait_until};
    use crate::fleet::{Fleet, SiteDef};

    let fleet = Fleet::new(3);
    let docs = |version: u32| {
        let mut docs = vec![
            fleet.group("scheduler", &[0], None),
            // A maxParallel, so the ServerGroup limit panel has a limit to show.
            fleet.group("frontend", &[1, 2], Some(2)),
        ];
        docs.extend(fleet.site(&SiteDef {
            version,
            stages: &[
                ("scheduler", "scheduler", false, true),
                ("frontend", "frontend", true, false),
            ],
            ..SiteDef::default()
        }));
        docs
    };
    let up = Upstream::new(&fleet, &docs(1));
    let daemon = Daemon::start(&fleet, "2s");
    let prom = Prometheus::start_with(&PrometheusConfig {
        targets: vec![format!("127.0.0.1:{}", daemon.port)],
        rule_files: vec![repo_path(ALERTS)],
    });
    prom.wait_for_targets_up(Duration::from_secs(30));
    let on = |release: &str, hosts: &[usize]| {
        hosts
            .iter()
            .all(|i| fleet.current(*i, "app").as_deref() == Some(release))
    };
    wait_until(Duration::from_secs(30), "r1 live", || {
        on("app.r1", &[0, 1, 2])
    });
    fleet.mark(2, "fail-health", true);
    up.commit(&docs(2), "r2, unhealthy on h2");
    up.pull();
    wait_until(Duration::from_secs(30), "the frontend rolled back", || {
        on("app.r2", &[0])
            && on("app.r1", &[1, 2])
            && daemon
                .get("/metrics")
                .1
                .contains("convoy_rollbacks_total{site=\"app\"}")
    });

    // promtool on a real scrape (classic text format, as curl gets it).
    let (code, scrape) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let out = promtool_with_stdin(&["check", "metrics"], Some(&scrape));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}{}\n{scrape}",
        text(&out.stdout),
        text(&out.stderr)
    );

    prom.wait_for(
        "count_over_time(convoy_build_info[1m]) >= 3",
        Duration::from_secs(30),
    );
    prom.wait_for(
        "convoy_rollbacks_total{site=\"app\"} > 0",
        Duration::from_secs(30),
    );
    let d = dashboard();
    let mut failures = vec![];
    for (title, ref_id, expr) in dashboard_exprs(&d) {
        let promql = substitute(&expr, &test_values("app", ".*"));
        let give_up = Instant::now() + Duration::from_secs(10);
        let data = loop {
            match prom.try_query(&promql) {
                Ok(data) if has_data(&data) || Instant::now() >= give_up => break Ok(data),
                Ok(_) => thread::sleep(Duration::from_millis(250)),
                Err(e) => break Err(e),
            }
        };
        match data {
            Ok(data) if has_data(&data) => {}
            Ok(_) => failures.push(format!("{title} {ref_id}: `{promql}`: no data")),
            Err(e) => failures.push(format!("{title} {ref_id}: `{promql}`: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries without data from the real daemon:\n{}",
        failures.join("\n")
    );
    fleet.mark(2, "fail-health", false);
}
