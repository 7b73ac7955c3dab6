//! Notifications end to end: real lab hosts, and real HTTP receivers on 127.0.0.1 (a small
//! server thread per test that records every request). The messages are compared whole,
//! with only their `time` normalized. Every wait is bounded; receivers stop when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon_tests::{Daemon, wait_until};
use crate::fleet::{Fleet, assert_exit};
use crate::util::{stderr, stdout};

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    /// HTTP 500 to everything.
    Fail,
    /// Reads the request and says nothing for this long.
    Hang(Duration),
}

/// A webhook receiver on 127.0.0.1 recording the JSON body of every POST.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let b = b.clone();
                std::thread::spawn(move || serve(stream, answer, &b));
            }
        });
        Receiver { port, bodies, stop }
    }

    /// The URL, with a path that stands for a webhook's secret token.
    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/hook/s3cr3t-token-{}",
            self.port, self.port
        )
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, answer: Answer, bodies: &Mutex<Vec<Value>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    bodies
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let mut stream = reader.into_inner();
    let status = match answer {
        Answer::Ok => "200 OK",
        Answer::Fail => "500 Internal Server Error",
        Answer::Hang(time) => {
            std::thread::sleep(time);
            return;
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    );
}

/// A Notification document of every event, to the URL in environment variable `var`.
fn notification(name: &str, format: &str, url_from: &str) -> String {
    format!(
        "apiVersion: convoy.dev/v1alpha1\nkind: Notification\nmetadata: {{name: {name}}}\nspec:\n  events: [Failed, Blocked, Degraded, RolledBack, Converged]\n  webhook:\n    format: {format}\n    urlFrom: {url_from}\n"
    )
}

/// The two-stage site of the lab tests (scheduler h0 with `once`, optional frontend) at
/// release `version`, plus `extra` documents.
fn write_fleet(
    fleet: &Fleet,
    version: u32,
    scheduler: &[usize],
    frontend: &[usize],
    extra: &[String],
) {
    fleet.two_stage(version, scheduler, frontend);
    let path = fleet.dir.path().join("manifests/notify.yaml");
    std::fs::write(path, extra.join("---\n")).unwrap();
}

/// `bodies` with each `time` checked (RFC 3339, UTC) and replaced by "T".
fn normalized(bodies: Vec<Value>) -> Vec<Value> {
    bodies
        .into_iter()
        .map(|mut b| {
            let time = b["time"].as_str().unwrap_or_default().to_string();
            assert!(
                time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "time is RFC 3339 UTC: {b}"
            );
            b["time"] = json!("T");
            b
        })
        .collect()
}

/// Waits until `receiver` has `n` messages (a --once run hands them over before it exits,
/// so this is only a guard against a slow machine), then gives strays a moment to arrive.
fn wait_for(receiver: &Receiver, n: usize) -> Vec<Value> {
    wait_until(Duration::from_secs(10), "messages arrive", || {
        receiver.bodies().len() >= n
    });
    std::thread::sleep(Duration::from_millis(300));
    receiver.bodies()
}

