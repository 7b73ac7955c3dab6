//! The bundled `examples/wordpress-fleet` (ten WordPress sites, `licensing` first, the
//! other nine `dependsOn` it) deployed on ten lab hosts over real sshd with `--max-sites 2`.
//! The order is read from the hosts: each site's activate and health scripts append a
//! timestamped line to a log in the site's shared directory.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use crate::fleet::{Fleet, assert_exit};
use crate::lab::LAB_MOUNT;

const SITES: [&str; 10] = [
    "licensing",
    "blog-bravo",
    "blog-charlie",
    "blog-delta",
    "blog-echo",
    "blog-foxtrot",
    "blog-golf",
    "blog-hotel",
    "blog-india",
    "blog-juliett",
];

/// The example, copied, with its ServerGroup pointed at the lab's ten hosts and its site
/// paths under the lab's per-host mount.
fn example_on_the_lab(fleet: &Fleet, root: &Path) -> std::path::PathBuf {
    let manifests = crate::util::bundled_manifests_in(root);
    let example = manifests.join("examples/wordpress-fleet");
    let hosts: Vec<usize> = (0..10).collect();
    fs::write(
        example.join("fleet.yaml"),
        fleet.group("wp-fleet", &hosts, Some(4)),
    )
    .unwrap();
    let sites = example.join("sites.yaml");
    let text = fs::read_to_string(&sites).unwrap();
    assert_eq!(text.matches("dependsOn: [licensing]").count(), 9);
    fs::write(
        &sites,
        text.replace("path: /var/www/", &format!("path: {LAB_MOUNT}/www/")),
    )
    .unwrap();
    example
}

fn deploy(fleet: &Fleet, example: &Path, state: &Path, extra: &[&str]) -> (Output, f64) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_convoy"))
        .args(["reconcile", "--once", "--timeout", "10m", "-f"])
        .arg(example)
        .arg("--state-dir")
        .arg(state)
        .arg("--known-hosts")
        .arg(fleet.lab.known_hosts())
        .args(extra)
        .env_remove("CONVOY_MANIFESTS")
        .output()
        .unwrap();
    (out, started.elapsed().as_secs_f64())
}

/// `(kind, site, time)` of every log line of `site` on every host.
fn events(fleet: &Fleet, site: &str) -> Vec<(String, f64)> {
    let mut all = vec![];
    for i in 0..10 {
        let log = fleet
            .lab
            .host_dir(i)
            .join(format!("www/{site}/shared/wp-content/uploads/.reloads.log"));
        let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(w[1], site, "{line}");
            all.push((w[0].to_string(), w[3].parse().unwrap()));
        }
    }
    all
}

/// When a site started going live (its first activation) and was verified everywhere (its
/// last health check).
fn live_window(fleet: &Fleet, site: &str) -> (f64, f64) {
    let ev = events(fleet, site);
    let times =
        |kind: &str| -> Vec<f64> { ev.iter().filter(|e| e.0 == kind).map(|e| e.1).collect() };
    let start = times("reloaded").into_iter().fold(f64::INFINITY, f64::min);
    let end = times("healthy").into_iter().fold(0.0, f64::max);
    assert_eq!(
        ev.iter().filter(|e| e.0 == "healthy").count(),
        10,
        "{site}: one health check per host"
    );
    (start, end)
}

/// The most windows open at one instant.
fn most_at_once(windows: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = windows
        .iter()
        .flat_map(|&(a, b)| [(a, 1), (b, -1)])
        .collect();
    edges.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Deploys the example on a fresh ten-host lab with `flags`: every site is live on every
/// host. Returns the lab (its hosts hold the logs), the deploy's wall time, and when each
/// site after `licensing` went live.
fn deploy_the_example(flags: &[&str]) -> (Fleet, tempfile::TempDir, f64, Vec<(f64, f64)>) {
    let fleet = Fleet::new(10);
    let root = tempfile::tempdir().unwrap();
    let example = example_on_the_lab(&fleet, root.path());
    let (out, secs) = deploy(&fleet, &example, &root.path().join("state"), flags);
    assert_exit(&out, 0);
    for i in 0..10 {
        for site in SITES {
            let current = fleet.lab.host_dir(i).join(format!("www/{site}/current"));
            assert_eq!(
                fs::read_link(&current).unwrap(),
                Path::new("releases/r2026-11-20.1"),
                "{site} on h{i}"
            );
        }
    }
    let windows = SITES[1..].iter().map(|s| live_window(&fleet, s)).collect();
    (fleet, root, secs, windows)
}

#[test]
fn the_wordpress_fleet_goes_live_licensing_first_then_two_sites_at_a_time() {
    let (fleet, _root, secs, windows) = deploy_the_example(&["--max-sites", "2"]);
    eprintln!("wordpress-fleet on 10 lab hosts with --max-sites 2: {secs:.1} s");
    let (_, licensing_verified) = live_window(&fleet, "licensing");
    for (site, (start, _)) in SITES[1..].iter().zip(&windows) {
        assert!(
            *start > licensing_verified,
            "{site} went live at {start} before licensing was healthy everywhere ({licensing_verified})"
        );
    }
    let most = most_at_once(&windows);
    eprintln!("most sites going live at once: {most}");
    assert!(
        most <= 2,
        "{most} sites went live at once with --max-sites 2"
    );
}

/// The cost of safety, for the record (run by hand: `cargo test --test integration
/// wordpress_fleet -- --ignored --nocapture`): the same deploy with no fleet-wide limit.
#[test]
#[ignore = "a measurement, run by hand"]
fn the_wordpress_fleet_without_limits() {
    let (_fleet, _root, secs, windows) = deploy_the_example(&["--max-builds-per-host", "10"]);
    eprintln!(
        "wordpress-fleet on 10 lab hosts without limits: {secs:.1} s, most sites going live at once: {}",
        most_at_once(&windows)
    );
}
