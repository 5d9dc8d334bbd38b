//! Harness for the interop tests: real processes in private network namespaces, none of them
//! able to change this machine's clock.
//!
//! Every external command runs as
//! `timeout -k 3 SECS ip netns exec NS setpriv --bounding-set=-sys_time --inh-caps=-sys_time CMD`:
//! `timeout` bounds its life even if this test process dies, the namespace keeps its sockets away
//! from everything else on the machine (port 123 is free in it, parallel tests cannot collide),
//! and without CAP_SYS_TIME the kernel refuses any clock change. Long-running processes are
//! checked for that after start ([`Proc`] reads `/proc/PID/status`).
//!
//! Guards clean up on drop, also when a test panics: a [`Proc`] is stopped (SIGTERM, then
//! SIGKILL to its process group) and reaped; a [`Lab`] deletes its namespace and work directory.
//! A `Proc` borrows its `Lab`, so it is always gone before the namespace is.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `ntpkit` binary under test.
pub const NTPKIT: &str = env!("CARGO_BIN_EXE_ntpkit");
/// NTPsec's ntpd, unpacked (not installed) by scripts/install-test-deps.sh.
pub const NTPSEC_NTPD: &str = "/opt/ntpsec/usr/sbin/ntpd";
/// chronyd, unpacked (not installed: the package would remove systemd-timesyncd) by
/// scripts/install-test-deps.sh.
pub const CHRONYD: &str = "/opt/chrony/usr/sbin/chronyd";
/// chronyc, unpacked beside [`CHRONYD`].
pub const CHRONYC: &str = "/opt/chrony/usr/bin/chronyc";
/// Drops CAP_SYS_TIME from the bounding and inheritable sets before exec.
pub const NO_SYS_TIME: [&str; 3] = [
    "setpriv",
    "--bounding-set=-sys_time",
    "--inh-caps=-sys_time",
];
const CAP_SYS_TIME_BIT: u32 = 25;
const NS_PREFIX: &str = "ntpkit-it";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Writes straight to the process's stderr, past libtest's output capture, so that a test's
/// measurements are visible in a normal `cargo test` run.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Serializes load against measurement: the load tests (hundreds of TCP clients, a flood of
/// datagrams) take it exclusively, the tests that hold offsets to 1 ms share it, so the suite
/// never disturbs its own measurements. (Load from outside the suite it cannot prevent.)
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that measures offsets: no load test runs meanwhile.
pub fn measuring() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by a load test: no measuring test runs meanwhile.
pub fn loading() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().unwrap_or_else(|e| e.into_inner())
}

/// What a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A program on PATH (or an absolute path).
    Tool(&'static str),
    /// The test runs as root (namespaces, chronyd's privilege drop).
    Root,
}

