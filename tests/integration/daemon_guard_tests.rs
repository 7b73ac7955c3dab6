//! The daemon stays controllable under hostile or broken conditions: special files in the
//! manifests, a stalled control loop, a flood of idle HTTP connections, manifests that
//! cannot be read for a while. Runs the real binary on `address: local` hosts (no sshd);
//! every wait is bounded and the daemon is stopped by PID.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon_tests::wait_until;

/// The daemon's file-descriptor limit in these tests: the common default soft limit.
const FD_LIMIT: u64 = 1024;

pub const GROUP: &str = "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {name: web}\n\
spec:\n  hosts:\n    - {name: w1, address: local}\n";

pub struct LocalDaemon {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
}

impl LocalDaemon {
    fn start(dir: &Path, resync: &str) -> LocalDaemon {
        let args = ["-f", "m", "--state-dir", "state", "--resync", resync];
        LocalDaemon::spawn(dir, &args, &[])
    }

    /// `convoy reconcile ARGS --metrics-addr …` run from `dir` with `env` added (and no
    /// `RUST_LOG` or `CONVOY_*` of the test's own), its stderr in a log file.
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> LocalDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("daemon-{port}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_convoy"));
        command
            .current_dir(dir)
            .arg("reconcile")
            .args(args)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env_remove("CONVOY_MANIFESTS")
            .env_remove("CONVOY_STATE_DIR")
            .env_remove("CONVOY_LOG_FORMAT")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: FD_LIMIT,
                    rlim_max: FD_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let daemon = LocalDaemon {
            child: Some(command.spawn().unwrap()),
            log,
            port,
        };
        wait_until(Duration::from_secs(15), "daemon serves /healthz", || {
            daemon.get("/healthz").0 == 200
        });
        daemon
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// (status code, body) of a GET, bounded to 5 s.
    pub fn get(&self, path: &str) -> (u16, String) {
        crate::util::http_request(self.port, "GET", path, &[], b"")
    }

    /// SIGTERM, then wait (bounded); the exit code, or `None` if it had to be killed.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn group_only(tmp: &Path) {
    fs::create_dir_all(tmp.join("m")).unwrap();
    fs::write(tmp.join("m/group.yaml"), GROUP).unwrap();
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn a_fifo_in_the_manifests_is_invalid_and_sigterm_still_stops_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    group_only(tmp.path());
    let mut daemon = LocalDaemon::start(tmp.path(), "5m");
    wait_until(Duration::from_secs(10), "ready", || {
        daemon.get("/readyz").0 == 200
    });
    mkfifo(&tmp.path().join("m/pipe.yaml"));
    wait_until(Duration::from_secs(10), "the FIFO is reported", || {
        daemon
            .log_text()
            .contains("m/pipe.yaml: failed to read manifest: not a regular file (a FIFO)")
    });
    assert!(
        daemon
            .log_text()
            .contains("still acting on the last valid state:"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.get("/readyz").0, 503);
    assert_eq!(daemon.get("/healthz").0, 200, "the loop still turns");
    assert_eq!(
        daemon.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log_text()
    );
}

