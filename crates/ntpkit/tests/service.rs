//! ntpkit as an installed service: the systemd unit and its configuration (dist/), readiness,
//! status and watchdog notifications as a service manager receives them, logs for the journal
//! and as JSON, manual pages and shell completions.
//!
//! No service manager runs here: a test binds the Unix datagram socket itself and names it in
//! `NOTIFY_SOCKET`, as systemd does. Every process runs on loopback without CAP_SYS_TIME
//! (setpriv), under `timeout`, with a virtual clock, and is killed with its process group when a
//! test ends or panics.

mod support;

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use support::{ntp, NO_SYS_TIME, NTPKIT};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The repository's root (two levels above this crate).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_repo(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ntpkit-svc-{}-{seq}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Variables that would tie a child to a real service manager or change its logging; every
/// child starts without them and gets only what its test sets.
const CLEARED_ENV: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "NTPKIT_LOG",
    "NTPKIT_LOG_FORMAT",
];

/// `ntpkit ARGS` without CAP_SYS_TIME, under `timeout`, with a clean environment plus `env`.
fn ntpkit(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "3", "120"])
        .args(NO_SYS_TIME)
        .arg(NTPKIT)
        .args(args)
        .stdin(Stdio::null());
    for k in CLEARED_ENV {
        c.env_remove(k);
    }
    c.envs(env.iter().copied());
    c
}

/// Runs `ntpkit ARGS` to its end.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    ntpkit(args, env).output().expect("run ntpkit")
}

/// A running `ntpkit`, its output in files; killed with its process group on drop.
struct Running {
    name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
}

impl Running {
    /// Starts `ntpkit ARGS`; stdout and stderr go to NAME.out and NAME.err in `dir`.
    fn start(dir: &Scratch, name: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let (out, err) = (
            dir.path(&format!("{name}.out")),
            dir.path(&format!("{name}.err")),
        );
        let mut cmd = ntpkit(args, env);
        cmd.stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"));
        Running::spawn(name, cmd, out, err)
    }

