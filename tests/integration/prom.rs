//! A real Prometheus server for tests, and `promtool`.
//!
//! [`Prometheus::start`] runs `/usr/bin/prometheus` on `127.0.0.1:<free port>` with its own
//! temporary TSDB, scraping the given targets every second, and waits until it is ready.
//! [`Prometheus::query`] runs instant queries through the HTTP API. Dropping the handle kills
//! that one process (by PID, through its `Child`) and removes its data.
//!
//! Needs the Debian `prometheus` package (`/usr/bin/prometheus`, `/usr/bin/promtool`):
//! run `scripts/install-test-deps.sh` first. The system Prometheus service is not used.
//!
//! Only std, `tempfile` and `serde_json`: no HTTP client crate. Requests are hand-written
//! HTTP/1.0 GETs over a `TcpStream`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";
/// How long Prometheus gets to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one `promtool` run.
pub const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one HTTP request to Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports are tried before giving up (a free port can be taken before Prometheus binds it).
const PORT_ATTEMPTS: usize = 3;

/// Scrape targets and rule files of a Prometheus to start.
#[derive(Clone, Debug, Default)]
pub struct PrometheusConfig {
    /// `host:port` of each target; scraped every second on `/metrics`, job `convoy`.
    pub targets: Vec<String>,
    /// Rule files (e.g. `dashboards/alerts.yaml`), evaluated every second.
    pub rule_files: Vec<PathBuf>,
}

