//! The transports against real sshd hosts of the lab: status and output, stdin, script
//! quoting, unreachable vs refused, master reuse and the cap on open masters.

use std::time::{Duration, Instant};

use convoy::host::local::LocalHost;
use convoy::host::ssh::{SshHost, SshPool};
use convoy::host::{Host, HostError, RemoteCommand};
use convoy::manifest::types::HostKeyChecking;

use crate::lab::{LAB_MOUNT, Lab};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn ssh_host(lab: &Lab, i: usize) -> Host {
    Host::Ssh(SshHost {
        name: lab.hosts()[i].name.clone(),
        address: "127.0.0.1".into(),
        port: Some(lab.hosts()[i].port),
        user: Some(lab.user().to_string()),
        identity_file: Some(lab.identity_file().to_path_buf()),
        config_file: None,
        connect_timeout: CONNECT_TIMEOUT,
        host_key_checking: HostKeyChecking::Strict,
    })
}

fn pool(lab: &Lab, max_masters: usize) -> SshPool {
    SshPool::new(
        lab.dir().join("ctl"),
        Some(lab.known_hosts().to_path_buf()),
        max_masters,
        Duration::from_secs(30),
    )
}

fn cmd(script: &str) -> RemoteCommand {
    RemoteCommand::new(script, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_reports_status_stdout_and_stderr() {
    let lab = Lab::start(1);
    let pool = pool(&lab, 8);
    let host = ssh_host(&lab, 0);
    let out = host
        .run(&pool, &cmd("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        (
            out.status,
            out.stdout_text().as_str(),
            out.stderr_text().as_str()
        ),
        (3, "out\n", "err\n")
    );
    let out = host.run(&pool, &cmd("true")).await.unwrap();
    assert!(out.success());
    assert_eq!(
        pool.open_masters().await,
        1,
        "one master serves every command"
    );
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_with_hostile_text_arrive_verbatim() {
    let lab = Lab::start(1);
    let pool = pool(&lab, 8);
    let hostile =
        "a b  'single' \"double\" $(touch /tmp/convoy-pwned) `id` ; | & \\ $HOME\nsecond line";
    let script = format!("cat <<'CONVOY_EOF'\n{hostile}\nCONVOY_EOF");
    for host in [
        ssh_host(&lab, 0),
        Host::Local(LocalHost {
            name: "local".into(),
            root: None,
        }),
    ] {
        let out = host.run(&pool, &cmd(&script)).await.unwrap();
        assert_eq!(
            out.stdout_text(),
            format!("{hostile}\n"),
            "on {}",
            host.name()
        );
    }
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_streamed_to_the_host() {
    let lab = Lab::start(1);
    let pool = pool(&lab, 8);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    // Exactly the payload's bytes: stdin stays open until the command ends (the lifeline).
    let script = format!(
        "head -c {} > {LAB_MOUNT}/upload && wc -c < {LAB_MOUNT}/upload",
        data.len()
    );
    let out = ssh_host(&lab, 0)
        .run(&pool, &cmd(&script).with_stdin(data.clone()))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_text());
    assert_eq!(std::fs::read(lab.host_dir(0).join("upload")).unwrap(), data);
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powered_off_host_is_unreachable_within_the_connect_timeout() {
    let mut lab = Lab::start(2);
    let pool = pool(&lab, 8);
    lab.stop_host(0);
    let started = Instant::now();
    let err = ssh_host(&lab, 0)
        .run(&pool, &cmd("true"))
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The other host is unaffected, and the first comes back when powered on again.
    assert!(
        ssh_host(&lab, 1)
            .run(&pool, &cmd("true"))
            .await
            .unwrap()
            .success()
    );
    lab.start_host(0);
    assert!(
        ssh_host(&lab, 0)
            .run(&pool, &cmd("true"))
            .await
            .unwrap()
            .success()
    );
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_lost_to_a_reboot_is_replaced() {
    let mut lab = Lab::start(1);
    let pool = pool(&lab, 8);
    let host = ssh_host(&lab, 0);
    assert!(host.run(&pool, &cmd("true")).await.unwrap().success());
    lab.stop_host(0);
    lab.start_host(0);
    let out = host.run(&pool, &cmd("echo back")).await.unwrap();
    assert_eq!(out.stdout_text(), "back\n");
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_not_unreachable() {
    let mut lab = Lab::start(1);
    lab.rekey_host(0);
    let pool = pool(&lab, 8);
    let err = ssh_host(&lab, 0)
        .run(&pool, &cmd("true"))
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::HostKeyChanged { .. }), "{err:?}");
    assert!(err.to_string().contains("host key changed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_is_refused_under_strict_checking() {
    let lab = Lab::start(1);
    let empty = lab.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let pool = SshPool::new(
        lab.dir().join("ctl"),
        Some(empty.clone()),
        8,
        Duration::from_secs(30),
    );
    let err = ssh_host(&lab, 0)
        .run(&pool, &cmd("true"))
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::HostKeyUnknown { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(&empty).unwrap(),
        "",
        "strict checking never records a key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_masters_are_capped() {
    let lab = Lab::start(3);
    let pool = pool(&lab, 2);
    for i in 0..3 {
        assert!(
            ssh_host(&lab, i)
                .run(&pool, &cmd("true"))
                .await
                .unwrap()
                .success()
        );
        assert!(pool.open_masters().await <= 2);
    }
    pool.close_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_reported_as_such() {
    let lab = Lab::start(1);
    let pool = pool(&lab, 8);
    let err = ssh_host(&lab, 0)
        .run(
            &pool,
            &RemoteCommand::new("sleep 5", Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Timeout { .. }), "{err:?}");
    let local = Host::Local(LocalHost {
        name: "l".into(),
        root: None,
    });
    let err = local
        .run(
            &pool,
            &RemoteCommand::new("sleep 5", Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::Timeout { .. }), "{err:?}");
    pool.close_all().await;
}

#[test]
fn local_root_prefixes_site_paths() {
    let host = Host::Local(LocalHost {
        name: "demo".into(),
        root: Some("/tmp/convoy-demo/web1/".into()),
    });
    assert_eq!(host.path("/srv/app"), "/tmp/convoy-demo/web1/srv/app");
}