    fn spawn(name: &str, mut cmd: Command, out: PathBuf, err: PathBuf) -> Running {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Running {
            name: name.to_string(),
            child,
            out,
            err,
            status: None,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "--- {0} stdout\n{1}--- {0} stderr\n{2}---",
            self.name,
            self.stdout(),
            self.stderr()
        )
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits until stdout or stderr contains `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !format!("{}{}", self.stdout(), self.stderr()).contains(needle) {
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

    /// SIGTERM (`timeout` passes it on to ntpkit).
    fn terminate(&self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// Waits up to `limit` for the exit.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_status() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // `timeout` leads its own process group: end the whole group, whatever state it is in.
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service manager's end of the notification protocol: a bound Unix datagram socket.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(dir: &Scratch) -> Notify {
        let path = dir.path("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notification socket");
        Notify { sock, path }
    }

    fn env(&self) -> String {
        self.path.to_string_lossy().to_string()
    }

    /// The next datagram within `limit`, with its arrival time.
    fn recv(&self, limit: Duration) -> Option<(Instant, String)> {
        if limit.is_zero() {
            return None;
        }
        self.sock.set_read_timeout(Some(limit)).expect("timeout");
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).to_string(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("receive a notification: {e}"),
        }
    }

    /// Datagrams until one has the line `line`; returns that one and those before it.
    fn wait_for(&self, line: &str, limit: Duration, proc: &mut Running) -> (String, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left.min(Duration::from_millis(200))) {
                Some((_, msg)) if msg.lines().any(|l| l == line) => return (msg, before),
                Some((_, msg)) => before.push(msg),
                None => {
                    if let Some(st) = proc.try_status() {
                        panic!(
                            "{} exited ({st}) without sending {line:?}; got {before:?}\n{}",
                            proc.name,
                            proc.output()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{} sent no {line:?} within {limit:?}; got {before:?}\n{}",
                        proc.name,
                        proc.output()
                    );
                }
            }
        }
    }

    /// Everything that arrives within `span`.
    fn collect(&self, span: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + span;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            if let Some(m) = self.recv(left) {
                got.push(m);
            }
        }
    }
}

/// The value of `KEY=` in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(&format!("{key}=")))
}

/// The first `ADDR (udp)` a status line names.
fn udp_address(status: &str) -> SocketAddr {
    let end = status
        .find(" (udp)")
        .unwrap_or_else(|| panic!("no UDP address in status {status:?}"));
    let start = status[..end].rfind(' ').map_or(0, |i| i + 1);
    status[start..end]
        .parse()
        .unwrap_or_else(|e| panic!("address in status {status:?}: {e}"))
}

/// One NTP exchange with `addr`, as a client does.
fn ask(addr: SocketAddr) -> std::io::Result<ntp::Reply> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(addr)?;
    ntp::udp_exchange(&sock, SECS(2))
}

/// A daemon config in `dir`: a virtual clock serving itself at stratum 10 on a free loopback
/// port, with a drift file and a control socket in `dir`.
fn daemon_conf(dir: &Scratch, extra: &str) -> PathBuf {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\n{extra}drift-file = \"{}\"\ncontrol-socket = \"{}\"\n\
         [clock]\nbackend = \"virtual\"\n[sync]\nlocal-stratum = 10\n",
        dir.path("drift").display(),
        dir.path("control.sock").display()
    );
    dir.write("daemon.toml", &text)
}

fn conf_arg(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

// ---------------------------------------------------------------------------------------------
// The unit and its configuration

/// `systemd-analyze`, or a failure saying how to get it.
fn systemd_analyze() -> &'static str {
    const PATH: &str = "/usr/bin/systemd-analyze";
    assert!(
        Path::new(PATH).is_file(),
        "{PATH} not found: the unit tests need it; install the `systemd` package (apt-get \
         install systemd; scripts/install-test-deps.sh does)"
    );
    assert!(
        Path::new("/usr/bin/man").is_file(),
        "/usr/bin/man not found: systemd-analyze verify uses it to check the unit's \
         Documentation= pages; install the `man-db` package (scripts/install-test-deps.sh does)"
    );
    PATH
}

/// A copy of dist/ntpkit.service in `dir` whose ExecStart runs the binary under test (verify
/// requires the program to exist), after `edit`.
fn unit_copy(dir: &Scratch, edit: impl Fn(String) -> String) -> PathBuf {
    let unit = read_repo("dist/ntpkit.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ntpkit daemon --config /etc/ntpkit/ntpkit.toml"),
        "the unit must run /usr/local/bin/ntpkit (where the README installs it) with \
         /etc/ntpkit/ntpkit.toml"
    );
    let unit = unit.replace("/usr/local/bin/ntpkit", NTPKIT);
    let sub = dir.path("unit");
    fs::create_dir_all(&sub).expect("unit dir");
    let p = sub.join("ntpkit.service");
    fs::write(&p, edit(unit)).expect("write unit copy");
    p
}

/// `systemd-analyze verify` of `unit`, with the manual pages of the binary under test on
/// MANPATH (the unit's Documentation= names them, and verify looks them up). Returns whether
/// it passed and what it printed.
fn verify(dir: &Scratch, unit: &Path) -> (bool, String) {
    let man = dir.path("man");
    let pages = man.join("man1");
    let r = run(&["man", "--dir", &pages.to_string_lossy()], &[]);
    assert!(r.status.success(), "ntpkit man --dir: {r:?}");
    let out = Command::new(systemd_analyze())
        .args(["verify", "--man=yes"])
        .arg(unit)
        .env("MANPATH", &man)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.trim().is_empty(), text)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = Scratch::new("verify");
    let unit = unit_copy(&dir, |u| u);
    let (ok, text) = verify(&dir, &unit);
    assert!(ok, "systemd-analyze verify dist/ntpkit.service:\n{text}");

    // The check sees mistakes: a misspelt key and a bad value are only warnings to systemd
    // (exit status 0), so any output counts as a failure.
    let bad = unit_copy(&dir, |u| {
        u.replace("Type=notify", "Type=notified")
            .replace("PrivateTmp=yes", "PrivateTemp=yes")
    });
    let (ok, text) = verify(&dir, &bad);
    assert!(!ok, "a broken unit passed verify");
    assert!(
        text.contains("notified") && text.contains("PrivateTemp"),
        "verify did not name both mistakes:\n{text}"
    );
    let missing = unit_copy(&dir, |u| u.replace(NTPKIT, "/nonexistent/ntpkit"));
    assert!(
        !verify(&dir, &missing).0,
        "a unit whose program is missing passed"
    );
}

#[test]
fn the_unit_is_hardened_and_grants_what_the_daemon_needs() {
    let unit = read_repo("dist/ntpkit.service");
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("dist/ntpkit.service has no {key}="))
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("WatchdogSec"), "30");
    assert_eq!(value("Restart"), "on-failure");
    let caps = value("CapabilityBoundingSet");
    let mut caps: Vec<&str> = caps.split_whitespace().collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        ["CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"],
        "the bounding set: the clock and port 123"
    );
    assert_eq!(value("DynamicUser"), "yes", "the daemon never runs as root");
    let mut ambient: Vec<String> = value("AmbientCapabilities")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ambient.sort_unstable();
    assert_eq!(
        ambient, caps,
        "the unprivileged account gets exactly the bounding set"
    );
    assert!(
        !unit.lines().any(|l| l.starts_with("ProtectClock=")),
        "ProtectClock= would forbid adjusting the clock"
    );
    for c in [
        "systemd-timesyncd.service",
        "chronyd.service",
        "chrony.service",
        "ntp.service",
        "ntpsec.service",
    ] {
        assert!(value("Conflicts").split_whitespace().any(|u| u == c), "{c}");
    }
    assert_eq!(value("Before"), "time-sync.target");
    assert_eq!(value("WantedBy"), "multi-user.target");

    // systemd's own rating of the sandbox (0 = fully confined, 10 = exposed).
    let dir = Scratch::new("security");
    let copy = unit_copy(&dir, |u| u);
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true"])
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ntpkit.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        level <= 3.0,
        "exposure level {level} (> 3.0): hardening was lost\n{text}"
    );
}

/// `KEY = "VALUE"` of a top-level key in a TOML text.
fn toml_string(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {key} = \"…\" line"))
        .to_string()
}

#[test]
fn the_installed_config_fits_the_unit_and_validates() {
    let conf = read_repo("dist/ntpkit.toml");
    let unit = read_repo("dist/ntpkit.service");
    let drift = toml_string(&conf, "drift-file");
    let control = toml_string(&conf, "control-socket");
    // The only writable places the unit gives: its state and runtime directories.
    assert!(
        unit.lines().any(|l| l == "StateDirectory=ntpkit") && drift.starts_with("/var/lib/ntpkit/"),
        "drift file {drift} must be in the unit's StateDirectory /var/lib/ntpkit"
    );
    assert!(
        unit.lines().any(|l| l == "RuntimeDirectory=ntpkit") && control.starts_with("/run/ntpkit/"),
        "control socket {control} must be in the unit's RuntimeDirectory /run/ntpkit"
    );
    assert_eq!(toml_string(&conf, "backend"), "system");
    assert!(conf.contains("pool.ntp.org"));

    // `ntpkit status` finds the installed daemon without --socket.
    let help = run(&["status", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        help.contains(&format!("[default: {control}]")),
        "`ntpkit status` does not default to {control}:\n{help}"
    );

    // The file validates, its directories pointed at a scratch directory (as an installation
    // would create them).
    let dir = Scratch::new("distconf");
    let text = conf
        .replace("/var/lib/ntpkit", &dir.0.to_string_lossy())
        .replace("/run/ntpkit", &dir.0.to_string_lossy());
    let path = dir.write("ntpkit.toml", &text);
    let r = run(&["daemon", "--check", "--config", &conf_arg(&path)], &[]);
    assert!(
        r.status.success(),
        "dist/ntpkit.toml does not validate: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("configuration OK"));
}

// ---------------------------------------------------------------------------------------------
// Readiness, status, stopping, watchdog

#[test]
fn the_daemon_is_ready_once_it_answers_and_says_when_it_stops() {
    let dir = Scratch::new("ready");
    let notify = Notify::bind(&dir);
    fs::write(dir.path("drift"), "12.500000\n").expect("drift file");
    let conf = daemon_conf(&dir, "access = [\"allow all\"]\n");
    let mut d = Running::start(
        &dir,
        "daemon",
        &["daemon", "--config", &conf_arg(&conf)],
        &[("NOTIFY_SOCKET", &notify.env())],
    );
    let (ready, before) = notify.wait_for("READY=1", SECS(15), &mut d);
    assert!(before.is_empty(), "notifications before READY: {before:?}");
    let status = field(&ready, "STATUS").expect("READY comes with a STATUS line");
    // At READY the NTP socket answers and the control socket is there.
    let addr = udp_address(status);
    let reply = ask(addr).unwrap_or_else(|e| {
        panic!(
            "no NTP reply from {addr} right after READY=1: {e}\n{}",
            d.output()
        )
    });
    assert_eq!(reply.mode, 4, "{reply:?}");
    assert!(
        dir.path("control.sock").exists(),
        "no control socket at READY"
    );
    assert!(
        d.try_status().is_none(),
        "exited after READY\n{}",
        d.output()
    );

    d.terminate();
    let (stopping, _) = notify.wait_for("STOPPING=1", SECS(10), &mut d);
    assert_eq!(field(&stopping, "STATUS"), Some("stopping"));
    let st = d.wait(SECS(10));
    assert!(st.success(), "daemon exited with {st}\n{}", d.output());
}

#[test]
fn a_daemon_that_cannot_start_never_says_ready() {
    let dir = Scratch::new("notready");
    let notify = Notify::bind(&dir);
    // A drift file that holds no number stops the start-up.
    fs::write(dir.path("drift"), "not a number\n").expect("drift file");
    let conf = daemon_conf(&dir, "access = [\"allow all\"]\n");
    let mut d = Running::start(
        &dir,
        "daemon",
        &["daemon", "--config", &conf_arg(&conf)],
        &[("NOTIFY_SOCKET", &notify.env())],
    );
    let st = d.wait(SECS(15));
    assert!(
        !st.success(),
        "started with a bad drift file\n{}",
        d.output()
    );
    assert!(d.stderr().contains("drift file"), "{}", d.output());
    let got = notify.collect(Duration::from_millis(300));
    assert!(got.is_empty(), "a failed start sent {got:?}");
}

#[test]
fn serve_is_ready_once_it_answers_and_says_when_it_stops() {
    let dir = Scratch::new("serve");
    let notify = Notify::bind(&dir);
    let mut s = Running::start(
        &dir,
        "serve",
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", &notify.env())],
    );
    let (ready, _) = notify.wait_for("READY=1", SECS(15), &mut s);
    let status = field(&ready, "STATUS").expect("READY comes with a STATUS line");
    assert!(status.contains("stratum 10"), "{status}");
    let addr = udp_address(status);
    let reply = ask(addr).unwrap_or_else(|e| {
        panic!(
            "no NTP reply from {addr} right after READY=1: {e}\n{}",
            s.output()
        )
    });
    assert_eq!((reply.mode, reply.stratum), (4, 10), "{reply:?}");

    s.terminate();
    notify.wait_for("STOPPING=1", SECS(10), &mut s);
    let st = s.wait(SECS(10));
    assert!(st.success(), "serve exited with {st}\n{}", s.output());
    assert!(s.stdout().contains("served: answered=1 "), "{}", s.output());
}

#[test]
fn a_missing_notification_socket_is_reported_and_serving_goes_on() {
    let dir = Scratch::new("nosock");
    let missing = dir.path("no-such-socket").to_string_lossy().to_string();
    let mut s = Running::start(
        &dir,
        "serve",
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", &missing)],
    );
    s.wait_for("cannot notify the service manager", SECS(15));
    s.wait_for("Waiting for NTP requests", SECS(5));
    let line = s
        .stdout()
        .lines()
        .find(|l| l.ends_with("(udp)"))
        .map(str::to_string)
        .expect("listening line");
    let reply = ask(udp_address(&line)).expect("serves without a service manager");
    assert_eq!(reply.mode, 4);
    assert!(s.stderr().contains(&missing), "{}", s.output());
}

#[test]
fn the_watchdog_is_pinged_at_half_its_period() {
    let dir = Scratch::new("watchdog");
    let pinged = Notify::bind(&dir);
    let conf = daemon_conf(&dir, "access = [\"allow all\"]\n");
    // WATCHDOG_PID is left unset: the watchdog is then meant for whoever reads it.
    let mut d = Running::start(
        &dir,
        "daemon",
        &["daemon", "--config", &conf_arg(&conf)],
        &[
            ("NOTIFY_SOCKET", &pinged.env()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    // Two more daemons: a watchdog meant for another process (WATCHDOG_PID), and none at all.
    let other = Scratch::new("watchdog-other");
    let other_notify = Notify::bind(&other);
    let other_conf = daemon_conf(&other, "access = [\"allow all\"]\n");
    let mut o = Running::start(
        &other,
        "daemon",
        &["daemon", "--config", &conf_arg(&other_conf)],
        &[
            ("NOTIFY_SOCKET", &other_notify.env()),
            ("WATCHDOG_USEC", "2000000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let none = Scratch::new("watchdog-none");
    let none_notify = Notify::bind(&none);
    let none_conf = daemon_conf(&none, "access = [\"allow all\"]\n");
    let mut n = Running::start(
        &none,
        "daemon",
        &["daemon", "--config", &conf_arg(&none_conf)],
        &[("NOTIFY_SOCKET", &none_notify.env())],
    );

    pinged.wait_for("READY=1", SECS(15), &mut d);
    other_notify.wait_for("READY=1", SECS(15), &mut o);
    none_notify.wait_for("READY=1", SECS(15), &mut n);
    let pings: Vec<Instant> = pinged
        .collect(Duration::from_millis(4500))
        .into_iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| at)
        .collect();
    // A 2 s watchdog: a ping every second.
    assert!(
        (3..=6).contains(&pings.len()),
        "{} WATCHDOG=1 in 4.5 s (expected about 4)\n{}",
        pings.len(),
        d.output()
    );
    for gap in pings.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            (0.6..1.5).contains(&gap.as_secs_f64()),
            "pings {gap:?} apart (expected 1 s)"
        );
    }
    for (name, notify) in [
        ("WATCHDOG_PID=1", &other_notify),
        ("no watchdog", &none_notify),
    ] {
        let got = notify.collect(Duration::from_millis(200));
        assert!(
            got.iter().all(|(_, m)| !m.contains("WATCHDOG=1")),
            "{name}: pinged anyway: {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Logging

/// Runs a daemon from `conf` until it logged that it listens, stops it, and returns its stderr.
fn short_daemon_run(
    dir: &Scratch,
    name: &str,
    conf: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let mut a: Vec<&str> = args.to_vec();
    let conf = conf_arg(conf);
    a.extend(["daemon", "--config", &conf]);
    let mut d = Running::start(dir, name, &a, env);
    d.wait_for("NTP server listening on", SECS(15));
    d.terminate();
    let st = d.wait(SECS(10));
    assert!(st.success(), "{name} exited with {st}\n{}", d.output());
    d.stderr()
}

/// The lines of the counters report that the daemon prints when it stops.
fn is_report(line: &str) -> bool {
    line.starts_with("served")
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = Scratch::new("json");
    let conf = daemon_conf(&dir, "");
    for (name, args, env) in [
        ("flag", &["--log-format", "json"][..], &[][..]),
        ("env", &[][..], &[("NTPKIT_LOG_FORMAT", "json")][..]),
        // The flag wins over the variable.
        (
            "both",
            &["--log-format", "json"][..],
            &[("NTPKIT_LOG_FORMAT", "text")][..],
        ),
    ] {
        let err = short_daemon_run(&dir, name, &conf, args, env);
        let mut messages = Vec::new();
        for line in err.lines().filter(|l| !is_report(l)) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not a JSON line: {line:?}: {e}\n{err}"));
            for key in ["timestamp", "level", "message"] {
                assert!(v[key].is_string(), "{name}: no {key} in {line}");
            }
            messages.push((
                v["level"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap().to_string(),
            ));
        }
        // Listening without access rules is worth a warning; the listener is information.
        assert!(
            messages
                .iter()
                .any(|(l, m)| l == "INFO" && m.starts_with("NTP server listening on 127.0.0.1:")),
            "{name}: {messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|(l, m)| l == "WARN" && m.contains("access")),
            "{name}: {messages:?}"
        );
    }
    // Text stays text.
    let err = short_daemon_run(&dir, "text", &conf, &[], &[("NTPKIT_LOG_FORMAT", "text")]);
    assert!(
        err.lines().all(|l| !l.starts_with('{')),
        "text format wrote JSON:\n{err}"
    );
}

#[test]
fn a_wrong_log_format_is_refused_with_the_choices() {
    let r = run(&["--log-format", "xml", "status"], &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'xml' for '--log-format <FORMAT>'")
            && err.contains("[possible values: text, json]"),
        "{err}"
    );
    let r = run(&["status"], &[("NTPKIT_LOG_FORMAT", "yaml")]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "error: NTPKIT_LOG_FORMAT=\"yaml\" is not a log format; set it to `text` or `json`, or \
         unset it"
    );
}

/// `DEVICE:INODE` of a file, as systemd puts standard error's into JOURNAL_STREAM.
fn dev_ino(p: &Path) -> String {
    let m = fs::metadata(p).expect("stat");
    format!("{}:{}", m.dev(), m.ino())
}

#[test]
fn logs_to_the_journal_carry_priorities_and_no_timestamps() {
    let dir = Scratch::new("journal");
    // No access rule: a warning, besides the informational listener line.
    let conf = daemon_conf(&dir, "");
    let conf_s = conf_arg(&conf);
    let args = ["daemon", "--config", conf_s.as_str()];
    let run_with_stream = |name: &str, stream_of: Option<&Path>| -> String {
        let out = dir.path(&format!("{name}.out"));
        let err = dir.path(&format!("{name}.err"));
        fs::File::create(&err).expect("stderr file");
        let stream = dev_ino(stream_of.unwrap_or(&err));
        let mut cmd = ntpkit(&args, &[("JOURNAL_STREAM", &stream)]);
        cmd.stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(
                fs::OpenOptions::new()
                    .append(true)
                    .open(&err)
                    .expect("open stderr file"),
            );
        let mut d = Running::spawn(name, cmd, out, err);
        d.wait_for("NTP server listening on", SECS(15));
        d.terminate();
        let st = d.wait(SECS(10));
        assert!(st.success(), "{name} exited with {st}\n{}", d.output());
        d.stderr()
    };

    // Standard error is the stream JOURNAL_STREAM names.
    let err = run_with_stream("journal", None);
    let logged: Vec<&str> = err.lines().filter(|l| !is_report(l)).collect();
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("<6>NTP server listening on 127.0.0.1:")),
        "no <6> line:\n{err}"
    );
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("access")),
        "no <4> line:\n{err}"
    );
    for l in &logged {
        let rest = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("line without a priority: {l:?}\n{err}"));
        assert!(
            !rest.starts_with(|c: char| c.is_ascii_digit() || c.is_whitespace()),
            "timestamp or padding after the priority: {l:?}"
        );
    }

    // JOURNAL_STREAM names another file (inherited from a parent whose stderr was the
    // journal): ordinary lines with timestamps.
    let elsewhere = dir.write("elsewhere", "");
    let err = run_with_stream("elsewhere", Some(&elsewhere));
    let logged: Vec<&str> = err.lines().filter(|l| !is_report(l)).collect();
    assert!(!logged.is_empty(), "{err}");
    for l in &logged {
        assert!(
            !l.starts_with('<') && l.starts_with(|c: char| c.is_ascii_digit()),
            "not an ordinary line: {l:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Manual pages and completions

/// One page per command and per subcommand of `ntpkit source`.
const PAGES: [&str; 16] = [
    "ntpkit.1",
    "ntpkit-serve.1",
    "ntpkit-query.1",
    "ntpkit-bench.1",
    "ntpkit-daemon.1",
    "ntpkit-status.1",
    "ntpkit-sources.1",
    "ntpkit-source.1",
    "ntpkit-source-add.1",
    "ntpkit-source-remove.1",
    "ntpkit-source-burst.1",
    "ntpkit-makestep.1",
    "ntpkit-now.1",
    "ntpkit-simulate.1",
    "ntpkit-man.1",
    "ntpkit-completions.1",
];

#[test]
fn man_writes_a_page_per_command() {
    let dir = Scratch::new("man");
    let out_dir = dir.path("share/man/man1");
    let r = run(&["man", "--dir", &out_dir.to_string_lossy()], &[]);
    assert!(r.status.success(), "{r:?}");
    let mut written: Vec<String> = fs::read_dir(&out_dir)
        .expect("man dir")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    let mut expected: Vec<String> = PAGES.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(written, expected);
    let said = String::from_utf8_lossy(&r.stdout);
    for p in PAGES {
        assert!(said.contains(p), "{p} not reported: {said}");
    }

    let serve = fs::read_to_string(out_dir.join("ntpkit-serve.1")).unwrap();
    assert!(
        serve.starts_with(".ie") || serve.starts_with(".TH"),
        "{serve}"
    );
    assert!(serve.contains(".TH ntpkit-serve 1"), "{serve}");
    assert!(
        serve.contains("\\fB\\-\\-listen\\fR"),
        "no --listen in:\n{serve}"
    );
    assert!(
        serve.contains("CAP_NET_BIND_SERVICE"),
        "after-help text missing"
    );
    let daemon = fs::read_to_string(out_dir.join("ntpkit-daemon.1")).unwrap();
    for needle in [
        "\\-\\-config",
        "READY=1",
        "/etc/ntpkit/ntpkit.toml",
        "SIGHUP",
    ] {
        assert!(daemon.contains(needle), "no {needle} in:\n{daemon}");
    }

    // The top-level page to standard output, naming every command.
    let r = run(&["man"], &[]);
    assert!(r.status.success());
    let top = String::from_utf8_lossy(&r.stdout);
    assert!(top.contains(".TH ntpkit 1"), "{top}");
    for cmd in [
        "serve",
        "query",
        "daemon",
        "status",
        "simulate",
        "completions",
    ] {
        assert!(
            top.contains(&format!("ntpkit\\-{cmd}(1)")),
            "no {cmd} in:\n{top}"
        );
    }
    // Every page it refers to is one that --dir writes (no page for `help`).
    let referred: Vec<&str> = top
        .split("ntpkit\\-")
        .skip(1)
        .filter_map(|rest| rest.split_once("(1)").map(|(name, _)| name))
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric()))
        .collect();
    // The top page names the commands; `ntpkit-source(1)` names its own subcommands.
    let commands = PAGES
        .iter()
        .filter(|p| **p != "ntpkit.1" && !p.starts_with("ntpkit-source-"))
        .count();
    assert_eq!(referred.len(), commands, "{referred:?}");
    for name in referred {
        assert!(
            PAGES.contains(&format!("ntpkit-{name}.1").as_str()),
            "the top page refers to ntpkit-{name}(1), which --dir does not write"
        );
    }
}

#[test]
fn man_into_an_unusable_directory_names_the_fix() {
    let dir = Scratch::new("manbad");
    let file = dir.write("a-file", "");
    let target = file.join("man1");
    let r = run(&["man", "--dir", &target.to_string_lossy()], &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("error: cannot create {}", target.display()))
            && err.contains("--dir"),
        "{err}"
    );
}

#[test]
fn completions_are_valid_scripts_that_know_the_commands() {
    let r = run(&["completions", "bash"], &[]);
    assert!(r.status.success(), "{r:?}");
    let script = String::from_utf8_lossy(&r.stdout).to_string();
    for word in [
        "serve",
        "daemon",
        "status",
        "query",
        "simulate",
        "--log-format",
        "--listen",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let dir = Scratch::new("completions");
    let path = dir.write("ntpkit.bash", &script);
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(
        check.status.success(),
        "bash -n rejects the completion script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A script that is not bash is rejected by the same check.
    let broken = dir.write("broken.bash", &script.replacen("()", "(", 1));
    assert!(!Command::new("bash")
        .arg("-n")
        .arg(&broken)
        .output()
        .unwrap()
        .status
        .success());

    for (shell, marker) in [
        ("zsh", "#compdef ntpkit"),
        ("fish", "complete -c ntpkit"),
        ("elvish", "edit:completion:arg-completer[ntpkit]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let r = run(&["completions", shell], &[]);
        assert!(r.status.success(), "{shell}: {r:?}");
        let s = String::from_utf8_lossy(&r.stdout);
        assert!(s.contains(marker) && s.contains("daemon"), "{shell}:\n{s}");
    }
    let r = run(&["completions", "tcsh"], &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        err.contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{err}"
    );
}
