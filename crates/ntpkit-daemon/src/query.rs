//! `ntpkit query`: ask one NTP server for the time a few times, over UDP or ntpkit's TCP
//! framing, and report offset and delay.
//!
//! Each request's transmit timestamp is 64 random bits from the OS (the reply's origin must
//! echo them; mismatches are ignored and the wait goes on). T1 is the local clock read just
//! before sending, T4 the kernel's receive timestamp (UDP) or the clock read when the read
//! that completed the reply returned (TCP). Validation and arithmetic are
//! [`ntpkit_core::exchange`]'s.

use crate::framing::{self, FrameDecoder};
use crate::nts_ke::{self, NtsError};
use ntpkit_core::{measure, validate_reply, Measurement, ReplyError};
use ntpkit_nts::{CookieJar, PendingRequest, ReplyVerdict};
use ntpkit_os::{UdpSocket, UdpSocketOptions};
use ntpkit_wire::{Header, KissCode, Mode, NtpTimestamp, HEADER_LEN};
use rand_core::{OsRng, TryRngCore};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Default NTP port.
pub const NTP_PORT: u16 = 123;

/// What to ask and how.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    /// `HOST`, `HOST:PORT`, `IPv4:PORT`, `[IPv6]:PORT` or a bare IPv6 address.
    pub server: String,
    /// Number of requests.
    pub samples: u32,
    /// Time from one request to the next (the first goes at once).
    pub interval: Duration,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Use ntpkit's TCP framing (one connection for all samples) instead of UDP.
    pub tcp: bool,
    /// Accept replies of unsynchronized servers (leap 3 or stratum 16).
    pub allow_unsynced: bool,
    /// Authenticate with NTS (UDP only); `server` is then ignored.
    pub nts: Option<NtsConfig>,
}

/// How to set up NTS.
#[derive(Clone, Debug)]
pub struct NtsConfig {
    /// The NTS-KE server, `HOST[:PORT]` (port 4460 by default).
    pub ke_server: String,
    /// PEM file of the certificates to trust instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// What NTS did during a query.
#[derive(Clone, Debug, Default)]
pub struct NtsSummary {
    /// The negotiated AEAD algorithm's name.
    pub aead: &'static str,
    /// The NTS-KE server, `HOST:PORT`.
    pub ke_server: String,
    /// The NTP server asked (negotiated or the NTS-KE host), `HOST:PORT`.
    pub ntp_server: String,
    /// Key exchanges run.
    pub key_exchanges: u32,
    /// Cookies received, from NTS-KE and in authentic replies.
    pub cookies: usize,
    /// Replies dropped because they did not authenticate.
    pub dropped: u64,
    /// Why the last dropped reply was dropped.
    pub last_drop: Option<String>,
}

/// NTS state during a query.
struct NtsState {
    host: String,
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    timeout: Duration,
    jar: CookieJar,
    summary: NtsSummary,
}

impl NtsState {
    /// Runs NTS-KE and fills the jar; returns the NTP server's address.
    fn key_exchange(&mut self) -> Result<SocketAddr, NtsError> {
        let outcome =
            nts_ke::key_exchange(&self.host, self.port, self.config.clone(), self.timeout)?;
        let (name, addr) = nts_ke::negotiated_server(&outcome, &self.host)?;
        self.summary.aead = outcome.keys.aead.name();
        self.summary.ntp_server = name;
        self.summary.key_exchanges += 1;
        self.summary.cookies += outcome.cookies.len();
        self.jar.install(outcome.keys, outcome.cookies);
        Ok(addr)
    }
}

/// One successful exchange.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// 1-based number of the request.
    pub index: u32,
    /// The server's reply header.
    pub reply: Header,
    /// T1: our clock just before sending, Unix ns.
    pub t1_unix_ns: i64,
    /// T4: our clock at arrival, Unix ns.
    pub t4_unix_ns: i64,
    /// T1 in NTP format, as used in the arithmetic (the request itself carried random bits).
    pub t1: NtpTimestamp,
    /// T4 in NTP format.
    pub t4: NtpTimestamp,
    /// Offset and delay.
    pub measurement: Measurement,
}

