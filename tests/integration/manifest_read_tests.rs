//! Reading manifests is bounded: special files, links out of the manifest directory and
//! oversized files are clear errors that name the file, never a hang or a memory blow-up.
//! Every run here is killed after a few seconds, so a regression fails instead of hanging.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const GROUP: &str = "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {name: web}\n\
spec:\n  hosts:\n    - {name: w1, address: local}\n";

/// `convoy ARGS` in `dir`, killed (by PID) if it has not exited within `limit`.
pub fn convoy_bounded(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(args)
        .current_dir(dir)
        .env_remove("CONVOY_MANIFESTS")
        .env_remove("CONVOY_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    // The watchdog kills only this child, and only if it is still running.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    assert!(
        started.elapsed() < limit,
        "convoy {args:?} did not finish within {limit:?} (killed)"
    );
    out
}

fn validate(dir: &Path, target: &str) -> (Option<i32>, String) {
    let out = convoy_bounded(dir, &["validate", "-f", target], Duration::from_secs(5));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifest_dir(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("m");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("group.yaml"), GROUP).unwrap();
    dir
}

#[test]
fn a_symlink_to_dev_zero_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_dir(tmp.path());
    symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let (code, err) = validate(tmp.path(), "m");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("m/zero.yaml: failed to read manifest:") && err.contains("outside"),
        "{err}"
    );
    // Named directly with -f (no root to stay inside): refused as a special file.
    let (code, err) = validate(tmp.path(), "m/zero.yaml");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "m/zero.yaml: failed to read manifests: not a regular file or directory (a character device)"
        ),
        "{err}"
    );
}

#[test]
fn a_fifo_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_dir(tmp.path());
    let fifo = dir.join("pipe.yaml");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let (code, err) = validate(tmp.path(), "m");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("m/pipe.yaml: failed to read manifest: not a regular file (a FIFO)"),
        "{err}"
    );
    // A link to the FIFO inside the root is refused the same way, and so is `reconcile --once`.
    symlink("pipe.yaml", dir.join("link.yaml")).unwrap();
    let out = convoy_bounded(
        tmp.path(),
        &["reconcile", "--once", "-f", "m", "--state-dir", "state"],
        Duration::from_secs(5),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("m/link.yaml: failed to read manifest: not a regular file (a FIFO)"),
        "{err}"
    );
}

#[test]
fn an_oversized_file_is_refused_naming_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_dir(tmp.path());
    // A comment padded past 4 MiB: valid YAML, so only the size can reject it.
    let mut big = String::from(GROUP)
        .replace("web", "big")
        .replace("w1", "b1");
    big.push_str(&format!("# {}\n", "x".repeat(4 * 1024 * 1024)));
    fs::write(dir.join("big.yaml"), big).unwrap();
    let (code, err) = validate(tmp.path(), "m");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("m/big.yaml: failed to read manifest: file is larger than the limit of 4 MiB"),
        "{err}"
    );
}

#[test]
fn symlinks_must_stay_inside_the_manifest_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = manifest_dir(tmp.path());
    let outside = tmp.path().join("elsewhere.yaml");
    fs::write(&outside, GROUP.replace("web", "other").replace("w1", "o1")).unwrap();
    symlink(&outside, dir.join("escape.yaml")).unwrap();
    let (code, err) = validate(tmp.path(), "m");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("m/escape.yaml: failed to read manifest: it is a symlink to")
            && err.contains("outside the manifest directory"),
        "{err}"
    );
    // A link that stays inside (even through `..` and into a hidden folder) is fine.
    fs::remove_file(dir.join("escape.yaml")).unwrap();
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::create_dir_all(dir.join(".shared")).unwrap();
    fs::write(
        dir.join(".shared/other.yaml"),
        GROUP.replace("web", "other").replace("w1", "o1"),
    )
    .unwrap();
    symlink("../.shared/other.yaml", dir.join("sub/other.yaml")).unwrap();
    let out = convoy_bounded(tmp.path(), &["validate", "-f", "m"], Duration::from_secs(5));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 sites, 2 server groups, 0 releases, 2 hosts: valid\n"
    );
}