/// A running `/usr/bin/prometheus`, killed on drop.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    // Last, so that the TSDB is removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`) every second.
    pub fn start(targets: &[String]) -> Prometheus {
        Prometheus::start_with(&PrometheusConfig {
            targets: targets.to_vec(),
            rule_files: vec![],
        })
    }

    /// Starts Prometheus and waits (at most [`START_TIMEOUT`]) until `/-/ready` answers 200.
    pub fn start_with(config: &PrometheusConfig) -> Prometheus {
        preflight();
        let dir = tempfile::Builder::new()
            .prefix("convoy-prom-")
            .tempdir()
            .expect("prometheus: cannot create a temp dir");
        let config_file = dir.path().join("prometheus.yml");
        fs::write(&config_file, config_yaml(config))
            .unwrap_or_else(|e| panic!("prometheus: cannot write {}: {e}", config_file.display()));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut failures = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let addr = free_port();
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let data = dir.path().join(format!("data-{attempt}"));
            let mut child = spawn(&config_file, &data, addr, &log);
            match wait_ready(&mut child, addr, deadline) {
                Ok(()) => {
                    return Prometheus {
                        child,
                        addr,
                        log,
                        dir,
                    };
                }
                Err(why) => {
                    kill(&mut child);
                    let _ = writeln!(
                        failures,
                        "attempt {attempt} on {addr}: {why}\n{}",
                        tail(&log, 30)
                    );
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        panic!("prometheus: did not become ready within {START_TIMEOUT:?}:\n{failures}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Prometheus' own log (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path_and_query` (e.g. `/api/v1/targets`): the status code and body.
    pub fn get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path_and_query)
    }

    /// GET an API path and parse its JSON envelope: `data` on success, the error otherwise.
    pub fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (code, body) = self
            .get(path_and_query)
            .map_err(|e| format!("GET {path_and_query}: {e}"))?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path_and_query}: HTTP {code}, not JSON ({e}): {body}"))?;
        if json["status"] == "success" {
            Ok(json["data"].clone())
        } else {
            Err(format!(
                "GET {path_and_query}: HTTP {code}: {}: {}",
                json["errorType"], json["error"]
            ))
        }
    }

    /// Instant query, evaluated now: the `data` object (`resultType`, `result`) or the error.
    pub fn try_query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))
    }

    /// Instant query, evaluated now: the `data` object (`resultType`, `result`).
    /// Panics if Prometheus rejects the query.
    pub fn query(&self, promql: &str) -> Value {
        self.try_query(promql)
            .unwrap_or_else(|e| panic!("prometheus: query `{promql}` failed: {e}"))
    }

    /// Polls [`Prometheus::query`] until its result is non-empty (a scalar or string always
    /// is); returns that `data`. Panics with the last result after `timeout`.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let data = self.query(promql);
            if has_data(&data) {
                return data;
            }
            if Instant::now() >= deadline {
                panic!(
                    "prometheus: `{promql}` still returned no data after {timeout:?}: {data}\n\
                     targets: {}",
                    self.api("/api/v1/targets")
                        .map_or_else(|e| e, |t| t.to_string())
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every target has been scraped successfully at least once.
    pub fn wait_for_targets_up(&self, timeout: Duration) {
        self.wait_for(r#"up{job="convoy"} == 1"#, timeout);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn wait_ready(child: &mut Child, addr: SocketAddr, deadline: Instant) -> Result<(), String> {
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited early: {status}"));
        }
        if let Ok((200, _)) = http_get(addr, "/-/ready") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("not ready in time".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Kills exactly this child (`Child::kill` signals its PID with SIGKILL) and reaps it.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// True when a query's `data` holds at least one sample (or is a scalar/string).
pub fn has_data(data: &Value) -> bool {
    match data["resultType"].as_str() {
        Some("vector" | "matrix") => data["result"].as_array().is_some_and(|r| !r.is_empty()),
        Some(_) => true,
        None => false,
    }
}

/// Runs `promtool ARGS` (stdin closed) from the repository root, bounded by [`PROMTOOL_TIMEOUT`].
pub fn promtool(args: &[&str]) -> Output {
    promtool_with_stdin(args, None)
}

/// Runs `promtool ARGS` with `stdin` fed to it (e.g. `check metrics`).
pub fn promtool_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: run scripts/install-test-deps.sh"
    );
    let mut cmd = Command::new(PROMTOOL);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PROMTOOL}: {e}"));
    let writer = stdin.map(|text| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let text = text.to_owned();
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let reader = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + PROMTOOL_TIMEOUT;
    let status: ExitStatus = loop {
        match child.try_wait().expect("wait for promtool") {
            Some(status) => break status,
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            None => {
                let _ = child.kill();
                break child.wait().expect("wait for promtool");
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let mut stderr = err.join().unwrap_or_default();
    if Instant::now() >= deadline {
        stderr.extend_from_slice(format!("\n(killed after {PROMTOOL_TIMEOUT:?})").as_bytes());
    }
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A minimal HTTP/1.0 GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no end of headers: {text}"),
        )
    })?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line: {head}"),
            )
        })?;
    Ok((code, body.to_owned()))
}

fn preflight() {
    for tool in [PROMETHEUS, PROMTOOL] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/install-test-deps.sh"
        );
    }
}

fn config_yaml(config: &PrometheusConfig) -> String {
    let mut yaml = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    if !config.rule_files.is_empty() {
        yaml.push_str("rule_files:\n");
        for f in &config.rule_files {
            let _ = writeln!(yaml, "  - {}", yaml_string(&f.to_string_lossy()));
        }
    }
    yaml.push_str("scrape_configs:\n  - job_name: convoy\n    static_configs:\n      - targets: [");
    let targets: Vec<String> = config.targets.iter().map(|t| yaml_string(t)).collect();
    yaml.push_str(&targets.join(", "));
    yaml.push_str("]\n");
    yaml
}

/// A double-quoted YAML (and JSON) string.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("prometheus: cannot find a free port")
}

fn spawn(config: &Path, data: &Path, addr: SocketAddr, log: &Path) -> Child {
    let log_file = fs::File::create(log)
        .unwrap_or_else(|e| panic!("prometheus: cannot create {}: {e}", log.display()));
    let log_err = log_file.try_clone().expect("clone the log file handle");
    Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1d")
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("prometheus: cannot spawn {PROMETHEUS}: {e}"))
}

/// The last `n` lines of a file, indented, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}
