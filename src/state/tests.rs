//! Unit tests of the state dir: the controller lock, atomic files, attempts, revisions and
//! history, on real temporary directories.

use std::time::Duration;

use super::*;
use crate::plan::EventKind;
use crate::status::Phase;
use crate::status::fixtures::{event, host, status};

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn lock_is_exclusive_and_released_on_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state"); // created by lock()
    let first = StateDir::lock(&dir).unwrap();
    // A second open file description in the same process conflicts, like another process.
    let err = StateDir::lock(&dir).unwrap_err();
    let StateError::Locked {
        dir: locked,
        holder,
    } = &err
    else {
        panic!("expected Locked, got {err:?}");
    };
    assert_eq!(locked, &dir);
    assert!(
        holder.starts_with(&format!("pid {} on ", std::process::id())),
        "{holder}"
    );
    assert!(
        err.to_string()
            .starts_with("failed to lock state directory")
    );
    drop(first);
    // Another test thread may fork at this instant; its child holds the lock's file
    // description until it execs (close-on-exec), so allow a brief retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let again = loop {
        match StateDir::lock(&dir) {
            Ok(again) => break again,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("lock not released after drop: {e}"),
        }
    };
    // The new holder rewrote the lock file rather than appending to it.
    let content = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
    assert_eq!(content.lines().count(), 1, "{content}");
    drop(again);
}

/// Runs only as the child of `lock_is_exclusive_across_processes`: holds the lock until
/// killed.
#[test]
fn lock_child_process() {
    let Ok(dir) = std::env::var("CONVOY_STATE_LOCK_CHILD") else {
        return;
    };
    let _state = StateDir::lock(dir).unwrap();
    println!("CHILD-LOCKED");
    io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn lock_is_exclusive_across_processes_and_freed_by_sigkill() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "state::tests::lock_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CONVOY_STATE_LOCK_CHILD", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = io::BufReader::new(child.stdout.take().unwrap());
    let locked = stdout.lines().any(|l| l.unwrap().contains("CHILD-LOCKED"));
    assert!(locked, "child never took the lock");
    let err = StateDir::lock(tmp.path()).unwrap_err();
    let StateError::Locked { holder, .. } = &err else {
        panic!("expected Locked, got {err:?}");
    };
    assert!(
        holder.starts_with(&format!("pid {} on ", child.id())),
        "{holder}"
    );
    child.kill().unwrap(); // SIGKILL: no destructor runs, the OS drops the lock
    child.wait().unwrap();
    StateDir::lock(tmp.path()).unwrap();
}

#[test]
fn status_round_trips_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    assert_eq!(state.load_status("web"), None);
    let mut s = status(Phase::Degraded, "r2");
    s.hosts.push(host("web1", "frontend", Some("r2"), true));
    s.last_transition_time = Some("2025-11-25T00:00:00Z".into());
    state.save_status("web", &s).unwrap();
    s.message = "second write".into();
    state.save_status("web", &s).unwrap();
    state
        .save_status("api", &status(Phase::Converged, "r1"))
        .unwrap();
    assert_eq!(state.load_status("web"), Some(s.clone()));
    let all = state.all_statuses();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(files_in(&tmp.path().join("sites/web")), ["status.json"]);
    assert!(state.take_warnings().is_empty());
}

#[test]
fn corrupt_status_is_absent_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    state
        .save_status("ok", &status(Phase::Converged, "r1"))
        .unwrap();
    fs::create_dir_all(tmp.path().join("sites/bad")).unwrap();
    fs::write(tmp.path().join("sites/bad/status.json"), "{\"phase\": ").unwrap();
    assert_eq!(state.load_status("bad"), None);
    let warnings = state.take_warnings();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].starts_with("failed to parse `") && warnings[0].contains("bad"),
        "{warnings:?}"
    );
    assert_eq!(state.all_statuses().len(), 1);
    assert_eq!(state.take_warnings().len(), 1);
    assert!(state.take_warnings().is_empty());
}

#[test]
fn site_names_that_escape_the_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    for bad in ["", ".", "..", "../x", "a/b"] {
        let err = state
            .save_status(bad, &status(Phase::Converged, "r"))
            .unwrap_err();
        assert!(
            matches!(err, StateError::InvalidSite { .. }),
            "{bad}: {err}"
        );
    }
    assert_eq!(state.load_status(".."), None);
    assert_eq!(state.take_warnings().len(), 1);
}

#[test]
fn attempts_count_per_desired_key_and_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    assert_eq!(state.attempts("web", "k1").attempts, 0);
    state.record_revision("web", "r1", "abc123").unwrap();
    assert_eq!(
        state
            .record_failure("web", "k1", "r1", "build failed")
            .unwrap(),
        1
    );
    assert_eq!(
        state
            .record_failure("web", "k1", "r1", "health failed")
            .unwrap(),
        2
    );
    let a = state.attempts("web", "k1");
    assert_eq!(
        a,
        Attempts {
            desired_key: "k1".into(),
            release: "r1".into(),
            attempts: 2,
            last_error: Some("health failed".into()),
            revision: Some("abc123".into()),
        }
    );
    assert!(a.is_held(2) && !a.is_held(3));
    // The desired state changed: the hold is lifted, counting starts again.
    assert_eq!(state.attempts("web", "k2").attempts, 0);
    assert_eq!(state.record_failure("web", "k2", "r2", "boom").unwrap(), 1);
    state.reset_attempts("web").unwrap();
    state.reset_attempts("web").unwrap(); // idempotent
    assert_eq!(state.attempts("web", "k2").attempts, 0);
    let raw: serde_json::Value = {
        state.record_failure("web", "k2", "r2", "x").unwrap();
        serde_json::from_slice(&fs::read(tmp.path().join("sites/web/attempts.json")).unwrap())
            .unwrap()
    };
    assert_eq!(
        raw,
        serde_json::json!({"desiredKey": "k2", "release": "r2", "attempts": 1,
                               "lastError": "x", "revision": null})
    );
    assert_eq!(
        files_in(&tmp.path().join("sites/web")),
        ["attempts.json", "revisions.json"]
    );
}

