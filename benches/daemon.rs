//! The controller daemon at rest and on a change: idle CPU and RSS while it watches 1,000
//! manifests (450 sites and their releases, 100 server groups) and 200 hosts, and the
//! latency from a manifest change to the first command on a host. Hosts are `address:
//! local` with their own roots, so the figures are convoy's own, not SSH's.
//! `cargo bench --bench daemon` prints them; under `cargo test` a small smoke version runs.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BUILD: &str = "#!/bin/sh\nset -eu\necho \"$(date +%s.%N)\" >> \"/tmp/convoy-bench-trace/$CONVOY_SITE.$CONVOY_RELEASE\"\n";

struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn write_manifests(
    dir: &Path,
    hosts_root: &Path,
    app: &Path,
    groups: usize,
    sites: usize,
    bump: Option<usize>,
) {
    for g in 0..groups {
        let mut text = format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: ServerGroup\nmetadata: {{name: g{g}}}\nspec:\n  hosts:\n"
        );
        for h in 0..2 {
            let name = format!("g{g}-h{h}");
            text.push_str(&format!(
                "    - {{name: {name}, address: local, root: {}}}\n",
                hosts_root.join(&name).display()
            ));
        }
        fs::write(dir.join(format!("group-{g}.yaml")), text).unwrap();
    }
    for s in 0..sites {
        let release = if bump == Some(s) { 2 } else { 1 };
        let text = format!(
            "apiVersion: convoy.dev/v1alpha1\nkind: Site\nmetadata: {{name: site-{s}}}\nspec:\n  release: site-{s}.r{release}\n  path: /srv/site-{s}\n  stages: [{{name: web, group: g{}}}]\n  fetch: {{archive: {{path: {}}}}}\n  build: [sh bin/build]\n---\napiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: site-{s}.r1}}\nspec: {{site: site-{s}, revision: v1}}\n---\napiVersion: convoy.dev/v1alpha1\nkind: Release\nmetadata: {{name: site-{s}.r2}}\nspec: {{site: site-{s}, revision: v2}}\n",
            s % groups,
            app.display()
        );
        fs::write(dir.join(format!("site-{s}.yaml")), text).unwrap();
    }
}

fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(stream, "GET {path} HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (groups, sites, idle, changes) = if benchmarking {
        (100, 450, 20, 5)
    } else {
        (2, 4, 1, 1)
    };
    let tmp = tempfile::tempdir().unwrap();
    let (manifests, hosts, app) = (
        tmp.path().join("manifests"),
        tmp.path().join("hosts"),
        tmp.path().join("app"),
    );
    fs::create_dir_all(&manifests).unwrap();
    fs::create_dir_all(app.join("bin")).unwrap();
    fs::write(app.join("bin/build"), BUILD).unwrap();
    let _ = fs::remove_dir_all("/tmp/convoy-bench-trace");
    fs::create_dir_all("/tmp/convoy-bench-trace").unwrap();
    write_manifests(&manifests, &hosts, &app, groups, sites, None);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let daemon = Stopped(
        Command::new(env!("CARGO_BIN_EXE_convoy"))
            .args(["reconcile", "-f"])
            .arg(&manifests)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--max-parallel",
                "16",
            ])
            // The app tree is outside the manifest directory: allowed explicitly.
            .arg("--archive-root")
            .arg(&app)
            .stdout(Stdio::null())
            .stderr(fs::File::create(tmp.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.0.id();
    let converged = |n: usize| {
        let metrics = get(port, "/metrics");
        metrics
            .lines()
            .filter(|l| l.starts_with("convoy_site_converged{") && l.ends_with(" 1"))
            .count()
            >= n
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while !converged(sites) {
        assert!(
            Instant::now() < deadline,
            "no convergence; see {}",
            tmp.path().join("daemon.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    let ticks_per_second = 100.0; // USER_HZ on Linux
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(idle));
    let cpu = (cpu_ticks(pid) - c0) as f64 / ticks_per_second / t0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_kib(pid);

    let mut latencies = vec![];
    for change in 0..changes {
        let site = change * 7 % sites;
        let trace =
            Path::new("/tmp/convoy-bench-trace").join(format!("site-{site}.site-{site}.r2"));
        let changed = now();
        write_manifests(&manifests, &hosts, &app, groups, sites, Some(site));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !trace.exists() {
            assert!(Instant::now() < deadline, "no build of site-{site} r2");
            std::thread::sleep(Duration::from_millis(5));
        }
        let first_command: f64 = fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .filter_map(|l| l.parse().ok())
            .fold(f64::MAX, f64::min);
        latencies.push(first_command - changed);
        // Back to r1 everywhere before the next change.
        write_manifests(&manifests, &hosts, &app, groups, sites, None);
        std::thread::sleep(Duration::from_secs(2));
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "daemon watching {} manifests and {} hosts:",
        groups + 2 * sites,
        groups * 2
    );
    println!("  first convergence of {sites} sites: {first:.1?}");
    println!(
        "  idle CPU over {idle}s: {cpu:.2}% of one core; RSS {:.1} MiB",
        rss as f64 / 1024.0
    );
    println!(
        "  manifest change -> first host command: median {:.0} ms, max {:.0} ms ({changes} changes)",
        latencies[latencies.len() / 2] * 1000.0,
        latencies.last().unwrap() * 1000.0
    );
}
