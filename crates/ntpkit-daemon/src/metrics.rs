//! Prometheus metrics over HTTP: `GET /metrics` on an address of its own, for `ntpkit serve
//! --metrics` and the daemon's `metrics` key.
//!
//! One dedicated thread serves it with a blocking listener, one connection at a time: the
//! request head (at most [`MAX_HEAD`] bytes) must arrive, and the answer be taken, within
//! [`CLIENT_TIMEOUT`], so a slow or silent client delays the next scrape by at most that. It is
//! started only when configured; without it no thread exists and nothing is listening.
//!
//! What a scrape shows:
//! * the server counters per transport, read straight from the serving threads' shared atomics
//!   ([`Shared`]);
//! * for the daemon, the state of synchronization, sources and clock: the scrape asks the event
//!   loop for a [`Snapshot`] (a request on a channel, then the loop's [`Waker`]) and waits at
//!   most [`CLIENT_TIMEOUT`] for it. The loop answers when it next wakes, between two of its
//!   own steps, and never waits for this thread.
//!
//! The document is built with `prometheus-client`: OpenMetrics text
//! (`application/openmetrics-text; version=1.0.0`) when the request's `Accept` header asks for
//! it, as Prometheus does, and the Prometheus text format 0.0.4 otherwise (curl, browsers).
//! Names follow Prometheus conventions: base units (`_seconds`; frequencies as plain ratios,
//! `_ratio`), `_total` counters, states as one 0/1 series per state.

use crate::daemon::clock::ClockReport;
use crate::serve::{CounterValues, Shared};
use ntpkit_core::sync::status::SyncState;
use ntpkit_core::sync::{BoundStatus, ErrorBound, SourceState, SourceStatus, SystemStatus};
use ntpkit_os::Waker;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client has to send its request, and to take the answer; also how long a scrape
/// waits for the daemon's event loop.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head (request line and header fields), bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The daemon's state as a scrape shows it, taken by the event loop.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Tracking and sources (with the names the sources were configured by).
    pub system: SystemStatus,
    /// The clock backend.
    pub clock: ClockReport,
    /// Leap indicator served, 0–3.
    pub leap: u8,
    /// Configured servers and pools with no source yet (names not resolved so far).
    pub unresolved: usize,
    /// The clock error bound now.
    pub bound: ErrorBound,
}

/// The event loop's side of the endpoint: scrapes waiting for a [`Snapshot`].
#[derive(Debug)]
pub struct SnapshotRequests {
    rx: Receiver<SyncSender<Snapshot>>,
}

impl SnapshotRequests {
    /// Answers every waiting scrape with one snapshot made by `take` (not called when no scrape
    /// waits). Never blocks.
    pub fn answer(&self, take: impl FnOnce() -> Snapshot) {
        let waiting: Vec<_> = self.rx.try_iter().collect();
        if waiting.is_empty() {
            return;
        }
        let snapshot = take();
        for reply in waiting {
            // A scrape that gave up waiting has dropped its receiver: nothing to do.
            let _ = reply.try_send(snapshot.clone());
        }
    }
}

/// The endpoint's way to the event loop.
#[derive(Debug)]
struct LoopLink {
    tx: SyncSender<SyncSender<Snapshot>>,
    waker: Arc<Waker>,
}

impl LoopLink {
    /// Asks the loop for a snapshot; None if it does not answer within `timeout`.
    fn snapshot(&self, timeout: Duration) -> Option<Snapshot> {
        let (reply, answer) = sync_channel(1);
        match self.tx.try_send(reply) {
            Ok(()) => {}
            // Earlier scrapes that timed out still wait in the channel: the loop is stuck.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return None,
        }
        self.waker.wake();
        answer.recv_timeout(timeout).ok()
    }
}

/// A bound metrics listener, not yet served.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` (so that an unusable address stops the start). On failure the message
    /// names the address, the cause and a fix, written with `setting` (e.g. `--metrics ADDR`
    /// or `metrics = "ADDR"`) for another address.
    pub fn bind(addr: SocketAddr, setting: impl Fn(SocketAddr) -> String) -> Result<Self, String> {
        let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, &e, setting))?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Endpoint { listener, addr })
    }

    /// The address listened on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the server counters of `shared` on a thread of its own (`ntpkit serve`).
    pub fn spawn(self, shared: Arc<Shared>) -> io::Result<()> {
        self.start(shared, None)
    }

    /// Serves the server counters and the daemon's state; the daemon's event loop answers the
    /// returned requests (see [`SnapshotRequests::answer`]) when `waker` wakes it.
    pub fn spawn_for_daemon(
        self,
        shared: Arc<Shared>,
        waker: Arc<Waker>,
    ) -> io::Result<SnapshotRequests> {
        // Room for a few scrapes that gave up waiting; more means the loop is not answering.
        let (tx, rx) = sync_channel(4);
        self.start(shared, Some(LoopLink { tx, waker }))?;
        Ok(SnapshotRequests { rx })
    }

    fn start(self, shared: Arc<Shared>, link: Option<LoopLink>) -> io::Result<()> {
        let Endpoint { listener, addr } = self;
        // The thread ends with the process: it only ever reads shared state.
        std::thread::Builder::new()
            .name(format!("metrics {addr}"))
            .spawn(move || {
                let state = || match &link {
                    None => Ok(None),
                    Some(l) => l.snapshot(CLIENT_TIMEOUT).map(Some).ok_or(()),
                };
                serve(&listener, CLIENT_TIMEOUT, |format| {
                    let snapshot = state().ok()?;
                    Some(render(format, &shared, snapshot))
                })
            })?;
        Ok(())
    }
}