impl Sample {
    /// T2 (server receive) resolved to Unix ns near our clock.
    pub fn t2_unix_ns(&self) -> i64 {
        self.reply.receive_ts.to_unix_nanos(self.t1_unix_ns)
    }

    /// T3 (server transmit) resolved to Unix ns near our clock.
    pub fn t3_unix_ns(&self) -> i64 {
        self.reply.transmit_ts.to_unix_nanos(self.t4_unix_ns)
    }
}

/// What became of one request.
#[derive(Clone, Copy, Debug)]
pub enum SampleOutcome {
    /// A valid reply.
    Reply(Sample),
    /// No valid reply within the timeout.
    Timeout {
        /// 1-based number of the request.
        index: u32,
    },
    /// The server answered, but the answer is unusable.
    Rejected {
        /// 1-based number of the request.
        index: u32,
        /// Why.
        error: ReplyError,
    },
}

/// Why a query failed as a whole.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueryError {
    /// The server name did not resolve, or the address is malformed.
    Resolve(String, io::Error),
    /// Socket or connection failure.
    Io(SocketAddr, io::Error),
    /// The OS random source failed.
    Random(String),
    /// NTS failed: key exchange, or the NTP server refused the cookie.
    Nts(NtsError),
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Resolve(s, e) => write!(f, "cannot resolve {s}: {e}"),
            QueryError::Io(a, e) => write!(f, "{a}: {e}"),
            QueryError::Random(e) => write!(f, "OS random source failed: {e}"),
            QueryError::Nts(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for QueryError {}

/// Parses `HOST[:PORT]` (port 123 when absent; `[::1]:1123` for IPv6 with a port) and
/// resolves it; the first address the resolver gives wins.
pub fn resolve(server: &str) -> Result<SocketAddr, QueryError> {
    let err = |e: io::Error| QueryError::Resolve(server.to_string(), e);
    if let Ok(a) = server.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, NTP_PORT));
    }
    let (host, port) =
        if let Some(inner) = server.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            (inner, NTP_PORT)
        } else if let Some((h, p)) = server.rsplit_once(':') {
            let port = p.parse::<u16>().map_err(|_| {
                err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid port {p:?}"),
                ))
            })?;
            (h, port)
        } else {
            (server, NTP_PORT)
        };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(err)?
        .next()
        .ok_or_else(|| err(io::Error::new(io::ErrorKind::NotFound, "no address")))
}

/// Runs the query, calling `on_outcome` after each request. Returns the address asked and all
/// outcomes (a kiss-o'-death ends the query: see [`kiss_code`]); fails on resolution or socket
/// errors.
pub fn run(
    cfg: &QueryConfig,
    on_outcome: impl FnMut(SocketAddr, &SampleOutcome),
) -> Result<(SocketAddr, Vec<SampleOutcome>), QueryError> {
    run_with_nts(cfg, on_outcome).map(|(a, o, _)| (a, o))
}