/// Polls `cond` every 20 ms until it holds; panics after `limit`.
pub fn wait(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the prerequisites of `test` and fails it, saying what is missing, if any is.
///
/// Skipping is explicit and happens at build time: with `NTPKIT_SKIP_INTEROP=1` in the
/// environment of `cargo test`, build.rs marks the interop tests ignored, so a skipped test
/// never reports as passed.
pub fn require(test: &str, needs: &[Need]) {
    let mut missing = Vec::new();
    for need in needs.iter().chain(&[
        Need::Root,
        Need::Tool("ip"),
        Need::Tool("setpriv"),
        Need::Tool("timeout"),
    ]) {
        match need {
            Need::Root => {
                if !is_root() {
                    missing.push("root (network namespaces, setpriv)".to_string());
                }
            }
            Need::Tool(t) => {
                if !tool_exists(t) {
                    missing.push(format!("{t} (run scripts/install-test-deps.sh)"));
                }
            }
        }
    }
    if !missing.is_empty() {
        panic!(
            "interop test {test} cannot run: missing {}. To skip the interop tests, run \
             `NTPKIT_SKIP_INTEROP=1 cargo test` (they then report as ignored).",
            missing.join(", ")
        );
    }
}

/// Older form of [`require`] (tests/daemon.rs uses it): true when the test may run. With
/// `NTPKIT_SKIP_INTEROP=1` at run time it prints a SKIPPED line and returns false, so the test
/// reports as passed: prefer `require` plus
/// `#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]`, which reports ignored.
pub fn prerequisites(test: &str, needs: &[Need]) -> bool {
    if std::env::var("NTPKIT_SKIP_INTEROP").as_deref() == Ok("1") {
        say(&format!(
            "SKIPPED interop test {test} (NTPKIT_SKIP_INTEROP=1)"
        ));
        return false;
    }
    require(test, needs);
    true
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn tool_exists(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// One test's private world: a network namespace with `lo` up and a work directory that
/// chronyd (user `_chrony`) can use for its sockets. Deleted on drop.
#[derive(Debug)]
pub struct Lab {
    /// Name of the network namespace.
    pub ns: String,
    /// Work directory (owned by `_chrony:_chrony`, mode 0750).
    pub dir: PathBuf,
    extra_ns: Vec<String>,
}

impl Lab {
    /// Creates the namespace and directory for the test called `tag`.
    pub fn new(tag: &str) -> Lab {
        remove_stale_namespaces();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}-{}-{seq}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create work dir");
        // chronyd refuses a command socket in a directory not owned by its user with mode 0750.
        let (uid, gid) = chrony_ids();
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&dir, Some(uid), gid).expect("chown work dir to _chrony");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).expect("chmod work dir");
        let lab = Lab {
            ns: id.clone(),
            dir,
            extra_ns: Vec::new(),
        };
        add_namespace(&id);
        lab
    }

    /// Creates a second namespace joined to the main one by a veth pair: `addr_main` on the
    /// main side, `addr_peer` on the peer side (both with prefix /24). Returns the peer's name.
    pub fn add_peer_ns(&mut self, addr_main: &str, addr_peer: &str) -> String {
        let peer = format!("{}-peer{}", self.ns, self.extra_ns.len());
        add_namespace(&peer);
        self.extra_ns.push(peer.clone());
        // Created directly inside the namespaces: the names cannot collide with other tests.
        run_root(&[
            "ip", "link", "add", "vmain", "netns", &self.ns, "type", "veth", "peer", "name",
            "vpeer", "netns", &peer,
        ]);
        run_root(&[
            "ip",
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{addr_main}/24"),
            "dev",
            "vmain",
        ]);
        run_root(&[
            "ip",
            "-n",
            &peer,
            "addr",
            "add",
            &format!("{addr_peer}/24"),
            "dev",
            "vpeer",
        ]);
        run_root(&["ip", "-n", &self.ns, "link", "set", "vmain", "up"]);
        run_root(&["ip", "-n", &peer, "link", "set", "vpeer", "up"]);
        peer
    }

    /// Sets what `/etc/hosts` says to processes in the main namespace (`ip netns exec` mounts
    /// `/etc/netns/NS/hosts` over it). Rewritten in place, so running processes see the change
    /// at their next lookup. Removed with the lab.
    pub fn set_hosts(&self, contents: &str) {
        let dir = PathBuf::from(format!("/etc/netns/{}", self.ns));
        fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        let path = dir.join("hosts");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .expect("open hosts file");
        f.write_all(contents.as_bytes()).expect("write hosts file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod hosts");
    }

    /// A directory every user may enter (the work directory is chronyd's, mode 0750), for
    /// what unprivileged processes must reach. Removed with the lab.
    pub fn public_dir(&self) -> PathBuf {
        let dir = PathBuf::from(format!("{}-pub", self.dir.display()));
        fs::create_dir_all(&dir).expect("create public dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod public dir");
        dir
    }

    /// A path inside the work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A directory `name` in the public directory, owned by the test's own user, for files a
    /// daemon that stays this user writes (drift files): the work directory belongs to
    /// chronyd's user when chrony is installed, and a daemon started as root gives up the
    /// capabilities to enter or write where its user may not.
    pub fn own_dir(&self, name: &str) -> PathBuf {
        let p = self.public_dir().join(name);
        fs::create_dir_all(&p).expect("create directory");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod directory");
        p
    }

    /// Writes a file into the work directory (world-readable, so chronyd and ntpd can read it).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).expect("write file");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod file");
        p
    }

    /// The command line that runs `args` in namespace `ns` without CAP_SYS_TIME, killed after
    /// `limit`.
    fn command_in(&self, ns: &str, args: &[&str], limit: Duration) -> Command {
        let secs = format!("{}", limit.as_secs().max(1));
        let mut c = Command::new("timeout");
        c.args(["-k", "3", &secs, "ip", "netns", "exec", ns])
            .args(NO_SYS_TIME)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `args` to completion in the main namespace (at most `limit`), capturing its output.
    pub fn run(&self, args: &[&str], limit: Duration) -> Run {
        self.run_in(&self.ns.clone(), args, limit)
    }

    /// Runs `args` to completion in namespace `ns` (at most `limit`), capturing its output.
    pub fn run_in(&self, ns: &str, args: &[&str], limit: Duration) -> Run {
        let out = self
            .command_in(ns, args, limit)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
        Run::new(args, out)
    }

    /// Starts a long-running process in the main namespace; stdout and stderr go to files in the
    /// work directory named after `name`.
    pub fn spawn(&self, name: &str, args: &[&str], limit: Duration) -> Proc<'_> {
        self.spawn_in(&self.ns.clone(), name, args, limit)
    }

    /// Starts a long-running process in namespace `ns`; see [`Lab::spawn`].
    pub fn spawn_in(&self, ns: &str, name: &str, args: &[&str], limit: Duration) -> Proc<'_> {
        let out_path = self.path(&format!("{name}.out"));
        let err_path = self.path(&format!("{name}.err"));
        let out = fs::File::create(&out_path).expect("create stdout file");
        let err = fs::File::create(&err_path).expect("create stderr file");
        let child = self
            .command_in(ns, args, limit)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        let proc = Proc {
            name: name.to_string(),
            program: args[0].to_string(),
            child,
            out_path,
            err_path,
            status: None,
            _lab: std::marker::PhantomData,
        };
        proc.assert_no_sys_time();
        proc
    }

    /// Runs `f` on a thread that has entered the main namespace; sockets it creates live there
    /// and can be used from any thread afterwards.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            enter_netns(&ns);
            f()
        })
        .join()
        .expect("thread inside the namespace panicked")
    }

    /// UDP counters of the main namespace (`/proc/net/snmp`, line `Udp:`), e.g. `RcvbufErrors`.
    pub fn udp_counters(&self) -> HashMap<String, u64> {
        let r = self.run(&["cat", "/proc/net/snmp"], Duration::from_secs(5));
        r.assert_ok();
        let lines: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("Udp:")).collect();
        assert!(lines.len() >= 2, "no Udp lines in /proc/net/snmp");
        lines[0]
            .split_whitespace()
            .zip(lines[1].split_whitespace())
            .skip(1)
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.extra_ns.iter().chain(std::iter::once(&self.ns)) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(format!("{}-pub", self.dir.display()));
    }
}

