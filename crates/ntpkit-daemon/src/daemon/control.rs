//! The control socket: a Unix socket where `ntpkit status` reads the daemon's state and
//! `ntpkit source …` / `ntpkit makestep` change it.
//!
//! Protocol (ntpkit's own): the client writes one line, the request — a [`ControlCommand`] as
//! a JSON object, or the bare word `status` or `now` — and reads one JSON document until the
//! daemon closes the connection. `status` answers a [`DaemonStatus`] and `now` a [`NowReport`]
//! (the time with its error bound); any user may ask them (the socket
//! is world-writable, as chronyc's and ntp-ctl's reading commands are open to all). Commands
//! that change state are only taken from root, the daemon's own user and the configured
//! `control-users` (checked with `SO_PEERCRED`) and answer `{"ok": true, "message": "..."}`.
//! Errors come back as `{"error": "..."}`.
//!
//! The daemon serves the socket from its event loop ([`ControlServer`]): non-blocking, a
//! deadline per connection, the answer built when the request is complete.

use super::clock::ClockReport;
use ntpkit_core::sync::{BoundStatus, BoundTerms, ErrorBound, SystemStatus};
use ntpkit_os::{Interest, PollSet};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a client has to send its request and take the answer.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Longest request line.
const MAX_REQUEST: usize = 4096;

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlCommand {
    /// The whole status (anyone).
    Status,
    /// The current time with its error bound (anyone).
    Now,
    /// Adds a server or a pool.
    SourceAdd {
        /// `host[:port]` as in the configuration.
        address: String,
        /// A pool: every address of the name becomes a source (up to `max_sources`).
        #[serde(default)]
        pool: bool,
        /// Shortest poll interval, log2 s (default 6).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minpoll: Option<i8>,
        /// Longest poll interval, log2 s (default 10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maxpoll: Option<i8>,
        /// Start with a burst (default true).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iburst: Option<bool>,
        /// A pool's most members (default 4).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_sources: Option<usize>,
        /// Network Time Security: the address names the NTS-KE server.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nts: bool,
        /// Certificates trusted for NTS-KE (absolute path; system CA bundle if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
    },
    /// Removes a server, a pool, or one source by its address.
    SourceRemove {
        /// As configured, or a source's address.
        address: String,
    },
    /// Sends a burst of requests to one source (or all).
    Burst {
        /// A source's address or a configured name; all sources if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// Steps the clock by the whole estimated offset at once.
    MakeStep,
}

impl ControlCommand {
    /// Parses a request line.
    pub fn parse(line: &str) -> Result<ControlCommand, String> {
        match line {
            "status" => return Ok(ControlCommand::Status),
            "now" => return Ok(ControlCommand::Now),
            _ => {}
        }
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
    }

    /// True for the commands only privileged users may send.
    pub fn changes_state(&self) -> bool {
        !matches!(self, ControlCommand::Status | ControlCommand::Now)
    }

    /// The command's name as the command line spells it.
    pub fn cli_name(&self) -> &'static str {
        match self {
            ControlCommand::Status => "status",
            ControlCommand::Now => "now",
            ControlCommand::SourceAdd { .. } => "source add",
            ControlCommand::SourceRemove { .. } => "source remove",
            ControlCommand::Burst { .. } => "source burst",
            ControlCommand::MakeStep => "makestep",
        }
    }
}

/// The answer to a command that changed something.
pub fn ok_answer(message: &str) -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({ "ok": true, "message": message }))
        .expect("serializes");
    v.push(b'\n');
    v
}

/// The answer to `now`: the clock's reading and the interval true time is in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NowReport {
    /// The disciplined clock's reading, Unix nanoseconds.
    pub time_ns: i64,
    /// `time − bound`: true time is no earlier (None when the status is unknown).
    pub earliest_ns: Option<i64>,
    /// `time + bound`: true time is no later (None when the status is unknown).
    pub latest_ns: Option<i64>,
    /// The bound's half-width, seconds (None when the status is unknown).
    pub bound: Option<f64>,
    /// Synchronized, holdover or unknown.
    pub status: BoundStatus,
    /// The bound's terms, seconds (docs/error-bound.md).
    pub terms: Option<BoundTerms>,
    /// The clock backend (a virtual clock also tells its offset from the OS clock).
    pub clock: ClockReport,
}