/// [`run`], also with NTS when `cfg.nts` is set: NTS-KE first, then each request carries a
/// cookie and an authenticator, and only replies that authenticate reach validation (the rest
/// are dropped and counted). Returns what NTS did as well.
pub fn run_with_nts(
    cfg: &QueryConfig,
    mut on_outcome: impl FnMut(SocketAddr, &SampleOutcome),
) -> Result<(SocketAddr, Vec<SampleOutcome>, Option<NtsSummary>), QueryError> {
    let mut nts = match &cfg.nts {
        None => None,
        Some(n) => {
            let (host, port) =
                nts_ke::split_host_port(&n.ke_server, ntpkit_nts::ke::DEFAULT_KE_PORT)
                    .map_err(QueryError::Nts)?;
            let roots = nts_ke::load_roots(n.ca_file.as_deref()).map_err(QueryError::Nts)?;
            let config = nts_ke::ke_config(roots).map_err(QueryError::Nts)?;
            let ke_server = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            Some(NtsState {
                host,
                port,
                config,
                timeout: cfg.timeout,
                jar: CookieJar::new(),
                summary: NtsSummary {
                    ke_server,
                    ..NtsSummary::default()
                },
            })
        }
    };
    let mut addr = match &mut nts {
        Some(n) => n.key_exchange().map_err(QueryError::Nts)?,
        None => resolve(&cfg.server)?,
    };
    let mut transport = if cfg.tcp && nts.is_none() {
        let s =
            TcpStream::connect_timeout(&addr, cfg.timeout).map_err(|e| QueryError::Io(addr, e))?;
        let _ = s.set_nodelay(true);
        Transport::Tcp(s, Vec::with_capacity(1024))
    } else {
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let opts = UdpSocketOptions {
            timestamps: true,
            transmit_timestamps: true,
            ..Default::default()
        };
        Transport::Udp(UdpSocket::bind(local, &opts).map_err(|e| QueryError::Io(addr, e))?)
    };
    let mut outcomes = Vec::new();
    let start = Instant::now();
    for index in 1..=cfg.samples.max(1) {
        if index > 1 {
            let due = start + cfg.interval * (index - 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if let Some(n) = nts.as_mut().filter(|n| n.jar.needs_key_exchange()) {
            addr = n.key_exchange().map_err(QueryError::Nts)?;
        }
        let outcome = exchange(&mut transport, addr, index, cfg, nts.as_mut())?;
        on_outcome(addr, &outcome);
        outcomes.push(outcome);
        if kiss_code(&outcomes).is_some() {
            break; // RATE, DENY, RSTR: stop asking
        }
    }
    Ok((addr, outcomes, nts.map(|n| n.summary)))
}

/// The kiss code if the last outcome is a kiss-o'-death (which ends a query).
pub fn kiss_code(outcomes: &[SampleOutcome]) -> Option<KissCode> {
    match outcomes.last() {
        Some(SampleOutcome::Rejected {
            error: ReplyError::Kiss(code),
            ..
        }) => Some(*code),
        _ => None,
    }
}

/// The valid sample with the smallest delay (the least disturbed by queueing).
pub fn best(outcomes: &[SampleOutcome]) -> Option<&Sample> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            SampleOutcome::Reply(s) => Some(s),
            _ => None,
        })
        .min_by_key(|s| s.measurement.delay_ns)
}

