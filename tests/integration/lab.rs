//! Real-sshd test lab: simulates N servers on this machine.
//!
//! Each simulated host is one real `/usr/sbin/sshd` listening on
//! `127.0.0.1:<port>`, running in its own mount namespace in which
//! [`LAB_MOUNT`] is a private bind mount of a per-host data directory. Every
//! host therefore sees its own `/srv/convoy-lab`, while the test process sees
//! host `i`'s files at [`Lab::host_dir`]`(i)`.
//!
//! Needs root (for the mount namespaces), `/usr/sbin/sshd`, `ssh`,
//! `ssh-keygen` and `unshare`: run `scripts/install-test-deps.sh` first.
//!
//! Only std + `tempfile` are used, and nothing from other test modules, so
//! benches can include this file with
//! `#[path = "../tests/integration/lab.rs"] mod lab;`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The path at which every simulated host sees its own private data directory.
pub const LAB_MOUNT: &str = "/srv/convoy-lab";

const SSHD: &str = "/usr/sbin/sshd";
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long one sshd gets to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports a host tries before the lab gives up.
const PORT_ATTEMPTS: usize = 5;
/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Upper bound for one [`Lab::ssh`] call.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(60);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Ports held by live labs of this process (including stopped hosts, which
/// keep their port for `start_host`), so that concurrent labs never pick each
/// other's ports.
static RESERVED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub struct Lab {
    hosts: Vec<LabHost>,
    identity: PathBuf,
    known_hosts: PathBuf,
    authorized_keys: PathBuf,
    ssh_config: OnceLock<PathBuf>,
    // Last, so that it is removed after everything else is dropped.
    dir: tempfile::TempDir,
}

pub struct LabHost {
    /// "h0", "h1", ...
    pub name: String,
    pub port: u16,
    root: PathBuf,
    data: PathBuf,
    home: PathBuf,
    host_key: PathBuf,
    config: PathBuf,
    log: PathBuf,
    sshd: Option<Child>,
    /// The running host's mount namespace: its id ("mnt:[4026532...]") and
    /// an open handle on it, which keeps the namespace (and so the id)
    /// from being freed and reused while the lab may still kill by it.
    ns: Option<(String, fs::File)>,
}

impl LabHost {
    /// PID of the running sshd listener, if any.
    pub fn pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(Child::id)
    }

    /// The host's sshd log (stderr of every sshd run, appended).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The host's private filesystem backing [`LAB_MOUNT`].
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Lab {
    /// Starts `n` hosts ("h0".."h{n-1}"). Panics with a clear message
    /// (including the sshd log tail) when a host does not come up.
    pub fn start(n: usize) -> Lab {
        preflight();
        let dir = tempfile::Builder::new()
            .prefix("convoy-lab-")
            .tempdir()
            .unwrap_or_else(|e| panic!("lab: cannot create temp dir: {e}"));
        let root = dir.path().to_path_buf();
        let identity = root.join("id_ed25519");
        let known_hosts = root.join("known_hosts");
        let authorized_keys = root.join("authorized_keys");

        let mut hosts = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("h{i}");
            let hroot = root.join(&name);
            let data = hroot.join("data");
            let home = hroot.join("home");
            for d in [&data, &home] {
                fs::create_dir_all(d)
                    .unwrap_or_else(|e| panic!("lab: cannot create {}: {e}", d.display()));
            }
            hosts.push(LabHost {
                port: 0,
                host_key: hroot.join("ssh_host_ed25519_key"),
                config: hroot.join("sshd_config"),
                log: hroot.join("sshd.log"),
                root: hroot,
                data,
                home,
                name,
                sshd: None,
                ns: None,
            });
        }

        // All keys at once: ssh-keygen runs in parallel.
        let mut keys: Vec<&Path> = vec![&identity];
        keys.extend(hosts.iter().map(|h| h.host_key.as_path()));
        keygen(&keys);
        fs::copy(pub_path(&identity), &authorized_keys)
            .unwrap_or_else(|e| panic!("lab: cannot write authorized_keys: {e}"));

        let mut lab = Lab {
            hosts,
            identity,
            known_hosts,
            authorized_keys,
            ssh_config: OnceLock::new(),
            dir,
        };
        let all: Vec<usize> = (0..n).collect();
        // On panic, `lab` is dropped during unwinding and kills what started.
        lab.launch(&all, true);
        lab.write_known_hosts();
        lab
    }

    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// The lab's temp dir (removed when the lab is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client's private key (ed25519, no passphrase).
    pub fn identity_file(&self) -> &Path {
        &self.identity
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 ...` lines for every host, as of start.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    pub fn user(&self) -> &str {
        "root"
    }

    /// Host `i`'s private filesystem backing [`LAB_MOUNT`], seen from the
    /// test process.
    pub fn host_dir(&self, i: usize) -> PathBuf {
        self.host(i).data.clone()
    }

    /// Host `i`'s private home directory of root (seen there as `/root`),
    /// seen from the test process. Starts empty, like a fresh server's.
    pub fn host_home(&self, i: usize) -> PathBuf {
        self.host(i).home.clone()
    }

    /// PIDs of the running sshd listeners (stopped hosts have none).
    pub fn pids(&self) -> Vec<u32> {
        self.hosts.iter().filter_map(LabHost::pid).collect()
    }

    /// Every live process of host `i` (all processes in its mount
    /// namespace: the sshd listener, sessions, and anything they started,
    /// daemons included). Empty when the host is stopped.
    pub fn host_processes(&self, i: usize) -> Vec<u32> {
        let Some((ns, _)) = &self.host(i).ns else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = process_table()
            .into_iter()
            .filter(|(pid, p)| p.state != 'Z' && mount_ns(*pid).as_ref() == Some(ns))
            .map(|(pid, _)| pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Arguments for `ssh` to reach host `i`; the caller appends the remote
    /// command.
    pub fn ssh_args(&self, i: usize) -> Vec<String> {
        let h = self.host(i);
        let mut args: Vec<String> = vec![
            "-F".into(),
            "/dev/null".into(),
            "-p".into(),
            h.port.to_string(),
            "-i".into(),
            path_str(&self.identity),
        ];
        for opt in [
            format!("UserKnownHostsFile={}", path_str(&self.known_hosts)),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "IdentitiesOnly=yes".into(),
            "ConnectTimeout=5".into(),
            "LogLevel=ERROR".into(),
        ] {
            args.push("-o".into());
            args.push(opt);
        }
        args.push(format!("{}@127.0.0.1", self.user()));
        args
    }

    /// Runs `cmd` on host `i` with the system ssh client (bounded by
    /// [`SSH_TIMEOUT`]; on time-out the client is killed and stderr says so).
    pub fn ssh(&self, i: usize, cmd: &str) -> Output {
        let mut c = Command::new("ssh");
        c.args(self.ssh_args(i)).arg(cmd);
        output_with_timeout(c, SSH_TIMEOUT)
    }

    /// Like powering the server off: SIGTERM every process of the host (the
    /// sshd, its sessions and whatever they started, also daemons that left
    /// the sshd's process tree), SIGKILL after a bound, wait, and make sure
    /// the port refuses connections. Files are kept.
    pub fn stop_host(&mut self, i: usize) {
        self.host(i);
        self.stop(&[i]);
        let port = self.hosts[i].port;
        let deadline = Instant::now() + Duration::from_secs(5);
        while port_accepts(port) {
            if Instant::now() > deadline {
                panic!("lab: host h{i} stopped but port {port} still accepts connections");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Powers host `i` back on: same port, same host key, same files.
    pub fn start_host(&mut self, i: usize) {
        self.host(i);
        if self.is_running(i) {
            return;
        }
        // Reap a listener that died by itself, and whatever it left behind.
        self.stop(&[i]);
        self.launch(&[i], false);
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.host(i).pid().is_some_and(pid_alive)
    }

    /// Gives host `i` a NEW host key and restarts it, WITHOUT updating
    /// `known_hosts` (so strict clients must refuse it).
    pub fn rekey_host(&mut self, i: usize) {
        self.host(i);
        self.stop_host(i);
        let key = self.hosts[i].host_key.clone();
        for p in [key.clone(), pub_path(&key)] {
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != ErrorKind::NotFound
            {
                panic!("lab: cannot remove {}: {e}", p.display());
            }
        }
        keygen(&[&key]);
        self.start_host(i);
    }

    /// An `ssh_config` (written once) with a `Host hN` block per host, for
    /// `ssh -F FILE hN`.
    pub fn ssh_config_file(&self) -> PathBuf {
        self.ssh_config
            .get_or_init(|| {
                let mut s = String::new();
                for h in &self.hosts {
                    let _ = write!(
                        s,
                        "Host {name}\n\
                         \x20   HostName 127.0.0.1\n\
                         \x20   Port {port}\n\
                         \x20   User {user}\n\
                         \x20   IdentityFile {id}\n\
                         \x20   UserKnownHostsFile {kh}\n\
                         \x20   GlobalKnownHostsFile /dev/null\n\
                         \x20   StrictHostKeyChecking yes\n\
                         \x20   IdentitiesOnly yes\n\
                         \x20   BatchMode yes\n\
                         \x20   ConnectTimeout 5\n\
                         \x20   LogLevel ERROR\n\n",
                        name = h.name,
                        port = h.port,
                        user = self.user(),
                        id = path_str(&self.identity),
                        kh = path_str(&self.known_hosts),
                    );
                }
                let path = self.dir.path().join("ssh_config");
                fs::write(&path, s)
                    .unwrap_or_else(|e| panic!("lab: cannot write {}: {e}", path.display()));
                path
            })
            .clone()
    }

    fn host(&self, i: usize) -> &LabHost {
        self.hosts
            .get(i)
            .unwrap_or_else(|| panic!("lab: no host {i} (the lab has {} hosts)", self.hosts.len()))
    }

    fn write_known_hosts(&self) {
        let mut s = String::new();
        for h in &self.hosts {
            let key = read_pub_key(&h.host_key);
            let _ = writeln!(s, "[127.0.0.1]:{} {key}", h.port);
        }
        fs::write(&self.known_hosts, s)
            .unwrap_or_else(|e| panic!("lab: cannot write known_hosts: {e}"));
    }

    fn write_sshd_config(&self, i: usize) {
        let h = &self.hosts[i];
        // KexAlgorithms: the default post-quantum hybrid (sntrup761x25519)
        // costs ~75 ms of CPU per connection on each side on this kind of
        // machine; curve25519 is what most servers negotiate anyway.
        let cfg = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             AddressFamily inet\n\
             HostKey {key}\n\
             PidFile none\n\
             AuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             MaxSessions 64\n\
             MaxStartups 200\n\
             LogLevel ERROR\n\
             UseDNS no\n\
             KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             Subsystem sftp internal-sftp\n\
             AcceptEnv CONVOY_* LANG LC_*\n",
            port = h.port,
            key = path_str(&h.host_key),
            ak = path_str(&self.authorized_keys),
        );
        fs::write(&h.config, cfg)
            .unwrap_or_else(|e| panic!("lab: cannot write {}: {e}", h.config.display()));
    }

    /// Starts the sshds of `which` concurrently and waits until each one
    /// listens. With `new_ports`, each host gets a fresh free port and moves
    /// to another one if it loses a race for it; otherwise it keeps its port.
    fn launch(&mut self, which: &[usize], new_ports: bool) {
        let mut pending: Vec<usize> = which.to_vec();
        let mut failures: HashMap<usize, Vec<String>> = HashMap::new();
        for attempt in 1..=PORT_ATTEMPTS {
            for &i in &pending {
                if new_ports {
                    let old = self.hosts[i].port;
                    self.hosts[i].port = pick_port();
                    if old != 0 {
                        release_port(old);
                    }
                }
                self.write_sshd_config(i);
                let child = spawn_sshd(&self.hosts[i]);
                self.hosts[i].sshd = Some(child);
            }
            let mut failed = Vec::new();
            let deadline = Instant::now() + READY_TIMEOUT;
            for &i in &pending {
                if let Err(why) = self.wait_ready(i, deadline) {
                    eprintln!(
                        "lab: {} (port {}) failed to start, attempt {attempt}: {why}",
                        self.hosts[i].name, self.hosts[i].port
                    );
                    failures.entry(i).or_default().push(format!(
                        "attempt {attempt} on port {}: {why}",
                        self.hosts[i].port
                    ));
                    self.stop(&[i]);
                    failed.push(i);
                }
            }
            if failed.is_empty() {
                return;
            }
            pending = failed;
            if !new_ports {
                // Someone else may hold the port for a moment: back off.
                thread::sleep(Duration::from_millis(200 * attempt as u64));
            }
        }
        let mut msg = String::from("lab: sshd did not come up:\n");
        for i in pending {
            let h = &self.hosts[i];
            let _ = writeln!(msg, "host {} ({}):", h.name, h.root.display());
            for f in &failures[&i] {
                let _ = writeln!(msg, "  {f}");
            }
            let _ = writeln!(msg, "  sshd log tail:\n{}", log_tail(&h.log, 20));
        }
        panic!("{msg}");
    }

    /// Waits until host `i`'s own sshd (not some other process that took the
    /// port) listens on its port and accepts a TCP connection.
    fn wait_ready(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let port = self.hosts[i].port;
        loop {
            let child = self.hosts[i].sshd.as_mut().expect("sshd spawned");
            match child.try_wait() {
                Ok(Some(status)) => return Err(format!("sshd exited ({status})")),
                Ok(None) => {}
                Err(e) => return Err(format!("cannot poll sshd: {e}")),
            }
            let pid = child.id();
            if pid_listens_on(pid, port) && ssh_server_answers(port) {
                let ns = mount_ns(pid).ok_or_else(|| format!("cannot read /proc/{pid}/ns/mnt"))?;
                if Some(&ns) == mount_ns(std::process::id()).as_ref() {
                    return Err(format!("sshd {pid} runs in the test's mount namespace"));
                }
                let handle = fs::File::open(format!("/proc/{pid}/ns/mnt"))
                    .map_err(|e| format!("cannot open /proc/{pid}/ns/mnt: {e}"))?;
                // The listener is still alive, so `handle` is its namespace.
                if mount_ns(pid).as_ref() != Some(&ns) {
                    return Err(format!("sshd {pid} vanished"));
                }
                self.hosts[i].ns = Some((ns, handle));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening after {READY_TIMEOUT:?} (exe: {:?})",
                    exe_of(pid)
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the given hosts: SIGTERM to each sshd, all its descendants and
    /// every other process in the host's mount namespace, SIGKILL to what is
    /// left after [`TERM_GRACE`], and reaps the sshds. Never panics (it runs
    /// in `Drop`).
    fn stop(&mut self, which: &[usize]) {
        // Only listeners not yet reaped: a reaped PID may belong to anyone.
        let mut roots: Vec<u32> = Vec::new();
        for &i in which {
            if let Some(child) = self.hosts[i].sshd.as_mut()
                && let Ok(None) = child.try_wait()
            {
                roots.push(child.id());
            }
        }
        let namespaces: HashSet<String> = which
            .iter()
            .filter_map(|&i| self.hosts[i].ns.as_ref().map(|(ns, _)| ns.clone()))
            .collect();
        if roots.is_empty() && namespaces.is_empty() {
            return;
        }
        // Victims are collected up front, since descendants get re-parented
        // once the listener dies; identified by (pid, start time) against
        // PID reuse.
        let me = std::process::id();
        let table = process_table();
        let mut victims: HashMap<u32, u64> = HashMap::new();
        for &root in &roots {
            for pid in descendants(&table, root) {
                victims.insert(pid, table[&pid].start_time);
            }
        }
        if !namespaces.is_empty() {
            for (&pid, p) in &table {
                if pid != me
                    && !roots.contains(&pid)
                    && mount_ns(pid).is_some_and(|ns| namespaces.contains(&ns))
                {
                    victims.insert(pid, p.start_time);
                }
            }
        }
        let mut all: Vec<u32> = roots.clone();
        all.extend(victims.keys());
        send_signal("TERM", &all);

        let deadline = Instant::now() + TERM_GRACE;
        for &i in which {
            let Some(mut child) = self.hosts[i].sshd.take() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        loop {
            let alive: Vec<u32> = victims
                .iter()
                .filter(|&(&pid, &start)| same_process_alive(pid, start))
                .map(|(&pid, _)| pid)
                .collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() > deadline + TERM_GRACE {
                break; // Unkillable (e.g. in uninterruptible sleep): give up.
            }
            if Instant::now() > deadline {
                send_signal("KILL", &alive);
            }
            thread::sleep(Duration::from_millis(5));
        }
        for &i in which {
            self.hosts[i].ns = None;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let all: Vec<usize> = (0..self.hosts.len()).collect();
        self.stop(&all);
        if let Ok(mut reserved) = RESERVED_PORTS.lock()
            && let Some(set) = reserved.as_mut()
        {
            for h in &self.hosts {
                set.remove(&h.port);
            }
        }
    }
}

// ---------------------------------------------------------------- helpers --

fn preflight() {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        panic!("lab: must run as root (mount namespaces, sshd); effective uid is {uid:?}");
    }
    for tool in [
        SSHD,
        "/usr/bin/ssh",
        "/usr/bin/ssh-keygen",
        "/usr/bin/unshare",
    ] {
        if !Path::new(tool).exists() {
            panic!("lab: {tool} is missing: run scripts/install-test-deps.sh");
        }
    }
    for dir in [LAB_MOUNT, PRIVSEP_DIR, &root_home()] {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("lab: cannot create {dir}: {e}"));
    }
}

/// Root's home directory according to /etc/passwd ("/root" by default).
fn root_home() -> String {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 7 && f[0] == "root" && f[5].starts_with('/') && f[5] != "/")
                    .then(|| f[5].to_owned())
            })
        })
        .unwrap_or_else(|| "/root".into())
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("lab: non-UTF-8 path {}", p.display()))
        .to_owned()
}

fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// `ssh-ed25519 AAAA...` (without the comment).
fn read_pub_key(key: &Path) -> String {
    let p = pub_path(key);
    let s =
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("lab: cannot read {}: {e}", p.display()));
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Generates ed25519 keys without passphrase, all ssh-keygens in parallel.
fn keygen(paths: &[&Path]) {
    let children: Vec<(PathBuf, Child)> = paths
        .iter()
        .map(|p| {
            let child = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "convoy-lab", "-f"])
                .arg(p)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("lab: cannot run ssh-keygen: {e}"));
            (p.to_path_buf(), child)
        })
        .collect();
    for (p, child) in children {
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("lab: ssh-keygen: {e}"));
        if !out.status.success() {
            panic!(
                "lab: ssh-keygen for {} failed ({}): {}",
                p.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn spawn_sshd(h: &LabHost) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&h.log)
        .unwrap_or_else(|e| panic!("lab: cannot open {}: {e}", h.log.display()));
    let log2 = log
        .try_clone()
        .unwrap_or_else(|e| panic!("lab: cannot dup log fd: {e}"));
    // No `--fork`: unshare execs sh, which execs sshd, so the spawned PID is
    // the sshd listener itself. In the new (private) mount namespace, the
    // host's data dir becomes LAB_MOUNT and its home dir root's home: a fresh
    // server's root has no shell start-up files of this machine's (which
    // would also cost ~100 ms per ssh command here).
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount --bind \"$1\" {LAB_MOUNT} && mount --bind \"$2\" \"$3\" && \
             exec {SSHD} -D -e -f \"$4\""
        ))
        .arg("sh")
        .arg(&h.data)
        .arg(&h.home)
        .arg(root_home())
        .arg(&h.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .unwrap_or_else(|e| panic!("lab: cannot spawn unshare/sshd for {}: {e}", h.name))
}

/// A free port on 127.0.0.1 that no other lab of this process holds.
fn pick_port() -> u16 {
    let mut reserved = RESERVED_PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let set = reserved.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let l = TcpListener::bind((LOOPBACK, 0))
            .unwrap_or_else(|e| panic!("lab: cannot bind 127.0.0.1:0: {e}"));
        let port = l
            .local_addr()
            .unwrap_or_else(|e| panic!("lab: local_addr: {e}"))
            .port();
        if set.insert(port) {
            return port;
        }
    }
    panic!("lab: no free port found");
}

fn release_port(port: u16) {
    let mut reserved = RESERVED_PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(set) = reserved.as_mut() {
        set.remove(&port);
    }
}

fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((LOOPBACK, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Whether an SSH server answers on `port`: TCP connect, read its banner and
/// say hello back (a client that closes without sending its own banner gets
/// logged by sshd as an error).
fn ssh_server_answers(port: u16) -> bool {
    let addr = SocketAddr::from((LOOPBACK, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while banner.len() < 256 && !banner.ends_with(b"\n") {
        match conn.read(&mut byte) {
            Ok(1) => banner.push(byte[0]),
            _ => return false,
        }
    }
    let _ = conn.write_all(b"SSH-2.0-convoy_lab_probe\r\n");
    banner.starts_with(b"SSH-2.0-")
}

/// Socket inodes of TCP listeners on 127.0.0.1:`port` or 0.0.0.0:`port`.
fn listener_inodes(port: u16) -> Vec<String> {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    let want = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && want.iter().any(|w| w == f[1]) && f[3] == "0A").then(|| f[9].to_owned())
        })
        .collect()
}

/// Whether process `pid` holds the listening socket of `port`.
fn pid_listens_on(pid: u32, port: u16) -> bool {
    let inodes = listener_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|ino| t == format!("socket:[{ino}]"))
        })
    })
}

/// The id of `pid`'s mount namespace, like "mnt:[4026532301]".
fn mount_ns(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn exe_of(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

struct ProcInfo {
    ppid: u32,
    state: char,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcInfo> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may contain spaces and parens.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcInfo {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        // Field 22 of stat; `rest` starts at field 3.
        start_time: f.get(19)?.parse().ok()?,
    })
}

fn pid_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|p| p.state != 'Z' && p.state != 'X')
}

fn same_process_alive(pid: u32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|p| p.start_time == start_time && p.state != 'Z' && p.state != 'X')
}

fn process_table() -> HashMap<u32, ProcInfo> {
    let mut table = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(info) = proc_stat(pid)
            {
                table.insert(pid, info);
            }
        }
    }
    table
}

fn descendants(table: &HashMap<u32, ProcInfo>, root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, info) in table {
        children.entry(info.ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                if k != root && !out.contains(&k) {
                    out.push(k);
                    stack.push(k);
                }
            }
        }
    }
    out
}

/// `kill -SIG pid...` through the shell builtin (no libc here). Errors (such
/// as already-gone processes) are ignored.
fn send_signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} \"$@\" 2>/dev/null; true"))
        .arg("sh")
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `n` lines of a log file, indented.
fn log_tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => "    (empty)".into(),
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read {}: {e})", path.display()),
    }
}

/// Runs `cmd` (stdin closed) and collects its output; kills it after
/// `timeout`, noting that in stderr.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("lab: cannot spawn {cmd:?}: {e}"));
    let reader = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let mut nap = Duration::from_millis(1);
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(10));
            }
            Ok(None) => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().unwrap_or_else(|e| panic!("lab: wait: {e}"));
            }
            Err(e) => panic!("lab: wait: {e}"),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let mut stderr = err_t.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n[lab: killed after {timeout:?}]\n").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}