#[test]
fn revisions_are_recorded_once_per_release() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    assert_eq!(state.revision("web", "r1"), None);
    assert_eq!(state.record_revision("web", "r1", "aaa").unwrap(), "aaa");
    // The branch moved meanwhile: the first resolution stays.
    assert_eq!(state.record_revision("web", "r1", "bbb").unwrap(), "aaa");
    assert_eq!(state.record_revision("web", "r2", "ccc").unwrap(), "ccc");
    assert_eq!(state.revision("web", "r1").as_deref(), Some("aaa"));
    assert_eq!(state.revision("web", "r2").as_deref(), Some("ccc"));
    assert_eq!(files_in(&tmp.path().join("sites/web")), ["revisions.json"]);
}

#[test]
fn the_first_applied_revision_of_a_release_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    assert_eq!(state.applied_revision("web", "r1"), None);
    state.record_applied_revision("web", "r1", "v1").unwrap();
    state.record_applied_revision("web", "r1", "v2").unwrap();
    state.record_applied_revision("web", "r2", "main").unwrap();
    assert_eq!(state.applied_revision("web", "r1").as_deref(), Some("v1"));
    assert_eq!(state.applied_revision("web", "r2").as_deref(), Some("main"));
    assert_eq!(files_in(&tmp.path().join("sites/web")), ["applied.json"]);
}

#[test]
fn history_appends_and_skips_a_torn_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::lock(tmp.path()).unwrap();
    let e1 = event("web", "2025-11-25T00:00:01Z", EventKind::Built).host("web1");
    let e2 = event("web", "2025-11-25T00:00:02Z", EventKind::Switched);
    let other = event("api", "2025-11-25T00:00:03Z", EventKind::Converged);
    state
        .append_history(&[e1.clone(), other.clone(), e2.clone()])
        .unwrap();
    assert_eq!(state.history("web"), [e1.clone(), e2.clone()]);
    assert_eq!(state.history("api"), [other]);
    assert_eq!(state.history("none"), []);

    // A controller killed mid-write leaves half a line.
    let path = tmp.path().join("sites/web/history.jsonl");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(br#"{"time":"2025-11-25T00:00:0"#).unwrap();
    drop(file);
    assert_eq!(state.history("web"), [e1.clone(), e2.clone()]);
    assert!(state.take_warnings().is_empty());

    // The next append cuts the torn line off instead of gluing onto it.
    let e3 = event("web", "2025-11-25T00:00:04Z", EventKind::CleanedUp);
    state.append_history(std::slice::from_ref(&e3)).unwrap();
    assert_eq!(state.history("web"), [e1.clone(), e2.clone(), e3.clone()]);
    assert!(state.take_warnings().is_empty());

    // A complete event that only lost its newline is kept.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    let e4 = event("web", "2025-11-25T00:00:05Z", EventKind::Blocked);
    file.write_all(&serde_json::to_vec(&e4).unwrap()).unwrap();
    drop(file);
    let e5 = event("web", "2025-11-25T00:00:06Z", EventKind::Converged);
    state.append_history(std::slice::from_ref(&e5)).unwrap();
    assert_eq!(state.history("web"), [e1, e2, e3, e4, e5]);
    assert!(state.take_warnings().is_empty());
}

#[test]
fn history_event_json_shape() {
    let e = event("web", "2025-11-25T00:00:01Z", EventKind::HealthFailed)
        .host("web1")
        .stage("frontend")
        .detail("exit 7");
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        serde_json::json!({"time": "2025-11-25T00:00:01Z", "site": "web", "release": "r1",
                "host": "web1", "stage": "frontend", "action": "HealthFailed",
                "detail": "exit 7", "controller": "ctl:1"})
    );
    let id = controller_id();
    assert!(id.ends_with(&format!(":{}", std::process::id())), "{id}");
}

#[test]
fn instance_id_is_created_once_by_the_lock_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    assert_eq!(
        StateDir::open_read_only(&dir).instance_id().unwrap(),
        None,
        "readers never create it"
    );
    let locked = StateDir::lock(&dir).unwrap();
    let id = locked.instance_id().unwrap().unwrap();
    assert_eq!(id.len(), 12);
    assert_eq!(locked.instance_id().unwrap().as_deref(), Some(id.as_str()));
    drop(locked);
    assert_eq!(
        StateDir::open_read_only(&dir).instance_id().unwrap(),
        Some(id)
    );
}

#[test]
fn an_instance_id_that_cannot_be_saved_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let locked = StateDir::lock(&dir).unwrap();
    // A directory where the file goes: the rename over it fails, even as root.
    fs::create_dir_all(dir.join(INSTANCE_FILE).join("x")).unwrap();
    let e = locked.instance_id().unwrap_err();
    assert!(
        e.to_string().starts_with("failed to write `") && e.to_string().contains(INSTANCE_FILE),
        "{e}"
    );
}