enum Transport {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

fn exchange(
    transport: &mut Transport,
    addr: SocketAddr,
    index: u32,
    cfg: &QueryConfig,
    mut nts: Option<&mut NtsState>,
) -> Result<SampleOutcome, QueryError> {
    let io_err = |e: io::Error| QueryError::Io(addr, e);
    let mut cookie = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut cookie)
        .map_err(|e| QueryError::Random(e.to_string()))?;
    let request_ts = NtpTimestamp::from_be_bytes(cookie);
    let request = Header {
        version: 4,
        mode: Mode::Client,
        transmit_ts: request_ts,
        ..Header::default()
    };
    let mut req = [0u8; HEADER_LEN];
    request.emit(&mut req);
    // With NTS the header is final here: the authenticator covers it.
    let mut packet = Vec::with_capacity(1024);
    let mut pending: Option<PendingRequest> = None;
    match nts.as_deref_mut() {
        Some(n) => {
            let mut rng = OsRng.unwrap_err();
            pending = Some(
                n.jar
                    .build_request(&req, &mut rng, &mut packet)
                    .map_err(|e| QueryError::Random(format!("building the NTS request: {e}")))?,
            );
        }
        None => packet.extend_from_slice(&req),
    }
    let deadline = Instant::now() + cfg.timeout;
    let t1_unix_ns;
    match transport {
        Transport::Udp(sock) => {
            t1_unix_ns = sock.send_to_timed(&packet, addr).map_err(io_err)?;
        }
        Transport::Tcp(stream, _) => {
            let mut frame = Vec::with_capacity(HEADER_LEN + framing::PREFIX_LEN);
            framing::encode(&req, &mut frame).expect("48 bytes");
            t1_unix_ns = ntpkit_os::realtime_nanos();
            stream.write_all(&frame).map_err(io_err)?;
        }
    }
    let mut buf = [0u8; 2048];
    loop {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(SampleOutcome::Timeout { index });
        };
        let (reply, t4_unix_ns) = match transport {
            Transport::Udp(sock) => {
                sock.set_read_timeout(Some(left)).map_err(io_err)?;
                match sock.recv_from(&mut buf) {
                    Ok((n, from, rx)) => {
                        if from != addr {
                            continue; // not from the server we asked
                        }
                        if let (Some(n_state), Some(p)) = (nts.as_deref_mut(), pending.as_mut()) {
                            // Authenticate before anything of the reply is looked at.
                            match n_state.jar.accept_reply(p, &buf[..n]) {
                                Ok(ReplyVerdict::Authentic { cookies }) => {
                                    n_state.summary.cookies += cookies.len();
                                }
                                Ok(ReplyVerdict::Nak) => {
                                    return Err(QueryError::Nts(NtsError::Nak(addr)));
                                }
                                Err(e) => {
                                    n_state.summary.dropped += 1;
                                    n_state.summary.last_drop = Some(e.to_string());
                                    continue;
                                }
                            }
                        }
                        match Header::parse(&buf[..n]) {
                            Ok(h) => (h, rx),
                            Err(_) => continue,
                        }
                    }
                    Err(e) if is_timeout(&e) => return Ok(SampleOutcome::Timeout { index }),
                    // ICMP port unreachable on loopback shows up as ECONNREFUSED after a send.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(io_err(e)),
                }
            }
            Transport::Tcp(stream, pending) => match read_frame(stream, pending, left) {
                Ok(Some((h, rx))) => (h, rx),
                Ok(None) => continue,
                Err(e) if is_timeout(&e) => return Ok(SampleOutcome::Timeout { index }),
                Err(e) => return Err(io_err(e)),
            },
        };
        match validate_reply(request_ts, &reply, cfg.allow_unsynced) {
            Ok(()) => {
                let t1 = NtpTimestamp::from_unix_nanos(t1_unix_ns);
                let t4 = NtpTimestamp::from_unix_nanos(t4_unix_ns);
                return Ok(SampleOutcome::Reply(Sample {
                    index,
                    reply,
                    t1_unix_ns,
                    t4_unix_ns,
                    t1,
                    t4,
                    measurement: measure(t1, &reply, t4),
                }));
            }
            Err(ReplyError::NotOurs) => continue,
            Err(error) => return Ok(SampleOutcome::Rejected { index, error }),
        }
    }
}