/// The `lastError` of host `name` in the site's status, as a message quotes it (last lines).
fn last_error(fleet: &Fleet, name: &str) -> String {
    let status = fleet.status_json();
    let hosts = status["items"][0]["status"]["hosts"]
        .as_array()
        .unwrap()
        .clone();
    let host = hosts.iter().find(|h| h["name"] == name).unwrap();
    let text = host["lastError"].as_str().unwrap().to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

#[test]
fn an_offline_optional_host_is_told_once_by_name_and_its_return_once() {
    let mut fleet = Fleet::new(3);
    fleet.lab.stop_host(2);
    let json = Receiver::start(Answer::Ok);
    let slack = Receiver::start(Answer::Ok);
    let docs = [
        notification("audit", "json", "{env: AUDIT_URL}"),
        notification("chat", "slack", "{env: CHAT_URL}"),
    ];
    write_fleet(&fleet, 1, &[0], &[1, 2], &docs);
    let run = |fleet: &Fleet| {
        fleet
            .reconcile_cmd(&[])
            .env("AUDIT_URL", json.url())
            .env("CHAT_URL", slack.url())
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    };
    let out = run(&fleet);
    assert_exit(&out, 3);
    let error_tail = last_error(&fleet, "h2");
    let degraded = json!({
        "kind": "Degraded", "site": "app", "release": "app.r1", "phase": "Degraded",
        "previousPhase": null, "hosts": ["h2"],
        "message": "every reachable host runs app.r1; optional hosts unreachable: h2",
        "errorTail": error_tail, "time": "T",
    });
    assert_eq!(
        normalized(wait_for(&json, 1)),
        std::slice::from_ref(&degraded)
    );
    let summary = "convoy: app is Degraded: release app.r1";
    assert_eq!(
        wait_for(&slack, 1),
        [json!({"text": summary, "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{summary}*\nevery reachable host runs app.r1; optional hosts unreachable: h2")}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": "*Site:* app"},
                {"type": "mrkdwn", "text": "*Release:* app.r1"},
                {"type": "mrkdwn", "text": "*Phase:* Degraded"},
                {"type": "mrkdwn", "text": "*Hosts:* h2"}]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("```{error_tail}```")}},
        ]})]
    );
    // The same state again (a cron run): nothing is sent.
    assert_exit(&run(&fleet), 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(json.bodies().len(), 1, "{:?}", json.bodies());
    assert_eq!(slack.bodies().len(), 1);
    // The host comes back and catches up: one message, naming it.
    fleet.lab.start_host(2);
    let back = run(&fleet);
    assert_exit(&back, 0);
    let converged = json!({
        "kind": "Converged", "site": "app", "release": "app.r1", "phase": "Converged",
        "previousPhase": "Degraded", "hosts": ["h2"], "message": "every host runs app.r1",
        "errorTail": null, "time": "T",
    });
    assert_eq!(normalized(wait_for(&json, 2)), [degraded, converged]);
    // The URLs are secrets: in no output, log line or state file.
    let mut seen = String::new();
    for o in [&out, &back] {
        seen.push_str(&stdout(o));
        seen.push_str(&stderr(o));
    }
    for file in walk(&fleet.state()) {
        seen.push_str(&String::from_utf8_lossy(&std::fs::read(file).unwrap()));
    }
    assert!(stderr(&out).contains("TRACE"), "every log level was on");
    assert!(!seen.contains("s3cr3t"), "a webhook URL leaked:\n{seen}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_failed_build_and_a_rollback_are_each_one_message() {
    let fleet = Fleet::new(3);
    let receiver = Receiver::start(Answer::Ok);
    let url_file = fleet.dir.path().join("audit-url");
    std::fs::write(&url_file, format!("{}\n", receiver.url())).unwrap();
    let docs = [notification(
        "audit",
        "json",
        &format!("{{file: {}}}", url_file.display()),
    )];
    write_fleet(&fleet, 1, &[0, 1], &[2], &docs);
    fleet.mark(1, "fail-build", true);
    assert_exit(&fleet.reconcile(&[]), 1);
    let failed = json!({
        "kind": "Failed", "site": "app", "release": "app.r1", "phase": "Failed",
        "previousPhase": null, "hosts": ["h1"],
        "message": fleet.status_json()["items"][0]["status"]["message"],
        "errorTail": last_error(&fleet, "h1"), "time": "T",
    });
    assert!(
        failed["errorTail"]
            .as_str()
            .unwrap()
            .ends_with("BUILD BROKEN on h1"),
        "{failed}"
    );
    assert_eq!(
        normalized(wait_for(&receiver, 1)),
        std::slice::from_ref(&failed)
    );
    fleet.mark(1, "fail-build", false);
    assert_exit(&fleet.reconcile(&[]), 0);
    let converged = json!({
        "kind": "Converged", "site": "app", "release": "app.r1", "phase": "Converged",
        "previousPhase": "Failed", "hosts": ["h0", "h1", "h2"],
        "message": "every host runs app.r1", "errorTail": null, "time": "T",
    });
    assert_eq!(
        normalized(wait_for(&receiver, 2)),
        [failed.clone(), converged.clone()]
    );
    // A health failure on the frontend rolls it back: one RolledBack message.
    write_fleet(&fleet, 2, &[0, 1], &[2], &docs);
    fleet.mark(2, "fail-health", true);
    assert_exit(&fleet.reconcile(&[]), 1);
    let rolled_back = json!({
        "kind": "RolledBack", "site": "app", "release": "app.r2", "phase": "Failed",
        "previousPhase": "Converged", "hosts": ["h2"],
        "message": fleet.status_json()["items"][0]["status"]["message"],
        "errorTail": last_error(&fleet, "h2"), "time": "T",
    });
    assert!(
        rolled_back["errorTail"]
            .as_str()
            .unwrap()
            .contains("UNHEALTHY h2"),
        "{rolled_back}"
    );
    assert_eq!(
        normalized(wait_for(&receiver, 3)),
        [failed, converged, rolled_back]
    );
}

#[test]
fn a_hanging_receiver_delays_a_once_run_by_at_most_a_second() {
    let fleet = Fleet::new(2);
    let hanging = Receiver::start(Answer::Hang(Duration::from_secs(90)));
    let docs = [notification("audit", "json", "{env: AUDIT_URL}")];
    write_fleet(&fleet, 1, &[0], &[1], &docs);
    let started = Instant::now();
    let out = fleet
        .reconcile_cmd(&[])
        .env("AUDIT_URL", hanging.url())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_exit(&out, 0);
    // The receiver holds the request for 90 s and a request may take 10 s: the run did not
    // wait for either (the bound leaves a loaded machine plenty of room for the deploy).
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(
        hanging.bodies().len(),
        1,
        "the message reached the receiver"
    );
    assert!(
        stderr(&out).contains("not handed over within 1s at exit"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fleet.current(1, "app").as_deref(), Some("app.r1"));
}

#[test]
fn a_missing_webhook_url_stops_the_run_before_any_host_naming_the_source_only() {
    let fleet = Fleet::new(2);
    let docs = [notification(
        "audit",
        "json",
        "{env: CONVOY_TEST_UNSET_AUDIT_URL}",
    )];
    write_fleet(&fleet, 1, &[0], &[1], &docs);
    let out = fleet
        .reconcile_cmd(&[])
        .env_remove("CONVOY_TEST_UNSET_AUDIT_URL")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("error: Notification `audit`: environment variable `CONVOY_TEST_UNSET_AUDIT_URL` (spec.webhook.urlFrom.env) is not set"),
        "{}",
        stderr(&out)
    );
    for i in 0..2 {
        assert_eq!(fleet.current(i, "app"), None, "no host touched");
    }
}

#[test]
fn a_failing_receiver_is_retried_and_counted_while_the_daemon_deploys() {
    let fleet = Fleet::new(2);
    let failing = Receiver::start(Answer::Fail);
    let url_file = fleet.dir.path().join("audit-url");
    std::fs::write(&url_file, failing.url()).unwrap();
    let docs = [notification(
        "audit",
        "json",
        &format!("{{file: {}}}", url_file.display()),
    )];
    write_fleet(&fleet, 1, &[0], &[1], &docs);
    let mut daemon = Daemon::start(&fleet, "5m");
    wait_until(Duration::from_secs(60), "the site converges", || {
        fleet.current(1, "app").as_deref() == Some("app.r1")
    });
    // The first attempt and at least one retry (after about a second) fail, and are counted.
    let failed = |text: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with(r#"convoy_notifications_total{notification="audit",result="failed"}"#)
            })
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(20),
        "two failed attempts counted",
        || failed(&daemon.get("/metrics").1) >= 2,
    );
    let metrics = daemon.get("/metrics").1;
    assert!(
        metrics.contains(r#"convoy_notifications_total{notification="audit",result="sent"} 0"#),
        "{metrics}"
    );
    assert!(failing.bodies().len() >= 2, "retried");
    // A reload whose URL cannot be read is an invalid load: the last valid state stays.
    std::fs::remove_file(&url_file).unwrap();
    write_fleet(&fleet, 2, &[0], &[1], &docs);
    wait_until(Duration::from_secs(20), "the load is refused", || {
        daemon.get("/readyz").0 == 503
    });
    let log = daemon.log_text();
    assert!(
        log.contains("Notification/audit: spec.webhook.urlFrom: Notification `audit`: failed to read the webhook URL from"),
        "{log}"
    );
    assert_eq!(
        fleet.current(1, "app").as_deref(),
        Some("app.r1"),
        "nothing deployed"
    );
    assert_eq!(daemon.terminate(Duration::from_secs(30)), Some(0));
    let log = daemon.log_text();
    assert!(log.contains("the receiver answered HTTP 500"), "{log}");
    assert!(!log.contains("s3cr3t"), "a webhook URL leaked:\n{log}");
}