impl NowReport {
    /// The report of clock reading `time_ns` with bound `bound`.
    pub fn new(time_ns: i64, bound: &ErrorBound, clock: ClockReport) -> Self {
        let b = bound.bound();
        // Rounded outwards to whole nanoseconds: the interval never shrinks.
        let b_ns = b.map(|b| (b * 1e9).ceil().min(i64::MAX as f64) as i64);
        NowReport {
            time_ns,
            earliest_ns: b_ns.map(|b| time_ns.saturating_sub(b)),
            latest_ns: b_ns.map(|b| time_ns.saturating_add(b)),
            bound: b,
            status: bound.status,
            terms: bound.terms,
            clock,
        }
    }

    /// Renders for a person: the time, the interval, the bound and the status.
    pub fn render(&self) -> String {
        let utc = |ns: i64| {
            format!(
                "{}{:03} UTC",
                crate::query::format_utc(ns),
                ns.rem_euclid(1_000) // format_utc stops at microseconds
            )
        };
        let mut out = format!("Time     : {}\n", utc(self.time_ns));
        match (self.earliest_ns, self.latest_ns, self.bound) {
            (Some(e), Some(l), Some(b)) => {
                out += &format!("Earliest : {}\n", utc(e));
                out += &format!("Latest   : {}\n", utc(l));
                out += &format!("Bound    : ±{b:.9} seconds\n");
            }
            _ => {
                out += "Earliest : unknown\nLatest   : unknown\n";
                out += "Bound    : unknown (the clock is not synchronized: no bound holds)\n";
            }
        }
        out += &format!("Status   : {}\n", self.status);
        out
    }
}

/// Everything the daemon reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Sources and tracking, from the core.
    pub system: SystemStatus,
    /// The clock backend.
    pub clock: ClockReport,
    /// Server counters per transport: answered, ignored, malformed.
    pub server: serde_json::Value,
}

impl DaemonStatus {
    /// Assembles a status document.
    pub fn new(system: SystemStatus, clock: ClockReport, server: serde_json::Value) -> Self {
        DaemonStatus {
            system,
            clock,
            server,
        }
    }

    /// Renders like `chronyc tracking` followed by `chronyc sources`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let t = &self.system.tracking;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "Reference ID    : {}", t.reference_id);
        let _ = writeln!(w, "Stratum         : {}", t.stratum);
        let _ = writeln!(w, "Leap status     : {}", t.leap);
        let sync = match (t.synchronized, t.reason.as_deref()) {
            (true, None) => "yes".to_string(),
            (true, Some(why)) => format!("yes ({why})"),
            (false, why) => format!("no ({})", why.unwrap_or("unknown")),
        };
        let _ = writeln!(w, "Synchronized    : {sync}");
        let _ = writeln!(
            w,
            "System time     : {:+.9} seconds (estimated offset of true time from this clock)",
            t.offset
        );
        let _ = writeln!(w, "Last offset     : {:+.9} seconds", t.last_offset);
        let _ = writeln!(w, "Offset sd       : {:.9} seconds", t.offset_sd);
        let fast = if t.frequency_ppm >= 0.0 {
            "fast"
        } else {
            "slow"
        };
        let _ = writeln!(
            w,
            "Frequency       : {:.3} ppm {fast} (sd {:.3} ppm)",
            t.frequency_ppm.abs(),
            t.frequency_sd_ppm
        );
        let _ = writeln!(w, "Correction      : {:+.3} ppm", t.correction_ppm);
        let _ = writeln!(w, "Root delay      : {:.9} seconds", t.root_delay);
        let _ = writeln!(w, "Root dispersion : {:.9} seconds", t.root_dispersion);
        match t.poll {
            Some(p) => writeln!(w, "Poll            : {p} ({} s)", 2f64.powi(p as i32)),
            None => writeln!(w, "Poll            : - (no sources)"),
        }
        .ok();
        let _ = writeln!(w, "Updates / steps : {} / {}", t.updates, t.steps);
        let c = &self.clock;
        let _ = write!(w, "Clock           : {}", c.backend);
        if let Some(o) = c.offset_from_os {
            let _ = write!(w, ", {o:+.9} s from the OS clock");
        }
        if let Some(f) = c.frequency_error_ppm {
            let _ = write!(w, ", residual frequency error {f:+.3} ppm");
        }
        let _ = writeln!(w);
        let _ = writeln!(w);
        out + &self.render_sources()
    }

    /// Renders the sources like `chronyc sources` (nothing without sources).
    pub fn render_sources(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let w = &mut out;
        if self.system.sources.is_empty() {
            return out;
        }
        let _ = writeln!(w, "S Name/address                            Stratum Poll Reach  LastRx      Offset       Delay      Jitter  State");
        let _ = writeln!(w, "{}", "=".repeat(113));
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:+.6}"));
        let plain = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.6}"));
        for s in &self.system.sources {
            let name = match &s.name {
                Some(n) => format!("{n} ({})", s.address),
                None => s.address.clone(),
            };
            let _ = writeln!(
                w,
                "{} {:<40} {:>7} {:>4} {:>5o} {:>7} {:>11} {:>11} {:>11}  {:?}{}",
                s.state.symbol(),
                name,
                s.stratum.map_or("-".to_string(), |x| x.to_string()),
                s.poll,
                s.reach,
                s.last_sample_age
                    .map_or("-".to_string(), |a| format!("{a:.0}s")),
                secs(s.offset),
                plain(s.delay),
                plain(s.jitter),
                s.state,
                s.reason
                    .as_deref()
                    .map_or(String::new(), |r| format!(" ({r})")),
            );
        }
        let nts: Vec<_> = self
            .system
            .sources
            .iter()
            .filter_map(|s| s.nts.as_ref().map(|n| (s, n)))
            .collect();
        if !nts.is_empty() {
            let _ = writeln!(w);
            let _ = writeln!(w, "NTS Name/address                          Cookies  KE ok/failed  Requests  Authentic  Rejected  NAK  Skipped  AEAD");
            let _ = writeln!(w, "{}", "=".repeat(126));
            for (s, n) in nts {
                let _ = writeln!(
                    w,
                    "    {:<40} {:>5} {:>7}/{:<6} {:>8} {:>10} {:>9} {:>4} {:>8}  {}",
                    s.address,
                    n.cookies,
                    n.key_exchanges,
                    n.key_exchange_failures,
                    n.requests,
                    n.authenticated,
                    n.rejected,
                    n.naks,
                    n.starved,
                    n.aead.as_deref().unwrap_or("-"),
                );
                if let Some(e) = &n.last_error {
                    let _ = writeln!(w, "    last key exchange failed: {e}");
                }
            }
        }
        out
    }
}