/// Reads until one frame is complete (or the timeout): its header (None if it is not an NTP
/// packet) and the clock read after the read that completed it.
fn read_frame(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    timeout: Duration,
) -> io::Result<Option<(Header, i64)>> {
    let decoder = FrameDecoder::default();
    let mut rx = ntpkit_os::realtime_nanos();
    loop {
        match decoder.decode(pending) {
            Ok(Some((payload, used))) => {
                let h = Header::parse(payload).ok();
                pending.drain(..used);
                return Ok(h.map(|h| (h, rx)));
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        stream.set_read_timeout(Some(timeout))?;
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk)?;
        rx = ntpkit_os::realtime_nanos();
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Formats Unix nanoseconds as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC, microseconds, truncated).
pub fn format_utc(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Nanoseconds as signed seconds with 6 decimals (`+0.000012`, `-1.500000`), exact.
pub fn format_secs_signed(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    format!("{sign}{}", format_secs(ns.unsigned_abs() as i128))
}

/// Nanoseconds as seconds with 6 decimals, rounded to the microsecond, exact.
pub fn format_secs(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let us = (ns.abs() + 500) / 1_000;
    format!("{sign}{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// Nanoseconds as seconds with 9 decimals (JSON numbers and timestamps), exact.
pub fn format_secs_ns(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

/// How a reference ID reads for a server at `stratum`: ASCII at stratum 0–1, otherwise a
/// dotted IPv4 address (an IPv6 source's hash reads as one too), with the ASCII reading
/// appended when it is printable (a local clock's `LOCL` at stratum 10).
pub fn refid_text(refid: ntpkit_wire::RefId, stratum: u8) -> String {
    match (stratum, refid.as_ascii()) {
        (0 | 1, Some(s)) => s.to_string(),
        (_, Some(s)) if s.len() == 4 => format!("{} ({s})", refid.as_ipv4()),
        _ => refid.as_ipv4().to_string(),
    }
}

/// The text printed for one outcome.
pub fn render_outcome(
    addr: SocketAddr,
    samples: u32,
    o: &SampleOutcome,
    timeout: Duration,
) -> String {
    match o {
        SampleOutcome::Reply(s) => {
            let r = &s.reply;
            format!(
                "Response from {addr} (sample {}/{samples})\n\
                 NTP Time: {} UTC\n\
                 Local Time: {} UTC\n\
                 Offset: {} seconds\n\
                 Delay: {} seconds\n\
                 Stratum: {}, Reference ID: {}, Leap: {}\n",
                s.index,
                format_utc(s.t3_unix_ns()),
                format_utc(s.t4_unix_ns),
                format_secs_signed(s.measurement.offset_ns),
                format_secs(s.measurement.delay_ns as i128),
                r.stratum,
                refid_text(r.reference_id, r.stratum),
                r.leap.name(),
            )
        }
        SampleOutcome::Timeout { index } => format!(
            "no reply from {addr} within {} (sample {index}/{samples})\n",
            format_duration(timeout)
        ),
        SampleOutcome::Rejected { index, error } => {
            format!("bad reply from {addr} (sample {index}/{samples}): {error}\n")
        }
    }
}

/// `2 s`, `0.5 s`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// The summary printed after all samples (None if no sample was valid).
pub fn render_summary(addr: SocketAddr, outcomes: &[SampleOutcome]) -> Option<String> {
    let b = best(outcomes)?;
    let valid = outcomes
        .iter()
        .filter(|o| matches!(o, SampleOutcome::Reply(_)))
        .count();
    let r = &b.reply;
    Some(format!(
        "Summary: {addr}, {valid} of {} samples valid\n\
         \x20 Stratum:         {}\n\
         \x20 Reference ID:    {}\n\
         \x20 Leap:            {}\n\
         \x20 Version:         {}\n\
         \x20 Precision:       2^{} s\n\
         \x20 Root delay:      {} seconds\n\
         \x20 Root dispersion: {} seconds\n\
         \x20 Server time:     {} UTC\n\
         \x20 Local time:      {} UTC\n\
         \x20 Best sample:     {} (minimum delay)\n\
         \x20 Offset:          {} seconds\n\
         \x20 Delay:           {} seconds\n",
        outcomes.len(),
        r.stratum,
        refid_text(r.reference_id, r.stratum),
        r.leap.name(),
        r.version,
        r.precision,
        format_secs(r.root_delay.to_nanos() as i128),
        format_secs(r.root_dispersion.to_nanos() as i128),
        format_utc(b.t3_unix_ns()),
        format_utc(b.t4_unix_ns),
        b.index,
        format_secs_signed(b.measurement.offset_ns),
        format_secs(b.measurement.delay_ns as i128),
    ))
}

/// One JSON object: the best sample's values at top level, and every sample.
pub fn render_json(
    addr: SocketAddr,
    transport: &str,
    outcomes: &[SampleOutcome],
    error: Option<&str>,
) -> serde_json::Value {
    use serde_json::json;
    let num = |ns: i64| -> serde_json::Value {
        serde_json::from_str(&format_secs_ns(ns)).unwrap_or(serde_json::Value::Null)
    };
    let samples: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            SampleOutcome::Reply(s) => {
                let r = &s.reply;
                json!({
                    "index": s.index,
                    "status": "ok",
                    "offset": num(s.measurement.offset_ns),
                    "delay": num(s.measurement.delay_ns),
                    "stratum": r.stratum,
                    "refid": refid_text(r.reference_id, r.stratum),
                    "leap": r.leap.name(),
                    "t1": format_secs_ns(s.t1_unix_ns),
                    "t2": format_secs_ns(s.t2_unix_ns()),
                    "t3": format_secs_ns(s.t3_unix_ns()),
                    "t4": format_secs_ns(s.t4_unix_ns),
                })
            }
            SampleOutcome::Timeout { index } => json!({"index": index, "status": "timeout"}),
            SampleOutcome::Rejected { index, error } => {
                json!({"index": index, "status": "rejected", "error": error.to_string()})
            }
        })
        .collect();
    let mut v = json!({
        "address": addr.to_string(),
        "transport": transport,
        "samples": samples,
    });
    if let Some(b) = best(outcomes) {
        let r = &b.reply;
        let o = v.as_object_mut().expect("object");
        o.insert("stratum".into(), json!(r.stratum));
        o.insert("refid".into(), json!(refid_text(r.reference_id, r.stratum)));
        o.insert(
            "refid_hex".into(),
            json!(format!("{:08X}", r.reference_id.to_u32())),
        );
        o.insert("leap".into(), json!(r.leap.name()));
        o.insert("version".into(), json!(r.version));
        o.insert("precision".into(), json!(r.precision));
        o.insert("root_delay".into(), num(r.root_delay.to_nanos()));
        o.insert("root_dispersion".into(), num(r.root_dispersion.to_nanos()));
        o.insert("server_time".into(), json!(format_utc(b.t3_unix_ns())));
        o.insert("local_time".into(), json!(format_utc(b.t4_unix_ns)));
        o.insert("best_sample".into(), json!(b.index));
        o.insert("offset".into(), num(b.measurement.offset_ns));
        o.insert("delay".into(), num(b.measurement.delay_ns));
    }
    if let Some(e) = error {
        v.as_object_mut()
            .expect("object")
            .insert("error".into(), json!(e));
    }
    v
}

/// The lines printed after the summary of an NTS query.
pub fn render_nts(n: &NtsSummary) -> String {
    let mut t = format!(
        "NTS: replies authenticated with NTS ({})\n\
         \x20 NTS-KE server:   {}\n\
         \x20 NTP server:      {}\n\
         \x20 Cookies:         {} received\n",
        n.aead, n.ke_server, n.ntp_server, n.cookies
    );
    if n.dropped > 0 {
        t += &format!(
            "\x20 Dropped:         {} replies that did not authenticate (last: {})\n",
            n.dropped,
            n.last_drop.as_deref().unwrap_or("-")
        );
    }
    t
}

/// The `nts` object of an NTS query's JSON.
pub fn render_nts_json(n: &NtsSummary) -> serde_json::Value {
    serde_json::json!({
        "aead": n.aead,
        "ke_server": n.ke_server,
        "ntp_server": n.ntp_server,
        "cookies": n.cookies,
        "key_exchanges": n.key_exchanges,
        "dropped": n.dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_wire::RefId;

    /// A plain NTP reply to an NTS request is dropped and counted, never used.
    #[test]
    fn unauthenticated_reply_to_nts_request_is_dropped() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let answer = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let req = Header::parse(&buf[..n]).unwrap();
            let reply = Header {
                version: 4,
                mode: Mode::Server,
                stratum: 1,
                origin_ts: req.transmit_ts,
                receive_ts: NtpTimestamp::from_unix_nanos(ntpkit_os::realtime_nanos()),
                transmit_ts: NtpTimestamp::from_unix_nanos(ntpkit_os::realtime_nanos()),
                ..Header::default()
            };
            let mut out = [0u8; HEADER_LEN];
            reply.emit(&mut out);
            server.send_to(&out, from).unwrap();
            n
        });
        let cfg = QueryConfig {
            server: addr.to_string(),
            samples: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_millis(300),
            tcp: false,
            allow_unsynced: true,
            nts: None,
        };
        let mut jar = CookieJar::new();
        jar.install(
            ntpkit_nts::NtsKeys {
                aead: ntpkit_nts::AeadAlgorithm::AesSivCmac256,
                c2s: vec![1; 32],
                s2c: vec![2; 32],
            },
            vec![vec![7u8; 100]],
        );
        let mut nts = NtsState {
            host: "127.0.0.1".into(),
            port: 4460,
            config: nts_ke::ke_config(rustls::RootCertStore::empty()).unwrap(),
            timeout: cfg.timeout,
            jar,
            summary: NtsSummary::default(),
        };
        let opts = UdpSocketOptions {
            timestamps: true,
            ..Default::default()
        };
        let sock = UdpSocket::bind("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let mut transport = Transport::Udp(sock);
        let outcome = exchange(&mut transport, addr, 1, &cfg, Some(&mut nts)).unwrap();
        let sent = answer.join().unwrap();
        assert!(
            sent > HEADER_LEN + 100,
            "request of {sent} bytes carries no cookie"
        );
        assert!(
            matches!(outcome, SampleOutcome::Timeout { index: 1 }),
            "{outcome:?}"
        );
        assert_eq!(nts.summary.dropped, 1);
        assert!(
            nts.summary
                .last_drop
                .as_deref()
                .unwrap_or("")
                .contains("unique identifiers"),
            "{:?}",
            nts.summary.last_drop
        );
    }

    #[test]
    fn resolves_address_forms() {
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            "127.0.0.1:123".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:1123").unwrap(),
            "127.0.0.1:1123".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]:1123").unwrap(),
            "[::1]:1123".parse().unwrap()
        );
        assert_eq!(resolve("[::1]").unwrap(), "[::1]:123".parse().unwrap());
        assert_eq!(resolve("::1").unwrap(), "[::1]:123".parse().unwrap());
        let l = resolve("localhost:1123").unwrap();
        assert!(l.ip().is_loopback() && l.port() == 1123);
        assert!(resolve("localhost:notaport").is_err());
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000000");
        // 2026-01-28 14:30:45.123456789
        assert_eq!(
            format_utc(1_769_610_645_123_456_789),
            "2026-01-28 14:30:45.123456"
        );
        // 2036-02-07 06:28:16, the NTP era rollover; a leap day.
        assert_eq!(
            format_utc(2_085_978_496_000_000_000),
            "2036-02-07 06:28:16.000000"
        );
        assert_eq!(
            format_utc(951_782_400_000_000_000),
            "2000-02-29 00:00:00.000000"
        );
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59.999999");
    }

    #[test]
    fn seconds_formatting() {
        assert_eq!(format_secs_signed(6_000), "+0.000006");
        assert_eq!(format_secs_signed(-1_500_000_000), "-1.500000");
        assert_eq!(format_secs(45_499), "0.000045");
        assert_eq!(format_secs_ns(-12), "-0.000000012");
        assert_eq!(
            format_secs_ns(1_769_610_645_123_456_789),
            "1769610645.123456789"
        );
    }

    #[test]
    fn refid_rendering() {
        assert_eq!(refid_text(RefId(*b"GPS\0"), 1), "GPS");
        assert_eq!(refid_text(RefId::LOCL, 10), "76.79.67.76 (LOCL)");
        assert_eq!(refid_text(RefId([192, 0, 2, 1]), 2), "192.0.2.1");
        assert_eq!(refid_text(RefId([0xC0, 0, 2, 1]), 1), "192.0.2.1");
    }
}
