//! An archive upload streams from disk: convoy's peak memory does not grow with the archive
//! size times the number of hosts. Measured on the real binary (`VmHWM` of its process)
//! deploying a ~100 MB incompressible archive to 4 lab hosts.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::fleet::{Fleet, assert_exit};
use crate::lab::LAB_MOUNT;

/// Peak resident memory (kB) of `cmd`, read from `/proc/<pid>/status` until it exits.
fn peak_rss_kb(mut cmd: Command) -> (std::process::Output, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        // VmHWM is the process's own high-water mark: the last reading before exit is it.
        if let Ok(text) = fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::process::Output {
        status,
        stdout: fs::read(out).unwrap(),
        stderr: fs::read(err).unwrap(),
    };
    (output, peak)
}

#[test]
fn a_100_mb_archive_to_4_hosts_is_streamed_not_held_in_memory() {
    let fleet = Fleet::new(4);
    let manifests = fleet.dir.path().join("manifests");
    let blob = fleet.dir.path().join("src");
    fs::create_dir_all(&blob).unwrap();
    let made = Command::new("sh")
        .arg("-c")
        .arg("head -c 100000000 /dev/urandom > src/blob && tar -C src -cf - blob | gzip -1 > manifests/app.tar.gz")
        .current_dir(fleet.dir.path())
        .status()
        .unwrap();
    assert!(made.success());
    let group = fleet.group("web", &[0, 1, 2, 3], None);
    let site = format!(
        "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: app}}\nspec:\n  release: r1\n  path: {LAB_MOUNT}/sites/app\n  stages: [{{name: web, group: web}}]\n  fetch:\n    archive: {{path: app.tar.gz}}\n"
    );
    let release = "apiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {name: r1}\nspec: {site: app, revision: v1}\n".to_string();
    fleet.write(&[group, site, release]);
    let (out, peak_kb) = peak_rss_kb(fleet.reconcile_cmd(&["--timeout", "5m"]));
    assert_exit(&out, 0);
    for i in 0..4 {
        let blob = fleet.lab.host_dir(i).join("sites/app/current/blob");
        assert_eq!(fs::metadata(&blob).unwrap().len(), 100_000_000, "h{i}");
    }
    let archive_mb = fs::metadata(manifests.join("app.tar.gz")).unwrap().len() / 1_000_000;
    eprintln!(
        "archive_rss: {archive_mb} MB archive to 4 hosts: convoy peak RSS {} MB",
        peak_kb / 1024
    );
    // Held in memory, one archive alone is 100 MB (and a copy per host came on top).
    assert!(
        peak_kb < 60 * 1024,
        "peak RSS {} MB: the archive was held in memory",
        peak_kb / 1024
    );
}