/// Moves the calling thread into network namespace `ns` (threads have their own).
pub fn enter_netns(ns: &str) {
    let f = fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({ns}): {}", std::io::Error::last_os_error());
}

fn add_namespace(ns: &str) {
    run_root(&["ip", "netns", "add", ns]);
    run_root(&["ip", "-n", ns, "link", "set", "lo", "up"]);
}

/// Deletes namespaces left by earlier test processes that died without cleaning up.
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&format!("{NS_PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

fn run_root(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chrony_ids() -> (Option<u32>, Option<u32>) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "_chrony" {
            return (f[2].parse().ok(), f[3].parse().ok());
        }
    }
    (None, None)
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    /// The command line (without the timeout / netns / setpriv prefix).
    pub args: Vec<String>,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn new(args: &[&str], out: Output) -> Run {
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout followed by stderr, for matching messages wherever they went.
    pub fn stdout_and_stderr(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the command exited with 0.
    pub fn assert_ok(&self) -> &Run {
        assert!(self.status.success(), "{self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n  -> {}\n--- stdout\n{}--- stderr\n{}---",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// A long-running process, stopped and reaped on drop.
#[derive(Debug)]
pub struct Proc<'l> {
    /// Label used in messages and file names.
    pub name: String,
    program: String,
    child: Child,
    out_path: PathBuf,
    err_path: PathBuf,
    status: Option<ExitStatus>,
    _lab: std::marker::PhantomData<&'l Lab>,
}

impl Proc<'_> {
    /// PID of the `timeout` wrapper, which leads the process group and forwards signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// stdout and stderr, labelled, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout\n{}--- {} stderr\n{}---",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// Waits until stdout or stderr contains `needle`; returns the first line containing it.
    /// Panics after `limit`, or if the process exits first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            for text in [self.stdout(), self.stderr()] {
                if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                    return l.to_string();
                }
            }
            if let Some(st) = self.try_status() {
                panic!(
                    "{} exited ({st}) before printing {needle:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {limit:?}\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Sends `signal` to the process (the `timeout` wrapper forwards it to the command).
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            // SAFETY: plain kill(2) on our own, not yet reaped child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// Sends `signal` to the command itself (the `timeout` wrapper forwards only a few
    /// signals, e.g. not SIGUSR1).
    pub fn signal_command(&self, signal: i32) {
        let pid = self
            .command_pid()
            .unwrap_or_else(|| panic!("{}: no running command to signal", self.name));
        // SAFETY: plain kill(2) on a descendant of our own child.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
    }

    /// The command's `/proc/PID/status` as key → value (e.g. "Uid" → "65534\t65534\t…").
    pub fn proc_status(&self) -> HashMap<String, String> {
        let pid = self
            .command_pid()
            .unwrap_or_else(|| panic!("{}: no running command\n{}", self.name, self.output()));
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("{}: /proc/{pid}/status: {e}", self.name))
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// PID of the command under the `timeout` / `ip netns exec` / `setpriv` chain.
    pub fn command_pid(&self) -> Option<u32> {
        let base = Path::new(&self.program)
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        descendants(self.child.id()).into_iter().find(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(argv0).ends_with(base.as_str())
        })
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits (up to 10 s) for the exit; panics if it does not exit.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        self.signal(signal);
        match self.wait_timeout(Duration::from_secs(10)) {
            Some(st) => st,
            None => panic!(
                "{} did not exit within 10 s of signal {signal}\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// Asserts that the command (the last process of the exec chain under `timeout`) has
    /// neither CAP_SYS_TIME in its effective nor in its bounding set.
    fn assert_no_sys_time(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let base = Path::new(&self.program)
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        loop {
            for pid in descendants(self.child.id()) {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
                let argv0 = String::from_utf8_lossy(argv0);
                if !argv0.ends_with(base.as_str()) {
                    continue;
                }
                let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                for key in ["CapEff:", "CapBnd:"] {
                    let caps = status
                        .lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| u64::from_str_radix(l[key.len()..].trim(), 16).ok());
                    if let Some(caps) = caps {
                        assert_eq!(
                            caps >> CAP_SYS_TIME_BIT & 1,
                            0,
                            "{} (pid {pid}) has CAP_SYS_TIME in {key} {caps:016x}",
                            self.name
                        );
                    }
                }
                return;
            }
            // It may have exited already (e.g. a bad command line): nothing left to check.
            let exited = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true);
            if exited {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no process {base:?} under pid {} to check for CAP_SYS_TIME",
                self.name,
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc<'_> {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            // The `timeout` wrapper is gone; if a signal it does not forward ended it, the
            // command may still run in its process group: end that too.
            // SAFETY: kill(2) on the process group our child led.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_timeout(Duration::from_secs(3)).is_some() {
            return;
        }
        // `timeout` made itself a process group leader: kill the group by its PID.
        // SAFETY: kill(2) on the process group of our own, not yet reaped child.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// All descendants of `pid` (children first).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let kids = fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
            out.push(k);
            todo.push(k);
        }
    }
    out
}

/// Configuration and control of chronyd instances in a [`Lab`].
pub mod chrony {
    use super::*;

    /// Config of a chronyd server on `addrs`, `port`, serving its local clock at `stratum`.
    pub fn server_conf(lab: &Lab, name: &str, addrs: &[&str], port: u16, stratum: u8) -> PathBuf {
        // The namespace is private: any client in it may ask.
        let mut c = format!("port {port}\nallow all\n");
        for a in addrs {
            c += &format!("bindaddress {a}\n");
        }
        c += &format!(
            "local stratum {stratum}\ncmdport 0\nbindcmdaddress {sock}\npidfile {pid}\n",
            sock = lab.path(&format!("{name}.sock")).display(),
            pid = lab.path(&format!("{name}.pid")).display(),
        );
        lab.write(&format!("{name}.conf"), &c)
    }

    /// Config of a chronyd client polling `server`:`port` every second, serving nothing.
    pub fn client_conf(lab: &Lab, name: &str, server: &str, port: u16) -> PathBuf {
        let c = format!(
            "server {server} port {port} iburst minpoll 0 maxpoll 0\n\
             port 0\ncmdport 0\nbindcmdaddress {sock}\npidfile {pid}\nlogdir {dir}\n\
             log measurements\n",
            sock = lab.path(&format!("{name}.sock")).display(),
            pid = lab.path(&format!("{name}.pid")).display(),
            dir = lab.dir.display(),
        );
        lab.write(&format!("{name}.conf"), &c)
    }

    /// Starts `chronyd -x -d -f conf` (never touches the clock) in namespace `ns` and waits
    /// until its command socket answers.
    pub fn start<'l>(lab: &'l Lab, ns: &str, name: &str, conf: &Path) -> Proc<'l> {
        let conf = conf.to_string_lossy().to_string();
        let mut p = lab.spawn_in(
            ns,
            name,
            &[CHRONYD, "-x", "-d", "-f", &conf],
            Duration::from_secs(120),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if chronyc(lab, name, &["tracking"]).status.success() {
                return p;
            }
            if let Some(st) = p.try_status() {
                panic!("chronyd {name} exited ({st})\n{}", p.output());
            }
            assert!(
                Instant::now() < deadline,
                "chronyd {name}: command socket not up after 10 s\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `chronyc -n -h SOCK ARGS...` on the command socket of chronyd `name`.
    pub fn chronyc(lab: &Lab, name: &str, args: &[&str]) -> Run {
        let sock = lab
            .path(&format!("{name}.sock"))
            .to_string_lossy()
            .to_string();
        let mut a = vec![CHRONYC, "-n", "-h", &sock];
        a.extend_from_slice(args);
        lab.run(&a, Duration::from_secs(60))
    }

    /// Runs `chronyc -c ARGS...` and splits its CSV output into rows of fields.
    pub fn csv(lab: &Lab, name: &str, args: &[&str]) -> Vec<Vec<String>> {
        let mut a = vec!["-c"];
        a.extend_from_slice(args);
        let r = chronyc(lab, name, &a);
        r.assert_ok();
        r.stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    }

    /// `chronyc -c tracking` fields (see chronyc's manual, "tracking").
    #[derive(Debug, Clone)]
    pub struct Tracking {
        /// Reference ID, hex.
        pub refid: String,
        /// Stratum.
        pub stratum: u8,
        /// Estimated offset of the system clock, seconds (positive: fast).
        pub system_time: f64,
        /// Offset at the last clock update, seconds.
        pub last_offset: f64,
        /// Leap status text ("Normal", "Not synchronised", ...).
        pub leap: String,
    }

    /// Reads `chronyc -c tracking` of chronyd `name`.
    pub fn tracking(lab: &Lab, name: &str) -> Tracking {
        let rows = csv(lab, name, &["tracking"]);
        let f = rows.first().expect("tracking: no output");
        assert!(f.len() >= 14, "tracking: unexpected CSV {f:?}");
        Tracking {
            refid: f[0].clone(),
            stratum: f[2].parse().expect("tracking stratum"),
            system_time: f[4].parse().expect("tracking system time"),
            last_offset: f[5].parse().expect("tracking last offset"),
            leap: f[13].clone(),
        }
    }

    /// `chronyc -c ntpdata ADDR` fields: what the last reply from a source carried.
    #[derive(Debug, Clone)]
    pub struct NtpData {
        /// Remote port.
        pub port: u16,
        /// Leap status text.
        pub leap: String,
        /// NTP version of the reply.
        pub version: u8,
        /// Mode text ("Server").
        pub mode: String,
        /// Stratum of the reply.
        pub stratum: u8,
        /// Reference ID of the reply, hex.
        pub refid: String,
        /// Measured offset, seconds.
        pub offset: f64,
        /// Measured round-trip delay, seconds.
        pub delay: f64,
        /// The three groups of chrony's packet tests ("111 111 1111" when all pass).
        pub tests: String,
        /// Replies that passed all tests.
        pub good_rx: u64,
    }

    /// Reads `chronyc -c ntpdata ADDR` of chronyd `name`.
    pub fn ntpdata(lab: &Lab, name: &str, addr: &str) -> NtpData {
        let rows = csv(lab, name, &["ntpdata", addr]);
        let f = rows.first().expect("ntpdata: no output");
        // remote, its hex, port, local, its hex, leap, version, mode, stratum, poll, poll s,
        // precision, precision s, root delay, root disp., refid, refid name, ref. time,
        // offset, delay, dispersion, response time, jitter asymmetry, 3 test groups,
        // interleaved, authenticated, tx / rx timestamping, total tx, rx, valid rx, good rx.
        assert_eq!(f.len(), 34, "ntpdata: unexpected CSV {f:?}");
        NtpData {
            port: f[2].parse().expect("ntpdata port"),
            leap: f[5].clone(),
            version: f[6].parse().expect("ntpdata version"),
            mode: f[7].clone(),
            stratum: f[8].parse().expect("ntpdata stratum"),
            refid: f[15].clone(),
            offset: f[18].parse().expect("ntpdata offset"),
            delay: f[19].parse().expect("ntpdata delay"),
            tests: format!("{} {} {}", f[23], f[24], f[25]),
            good_rx: f[33].parse().expect("ntpdata good rx"),
        }
    }

    /// One row of `chronyc -c sources`.
    #[derive(Debug, Clone)]
    pub struct Source {
        /// Mode character: `^` server, `=` peer, `#` refclock.
        pub mode: String,
        /// State character: `*` selected, `+` combined, `-`, `?`, `x`, `~`.
        pub state: String,
        /// Address.
        pub address: String,
        /// Stratum.
        pub stratum: u8,
        /// Reach register (octal as printed).
        pub reach: String,
    }

    /// Reads `chronyc -c sources` of chronyd `name`.
    pub fn sources(lab: &Lab, name: &str) -> Vec<Source> {
        csv(lab, name, &["sources"])
            .into_iter()
            .filter(|f| f.len() >= 10)
            .map(|f| Source {
                mode: f[0].clone(),
                state: f[1].clone(),
                address: f[2].clone(),
                stratum: f[3].parse().unwrap_or(0),
                reach: f[5].clone(),
            })
            .collect()
    }
}

/// Starting `ntpkit daemon` in a [`Lab`] and reading its status.
pub mod daemon {
    use super::*;
    use serde_json::Value;

    /// Shorthand for whole seconds.
    pub const SECS: fn(u64) -> Duration = Duration::from_secs;
    /// The true error every synchronized daemon must reach.
    pub const MAX_ERROR: f64 = 1e-3;

    /// A daemon started from `toml` in the lab; its control socket is `NAME.sock`.
    pub fn daemon<'l>(lab: &'l Lab, name: &str, toml: &str) -> Proc<'l> {
        daemon_at(lab, name, toml, &lab.path(&format!("{name}.sock")))
    }

    /// A daemon started from `toml` in the lab, its control socket at `sock`. Unless `toml`
    /// has its own `access` rules, everybody is served (a daemon serves nobody without them;
    /// the lab's namespace is private); unless it has a `[rate-limit]` table, each address may
    /// send 8 requests/s.
    pub fn daemon_at<'l>(lab: &'l Lab, name: &str, toml: &str, sock: &Path) -> Proc<'l> {
        let access = if toml.contains("access =") {
            ""
        } else {
            "access = [\"allow all\"]\n"
        };
        // Lab daemons poll every second, and every client socket takes 127.0.0.1 as its source
        // (the route's address), so several clients of one daemon share one address: their
        // server allows 8 requests/s per address (bursts still get RATE kisses).
        let rate = if toml.contains("[rate-limit]") {
            ""
        } else {
            "\n[rate-limit]\ninterval = -3\n"
        };
        let conf = format!(
            "control-socket = \"{}\"\nlog-level = \"debug\"\n{access}{toml}{rate}",
            sock.display()
        );
        let path = lab.write(&format!("{name}.toml"), &conf);
        let path = path.to_string_lossy().to_string();
        let check = lab.run(&[NTPKIT, "daemon", "--check", "-c", &path], SECS(10));
        check.assert_ok();
        let mut p = lab.spawn(name, &[NTPKIT, "daemon", "-c", &path], SECS(300));
        let deadline = Instant::now() + SECS(10);
        while !sock.exists() {
            if let Some(st) = p.try_status() {
                panic!("daemon {name} exited ({st})\n{}", p.output());
            }
            assert!(
                Instant::now() < deadline,
                "daemon {name}: no control socket\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// `ntpkit status --json` of daemon `name`.
    pub fn status(lab: &Lab, name: &str) -> Value {
        let sock = lab
            .path(&format!("{name}.sock"))
            .to_string_lossy()
            .to_string();
        let r = lab.run(&[NTPKIT, "status", "--json", "--socket", &sock], SECS(10));
        r.assert_ok();
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("status of {name}: {e}\n{}", r.stdout))
    }

    pub fn true_error(st: &Value) -> f64 {
        st["clock"]["offset_from_os"]
            .as_f64()
            .expect("virtual clock reports its offset")
    }

    pub fn tracking(st: &Value) -> &Value {
        &st["system"]["tracking"]
    }

    /// Source states by address.
    pub fn states(st: &Value) -> Vec<(String, String)> {
        st["system"]["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .map(|s| {
                (
                    s["address"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Polls `cond` on the named daemons' status every second until it holds for all, or `limit`.
    pub fn wait_until(
        lab: &Lab,
        names: &[&str],
        limit: Duration,
        cond: impl Fn(&str, &Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let all: Vec<Value> = names.iter().map(|n| status(lab, n)).collect();
            if names.iter().zip(&all).all(|(n, s)| cond(n, s)) {
                return all;
            }
            if Instant::now() > deadline {
                let shown: Vec<String> = names
                    .iter()
                    .zip(&all)
                    .map(|(n, s)| format!("{n}: {}", serde_json::to_string_pretty(s).unwrap()))
                    .collect();
                panic!(
                    "condition not reached within {limit:?}:\n{}",
                    shown.join("\n")
                );
            }
            std::thread::sleep(SECS(1));
        }
    }

    pub fn server(address: &str) -> String {
        format!("[[server]]\naddress = \"{address}\"\nminpoll = 0\nmaxpoll = 2\n")
    }

    /// A source polled every second (the hierarchy test learns frequencies from many samples).
    pub fn fast_server(address: &str) -> String {
        format!("[[server]]\naddress = \"{address}\"\nminpoll = 0\nmaxpoll = 0\n")
    }

    pub fn virtual_clock(offset: f64, ppm: f64) -> String {
        format!("[clock]\nbackend = \"virtual\"\noffset = {offset}\nfrequency-ppm = {ppm}\n")
    }
}

/// Starting `ntpkit serve` and talking NTP to it.
pub mod ntp {
    use super::*;

    /// `ntpkit serve ARGS` in the lab's namespace, once it printed its listening lines.
    pub struct Server<'l> {
        /// The process.
        pub proc: Proc<'l>,
        /// Addresses printed in "listening on ADDR (udp)" lines.
        pub udp: Vec<String>,
        /// Addresses printed in "listening on ADDR (tcp)" lines.
        pub tcp: Vec<String>,
    }

    impl std::fmt::Debug for Server<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Server(udp={:?}, tcp={:?})", self.udp, self.tcp)
        }
    }

    /// What `ntpkit serve` printed on exit: `served: answered=N ignored=N malformed=N`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Served {
        /// Requests answered.
        pub answered: u64,
        /// Well-formed datagrams not answered.
        pub ignored: u64,
        /// Datagrams that are not NTP packets.
        pub malformed: u64,
        /// Requests refused by the access rules.
        pub denied: u64,
        /// Requests over their client's rate.
        pub limited: u64,
        /// Kisses-o'-death sent.
        pub kissed: u64,
    }

    /// Starts `ntpkit serve ARGS` and waits until it printed one listening line per
    /// `--listen` / `--tcp` argument.
    pub fn serve<'l>(lab: &'l Lab, args: &[&str]) -> Server<'l> {
        let mut a = vec![NTPKIT, "serve"];
        a.extend_from_slice(args);
        let expect = args
            .iter()
            .filter(|a| **a == "--listen" || **a == "--tcp")
            .count()
            .max(1);
        let mut proc = lab.spawn("ntpkit-serve", &a, Duration::from_secs(240));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (udp, tcp) = listening(&proc.stdout());
            if udp.len() + tcp.len() >= expect {
                return Server { proc, udp, tcp };
            }
            if let Some(st) = proc.try_status() {
                panic!("ntpkit serve exited ({st}) at start\n{}", proc.output());
            }
            assert!(
                Instant::now() < deadline,
                "ntpkit serve printed no listening lines within 15 s\n{}",
                proc.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn listening(stdout: &str) -> (Vec<String>, Vec<String>) {
        let (mut udp, mut tcp) = (Vec::new(), Vec::new());
        for l in stdout.lines() {
            let Some(rest) = l.split("listening on ").nth(1) else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let addr = words.next().unwrap_or_default().to_string();
            match words.next() {
                Some("(tcp)") => tcp.push(addr),
                _ => udp.push(addr),
            }
        }
        (udp, tcp)
    }

    impl Server<'_> {
        /// Stops the server with SIGINT and parses its `served:` counters line.
        pub fn stop(mut self) -> Served {
            let st = self.proc.stop_with(libc::SIGINT);
            let text = format!("{}\n{}", self.proc.stdout(), self.proc.stderr());
            let line = text
                .lines()
                .find(|l| l.contains("served:"))
                .unwrap_or_else(|| {
                    panic!(
                        "no 'served:' line after SIGINT ({st})\n{}",
                        self.proc.output()
                    )
                });
            let field = |k: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.trim_end_matches(',').parse().ok())
                    .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
            };
            assert!(
                st.success(),
                "ntpkit serve exited with {st} after SIGINT\n{}",
                self.proc.output()
            );
            Served {
                answered: field("answered"),
                ignored: field("ignored"),
                malformed: field("malformed"),
                denied: field("denied"),
                limited: field("limited"),
                kissed: field("kissed"),
            }
        }
    }

    /// Seconds between the Unix epoch and the NTP epoch (1900).
    pub const NTP_UNIX: u64 = 2_208_988_800;

    /// Now as a 64-bit NTP timestamp.
    pub fn now_ntp() -> u64 {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        ((d.as_secs() + NTP_UNIX) << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
    }

    /// Signed seconds from NTP timestamp `a` to `b`.
    pub fn ntp_diff(b: u64, a: u64) -> f64 {
        (b.wrapping_sub(a) as i64) as f64 / 4_294_967_296.0
    }

    /// A 48-byte NTPv4 client request whose transmit timestamp is `xmt`.
    pub fn request(xmt: u64) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 0x23; // LI 0, VN 4, mode 3
        p[40..48].copy_from_slice(&xmt.to_be_bytes());
        p
    }

    /// The fields of a server reply the tests check.
    #[derive(Debug, Clone, Copy)]
    pub struct Reply {
        /// Leap indicator.
        pub leap: u8,
        /// Version.
        pub version: u8,
        /// Mode.
        pub mode: u8,
        /// Stratum.
        pub stratum: u8,
        /// Reference ID.
        pub refid: [u8; 4],
        /// Origin timestamp (the request's transmit timestamp).
        pub origin: u64,
        /// Receive timestamp.
        pub receive: u64,
        /// Transmit timestamp.
        pub transmit: u64,
    }

    /// Decodes the header of a reply; None if shorter than 48 bytes.
    pub fn parse_reply(b: &[u8]) -> Option<Reply> {
        if b.len() < 48 {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Reply {
            leap: b[0] >> 6,
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            refid: b[12..16].try_into().expect("4 bytes"),
            origin: u64_at(24),
            receive: u64_at(32),
            transmit: u64_at(40),
        })
    }

    /// Sends one request on a connected UDP socket and returns the matching reply, skipping
    /// stale replies to earlier requests.
    pub fn udp_exchange(sock: &UdpSocket, limit: Duration) -> std::io::Result<Reply> {
        let xmt = now_ntp() ^ 0x5a5a; // low bits scrambled: a cookie, not only a time
        sock.send(&request(xmt))?;
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            sock.set_read_timeout(Some(left))?;
            let n = sock.recv(&mut buf)?;
            if let Some(r) = parse_reply(&buf[..n]) {
                if r.origin == xmt {
                    return Ok(r);
                }
            }
        }
    }
}

/// A blocking TCP connection to `to` from `local` (an address of this host, port chosen by the
/// kernel): lets one test stand for clients on many addresses (all of 127.0.0.0/8 is local).
pub fn tcp_connect_from(
    local: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |a: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream made below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns; closing it is the stream's job now.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let from = sin(local, 0);
    let dest = sin(*to.ip(), to.port());
    // SAFETY: valid sockaddr_in values of the stated length.
    if unsafe { libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&dest as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// A small deterministic PRNG (xorshift64*) for generating test traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}
