//! Round trips to real sshd hosts of the lab: one observe with a warm master, and an
//! observe of 50 hosts in parallel, cold (new masters) and warm; bare `ssh` for reference.
//! `cargo bench --bench ssh_round_trips` prints the figures; under `cargo test` it runs a
//! two-host smoke version.

#[path = "../tests/integration/lab.rs"]
mod lab;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy::host::ssh::{SshHost, SshPool};
use convoy::host::{Host, RemoteCommand};
use convoy::manifest::types::HostKeyChecking;
use lab::{LAB_MOUNT, Lab};

fn observe_command() -> RemoteCommand {
    let script = convoy::host::script::Script::new(&format!("{LAB_MOUNT}/sites/bench"))
        .observe()
        .finish();
    RemoteCommand::new(script, Duration::from_secs(30))
}

fn ssh_host(lab: &Lab, i: usize) -> Host {
    Host::Ssh(SshHost {
        name: lab.hosts()[i].name.clone(),
        address: "127.0.0.1".into(),
        port: Some(lab.hosts()[i].port),
        user: Some(lab.user().to_string()),
        identity_file: Some(lab.identity_file().to_path_buf()),
        config_file: None,
        connect_timeout: Duration::from_secs(5),
        host_key_checking: HostKeyChecking::Strict,
    })
}

async fn observe_all(pool: &Arc<SshPool>, hosts: &[Host]) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = hosts
        .iter()
        .cloned()
        .map(|host| {
            let pool = pool.clone();
            tokio::spawn(async move { host.run(&pool, &observe_command()).await })
        })
        .collect();
    for task in tasks {
        let out = task.await.expect("task").expect("observe runs");
        assert!(out.success(), "{}", out.stderr_text());
    }
    started.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (hosts, runs) = if benchmarking { (50, 30) } else { (2, 3) };
    let lab = Lab::start(hosts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let targets: Vec<Host> = (0..hosts).map(|i| ssh_host(&lab, i)).collect();
    runtime.block_on(async {
        let pool = Arc::new(SshPool::new(
            lab.dir().join("ctl"),
            Some(lab.known_hosts().to_path_buf()),
            4096,
            Duration::from_secs(60),
        ));
        let cold = observe_all(&pool, &targets).await;
        let mut warm = vec![];
        for _ in 0..runs.min(10) {
            warm.push(observe_all(&pool, &targets).await);
        }
        let command = observe_command();
        let mut one = vec![];
        for _ in 0..runs {
            let started = Instant::now();
            assert!(targets[0].run(&pool, &command).await.unwrap().success());
            one.push(started.elapsed());
        }
        println!(
            "observe, 1 host, warm master: {:.2?} median of {runs}",
            median(one)
        );
        println!(
            "observe, {hosts} hosts in parallel: cold {cold:.2?}, warm {:.2?} median",
            median(warm)
        );
        pool.close_all().await;
    });
    // Reference: one bare ssh command per host (new connection each), all in parallel.
    let started = Instant::now();
    let children: Vec<_> = (0..hosts)
        .map(|i| {
            Command::new("ssh")
                .args(lab.ssh_args(i))
                .arg("true")
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    println!(
        "bare `ssh HOST true`, {hosts} hosts in parallel: {:.2?}",
        started.elapsed()
    );
}