/// The daemon's side of the control socket.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// Users besides root and the daemon's own who may change state.
    privileged_uids: Vec<u32>,
    clients: Vec<Client>,
    /// Poll-set index of the listener, then of each client in order.
    first: usize,
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    /// The answer, once the request is complete, and how much of it was sent.
    answer: Option<(Vec<u8>, usize)>,
    deadline: i64,
}

/// A request read from a client, for the daemon to answer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Request {
    /// The request line, trimmed.
    pub line: String,
    /// True if the client runs as root, as the daemon's user or as one of `control-users`.
    pub privileged: bool,
    /// The client's user ID, if the kernel told.
    pub uid: Option<u32>,
}

impl ControlServer {
    /// Creates the socket at `path` (removing a stale one left by a crash; refusing one a live
    /// daemon answers on), readable and writable by every user; `privileged_uids` may change
    /// state besides root and the daemon's own user.
    pub fn bind(path: &Path, privileged_uids: Vec<u32>) -> Result<ControlServer, String> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(format!(
                    "control-socket {} exists and is not a socket; remove it yourself or choose \
                     another path (the daemon only replaces a socket left by an earlier run)",
                    path.display()
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(format!(
                    "control socket {} is in use by a running daemon; stop it or choose another \
                     control-socket",
                    path.display()
                ));
            }
            std::fs::remove_file(path).map_err(|e| {
                format!("cannot remove stale control socket {}: {e}", path.display())
            })?;
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot create control socket {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("control socket {}: {e}", path.display()))?;
        // Reading the status is for everyone; what changes state checks the peer's user.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
            format!(
                "cannot open control socket {} to all users: {e}",
                path.display()
            )
        })?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
            privileged_uids,
            clients: Vec::new(),
            first: 0,
        })
    }

    /// Adds the listener and clients to `set`.
    pub fn register(&mut self, set: &mut PollSet) {
        self.first = set.len();
        set.push(self.listener.as_raw_fd(), Interest::Read);
        for c in &self.clients {
            let interest = if c.answer.is_some() {
                Interest::Write
            } else {
                Interest::Read
            };
            set.push(c.stream.as_raw_fd(), interest);
        }
    }

    /// Handles what `set` reports ready at `now` (monotonic ns); `answer` builds the reply to
    /// each complete request.
    pub fn handle_ready(
        &mut self,
        set: &PollSet,
        now: i64,
        mut answer: impl FnMut(&Request) -> Vec<u8>,
    ) {
        let mut keep = Vec::with_capacity(self.clients.len());
        for (k, mut c) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let at = self.first + 1 + k;
            let ok = if c.answer.is_none() && set.readable(at) {
                c.read(&mut answer, &self.privileged_uids)
            } else if c.answer.is_some() && set.writable(at) {
                c.write()
            } else {
                true
            };
            if ok {
                keep.push(c);
            }
        }
        self.clients = keep;
        if set.readable(self.first) {
            if let Ok((stream, _)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    self.clients.push(Client {
                        stream,
                        inbuf: Vec::new(),
                        answer: None,
                        deadline: now + CLIENT_DEADLINE.as_nanos() as i64,
                    });
                }
            }
        }
    }

    /// The earliest client deadline (monotonic ns).
    pub fn next_deadline(&self) -> Option<i64> {
        self.clients.iter().map(|c| c.deadline).min()
    }

    /// Drops the clients whose deadline passed by `now`.
    pub fn handle_timeout(&mut self, now: i64) {
        self.clients.retain(|c| c.deadline > now);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Client {
    /// Reads what is there; once the line is complete, builds the answer and starts sending
    /// it. False when the client is done with (closed, or broke the protocol).
    fn read(
        &mut self,
        answer: &mut impl FnMut(&Request) -> Vec<u8>,
        privileged_uids: &[u32],
    ) -> bool {
        let mut buf = [0u8; 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
        let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') else {
            return self.inbuf.len() <= MAX_REQUEST;
        };
        let line = String::from_utf8_lossy(&self.inbuf[..end])
            .trim()
            .to_string();
        let uid = ntpkit_os::fd::peer_uid(self.stream.as_raw_fd()).ok();
        let privileged = uid.is_some_and(|u| {
            u == 0 || u == ntpkit_os::fd::effective_uid() || privileged_uids.contains(&u)
        });
        self.answer = Some((
            answer(&Request {
                line,
                privileged,
                uid,
            }),
            0,
        ));
        self.write()
    }

    /// Sends what the socket takes of the answer. False when it is all sent (or failed).
    fn write(&mut self) -> bool {
        let Some((data, sent)) = &mut self.answer else {
            return true;
        };
        match self.stream.write(&data[*sent..]) {
            Ok(n) => {
                *sent += n;
                *sent < data.len()
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(_) => false,
        }
    }
}

/// An error document for the control protocol.
pub fn error_answer(message: &str) -> Vec<u8> {
    let mut v = serde_json::to_vec(&serde_json::json!({ "error": message })).expect("serializes");
    v.push(b'\n');
    v
}

/// Asks the daemon at `socket` for the time and its error bound (blocking, with a timeout).
pub fn query_now(socket: &Path, timeout: Duration) -> std::io::Result<NowReport> {
    let doc = request(socket, &ControlCommand::Now, timeout)?;
    serde_json::from_value(doc).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer to `now` from daemon: {e}"),
        )
    })
}

