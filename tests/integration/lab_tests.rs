//! Self-tests of the real-sshd test lab (`lab.rs`).
//!
//! Every lab operation is bounded in time (sshd start-up, stop, each ssh
//! call), so each of these tests is too.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::lab::{LAB_MOUNT, Lab};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {}, stdout {:?}, stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[track_caller]
fn ssh_ok(lab: &Lab, i: usize, cmd: &str) -> String {
    let out = lab.ssh(i, cmd);
    assert!(
        out.status.success(),
        "ssh h{i} {cmd:?} failed: {}",
        describe(&out)
    );
    text(&out.stdout)
}

/// Whether `pid` is gone, or a zombie (then reaping it is not our business).
fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            state == "Z" || state == "X"
        }
    }
}

fn connect_refused(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

#[test]
fn lab_hosts_have_private_filesystems() {
    let t = Instant::now();
    let lab = Lab::start(3);
    eprintln!("lab: started 3 hosts in {:?}", t.elapsed());
    assert_eq!(lab.hosts().len(), 3);
    assert_eq!(lab.user(), "root");

    // The PID we spawned is the sshd itself (no unshare/sh in between).
    for pid in lab.pids() {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, Path::new("/usr/sbin/sshd"), "pid {pid}");
    }

    let t = Instant::now();
    ssh_ok(&lab, 0, "true");
    eprintln!("lab: one ssh round trip took {:?}", t.elapsed());

    for (i, h) in lab.hosts().iter().enumerate() {
        assert_eq!(h.name, format!("h{i}"));
        ssh_ok(&lab, i, &format!("echo {} > {LAB_MOUNT}/who", h.name));
    }
    for i in 0..3 {
        let who = fs::read_to_string(lab.host_dir(i).join("who")).unwrap();
        assert_eq!(who, format!("h{i}\n"));
    }

    // Each host has its own, initially empty, home directory for root.
    assert_eq!(ssh_ok(&lab, 2, "echo $HOME; ls -A ~ | wc -l"), "/root\n0\n");
    ssh_ok(&lab, 2, "touch ~/.here");
    assert!(lab.host_home(2).join(".here").exists());
    assert!(!lab.host_home(1).join(".here").exists());

    // A file only host 0 has is invisible on host 1.
    fs::write(lab.host_dir(0).join("only-h0"), "x").unwrap();
    ssh_ok(&lab, 0, &format!("test -f {LAB_MOUNT}/only-h0"));
    let out = lab.ssh(1, &format!("test -e {LAB_MOUNT}/only-h0"));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(ssh_ok(&lab, 1, &format!("cat {LAB_MOUNT}/who")), "h1\n");

    // The bind mounts live only in the sshd namespaces: nothing leaks into
    // the test process's view of the mount point.
    assert!(!Path::new(LAB_MOUNT).join("who").exists());

    // Environment passing (AcceptEnv CONVOY_*) and the ssh_config file.
    let out = Command::new("ssh")
        .arg("-F")
        .arg(lab.ssh_config_file())
        .args(["-o", "SendEnv=CONVOY_*", "h2", "echo $CONVOY_LAB_TEST; cat"])
        .arg(format!("{LAB_MOUNT}/who"))
        .env("CONVOY_LAB_TEST", "passed")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "passed\nh2\n");
}

#[test]
fn lab_stop_and_start_keeps_files() {
    let mut lab = Lab::start(2);
    ssh_ok(&lab, 0, &format!("echo kept > {LAB_MOUNT}/f"));
    let port = lab.hosts()[0].port;

    // A daemon that left the sshd's process tree still dies with its host.
    let daemon: u32 = ssh_ok(
        &lab,
        0,
        "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo $!",
    )
    .trim()
    .parse()
    .unwrap();
    assert!(lab.host_processes(0).contains(&daemon));
    assert!(!lab.host_processes(1).contains(&daemon));

    let t = Instant::now();
    lab.stop_host(0);
    eprintln!("lab: stop_host took {:?}", t.elapsed());
    assert!(!lab.is_running(0));
    assert!(lab.is_running(1));
    assert!(connect_refused(port), "port {port} still accepts");
    assert!(process_gone(daemon), "daemon {daemon} survived stop_host");
    assert!(lab.host_processes(0).is_empty());
    let out = lab.ssh(0, "true");
    assert!(!out.status.success(), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    ssh_ok(&lab, 1, "true");
    assert_eq!(
        fs::read_to_string(lab.host_dir(0).join("f")).unwrap(),
        "kept\n"
    );
    // stop_host twice is harmless.
    lab.stop_host(0);

    let t = Instant::now();
    lab.start_host(0);
    eprintln!("lab: start_host took {:?}", t.elapsed());
    assert!(lab.is_running(0));
    assert_eq!(lab.hosts()[0].port, port);
    assert_eq!(ssh_ok(&lab, 0, &format!("cat {LAB_MOUNT}/f")), "kept\n");
}

#[test]
fn lab_strict_host_key_checking_refuses_rekeyed_host() {
    let mut lab = Lab::start(2);
    ssh_ok(&lab, 0, "true");
    let port = lab.hosts()[0].port;
    lab.rekey_host(0);
    assert!(lab.is_running(0));
    assert_eq!(lab.hosts()[0].port, port);
    let out = lab.ssh(0, "true");
    assert!(!out.status.success(), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"),
        "unexpected stderr: {err}"
    );
    // The other host is unaffected.
    ssh_ok(&lab, 1, "true");
}

#[test]
fn lab_drop_kills_every_sshd() {
    let lab = Lab::start(2);
    let dir = lab.dir().to_path_buf();
    let mut pids = lab.pids();
    assert_eq!(pids.len(), 2);

    // An open session: its sshd processes and the remote command are
    // descendants of the listener and must die with the lab too.
    let mut client = Command::new("ssh")
        .args(lab.ssh_args(1))
        .arg("echo $$; exec sleep 60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 32];
    let n = {
        use std::io::Read;
        client.stdout.as_mut().unwrap().read(&mut first).unwrap()
    };
    let remote: u32 = text(&first[..n]).trim().parse().unwrap();
    assert!(!process_gone(remote));
    let mut all = lab.host_processes(0);
    all.extend(lab.host_processes(1));
    assert!(all.contains(&remote), "{remote} not in {all:?}");
    // At least: 2 listeners, the session's sshd, the command.
    assert!(all.len() >= 4, "{all:?}");
    pids.extend(all);

    let t = Instant::now();
    drop(lab);
    eprintln!("lab: drop took {:?}", t.elapsed());
    for pid in pids {
        assert!(process_gone(pid), "pid {pid} survived the lab");
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());

    // The client sees its connection closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            panic!("ssh client still connected after the lab was dropped");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lab_starts_fifty_hosts() {
    let t = Instant::now();
    let lab = Lab::start(50);
    let started = t.elapsed();
    eprintln!("lab: started 50 hosts in {started:?}");
    assert_eq!(lab.pids().len(), 50);

    let t = Instant::now();
    thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || lab.ssh(i, "true"))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let out = h.join().unwrap();
            assert!(out.status.success(), "h{i}: {}", describe(&out));
        }
    });
    eprintln!("lab: 50 parallel ssh round trips took {:?}", t.elapsed());
    assert!(
        started < Duration::from_secs(20),
        "starting 50 hosts took {started:?}"
    );
}