fn bind_error(addr: SocketAddr, e: &io::Error, setting: impl Fn(SocketAddr) -> String) -> String {
    let port = addr.port();
    let other = SocketAddr::new(addr.ip(), if port == 9975 { 9976 } else { 9975 });
    let why = match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "address already in use (another ntpkit, or another exporter?); stop it or choose \
             another port, e.g. {}",
            setting(other)
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied (port {port} needs root or CAP_NET_BIND_SERVICE); use a port \
             above 1023, e.g. {}",
            setting(other)
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            "address not available (no interface of this host has {}); use one of this host's \
             addresses, e.g. {}",
            addr.ip(),
            setting(SocketAddr::new([127, 0, 0, 1].into(), port))
        ),
        _ => e.to_string(),
    };
    format!("cannot serve metrics on {addr}: {why}")
}

/// Accepts and answers connections one at a time, for ever; `scrape` builds the document
/// (None: the daemon's state is not available now).
fn serve(
    listener: &TcpListener,
    timeout: Duration,
    mut scrape: impl FnMut(Format) -> Option<String>,
) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, timeout, &mut scrape) {
                    tracing::debug!("metrics: {peer}: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors, say: try again a little later rather than spin.
                tracing::warn!("metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The exposition formats.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    PrometheusText,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

/// A parsed request head.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Request {
    method: String,
    /// The path, without the query.
    path: String,
    /// The `Accept` header field, if any.
    accept: Option<String>,
}

/// An answer.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// Send the head only (HEAD requests).
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: \
             no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Reads one request from `stream`, answers it, closes the connection.
fn handle(
    mut stream: TcpStream,
    timeout: Duration,
    scrape: &mut impl FnMut(Format) -> Option<String>,
) -> io::Result<()> {
    let response = match read_head(&mut stream, Instant::now() + timeout)? {
        Head::Complete(head) => match parse(&head) {
            Ok(request) => route(&request, scrape),
            Err(why) => Response::text(400, "Bad Request", why),
        },
        Head::TooLarge => Response::text(
            431,
            "Request Header Fields Too Large",
            &format!("the request head is longer than {MAX_HEAD} bytes"),
        ),
        Head::TimedOut => Response::text(
            408,
            "Request Timeout",
            &format!(
                "the request head did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        ),
        Head::Closed => return Ok(()),
    };
    // The client has the same time again to take the answer (a scrape may have waited).
    write_all(&mut stream, &response.bytes(), Instant::now() + timeout)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    linger(&mut stream, timeout.min(LINGER));
    Ok(())
}

/// Longest wait, after the answer, for the client to close.
const LINGER: Duration = Duration::from_millis(500);

/// Reads and drops what the client still sends (the rest of an oversize head, say) until it
/// closes, for at most `limit`: closing with unread input would reset the connection, and the
/// client could lose the answer.
fn linger(stream: &mut TcpStream, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

enum Head {
    Complete(String),
    TooLarge,
    TimedOut,
    /// The client closed the connection before the head was complete.
    Closed,
}

/// Reads up to the blank line that ends the head, at most [`MAX_HEAD`] bytes, until
/// `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Head::Complete(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Head::TimedOut);
        }
        stream.set_read_timeout(Some(left))?;
        let room = chunk.len().min(MAX_HEAD - head.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Ok(Head::Closed),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where the head ends (before its blank line), if it is complete: CRLF CRLF, or bare LFs.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn write_all(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Parses a request head: `METHOD SP TARGET SP HTTP/1.x`, then `Name: value` lines.
fn parse(head: &str) -> Result<Request, &'static str> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the request line must be METHOD TARGET HTTP/1.1");
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) {
        return Err("the request line must be METHOD TARGET HTTP/1.1");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err("the request target must be a path, e.g. /metrics");
    }
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err("only HTTP/1.0 and HTTP/1.1 are spoken here");
    }
    let mut accept = None;
    for field in lines {
        let Some((name, value)) = field.split_once(':') else {
            return Err("a header line must be Name: value");
        };
        if !token(name) {
            return Err("a header line must be Name: value");
        }
        if name.eq_ignore_ascii_case("accept") {
            let value = value.trim();
            accept = Some(match accept {
                None => value.to_string(),
                Some(before) => format!("{before}, {value}"),
            });
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        accept,
    })
}

/// The answer to a well-formed request.
fn route(request: &Request, scrape: &mut impl FnMut(Format) -> Option<String>) -> Response {
    let head_only = match request.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Response::text(
                405,
                "Method Not Allowed",
                "only GET and HEAD are served here",
            )
        }
    };
    if request.path != "/metrics" {
        let mut r = Response::text(404, "Not Found", "not found; the metrics are at /metrics");
        r.head_only = head_only;
        return r;
    }
    let format = match &request.accept {
        Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
        _ => Format::PrometheusText,
    };
    let mut r = match scrape(format) {
        Some(body) => Response {
            status: 200,
            reason: "OK",
            content_type: format.content_type(),
            body,
            head_only: false,
        },
        None => Response::text(
            503,
            "Service Unavailable",
            "the daemon's event loop did not answer in time; try again",
        ),
    };
    r.head_only = head_only;
    r
}

/// The metrics document: the counters of `shared`, and the daemon's state if given.
pub fn render(format: Format, shared: &Shared, snapshot: Option<Snapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        udp: shared.udp.snapshot(),
        tcp: shared.tcp.snapshot(),
        nts: shared
            .nts_on
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| shared.nts.snapshot()),
        snapshot,
    }));
    let mut out = String::new();
    let encoded = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
    };
    // Writing into a String cannot fail, and every name and label here is valid.
    encoded.expect("metrics encode");
    out
}