/// Stalls the loop the way a hung state-dir filesystem would: the state file it reads on a
/// reload is replaced by a FIFO nobody writes to, so that read blocks.
#[test]
fn healthz_reports_a_stalled_control_loop_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    group_only(tmp.path());
    // --resync 2s: the loop counts as stalled after 5 s without a turn (the lower bound).
    let mut daemon = LocalDaemon::start(tmp.path(), "2s");
    let state = tmp.path().join("state/manifests.json");
    wait_until(Duration::from_secs(10), "manifests recorded", || {
        state.exists()
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(daemon.get("/healthz").0, 200, "an idle loop is healthy");
    fs::remove_file(&state).unwrap();
    mkfifo(&state);
    fs::write(tmp.path().join("m/group.yaml"), GROUP.replace("w1", "w2")).unwrap();
    let stalled = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "/healthz reports the stall",
        || daemon.get("/healthz").0 == 503,
    );
    let (_, body) = daemon.get("/healthz");
    eprintln!(
        "/healthz 503 after {:.1}s: {body}",
        stalled.elapsed().as_secs_f64()
    );
    assert!(body.contains("control loop stalled"), "{body}");
    assert_eq!(daemon.get("/metrics").0, 200, "metrics are still served");
    // Unblock the read: open the FIFO for writing (the daemon is its reader) and close it.
    wait_until(
        Duration::from_secs(5),
        "the stalled read is released",
        || {
            fs::OpenOptions::new()
                .write(true)
                .custom_flags_nonblock()
                .open(&state)
                .is_ok()
        },
    );
    wait_until(Duration::from_secs(10), "/healthz recovers", || {
        daemon.get("/healthz").0 == 200
    });
    assert_eq!(daemon.terminate(Duration::from_secs(10)), Some(0));
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    /// Opening a FIFO for writing without a reader fails at once instead of waiting.
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

#[test]
fn an_idle_connection_flood_neither_exhausts_fds_nor_delays_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    group_only(tmp.path());
    let daemon = LocalDaemon::start(tmp.path(), "5m");
    let before = daemon.open_fds();
    // 1,100 clients that send half a request line and then nothing.
    let flood_started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", daemon.port)) else {
            continue;
        };
        let _ = stream.write_all(b"GET /metr");
        idle.push(stream);
    }
    assert!(idle.len() >= 1000, "only {} connections opened", idle.len());
    let mut worst = Duration::ZERO;
    let mut peak = 0;
    for _ in 0..5 {
        let asked = Instant::now();
        let (code, body) = daemon.get("/metrics");
        let took = asked.elapsed();
        worst = worst.max(took);
        peak = peak.max(daemon.open_fds());
        assert_eq!(code, 200, "/metrics under the flood");
        assert!(body.contains("convoy_manifests_valid"), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{} idle connections opened in {:.2}s; daemon fds: {before} before, peak {peak}; \
         worst /metrics latency under the flood: {} ms",
        idle.len(),
        flood_started.elapsed().as_secs_f64(),
        worst.as_millis()
    );
    assert!(worst < Duration::from_secs(2), "/metrics took {worst:?}");
    assert!(
        (peak as u64) < FD_LIMIT / 4,
        "the daemon holds {peak} fds (limit {FD_LIMIT})"
    );
    // Every idle connection is closed by the server: evicted, or timed out reading headers.
    let deadline = Instant::now() + Duration::from_secs(15);
    for stream in &mut idle {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let mut buf = [0u8; 512];
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break false,
                Err(_) => break true,
            }
        };
        assert!(closed, "an idle connection was still open after 15 s");
    }
    drop(idle);
    assert_eq!(daemon.get("/healthz").0, 200);
}

/// The bundled example on local hosts under `root`, with `releases.yaml` a dangling link
/// into a hidden folder (which the watcher ignores): reading it fails with an I/O error.
fn example_with_dangling_releases(root: &Path) {
    let dir = root.join("m");
    fs::create_dir_all(dir.join(".pending")).unwrap();
    for file in ["jobs-manager.yaml", "releases.yaml"] {
        let text = crate::util::bundled_file(file).replace(
            "/tmp/convoy-demo",
            &root.join("hosts").display().to_string(),
        );
        let target = if file == "releases.yaml" {
            root.join("releases.yaml.later")
        } else {
            dir.join(file)
        };
        fs::write(target, text).unwrap();
    }
    std::os::unix::fs::symlink(".pending/releases.yaml", dir.join("releases.yaml")).unwrap();
    crate::util::copy_demo_into(&dir);
}

#[test]
fn a_reload_that_failed_to_read_is_retried_until_it_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    example_with_dangling_releases(tmp.path());
    let daemon = LocalDaemon::start(tmp.path(), "5m");
    wait_until(
        Duration::from_secs(10),
        "the read failure is reported",
        || {
            daemon
                .log_text()
                .contains("reading them failed, retrying in")
        },
    );
    assert!(
        daemon
            .log_text()
            .contains("m/releases.yaml: failed to read manifest: No such file or directory"),
        "{}",
        daemon.log_text()
    );
    // The cure is invisible to the watcher (a hidden folder): only a retry can see it.
    fs::rename(
        tmp.path().join("releases.yaml.later"),
        tmp.path().join("m/.pending/releases.yaml"),
    )
    .unwrap();
    let current = tmp.path().join("hosts/sched1/srv/jobs-manager/current");
    wait_until(Duration::from_secs(60), "the release is deployed", || {
        fs::read_link(&current).is_ok()
    });
    wait_until(Duration::from_secs(5), "ready", || {
        daemon.get("/readyz").0 == 200
    });
    assert!(daemon.log_text().contains("manifests loaded"));
}
