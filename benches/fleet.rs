//! A full two-phase deploy and a no-op pass of `convoy reconcile --once` over 50 real sshd
//! lab hosts, next to what users compare it with: a hand-written parallel ssh script doing
//! the same work (fetch+build everywhere, then switch+activate+health everywhere), and one
//! bare `ssh host true` per host. `cargo bench --bench fleet` prints the figures; under
//! `cargo test` it runs a two-host smoke version.

#[path = "../tests/integration/fleet.rs"]
mod fleet;
#[path = "../tests/integration/lab.rs"]
mod lab;
#[path = "../tests/integration/util.rs"]
mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet::{Fleet, SiteDef};
use lab::LAB_MOUNT;

fn timed(what: &str, mut cmd: Command) -> Duration {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// The same work as convoy's two phases, written the way a careful operator would in bash:
/// every host in parallel, one connection per phase per host, a bare git mirror per host.
fn hand_script(fleet: &Fleet, hosts: usize, release: &str, tag: &str) -> String {
    let repo = fleet.repo().display().to_string();
    let p = format!("{LAB_MOUNT}/sites/hand");
    let build = format!(
        "set -e; P={p}; mkdir -p $P/releases $P/shared $P/.convoy; \
         [ -d $P/.convoy/mirror.git ] || git clone -q --mirror {repo} $P/.convoy/mirror.git; \
         git -C $P/.convoy/mirror.git fetch -q origin '+refs/*:refs/*'; \
         rm -rf $P/releases/{release}; mkdir $P/releases/{release}; \
         git -C $P/.convoy/mirror.git archive {tag} | tar -x -C $P/releases/{release}; \
         cd $P/releases/{release}; CONVOY_SITE=hand CONVOY_HOST=$(hostname) CONVOY_RELEASE={release} sh bin/build; \
         touch .complete"
    );
    let switch = format!(
        "set -e; P={p}; cd $P; ln -sfn releases/{release} current.tmp && mv -T current.tmp current; \
         cd current; CONVOY_SITE=hand CONVOY_HOST=$(hostname) CONVOY_RELEASE={release} sh bin/activate; sh bin/health"
    );
    let mut script = String::from("set -e\npids=''\n");
    for phase in [&build, &switch] {
        for i in 0..hosts {
            let args: Vec<String> = fleet
                .lab
                .ssh_args(i)
                .iter()
                .map(|a| format!("'{a}'"))
                .collect();
            // Single-quoted: the remote shell, not this one, expands `$P`.
            let remote = format!("'{}'", phase.replace('\'', "'\\''"));
            script.push_str(&format!(
                "ssh {} {remote} & pids=\"$pids $!\"\n",
                args.join(" ")
            ));
        }
        script.push_str("for p in $pids; do wait $p; done; pids=''\n");
    }
    script
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let hosts = if benchmarking { 50 } else { 2 };
    let fleet = Fleet::new(hosts);
    let all: Vec<usize> = (0..hosts).collect();
    let site = |version: u32| {
        let mut docs = vec![fleet.group("fleet", &all, None)];
        docs.extend(fleet.site(&SiteDef {
            version,
            stages: &[("web", "fleet", false, false)],
            max_parallel: 64,
            health: true,
            ..SiteDef::default()
        }));
        docs
    };

    // Three rounds, alternating convoy and the hand script: medians, on a noisy 2-core box.
    let rounds = if benchmarking { 3 } else { 1 };
    let (mut deploys, mut seconds, mut noops, mut hand_colds, mut hand_warms, mut bares) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Fresh paths each round, so "cold" really starts from nothing on every host.
        for i in 0..hosts {
            let _ = std::fs::remove_dir_all(fleet.lab.host_dir(i).join("sites"));
        }
        let _ = std::fs::remove_dir_all(fleet.state());
        fleet.write(&site(1));
        deploys.push(timed(
            "convoy deploy",
            fleet.reconcile_cmd(&["--max-parallel", "64"]),
        ));
        noops.push(timed(
            "convoy no-op",
            fleet.reconcile_cmd(&["--max-parallel", "64"]),
        ));
        fleet.write(&site(2));
        seconds.push(timed(
            "convoy second deploy",
            fleet.reconcile_cmd(&["--max-parallel", "64"]),
        ));
        for i in 0..hosts {
            assert_eq!(
                fleet.current(i, "app").as_deref(),
                Some("app.r2"),
                "round {round}"
            );
        }
        let mut hand = Command::new("bash");
        hand.arg("-c").arg(hand_script(&fleet, hosts, "r1", "v1"));
        hand_colds.push(timed("hand script", hand));
        let mut hand = Command::new("bash");
        hand.arg("-c").arg(hand_script(&fleet, hosts, "r2", "v2"));
        hand_warms.push(timed("hand script", hand));
        let mut bare = String::from("pids=''\n");
        for i in 0..hosts {
            let args: Vec<String> = fleet
                .lab
                .ssh_args(i)
                .iter()
                .map(|a| format!("'{a}'"))
                .collect();
            bare.push_str(&format!(
                "ssh {} true & pids=\"$pids $!\"\n",
                args.join(" ")
            ));
        }
        bare.push_str("for p in $pids; do wait $p || exit 1; done\n");
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(&bare);
        bares.push(timed("bare ssh", cmd));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (deploy, second, noop) = (median(deploys), median(seconds), median(noops));
    let (hand_cold, hand_warm, bare_ssh) = (median(hand_colds), median(hand_warms), median(bares));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "fleet of {hosts} real-sshd hosts (one site, one stage, build+activate+health), medians of {rounds}:"
    );
    println!("  convoy first deploy (cold mirrors): {deploy:.2?}");
    println!("  convoy deploy of the next release:  {second:.2?}");
    println!("  convoy no-op pass:                  {noop:.2?}");
    println!(
        "  hand-written parallel ssh, cold:    {hand_cold:.2?}  (convoy/hand {:.2})",
        ratio(deploy, hand_cold)
    );
    println!(
        "  hand-written parallel ssh, next:    {hand_warm:.2?}  (convoy/hand {:.2})",
        ratio(second, hand_warm)
    );
    println!(
        "  bare `ssh host true`, all hosts:    {bare_ssh:.2?}  (no-op/bare {:.2})",
        ratio(noop, bare_ssh)
    );
}