/// What one scrape shows.
#[derive(Debug)]
struct Scrape {
    udp: CounterValues,
    tcp: CounterValues,
    /// NTS: key exchanges and requests.
    nts: Option<crate::nts_serve::NtsCounterValues>,
    snapshot: Option<Snapshot>,
}

/// A sample value: integers print as integers.
#[derive(Clone, Copy, Debug)]
enum Num {
    Int(i64),
    Float(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Num {
        Num::Int(v.min(i64::MAX as u64) as i64)
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Num {
        Num::Float(v)
    }
}

fn gauge_value(m: &mut MetricEncoder, v: Num) -> std::fmt::Result {
    match v {
        Num::Int(i) => m.encode_gauge(&i),
        Num::Float(f) => m.encode_gauge(&f),
    }
}

/// Labels of a source: its address and the name it was configured by (empty for an address).
type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its descriptor, then each labelled sample. Families without
/// samples are left out.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    (name, help, unit, kind): (&str, &str, Option<&Unit>, MetricType),
    samples: &[(L, Num)],
) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in samples {
        if kind == MetricType::Info {
            // An info sample is its labels (value 1).
            m.encode_info(labels)?;
            continue;
        }
        let mut s = m.encode_family(labels)?;
        match (kind, *v) {
            (MetricType::Counter, Num::Int(i)) => {
                s.encode_counter::<NoLabelSet, _, u64>(&(i as u64), None)?
            }
            (MetricType::Counter, Num::Float(f)) => {
                s.encode_counter::<NoLabelSet, _, f64>(&f, None)?
            }
            _ => gauge_value(&mut s, *v)?,
        }
    }
    Ok(())
}

/// One family with a single unlabelled sample.
fn single(
    enc: &mut DescriptorEncoder,
    desc: (&str, &str, Option<&Unit>, MetricType),
    v: impl Into<Num>,
) -> std::fmt::Result {
    family::<Labels>(enc, desc, &[(Vec::new(), v.into())])
}

const SECONDS: Option<&Unit> = Some(&Unit::Seconds);
const GAUGE: MetricType = MetricType::Gauge;
const COUNTER: MetricType = MetricType::Counter;

/// Every source state, as the status document names them.
const SOURCE_STATES: [SourceState; 7] = [
    SourceState::Selected,
    SourceState::Candidate,
    SourceState::Outlier,
    SourceState::Falseticker,
    SourceState::Unreachable,
    SourceState::Unusable,
    SourceState::Denied,
];

fn source_state_name(s: SourceState) -> &'static str {
    match s {
        SourceState::Selected => "selected",
        SourceState::Candidate => "candidate",
        SourceState::Outlier => "outlier",
        SourceState::Falseticker => "falseticker",
        SourceState::Unreachable => "unreachable",
        SourceState::Unusable => "unusable",
        SourceState::Denied => "denied",
    }
}

/// Every sync state.
const SYNC_STATES: [SyncState; 5] = [
    SyncState::Starting,
    SyncState::Synchronized,
    SyncState::Holdover,
    SyncState::Local,
    SyncState::Unsynchronized,
];

fn sync_state_name(s: SyncState) -> &'static str {
    match s {
        SyncState::Starting => "starting",
        SyncState::Synchronized => "synchronized",
        SyncState::Holdover => "holdover",
        SyncState::Local => "local",
        SyncState::Unsynchronized => "unsynchronized",
    }
}

type Field = fn(&CounterValues) -> u64;

/// The server counters: name, help, field.
const SERVER_COUNTERS: [(&str, &str, Field); 6] = [
    (
        "ntpkit_server_answered",
        "NTP requests answered with the time.",
        |c| c.answered,
    ),
    (
        "ntpkit_server_ignored",
        "Well-formed NTP packets not answered (not client requests).",
        |c| c.ignored,
    ),
    (
        "ntpkit_server_malformed",
        "Datagrams or TCP frames that are not NTP packets (oversize and bad framing included).",
        |c| c.malformed,
    ),
    (
        "ntpkit_server_denied",
        "Requests refused by the access rules (dropped, or answered with a DENY or RSTR kiss).",
        |c| c.denied,
    ),
    (
        "ntpkit_server_rate_limited",
        "Requests over their client's rate limit (dropped, or answered with a RATE kiss).",
        |c| c.limited,
    ),
    (
        "ntpkit_server_kisses",
        "Kiss-o'-death replies sent (DENY, RSTR or RATE).",
        |c| c.kissed,
    ),
];

type SourceField = fn(&SourceStatus) -> Option<Num>;

/// Per-source gauges: name, help, unit, value (None: no sample yet).
const SOURCE_GAUGES: [(&str, &str, Option<&Unit>, SourceField); 10] = [
    (
        "ntpkit_source_offset",
        "Offset of the source's filtered (minimum-delay) sample: its time minus this clock's.",
        SECONDS,
        |s| s.offset.map(Num::Float),
    ),
    (
        "ntpkit_source_last_offset",
        "Offset of the source's last sample: its time minus this clock's.",
        SECONDS,
        |s| s.last_offset.map(Num::Float),
    ),
    (
        "ntpkit_source_delay",
        "Round-trip delay of the source's filtered sample.",
        SECONDS,
        |s| s.delay.map(Num::Float),
    ),
    (
        "ntpkit_source_last_delay",
        "Round-trip delay of the source's last sample.",
        SECONDS,
        |s| s.last_delay.map(Num::Float),
    ),
    (
        "ntpkit_source_jitter",
        "Jitter of the source's samples.",
        SECONDS,
        |s| s.jitter.map(Num::Float),
    ),
    (
        "ntpkit_source_root_distance",
        "Root distance through the source: half its root delay plus its root dispersion, grown \
         since its last sample.",
        SECONDS,
        |s| s.root_distance.map(Num::Float),
    ),
    (
        "ntpkit_source_last_sample_age",
        "Time since the source's last sample.",
        SECONDS,
        |s| s.last_sample_age.map(Num::Float),
    ),
    (
        "ntpkit_source_poll_interval",
        "Interval between requests to the source.",
        SECONDS,
        |s| Some(Num::Float(2f64.powi(s.poll.into()))),
    ),
    (
        "ntpkit_source_reach",
        "Reach register of the source, 0-255: one bit per recent poll, set if it was answered \
         (255: the last eight were).",
        None,
        |s| Some(Num::Int(s.reach.into())),
    ),
    (
        "ntpkit_source_stratum",
        "Stratum the source advertises.",
        None,
        |s| s.stratum.map(|v| Num::Int(v.into())),
    ),
];