/// Asks the daemon at `socket` for its status (blocking, with a timeout).
pub fn query(socket: &Path, timeout: Duration) -> std::io::Result<DaemonStatus> {
    let doc = request(socket, &ControlCommand::Status, timeout)?;
    serde_json::from_value(doc).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad status from daemon: {e}"),
        )
    })
}

/// Sends `command` to the daemon at `socket` and returns its answer (blocking, with a
/// timeout); an `{"error": …}` answer is an error.
pub fn request(
    socket: &Path,
    command: &ControlCommand,
    timeout: Duration,
) -> std::io::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "no control socket there: is `ntpkit daemon` running with control-socket = \
                 \"{}\"? (give another path with --socket PATH)",
                socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied: the daemon opens its socket to every user, so a directory \
                 on the way to {} is closed to you (check its permissions), or the file is not \
                 the daemon's socket",
                socket.display()
            ),
            std::io::ErrorKind::ConnectionRefused => {
                "nothing listens on it: the daemon has stopped (the file is left from an \
                 earlier run)"
                    .to_string()
            }
            _ => "is `ntpkit daemon` running with this control-socket?".to_string(),
        };
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the daemon's control socket {}: {e}; {hint}",
                socket.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(command).expect("serializes");
    line.push(b'\n');
    s.write_all(&line)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let doc: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer from the daemon: {e}"),
        )
    })?;
    if let Some(e) = doc.get("error").and_then(|e| e.as_str()) {
        return Err(std::io::Error::other(format!("the daemon answered: {e}")));
    }
    Ok(doc)
}