type SourceCounter = fn(&SourceStatus) -> u64;

/// Per-source counters.
const SOURCE_COUNTERS: [(&str, &str, SourceCounter); 5] = [
    (
        "ntpkit_source_requests_sent",
        "Requests sent to the source.",
        |s| s.counters.sent,
    ),
    (
        "ntpkit_source_replies_received",
        "Replies from the source that matched a request.",
        |s| s.counters.received,
    ),
    (
        "ntpkit_source_samples_accepted",
        "Replies from the source accepted as samples.",
        |s| s.counters.accepted,
    ),
    (
        "ntpkit_source_replies_rejected",
        "Matched replies from the source rejected (`ntpkit status` names the last reason).",
        |s| s.counters.rejected,
    ),
    (
        "ntpkit_source_malformed",
        "Datagrams from the source's address that are not NTP packets.",
        |s| s.counters.malformed,
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let enc = &mut enc;
        let info: Vec<(&str, &str)> = vec![("version", env!("CARGO_PKG_VERSION"))];
        family(
            enc,
            ("ntpkit_build", "Version of ntpkit.", None, MetricType::Info),
            &[(info, Num::Int(1))],
        )?;
        self.encode_server(enc)?;
        if let Some(s) = &self.snapshot {
            encode_tracking(enc, s)?;
            encode_clock(enc, &s.clock)?;
            encode_bound(enc, &s.bound)?;
            encode_sources(enc, s)?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_server(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let by_transport = |f: Field| -> Vec<(Labels, Num)> {
            [("udp", &self.udp), ("tcp", &self.tcp)]
                .into_iter()
                .map(|(t, c)| (vec![("transport", t.to_string())], f(c).into()))
                .collect()
        };
        for (name, help, field) in SERVER_COUNTERS {
            family(enc, (name, help, None, COUNTER), &by_transport(field))?;
        }
        single(
            enc,
            (
                "ntpkit_server_tcp_connections",
                "TCP connections accepted.",
                None,
                COUNTER,
            ),
            self.tcp.connections,
        )?;
        single(
            enc,
            (
                "ntpkit_server_tcp_open_connections",
                "TCP connections open now.",
                None,
                GAUGE,
            ),
            self.tcp.open,
        )?;
        if let Some(n) = self.nts {
            let labelled = |name: &'static str, pairs: &[(&str, u64)]| -> Vec<(Labels, Num)> {
                pairs
                    .iter()
                    .map(|&(v, n)| (vec![(name, v.to_string())], n.into()))
                    .collect()
            };
            family(
                enc,
                (
                    "ntpkit_server_nts_key_exchanges",
                    "NTS-KE connections: served with keys and cookies, failed (TLS, bad \
                     request, timeout, connection limits), or closed at accept by the access \
                     rules (denied) or the rate limit (limited).",
                    None,
                    COUNTER,
                ),
                &labelled(
                    "result",
                    &[
                        ("served", n.ke_served),
                        ("failed", n.ke_failed),
                        ("denied", n.ke_denied),
                        ("limited", n.ke_limited),
                    ],
                ),
            )?;
            family(
                enc,
                (
                    "ntpkit_server_nts_requests",
                    "NTS requests: answered with an authenticated reply, with an NTS NAK \
                     (cookie did not open), or dropped (malformed or not authentic).",
                    None,
                    COUNTER,
                ),
                &labelled(
                    "outcome",
                    &[
                        ("reply", n.replies),
                        ("nak", n.naks),
                        ("dropped", n.dropped),
                    ],
                ),
            )?;
        }
        Ok(())
    }
}

fn encode_tracking(enc: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
    let t = &s.system.tracking;
    single(
        enc,
        (
            "ntpkit_tracking_synchronized",
            "1 while the served time is vouched for (following sources, holding over, or a \
             local reference by configuration), else 0.",
            None,
            GAUGE,
        ),
        u64::from(t.synchronized),
    )?;
    let states: Vec<(Labels, Num)> = SYNC_STATES
        .iter()
        .map(|&st| {
            (
                vec![("state", sync_state_name(st).to_string())],
                u64::from(st == t.state).into(),
            )
        })
        .collect();
    family(
        enc,
        (
            "ntpkit_tracking_state",
            "Where the served time comes from: 1 for the current state, 0 for the others.",
            None,
            GAUGE,
        ),
        &states,
    )?;
    single(
        enc,
        (
            "ntpkit_tracking_stratum",
            "Stratum served (16: unsynchronized).",
            None,
            GAUGE,
        ),
        u64::from(t.stratum),
    )?;
    single(
        enc,
        (
            "ntpkit_tracking_leap_indicator",
            "Leap indicator served: 0 none, 1 a leap second will be inserted, 2 deleted, 3 \
             unsynchronized.",
            None,
            GAUGE,
        ),
        u64::from(s.leap),
    )?;
    let reference: Vec<(&str, &str)> = vec![("reference_id", t.reference_id.as_str())];
    family(
        enc,
        (
            "ntpkit_tracking_reference",
            "Reference ID served.",
            None,
            MetricType::Info,
        ),
        &[(reference, Num::Int(1))],
    )?;
    let seconds = [
        (
            "ntpkit_tracking_offset",
            "Estimated offset of true time from this clock now (positive: the clock is behind).",
            Some(t.offset),
        ),
        (
            "ntpkit_tracking_last_offset",
            "Innovation of the last clock update: the offset measured then minus the offset \
             the clock's model predicted.",
            Some(t.last_offset),
        ),
        (
            "ntpkit_tracking_offset_stddev",
            "Standard deviation of the offset estimate.",
            Some(t.offset_sd),
        ),
        (
            "ntpkit_tracking_root_delay",
            "Root delay served: round-trip delay to the primary reference.",
            Some(t.root_delay),
        ),
        (
            "ntpkit_tracking_root_dispersion",
            "Root dispersion served: error accumulated on the way from the primary reference.",
            Some(t.root_dispersion),
        ),
        (
            "ntpkit_tracking_root_distance",
            "Root distance served, root delay / 2 + root dispersion: the bound on the served \
             time's error.",
            Some(t.root_delay / 2.0 + t.root_dispersion),
        ),
        (
            "ntpkit_tracking_poll_interval",
            "Poll interval suggested to the sources.",
            t.poll.map(|p| 2f64.powi(p.into())),
        ),
        (
            "ntpkit_tracking_last_update_age",
            "Time since the last clock update.",
            t.last_update_age,
        ),
    ];
    for (name, help, v) in seconds {
        if let Some(v) = v {
            single(enc, (name, help, SECONDS, GAUGE), v)?;
        }
    }
    let ratios = [
        (
            "ntpkit_tracking_frequency_error_ratio",
            "Estimated frequency error of this clock as a ratio (1e-6 is 1 ppm; positive: it \
             runs fast).",
            t.frequency_ppm,
        ),
        (
            "ntpkit_tracking_frequency_stddev_ratio",
            "Standard deviation of the frequency estimate as a ratio (1e-6 is 1 ppm).",
            t.frequency_sd_ppm,
        ),
        (
            "ntpkit_tracking_frequency_correction_ratio",
            "Frequency correction in force as a ratio (1e-6 is 1 ppm).",
            t.correction_ppm,
        ),
    ];
    for (name, help, ppm) in ratios {
        single(enc, (name, help, None, GAUGE), ppm * 1e-6)?;
    }
    single(
        enc,
        ("ntpkit_tracking_updates", "Clock updates.", None, COUNTER),
        t.updates,
    )?;
    single(
        enc,
        ("ntpkit_tracking_steps", "Clock steps.", None, COUNTER),
        t.steps,
    )?;
    single(
        enc,
        (
            "ntpkit_sources_unresolved",
            "Configured servers and pools with no source yet (names not resolved so far).",
            None,
            GAUGE,
        ),
        s.unresolved as u64,
    )
}

fn encode_clock(enc: &mut DescriptorEncoder, c: &ClockReport) -> std::fmt::Result {
    let backend: Vec<(&str, &str)> = vec![("backend", c.backend.as_str())];
    family(
        enc,
        (
            "ntpkit_clock",
            "The clock disciplined: system, observe or virtual.",
            None,
            MetricType::Info,
        ),
        &[(backend, Num::Int(1))],
    )?;
    if let Some(o) = c.offset_from_os {
        single(
            enc,
            (
                "ntpkit_clock_offset_from_os",
                "Virtual clock: its reading minus the OS clock's (its true error when the OS \
                 clock is right). Observe: the correction the daemon would have applied so far, \
                 negated.",
                SECONDS,
                GAUGE,
            ),
            o,
        )?;
    }
    if let Some(f) = c.frequency_error_ppm {
        single(
            enc,
            (
                "ntpkit_clock_frequency_error_ratio",
                "Virtual clock: its remaining frequency error (its own plus the correction) as a \
                 ratio (1e-6 is 1 ppm).",
                None,
                GAUGE,
            ),
            f * 1e-6,
        )?;
    }
    Ok(())
}

fn encode_bound(enc: &mut DescriptorEncoder, b: &ErrorBound) -> std::fmt::Result {
    let statuses: Vec<(Labels, Num)> = [
        BoundStatus::Synchronized,
        BoundStatus::Holdover,
        BoundStatus::Unknown,
    ]
    .iter()
    .map(|&st| {
        (
            vec![("status", st.as_str().to_string())],
            u64::from(st == b.status).into(),
        )
    })
    .collect();
    family(
        enc,
        (
            "ntpkit_clock_error_bound_status",
            "Whether the clock error bound holds: 1 for the current status (synchronized, \
             holdover, unknown), 0 for the others.",
            None,
            GAUGE,
        ),
        &statuses,
    )?;
    if let Some(bound) = b.bound() {
        single(
            enc,
            (
                "ntpkit_clock_error_bound",
                "Half-width of the interval around the clock that holds true time (`ntpkit now`); \
                 absent while the status is unknown.",
                SECONDS,
                GAUGE,
            ),
            bound,
        )?;
    }
    Ok(())
}

fn encode_sources(enc: &mut DescriptorEncoder, s: &Snapshot) -> std::fmt::Result {
    let sources = &s.system.sources;
    let labels = |src: &SourceStatus| -> Labels {
        vec![
            ("address", src.address.clone()),
            ("name", src.name.clone().unwrap_or_default()),
        ]
    };
    for (name, help, unit, value) in SOURCE_GAUGES {
        let samples: Vec<(Labels, Num)> = sources
            .iter()
            .filter_map(|src| value(src).map(|v| (labels(src), v)))
            .collect();
        family(enc, (name, help, unit, GAUGE), &samples)?;
    }
    let states: Vec<(Labels, Num)> = sources
        .iter()
        .flat_map(|src| {
            SOURCE_STATES.iter().map(move |&st| {
                let mut l = labels(src);
                l.push(("state", source_state_name(st).to_string()));
                (l, u64::from(st == src.state).into())
            })
        })
        .collect();
    family(
        enc,
        (
            "ntpkit_source_state",
            "Selection state of the source (chronyc's * selected, + candidate, - outlier, x \
             falseticker, ? unreachable or unusable, ! denied): 1 for its state, 0 for the \
             others.",
            None,
            GAUGE,
        ),
        &states,
    )?;
    for (name, help, value) in SOURCE_COUNTERS {
        let samples: Vec<(Labels, Num)> = sources
            .iter()
            .map(|src| (labels(src), value(src).into()))
            .collect();
        family(enc, (name, help, None, COUNTER), &samples)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_core::sync::BoundTerms;
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    /// Samples of a text exposition: (name, sorted labels) → value.
    type Samples = HashMap<(String, Vec<(String, String)>), f64>;

    fn samples(text: &str) -> Samples {
        let mut out = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let mut labels: Vec<(String, String)> = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").expect("label");
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            labels.sort();
            out.insert((name.to_string(), labels), value.parse().expect("number"));
        }
        out
    }

    fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        *s.get(&(name.to_string(), l))
            .unwrap_or_else(|| panic!("no {name}{labels:?}"))
    }

    fn snapshot() -> Snapshot {
        let doc = serde_json::json!({
            "tracking": {
                "reference_id": "192.0.2.1", "stratum": 2, "leap": "NoWarning",
                "synchronized": true, "state": "synchronized", "reason": null,
                "last_update_age": 1.5, "offset": -0.000012, "last_offset": 0.00002,
                "offset_sd": 0.000003, "frequency_ppm": 12.5, "frequency_sd_ppm": 0.25,
                "correction_ppm": -12.0, "root_delay": 0.004, "root_dispersion": 0.001,
                "poll": 4, "updates": 40, "steps": 1
            },
            "sources": [
                {
                    "id": 0, "address": "192.0.2.1:123", "name": "ntp.example", "state": "selected",
                    "stratum": 1, "reference_id": "GPS", "poll": 4, "reach": 255,
                    "last_offset": 0.0001, "last_delay": 0.003, "offset": 0.00005, "delay": 0.002,
                    "jitter": 0.0001,
                    "root_distance": 0.0011, "last_sample_age": 3.0, "last_rejection": null,
                    "counters": {"sent": 10, "received": 9, "accepted": 8, "rejected": 1}
                },
                {
                    "id": 1, "address": "[2001:db8::1]:123", "state": "unreachable",
                    "reason": "no reply", "stratum": null, "reference_id": null, "poll": 6,
                    "reach": 0, "last_offset": null, "offset": null, "delay": null,
                    "jitter": null, "root_distance": null, "last_sample_age": null,
                    "last_rejection": null,
                    "counters": {"sent": 8, "received": 0, "accepted": 0, "rejected": 0}
                }
            ]
        });
        Snapshot {
            system: serde_json::from_value(doc).expect("status"),
            clock: ClockReport {
                backend: "virtual".into(),
                offset_from_os: Some(0.00001),
                frequency_error_ppm: Some(-0.5),
                intrinsic_ppm: Some(10.0),
            },
            leap: 0,
            unresolved: 1,
            bound: ErrorBound {
                status: BoundStatus::Holdover,
                terms: Some(BoundTerms {
                    path_asymmetry: 0.002,
                    root_dispersion: 0.0005,
                    ..BoundTerms::default()
                }),
            },
        }
    }

    #[test]
    fn every_value_is_shown_in_base_units() {
        let shared = Shared::default();
        shared.udp.answered.store(7, Ordering::Relaxed);
        shared.tcp.kissed.store(2, Ordering::Relaxed);
        shared.tcp.connections.store(3, Ordering::Relaxed);
        shared.tcp.open.store(1, Ordering::Relaxed);
        let text = render(Format::PrometheusText, &shared, Some(snapshot()));
        let s = samples(&text);
        let udp = [("transport", "udp")];
        let tcp = [("transport", "tcp")];
        assert_eq!(get(&s, "ntpkit_server_answered_total", &udp), 7.0);
        assert_eq!(get(&s, "ntpkit_server_answered_total", &tcp), 0.0);
        assert_eq!(get(&s, "ntpkit_server_kisses_total", &tcp), 2.0);
        for name in ["ignored", "malformed", "denied", "rate_limited"] {
            get(&s, &format!("ntpkit_server_{name}_total"), &udp);
        }
        assert_eq!(get(&s, "ntpkit_server_tcp_connections_total", &[]), 3.0);
        assert_eq!(get(&s, "ntpkit_server_tcp_open_connections", &[]), 1.0);
        assert!(
            !text.contains("_nts_"),
            "NTS metrics only when NTS is served"
        );
        shared.nts_on.store(true, Ordering::Relaxed);
        shared.nts.replies.store(5, Ordering::Relaxed);
        shared.nts.ke_served.store(1, Ordering::Relaxed);
        shared.nts.ke_denied.store(2, Ordering::Relaxed);
        shared.nts.ke_limited.store(3, Ordering::Relaxed);
        let nts_text = render(Format::PrometheusText, &shared, None);
        let s2 = samples(&nts_text);
        let reply = [("outcome", "reply")];
        assert_eq!(get(&s2, "ntpkit_server_nts_requests_total", &reply), 5.0);
        for (result, n) in [("served", 1.0), ("denied", 2.0), ("limited", 3.0)] {
            assert_eq!(
                get(
                    &s2,
                    "ntpkit_server_nts_key_exchanges_total",
                    &[("result", result)]
                ),
                n
            );
        }

        assert_eq!(get(&s, "ntpkit_tracking_synchronized", &[]), 1.0);
        for st in ["starting", "holdover", "local", "unsynchronized"] {
            assert_eq!(get(&s, "ntpkit_tracking_state", &[("state", st)]), 0.0);
        }
        let synced = [("state", "synchronized")];
        assert_eq!(get(&s, "ntpkit_tracking_state", &synced), 1.0);
        assert_eq!(get(&s, "ntpkit_tracking_stratum", &[]), 2.0);
        assert_eq!(get(&s, "ntpkit_tracking_leap_indicator", &[]), 0.0);
        let refid = [("reference_id", "192.0.2.1")];
        assert_eq!(get(&s, "ntpkit_tracking_reference_info", &refid), 1.0);
        assert_eq!(get(&s, "ntpkit_tracking_offset_seconds", &[]), -0.000012);
        let d = get(&s, "ntpkit_tracking_root_distance_seconds", &[]);
        assert!((d - 0.003).abs() < 1e-15, "{d}");
        assert_eq!(get(&s, "ntpkit_tracking_poll_interval_seconds", &[]), 16.0);
        assert_eq!(get(&s, "ntpkit_clock_error_bound_seconds", &[]), 0.0025);
        for (st, v) in [("synchronized", 0.0), ("holdover", 1.0), ("unknown", 0.0)] {
            let l = [("status", st)];
            assert_eq!(get(&s, "ntpkit_clock_error_bound_status", &l), v);
        }
        let mut unknown = snapshot();
        unknown.bound = ErrorBound::UNKNOWN;
        let text = render(Format::PrometheusText, &shared, Some(unknown));
        let s3 = samples(&text);
        let l = [("status", "unknown")];
        assert_eq!(get(&s3, "ntpkit_clock_error_bound_status", &l), 1.0);
        assert!(
            !text.contains("ntpkit_clock_error_bound_seconds"),
            "no number without a bound"
        );
        let f = get(&s, "ntpkit_tracking_frequency_error_ratio", &[]);
        assert!((f - 12.5e-6).abs() < 1e-15, "{f}");
        assert_eq!(get(&s, "ntpkit_tracking_updates_total", &[]), 40.0);
        assert_eq!(get(&s, "ntpkit_tracking_steps_total", &[]), 1.0);
        assert_eq!(get(&s, "ntpkit_sources_unresolved", &[]), 1.0);
        assert_eq!(get(&s, "ntpkit_clock_info", &[("backend", "virtual")]), 1.0);
        let f = get(&s, "ntpkit_clock_frequency_error_ratio", &[]);
        assert!((f + 0.5e-6).abs() < 1e-15, "{f}");

        let a = [("address", "192.0.2.1:123"), ("name", "ntp.example")];
        assert_eq!(get(&s, "ntpkit_source_offset_seconds", &a), 0.00005);
        assert_eq!(get(&s, "ntpkit_source_delay_seconds", &a), 0.002);
        assert_eq!(get(&s, "ntpkit_source_last_delay_seconds", &a), 0.003);
        assert_eq!(get(&s, "ntpkit_source_reach", &a), 255.0);
        assert_eq!(get(&s, "ntpkit_source_stratum", &a), 1.0);
        assert_eq!(get(&s, "ntpkit_source_poll_interval_seconds", &a), 16.0);
        assert_eq!(get(&s, "ntpkit_source_requests_sent_total", &a), 10.0);
        assert_eq!(get(&s, "ntpkit_source_replies_rejected_total", &a), 1.0);
        let state = |labels: &[(&str, &str)], st: &str| {
            let mut l = labels.to_vec();
            l.push(("state", st));
            get(&s, "ntpkit_source_state", &l)
        };
        assert_eq!(state(&a, "selected"), 1.0);
        assert_eq!(state(&a, "candidate"), 0.0);
        // An unnamed source without samples: reach, poll, state and counters, no offsets.
        let b = [("address", "[2001:db8::1]:123"), ("name", "")];
        assert_eq!(get(&s, "ntpkit_source_reach", &b), 0.0);
        assert_eq!(state(&b, "unreachable"), 1.0);
        assert_eq!(state(&b, "selected"), 0.0);
        let key = |n: &str| (n.to_string(), vec![]);
        assert!(!s.keys().any(|k| k.0 == "ntpkit_source_offset_seconds"
            && k.1.iter().any(|(_, v)| v.starts_with("[2001"))));
        assert!(!s.contains_key(&key("ntpkit_source_offset_seconds")));
        // Exactly one state is 1 for each source.
        let ones = s
            .iter()
            .filter(|(k, v)| k.0 == "ntpkit_source_state" && **v == 1.0)
            .count();
        assert_eq!(ones, 2);
        assert!(text.contains("# TYPE ntpkit_source_reach gauge"), "{text}");
    }

    #[test]
    fn openmetrics_has_units_and_an_end() {
        let text = render(Format::OpenMetrics, &Shared::default(), Some(snapshot()));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# UNIT ntpkit_source_offset_seconds seconds"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ntpkit_server_answered counter"),
            "{text}"
        );
        assert!(text.contains("ntpkit_server_answered_total{transport=\"udp\"} 0"));
        // Each family once: OpenMetrics forbids interleaving.
        let mut seen = std::collections::HashSet::new();
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(seen.insert(l.to_string()), "twice: {l}");
        }
    }

    #[test]
    fn without_the_daemon_only_the_server_is_shown() {
        let text = render(Format::PrometheusText, &Shared::default(), None);
        let s = samples(&text);
        assert_eq!(
            get(&s, "ntpkit_server_answered_total", &[("transport", "tcp")]),
            0.0
        );
        assert!(!text.contains("ntpkit_tracking"), "{text}");
        assert!(!text.contains("ntpkit_source"), "{text}");
        let v = [("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(get(&s, "ntpkit_build_info", &v), 1.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = snapshot();
        snap.system.sources[0].name = Some("a\"b\\c".into());
        let text = render(Format::PrometheusText, &Shared::default(), Some(snap));
        assert!(text.contains(r#"name="a\"b\\c""#), "{text}");
    }

    #[test]
    fn requests_are_parsed_strictly() {
        let r = parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain").unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/metrics".into(),
                accept: Some("text/plain".into()),
            }
        );
        assert!(parse("GET /metrics HTTP/1.0").is_ok());
        for bad in [
            "",
            "GET",
            "GET /metrics",
            "GET /metrics HTTP/2.0",
            "GET  /metrics HTTP/1.1",
            "GET metrics HTTP/1.1",
            "G(T /metrics HTTP/1.1",
            "GET /metrics HTTP/1.1\r\nno colon here",
            "GET /metrics HTTP/1.1\r\nbad name: x",
            "\u{1}\u{2}\u{3}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn routes_and_formats() {
        let req = |method: &str, path: &str, accept: Option<&str>| Request {
            method: method.into(),
            path: path.into(),
            accept: accept.map(Into::into),
        };
        let mut asked = Vec::new();
        let mut scrape = |f: Format| {
            asked.push(f);
            Some("doc\n".to_string())
        };
        let r = route(&req("GET", "/metrics", None), &mut scrape);
        assert_eq!((r.status, r.content_type), (200, PROMETHEUS_TEXT));
        let om = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let r = route(&req("GET", "/metrics", Some(om)), &mut scrape);
        assert_eq!((r.status, r.content_type), (200, OPENMETRICS));
        let r = route(&req("HEAD", "/metrics", None), &mut scrape);
        assert!(r.head_only && r.status == 200);
        let b = String::from_utf8(r.bytes()).unwrap();
        assert!(b.starts_with("HTTP/1.1 200 OK\r\n"), "{b}");
        assert!(
            b.ends_with(
                "Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            ),
            "the length of the body not sent: {b}"
        );
        assert_eq!(route(&req("GET", "/", None), &mut scrape).status, 404);
        let r = route(&req("POST", "/metrics", None), &mut scrape);
        assert_eq!(r.status, 405);
        assert!(String::from_utf8(r.bytes())
            .unwrap()
            .contains("Allow: GET, HEAD\r\n"));
        assert_eq!(
            asked,
            [
                Format::PrometheusText,
                Format::OpenMetrics,
                Format::PrometheusText
            ],
            "scraped only for /metrics"
        );
        let r = route(&req("GET", "/metrics", None), &mut |_| None);
        assert_eq!(r.status, 503);
    }

    /// An endpoint on a loopback port of its own, with a short timeout; `scrape` answers.
    fn endpoint(timeout: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve(&l, timeout, |_| Some("ntpkit_x 1\n".into())));
        addr
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn bad_slow_and_oversize_requests_are_answered_and_the_next_is_served() {
        let addr = endpoint(Duration::from_millis(300));
        let ok = |addr| {
            let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
            assert!(r.ends_with("\r\n\r\nntpkit_x 1\n"), "{r}");
        };
        ok(addr);
        let r = exchange(addr, b"\x16\x03\x01 hello\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        ok(addr);
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        let r = exchange(addr, &big);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        ok(addr);
        // A client that says nothing holds the endpoint for the timeout only.
        let silent = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        ok(addr);
        assert!(start.elapsed() < Duration::from_secs(3));
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n");
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
        drop(silent);
        let r = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        ok(addr);
    }

    #[test]
    fn a_stuck_loop_gives_503_not_a_hang() {
        let waker = Waker::new().unwrap();
        let ep =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), |a| format!("--metrics {a}")).unwrap();
        let addr = ep.local_addr();
        let requests = ep
            .spawn_for_daemon(Arc::new(Shared::default()), waker.clone())
            .unwrap();
        // A loop that answers: the state is there.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let answering = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                requests.answer(snapshot);
                std::thread::sleep(Duration::from_millis(5));
            }
            requests
        });
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("ntpkit_tracking_stratum 2\n"), "{r}");
        done.store(true, Ordering::Relaxed);
        let requests = answering.join().unwrap();
        // A loop that does not answer: 503 after the timeout.
        let start = Instant::now();
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(start.elapsed() >= CLIENT_TIMEOUT);
        drop(requests);
    }

    #[test]
    fn bind_errors_name_the_fix() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = Endpoint::bind(addr, |a| format!("metrics = \"{a}\"")).unwrap_err();
        assert!(
            e.contains(&format!(
                "cannot serve metrics on {addr}: address already in use"
            )) && e.contains("metrics = \"127.0.0.1:9975\""),
            "{e}"
        );
    }
}
