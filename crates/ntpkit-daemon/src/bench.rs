//! `ntpkit bench`: an NTP load generator, to size a server and to compare servers.
//!
//! It sends NTPv4 client requests to one server from several connected UDP sockets (so from
//! several source ports), with batched `sendmmsg`/`recvmmsg`, in one of three [`Load`]s: a
//! closed loop (a window of requests in flight per socket, refilled as replies come back), an
//! open loop at a fixed rate, or an open-loop flood. It runs for a warm-up, then a measured
//! window, then waits a grace period for late replies, and stops by itself.
//!
//! Every request carries a unique 64-bit cookie as its transmit timestamp; a reply counts only
//! if its origin timestamp is the cookie of one of our requests not answered yet
//! ([`RequestBook`]), and only if it is a server-mode reply with a stratum of 1–15.
//! Kiss-o'-death replies are counted by code, everything else that comes back as invalid, by
//! reason. Latency is measured from just before the `sendmmsg` that carried a request to just
//! after the `recvmmsg` that brought its reply, on `CLOCK_MONOTONIC`, into a log-linear
//! [`Histogram`] (relative resolution better than 1 %).
//!
//! The pure parts — cookie bookkeeping, pacing, the histogram, reply classification and the
//! report — are separate from the socket loop ([`run`]) and tested without sockets.
//!
//! [`nts`] runs the same loops with NTS-protected requests (after one NTS-KE), [`ke`] measures
//! NTS-KE handshakes per second.
//!
//! Load is only for servers one runs oneself: [`check_target`] refuses anything but loopback
//! unless the caller allows remote targets explicitly.

use ntpkit_os::{PollSet, RecvBatch, SendBatch, UdpSocket, UdpSocketOptions};
use ntpkit_wire::{Header, KissCode, Mode, NtpTimestamp, HEADER_LEN};
use rand_core::{OsRng, TryRngCore};
use serde::Serialize;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

pub mod ke;
pub mod nts;

const NANOS_PER_SEC: f64 = 1e9;
/// Requests the book remembers per thread (a power of two): a reply to a request this many
/// requests older than the newest is no longer matched and counts as of unknown origin.
const BOOK_SLOTS_LOG2: u32 = 20;
/// Socket buffers asked for (the kernel caps them at `net.core.[rw]mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// Bytes read of each reply; a longer one is cut, which does not matter for the header.
const REPLY_BUF: usize = 256;

/// How requests are sent.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Load {
    /// Closed loop: at most `window` requests in flight per socket; a new one goes as soon as
    /// a reply (or the window timeout) frees a place.
    Closed {
        /// Requests in flight per socket.
        window: u32,
    },
    /// Open loop at `rate` requests per second in total, whatever the replies do.
    Open {
        /// Requests per second, all sockets together.
        rate: f64,
    },
    /// Open loop as fast as the sockets take requests.
    Flood,
}

impl Load {
    /// `closed`, `open` or `flood`.
    pub fn name(&self) -> &'static str {
        match self {
            Load::Closed { .. } => "closed",
            Load::Open { .. } => "open",
            Load::Flood => "flood",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server.
    pub target: SocketAddr,
    /// How requests are sent.
    pub load: Load,
    /// Connected UDP sockets (source ports), all threads together.
    pub sockets: usize,
    /// Threads; the sockets (and an open loop's rate) are shared out between them.
    pub threads: usize,
    /// Most requests per `sendmmsg`.
    pub batch: usize,
    /// Time before the measured window: requests go out, nothing is counted in the rates.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// After the window, how long replies are still waited for before the rest count lost.
    pub grace: Duration,
    /// Closed loop: a request unanswered this long no longer holds its place in the window
    /// (its reply still counts when it comes).
    pub timeout: Duration,
    /// Stop sending after this many requests in all (warm-up included).
    pub max_requests: Option<u64>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            target: SocketAddr::from(([127, 0, 0, 1], 123)),
            load: Load::Closed { window: 32 },
            sockets: 4,
            threads: 1,
            batch: 32,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(5),
            grace: Duration::from_millis(500),
            timeout: Duration::from_millis(100),
            max_requests: None,
        }
    }
}

/// Why a run could not start or failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// The target is not a loopback address and remote targets were not allowed.
    NotLoopback(SocketAddr),
    /// The configuration is inconsistent.
    Config(String),
    /// A socket could not be created or connected.
    Socket(SocketAddr, io::Error),
    /// The OS random source failed.
    Random(String),
    /// The NTS key exchange failed, or its NTP server cannot be resolved.
    Nts(crate::nts_ke::NtsError),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::NotLoopback(a) => write!(
                f,
                "refusing to load {a}: it is not a loopback address. A load generator sends as \
                 much traffic as the server takes, so ntpkit bench only targets 127.0.0.0/8 and \
                 ::1 by default; pass --allow-remote only for a server you run yourself (e.g. \
                 in a network namespace you created)"
            ),
            BenchError::Config(m) => f.write_str(m),
            BenchError::Socket(a, e) => write!(f, "cannot open a UDP socket to {a}: {e}"),
            BenchError::Random(e) => write!(f, "OS random source failed: {e}"),
            BenchError::Nts(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BenchError {}

/// True for the addresses load may go to without being allowed explicitly: 127.0.0.0/8, ::1
/// and 127.0.0.0/8 mapped into IPv6.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses a target outside loopback unless `allow_remote`.
pub fn check_target(target: SocketAddr, allow_remote: bool) -> Result<(), BenchError> {
    if allow_remote || is_loopback(target.ip()) {
        Ok(())
    } else {
        Err(BenchError::NotLoopback(target))
    }
}

// ---------------------------------------------------------------------------------------------
// Cookie bookkeeping

const OUTSTANDING: u8 = 1;
const MEASURED: u8 = 2;
const EXPIRED: u8 = 4;
const ANSWERED: u8 = 8;

#[derive(Clone, Copy, Default, Debug)]
struct Slot {
    sent_ns: i64,
    socket: u32,
    state: u8,
}

/// What a reply's origin timestamp refers to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Answer {
    /// One of our requests, answered now for the first time.
    Ours {
        /// When the request went out (the caller's clock, ns).
        sent_ns: i64,
        /// It was sent in the measured window.
        measured: bool,
        /// Index of the socket it went out on.
        socket: usize,
    },
    /// One of our requests that was already answered.
    Duplicate,
    /// Not a cookie of ours (or of a request too old to be remembered).
    Unknown,
}

/// The requests in flight: each gets a unique 64-bit cookie (a random base plus its sequence
/// number), which its reply must echo; a cookie is matched at most once. Remembers the last
/// 2^`slots_log2` requests in a ring, counts per socket the requests that hold a place in a
/// closed loop's window, and how many measured requests are still unanswered.
#[derive(Debug)]
pub struct RequestBook {
    base: u64,
    /// Sequence number of the next request (the first is 1).
    next: u64,
    /// Requests before this one no longer hold a window place (answered or expired).
    tail: u64,
    slots: Vec<Slot>,
    mask: u64,
    in_flight: Vec<u32>,
    unanswered_measured: u64,
}

impl RequestBook {
    /// A book for `sockets` sockets remembering 2^`slots_log2` requests; cookies start after
    /// `base` (its two top bits are forced to `10`, so that no cookie of a run is ever zero).
    pub fn new(slots_log2: u32, sockets: usize, base: u64) -> RequestBook {
        let len = 1usize << slots_log2;
        RequestBook {
            base: (base | 1 << 63) & !(1 << 62),
            next: 1,
            tail: 1,
            slots: vec![Slot::default(); len],
            mask: len as u64 - 1,
            in_flight: vec![0; sockets],
            unanswered_measured: 0,
        }
    }

    /// The cookie of the request `ahead` places after the next one to be issued (0: the next).
    pub fn cookie(&self, ahead: usize) -> u64 {
        self.base.wrapping_add(self.next + ahead as u64)
    }

    /// The sequence number of the request `ahead` places after the next one (the first is 1).
    pub fn seq(&self, ahead: usize) -> u64 {
        self.next + ahead as u64
    }

    /// The cookie of the request with sequence number `seq`.
    pub fn cookie_of(&self, seq: u64) -> u64 {
        self.base.wrapping_add(seq)
    }

    /// Records that the next request (cookie [`cookie(0)`](Self::cookie)) went out on `socket`
    /// at `sent_ns`. A request so old that its slot is needed again is forgotten: it stays
    /// unanswered.
    pub fn issue(&mut self, socket: usize, sent_ns: i64, measured: bool) {
        let seq = self.next;
        self.next += 1;
        let slot = &mut self.slots[(seq & self.mask) as usize];
        if slot.state & (OUTSTANDING | EXPIRED) == OUTSTANDING {
            self.in_flight[slot.socket as usize] -= 1;
        }
        *slot = Slot {
            sent_ns,
            socket: socket as u32,
            state: OUTSTANDING | if measured { MEASURED } else { 0 },
        };
        self.in_flight[socket] += 1;
        if measured {
            self.unanswered_measured += 1;
        }
    }

    /// Matches a reply's origin timestamp against the requests remembered.
    pub fn answer(&mut self, cookie: u64) -> Answer {
        let seq = cookie.wrapping_sub(self.base);
        if seq == 0 || seq >= self.next || self.next - seq > self.slots.len() as u64 {
            return Answer::Unknown;
        }
        let slot = &mut self.slots[(seq & self.mask) as usize];
        if slot.state & OUTSTANDING == 0 {
            return if slot.state & ANSWERED != 0 {
                Answer::Duplicate
            } else {
                Answer::Unknown
            };
        }
        let state = slot.state;
        slot.state = ANSWERED;
        if state & EXPIRED == 0 {
            self.in_flight[slot.socket as usize] -= 1;
        }
        let measured = state & MEASURED != 0;
        if measured {
            self.unanswered_measured -= 1;
        }
        Answer::Ours {
            sent_ns: slot.sent_ns,
            measured,
            socket: slot.socket as usize,
        }
    }

    /// Frees the window places of requests sent before `cutoff_ns` and still unanswered
    /// (their replies still match). Returns when the oldest request still holding a place
    /// was sent, if any.
    pub fn expire(&mut self, cutoff_ns: i64) -> Option<i64> {
        let oldest_kept = self.next.saturating_sub(self.slots.len() as u64).max(1);
        self.tail = self.tail.max(oldest_kept);
        while self.tail < self.next {
            let slot = &mut self.slots[(self.tail & self.mask) as usize];
            if slot.state & (OUTSTANDING | EXPIRED) == OUTSTANDING {
                if slot.sent_ns >= cutoff_ns {
                    return Some(slot.sent_ns);
                }
                slot.state |= EXPIRED;
                self.in_flight[slot.socket as usize] -= 1;
            }
            self.tail += 1;
        }
        None
    }

    /// Requests of `socket` holding a window place (unanswered, not expired).
    pub fn in_flight(&self, socket: usize) -> u32 {
        self.in_flight[socket]
    }

    /// Measured requests not answered (yet).
    pub fn unanswered_measured(&self) -> u64 {
        self.unanswered_measured
    }

    /// Requests issued so far.
    pub fn issued(&self) -> u64 {
        self.next - 1
    }
}

// ---------------------------------------------------------------------------------------------
// Pacing

/// An open loop's schedule: `rate` requests per second from `start_ns`, released in whatever
/// batch is due when the sender comes round (a sender that wakes once a millisecond sends a
/// millisecond's worth at once). A sender that falls behind catches up as fast as it can: the
/// schedule never forgets requests.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: f64,
    start_ns: i64,
}

impl Pacer {
    /// `rate` (> 0) requests per second from `start_ns`.
    pub fn new(rate: f64, start_ns: i64) -> Pacer {
        Pacer { rate, start_ns }
    }

    /// Requests due at `now_ns` when `sent` have gone out.
    pub fn due(&self, now_ns: i64, sent: u64) -> u64 {
        let elapsed_ns = (now_ns - self.start_ns).max(0) as f64;
        let target = (self.rate * elapsed_ns / NANOS_PER_SEC).floor() as u64;
        target.saturating_sub(sent)
    }

    /// When the request after `sent` is due.
    pub fn next_due_ns(&self, sent: u64) -> i64 {
        let ns = (sent + 1) as f64 * NANOS_PER_SEC / self.rate;
        self.start_ns + ns.ceil().min(i64::MAX as f64 / 2.0) as i64
    }
}

/// Shares `total` requests out among `out.len()` sockets as evenly as possible; the remainder
/// goes to the sockets from `first` on, so that successive calls with a rotating `first` give
/// every socket the same share over time. Returns the `first` for the next call.
pub fn share_out(total: u64, first: usize, out: &mut [u64]) -> usize {
    let n = out.len();
    if n == 0 {
        return 0;
    }
    let each = total / n as u64;
    let extra = (total % n as u64) as usize;
    for (i, o) in out.iter_mut().enumerate() {
        let pos = (i + n - first % n) % n;
        *o = each + u64::from(pos < extra);
    }
    (first + extra) % n
}

// ---------------------------------------------------------------------------------------------
// Latency histogram

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) * SUB as usize) + SUB as usize;

/// A log-linear histogram of non-negative values (nanoseconds here): exact below 256, above
/// that 128 buckets per power of two, so a bucket is at most 1/128 of its values wide. Also
/// keeps the exact minimum, maximum and sum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        v as usize
    } else {
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        (u64::from(shift) * SUB + (v >> shift)) as usize
    }
}

/// The smallest and largest value of bucket `i`.
fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        (i, i)
    } else {
        let shift = i / SUB - 1;
        let m = i - shift * SUB;
        // The last bucket ends at u64::MAX: its end + 1 wraps to 0.
        (m << shift, ((m + 1) << shift).wrapping_sub(1))
    }
}

impl Histogram {
    /// Adds one value.
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest value, if any.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// The largest value, if any.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The mean, if any value was recorded.
    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// The `q`-quantile (0 < q ≤ 1) by the nearest-rank method: the value of rank ⌈q·n⌉,
    /// as the middle of its bucket, kept within the exact minimum and maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_bounds(i);
                let mid = lo + (hi - lo) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

// ---------------------------------------------------------------------------------------------
// Reply classification and counters

/// What a datagram from the server says, before its cookie is looked up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Inspected {
    /// Shorter than an NTP header, or of an unknown version.
    Malformed,
    /// Not a server-mode (4) packet.
    BadMode,
    /// A server-mode reply.
    Reply {
        /// Its origin timestamp: the cookie of the request it answers.
        origin: u64,
        /// Its stratum (0: kiss-o'-death).
        stratum: u8,
        /// Its kiss code, if stratum 0.
        kiss: Option<KissCode>,
    },
}

/// Reads the fields of a reply that decide whether it counts.
pub fn inspect(datagram: &[u8]) -> Inspected {
    match Header::parse(datagram) {
        Err(_) => Inspected::Malformed,
        Ok(h) if h.mode != Mode::Server => Inspected::BadMode,
        Ok(h) => Inspected::Reply {
            origin: h.origin_ts.to_bits(),
            stratum: h.stratum,
            kiss: h.kiss_code(),
        },
    }
}

/// Kiss-o'-death replies by code.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize)]
pub struct KissCounts {
    /// `RATE`: the server asks for fewer requests.
    pub rate: u64,
    /// `DENY`: access denied.
    pub deny: u64,
    /// `RSTR`: access restricted.
    pub rstr: u64,
    /// Any other code.
    pub other: u64,
}

impl KissCounts {
    fn add(&mut self, code: KissCode) {
        match code {
            KissCode::Rate => self.rate += 1,
            KissCode::Deny => self.deny += 1,
            KissCode::Restrict => self.rstr += 1,
            _ => self.other += 1,
        }
    }

    fn merge(&mut self, o: &KissCounts) {
        self.rate += o.rate;
        self.deny += o.deny;
        self.rstr += o.rstr;
        self.other += o.other;
    }

    /// All kiss-o'-death replies.
    pub fn total(&self) -> u64 {
        self.rate + self.deny + self.rstr + self.other
    }
}

/// Datagrams that do not count as replies, by reason.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize)]
pub struct InvalidCounts {
    /// The origin timestamp is no cookie of ours.
    pub unknown_origin: u64,
    /// A second reply to a request already answered.
    pub duplicate: u64,
    /// Not a server-mode packet.
    pub bad_mode: u64,
    /// Stratum 16 or more (an unsynchronized server, or garbage).
    pub bad_stratum: u64,
    /// Shorter than an NTP header or of an unknown version.
    pub malformed: u64,
}

impl InvalidCounts {
    fn merge(&mut self, o: &InvalidCounts) {
        self.unknown_origin += o.unknown_origin;
        self.duplicate += o.duplicate;
        self.bad_mode += o.bad_mode;
        self.bad_stratum += o.bad_stratum;
        self.malformed += o.malformed;
    }

    /// All invalid datagrams.
    pub fn total(&self) -> u64 {
        self.unknown_origin + self.duplicate + self.bad_mode + self.bad_stratum + self.malformed
    }
}

/// Everything one thread counted.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Requests sent in the measured window.
    pub sent: u64,
    /// Requests sent in the whole run.
    pub sent_total: u64,
    /// Valid replies received in the measured window.
    pub valid: u64,
    /// Valid replies received in the whole run.
    pub valid_total: u64,
    /// Measured requests without any reply by the end of the grace period.
    pub lost: u64,
    /// Kiss-o'-death replies (whole run).
    pub kiss: KissCounts,
    /// Invalid datagrams (whole run).
    pub invalid: InvalidCounts,
    /// `sendmmsg` calls that failed (a full send buffer not included).
    pub send_errors: u64,
    /// `recvmmsg` calls that failed.
    pub recv_errors: u64,
    /// Of the failed sends and receives, those that said "connection refused": the kernel got
    /// an ICMP port unreachable, nothing listens on the target port.
    pub refused: u64,
    /// Latency of the measured requests' valid replies, ns.
    pub latency: Histogram,
    /// Length of the measured window, ns.
    pub window_ns: i64,
    /// NTS replies by verdict (all zero for plain requests).
    pub nts: nts::NtsCounts,
}

impl Tally {
    /// Adds another thread's counts; the window is the longer of the two.
    pub fn merge(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.sent_total += o.sent_total;
        self.valid += o.valid;
        self.valid_total += o.valid_total;
        self.lost += o.lost;
        self.kiss.merge(&o.kiss);
        self.invalid.merge(&o.invalid);
        self.send_errors += o.send_errors;
        self.recv_errors += o.recv_errors;
        self.refused += o.refused;
        self.latency.merge(&o.latency);
        self.window_ns = self.window_ns.max(o.window_ns);
        self.nts.merge(&o.nts);
    }

    /// Counts one datagram received at `now_ns` (`in_window`: during the measured window).
    pub fn count_reply(
        &mut self,
        book: &mut RequestBook,
        datagram: &[u8],
        now_ns: i64,
        in_window: bool,
    ) {
        let (origin, stratum, kiss) = match inspect(datagram) {
            Inspected::Malformed => {
                self.invalid.malformed += 1;
                return;
            }
            Inspected::BadMode => {
                // Not an answer: the cookie stays open for the real one.
                self.invalid.bad_mode += 1;
                return;
            }
            Inspected::Reply {
                origin,
                stratum,
                kiss,
            } => (origin, stratum, kiss),
        };
        let (sent_ns, measured) = match book.answer(origin) {
            Answer::Unknown => {
                self.invalid.unknown_origin += 1;
                return;
            }
            Answer::Duplicate => {
                self.invalid.duplicate += 1;
                return;
            }
            Answer::Ours {
                sent_ns, measured, ..
            } => (sent_ns, measured),
        };
        if let Some(code) = kiss {
            self.kiss.add(code);
        } else if stratum >= 16 {
            self.invalid.bad_stratum += 1;
        } else {
            self.count_valid(sent_ns, measured, now_ns, in_window);
        }
    }

    /// Counts a valid reply received at `now_ns` to a request sent at `sent_ns`.
    fn count_valid(&mut self, sent_ns: i64, measured: bool, now_ns: i64, in_window: bool) {
        self.valid_total += 1;
        if in_window {
            self.valid += 1;
        }
        if measured {
            self.latency.record((now_ns - sent_ns).max(0) as u64);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

/// Latency figures, microseconds.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct LatencyReport {
    /// Replies measured.
    pub samples: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl LatencyReport {
    /// The figures of `h` (nanoseconds) in microseconds; None if it is empty.
    pub fn of(h: &Histogram) -> Option<LatencyReport> {
        let us = |ns: u64| ns as f64 / 1e3;
        h.mean().map(|mean| LatencyReport {
            samples: h.count(),
            min: us(h.min().unwrap_or(0)),
            mean: mean / 1e3,
            p50: us(h.quantile(0.50).unwrap_or(0)),
            p90: us(h.quantile(0.90).unwrap_or(0)),
            p99: us(h.quantile(0.99).unwrap_or(0)),
            p99_9: us(h.quantile(0.999).unwrap_or(0)),
            max: us(h.max().unwrap_or(0)),
        })
    }

    /// One line: `p50 … µs  p90 …  max … µs`.
    fn render(&self) -> String {
        format!(
            "p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.p99_9),
            micros(self.max)
        )
    }
}

/// Error counts of the socket calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct ErrorReport {
    /// Failed `sendmmsg` calls.
    pub send: u64,
    /// Failed `recvmmsg` calls.
    pub receive: u64,
    /// Of the failed calls, those that said "connection refused" (no server on the port).
    pub refused: u64,
}

/// Whole-run totals (warm-up and grace period included).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct TotalReport {
    /// Requests sent.
    pub sent: u64,
    /// Valid replies.
    pub valid: u64,
}

/// The result of a run, as printed (text or JSON).
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct BenchReport {
    /// The server.
    pub target: String,
    /// `closed`, `open` or `flood`.
    pub mode: &'static str,
    /// Closed loop: requests in flight per socket.
    pub window: Option<u32>,
    /// Open loop: requests per second asked for.
    pub rate: Option<f64>,
    /// Sockets (source ports).
    pub sockets: usize,
    /// Threads.
    pub threads: usize,
    /// Most requests per `sendmmsg`.
    pub batch: usize,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// The measured window, seconds.
    pub duration_s: f64,
    /// Grace period for late replies, seconds.
    pub grace_s: f64,
    /// Requests sent in the window.
    pub sent: u64,
    /// Requests sent per second in the window.
    pub sent_per_s: f64,
    /// Valid replies received in the window.
    pub valid: u64,
    /// Valid replies per second in the window.
    pub valid_per_s: f64,
    /// Requests of the window never answered.
    pub lost: u64,
    /// `lost` in percent of `sent`.
    pub loss_pct: f64,
    /// Send-to-receive time of the window's valid replies; None without any.
    pub latency_us: Option<LatencyReport>,
    /// Kiss-o'-death replies by code.
    pub kod: KissCounts,
    /// Invalid datagrams by reason.
    pub invalid: InvalidCounts,
    /// Socket call errors.
    pub errors: ErrorReport,
    /// Whole-run totals.
    pub total: TotalReport,
    /// NTS runs: the key exchange and the replies by verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nts: Option<nts::NtsReport>,
}

impl BenchReport {
    /// The report of `tally` for a run of `cfg`.
    pub fn new(cfg: &BenchConfig, tally: &Tally) -> BenchReport {
        let secs = tally.window_ns.max(0) as f64 / NANOS_PER_SEC;
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let latency_us = LatencyReport::of(&tally.latency);
        BenchReport {
            target: cfg.target.to_string(),
            mode: cfg.load.name(),
            window: match cfg.load {
                Load::Closed { window } => Some(window),
                _ => None,
            },
            rate: match cfg.load {
                Load::Open { rate } => Some(rate),
                _ => None,
            },
            sockets: cfg.sockets,
            threads: cfg.threads,
            batch: cfg.batch,
            warmup_s: cfg.warmup.as_secs_f64(),
            duration_s: secs,
            grace_s: cfg.grace.as_secs_f64(),
            sent: tally.sent,
            sent_per_s: per_s(tally.sent),
            valid: tally.valid,
            valid_per_s: per_s(tally.valid),
            lost: tally.lost,
            loss_pct: if tally.sent > 0 {
                100.0 * tally.lost as f64 / tally.sent as f64
            } else {
                0.0
            },
            latency_us,
            kod: tally.kiss,
            invalid: tally.invalid,
            errors: ErrorReport {
                send: tally.send_errors,
                receive: tally.recv_errors,
                refused: tally.refused,
            },
            total: TotalReport {
                sent: tally.sent_total,
                valid: tally.valid_total,
            },
            nts: None,
        }
    }

    /// The human-readable report, several lines.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let load = match (self.window, self.rate) {
            (Some(w), _) => format!("closed loop, {w} in flight per socket"),
            (_, Some(r)) => format!("open loop at {} requests/s", group(r.round() as u64)),
            _ => "open-loop flood".to_string(),
        };
        let _ = writeln!(
            s,
            "target {}: {load}, {} socket{}, {} thread{}; measured {:.3} s after {:.1} s warm-up",
            self.target,
            self.sockets,
            plural(self.sockets),
            self.threads,
            plural(self.threads),
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            s,
            "requests: {:>12}/s  ({} sent)",
            group(self.sent_per_s.round() as u64),
            group(self.sent)
        );
        let _ = writeln!(
            s,
            "replies:  {:>12}/s  ({} {})",
            group(self.valid_per_s.round() as u64),
            group(self.valid),
            if self.nts.is_some() {
                "authenticated"
            } else {
                "valid"
            }
        );
        let _ = writeln!(
            s,
            "loss:     {:.3} %  ({} of the window's requests unanswered {:.1} s after it)",
            self.loss_pct,
            group(self.lost),
            self.grace_s
        );
        match &self.latency_us {
            Some(l) => {
                let _ = writeln!(s, "latency:  {}", l.render());
            }
            None => s.push_str("latency:  no valid reply in the window\n"),
        }
        let k = &self.kod;
        let _ = writeln!(
            s,
            "kiss-o'-death: {} (RATE {}, DENY {}, RSTR {}, other {})",
            k.total(),
            k.rate,
            k.deny,
            k.rstr,
            k.other
        );
        let i = &self.invalid;
        let _ = writeln!(
            s,
            "invalid: {} (unknown origin {}, duplicate {}, bad mode {}, bad stratum {}, \
             malformed {})",
            i.total(),
            i.unknown_origin,
            i.duplicate,
            i.bad_mode,
            i.bad_stratum,
            i.malformed
        );
        let e = &self.errors;
        if e.send + e.receive > 0 {
            let _ = writeln!(
                s,
                "socket errors: send {}, receive {} (connection refused {})",
                e.send, e.receive, e.refused
            );
        }
        if let Some(n) = &self.nts {
            s.push_str(&n.render_text());
        }
        s
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds with one decimal below 1000, whole above.
fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1}")
    } else {
        group(us.round() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// The socket loop

/// Checks `cfg`'s numbers.
pub fn validate(cfg: &BenchConfig) -> Result<(), BenchError> {
    let err = |m: &str| Err(BenchError::Config(m.to_string()));
    if cfg.sockets == 0 || cfg.sockets > 1024 {
        return err("--sockets must be 1–1024");
    }
    if cfg.threads == 0 || cfg.threads > cfg.sockets {
        return err("--threads must be at least 1 and at most --sockets");
    }
    if cfg.batch == 0 || cfg.batch > 1024 {
        return err("--batch must be 1–1024");
    }
    if cfg.duration.is_zero() {
        return err("--duration must be more than 0 seconds");
    }
    match cfg.load {
        Load::Closed { window: 0 } => err("--window must be at least 1"),
        Load::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
            err("--rate must be more than 0 requests/s")
        }
        _ => Ok(()),
    }
}

/// One thread's share of the run.
#[derive(Clone, Debug)]
struct Plan {
    load: Load,
    batch: usize,
    max_requests: Option<u64>,
    timeout_ns: i64,
    start_ns: i64,
    measure_ns: i64,
    end_ns: i64,
    drain_ns: i64,
}

/// Opens `count` non-blocking UDP sockets connected to `target`.
fn open_sockets(target: SocketAddr, count: usize) -> Result<Vec<UdpSocket>, BenchError> {
    let local: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let opts = UdpSocketOptions {
        recv_buffer: Some(SOCKET_BUFFER),
        send_buffer: Some(SOCKET_BUFFER),
        nonblocking: true,
        ..Default::default()
    };
    (0..count)
        .map(|_| {
            let mut s = UdpSocket::bind(local, &opts).map_err(|e| BenchError::Socket(target, e))?;
            s.connect(target)
                .map_err(|e| BenchError::Socket(target, e))?;
            Ok(s)
        })
        .collect()
}

/// What one thread sends and how it counts what comes back: plain NTP requests
/// ([`PlainRequests`]) or NTS-protected ones ([`nts::NtsRequests`]).
pub trait Requests {
    /// Bytes of the longest request.
    fn max_len(&self) -> usize;
    /// Bytes read of each reply (a longer one is cut).
    fn reply_len(&self) -> usize;
    /// Writes into `buf` (`max_len` bytes) the request that `book` issues `ahead` places after
    /// its next one; returns its length.
    fn write(&mut self, book: &RequestBook, ahead: usize, buf: &mut [u8]) -> usize;
    /// Counts one datagram received at `now_ns` (`in_window`: during the measured window).
    fn count(
        &mut self,
        tally: &mut Tally,
        book: &mut RequestBook,
        datagram: &[u8],
        now_ns: i64,
        in_window: bool,
    );
}

/// Plain NTPv4 client requests, each with its cookie as the transmit timestamp.
#[derive(Clone, Debug)]
pub struct PlainRequests {
    template: [u8; HEADER_LEN],
}

impl Default for PlainRequests {
    fn default() -> Self {
        let mut template = [0u8; HEADER_LEN];
        Header {
            version: 4,
            mode: Mode::Client,
            ..Header::default()
        }
        .emit(&mut template);
        PlainRequests { template }
    }
}

impl Requests for PlainRequests {
    fn max_len(&self) -> usize {
        HEADER_LEN
    }

    fn reply_len(&self) -> usize {
        REPLY_BUF
    }

    fn write(&mut self, book: &RequestBook, ahead: usize, buf: &mut [u8]) -> usize {
        buf[..HEADER_LEN].copy_from_slice(&self.template);
        ntpkit_wire::stamp_transmit(buf, NtpTimestamp::from_bits(book.cookie(ahead)));
        HEADER_LEN
    }

    fn count(
        &mut self,
        tally: &mut Tally,
        book: &mut RequestBook,
        datagram: &[u8],
        now_ns: i64,
        in_window: bool,
    ) {
        tally.count_reply(book, datagram, now_ns, in_window);
    }
}

/// Runs the benchmark and returns what every thread counted, merged.
pub fn run(cfg: &BenchConfig) -> Result<Tally, BenchError> {
    run_with(cfg, |_| Ok(PlainRequests::default()))
}

/// Runs the benchmark with the requests `make` returns for each thread (numbered from 0).
pub fn run_with<R: Requests + Send>(
    cfg: &BenchConfig,
    mut make: impl FnMut(usize) -> Result<R, BenchError>,
) -> Result<Tally, BenchError> {
    validate(cfg)?;
    let threads = cfg.threads;
    let mut requests = (0..threads).map(&mut make).collect::<Result<Vec<R>, _>>()?;
    let mut per_thread: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in open_sockets(cfg.target, cfg.sockets)?
        .into_iter()
        .enumerate()
    {
        per_thread[i % threads].push(s);
    }
    let mut bases = vec![0u64; threads];
    for b in &mut bases {
        *b = OsRng
            .try_next_u64()
            .map_err(|e| BenchError::Random(e.to_string()))?;
    }
    let start_ns = ntpkit_os::monotonic_nanos();
    let nanos = |d: Duration| d.as_nanos().min(i64::MAX as u128 / 4) as i64;
    let measure_ns = start_ns + nanos(cfg.warmup);
    let end_ns = measure_ns + nanos(cfg.duration);
    let plans: Vec<Plan> = (0..threads)
        .map(|t| {
            // Thread t's share of the rate and of the request limit, by its share of sockets.
            let share = per_thread[t].len() as f64 / cfg.sockets as f64;
            Plan {
                load: match cfg.load {
                    Load::Open { rate } => Load::Open { rate: rate * share },
                    other => other,
                },
                batch: cfg.batch,
                max_requests: cfg.max_requests.map(|n| {
                    let each = n / threads as u64;
                    each + u64::from((t as u64) < n % threads as u64)
                }),
                timeout_ns: nanos(cfg.timeout).max(1),
                start_ns,
                measure_ns,
                end_ns,
                drain_ns: end_ns + nanos(cfg.grace),
            }
        })
        .collect();
    if threads == 1 {
        let socks = per_thread.pop().expect("one thread");
        let req = requests.first_mut().expect("one thread");
        return Ok(run_thread(&plans[0], &socks, bases[0], req));
    }
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = per_thread
            .iter()
            .zip(&plans)
            .zip(&bases)
            .zip(requests.iter_mut())
            .map(|(((socks, plan), &base), req)| {
                scope.spawn(move || run_thread(plan, socks, base, req))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect()
    });
    let mut total = Tally::default();
    for t in &tallies {
        total.merge(t);
    }
    Ok(total)
}

/// One thread's loop over its sockets: send what the load allows, take what has come, wait in
/// `poll` only when neither moved anything.
fn run_thread<R: Requests>(plan: &Plan, socks: &[UdpSocket], base: u64, requests: &mut R) -> Tally {
    let n = socks.len();
    let mut book = RequestBook::new(BOOK_SLOTS_LOG2, n, base);
    let mut tally = Tally::default();
    let mut send = SendBatch::new(plan.batch, requests.max_len());
    let mut recv = RecvBatch::new((2 * plan.batch).clamp(64, 1024), requests.reply_len());
    let pacer = match plan.load {
        Load::Open { rate } => Some(Pacer::new(rate, plan.start_ns)),
        _ => None,
    };
    let mut shares = vec![0u64; n];
    let mut first = 0;
    let mut poll = PollSet::new();
    for s in socks {
        poll.push(s.as_raw_fd(), ntpkit_os::Interest::Read);
    }
    let limit = plan.max_requests.unwrap_or(u64::MAX);
    let mut sending = true;
    let mut window_end = plan.end_ns;

    loop {
        let now = ntpkit_os::monotonic_nanos();
        if sending && (now >= plan.end_ns || book.issued() >= limit) {
            sending = false;
            window_end = now.min(plan.end_ns);
        }
        if !sending && (now >= plan.drain_ns || book.unanswered_measured() == 0) {
            break;
        }
        let mut oldest_in_flight = None;
        if sending {
            match plan.load {
                Load::Closed { .. } => {
                    oldest_in_flight = book.expire(now - plan.timeout_ns);
                }
                Load::Open { .. } => {
                    let due = pacer.expect("open loop").due(now, book.issued());
                    let due = due.min((plan.batch * n) as u64);
                    first = share_out(due, first, &mut shares);
                }
                Load::Flood => {}
            }
        }
        let measured = now >= plan.measure_ns;
        let mut progress = false;
        for (i, sock) in socks.iter().enumerate() {
            if sending {
                let room = match plan.load {
                    Load::Closed { window } => u64::from(window.saturating_sub(book.in_flight(i))),
                    Load::Open { .. } => shares[i],
                    Load::Flood => plan.batch as u64,
                };
                let room = room
                    .min(plan.batch as u64)
                    .min(limit.saturating_sub(book.issued())) as usize;
                if room > 0 {
                    for k in 0..room {
                        let buf = send.next_buf().expect("room within the batch");
                        let len = requests.write(&book, k, buf);
                        send.commit_connected(len);
                    }
                    let t = ntpkit_os::monotonic_nanos();
                    match sock.send_batch_in_order(&mut send) {
                        Ok(sent) => {
                            for _ in 0..sent {
                                book.issue(i, t, measured);
                            }
                            tally.sent_total += sent as u64;
                            if measured {
                                tally.sent += sent as u64;
                            }
                            progress |= sent > 0;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            tally.send_errors += 1;
                            if e.kind() == io::ErrorKind::ConnectionRefused {
                                tally.refused += 1;
                            }
                        }
                    }
                }
            }
            match sock.recv_batch(&mut recv) {
                Ok(got) => {
                    let t = ntpkit_os::monotonic_nanos();
                    let in_window = t >= plan.measure_ns && t < window_end && sending;
                    for k in 0..got {
                        requests.count(&mut tally, &mut book, recv.get(k).data, t, in_window);
                    }
                    progress |= got > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tally.recv_errors += 1;
                    if e.kind() == io::ErrorKind::ConnectionRefused {
                        tally.refused += 1;
                    }
                }
            }
        }
        if !progress {
            // Nothing moved: wait for a reply, or for the next thing due.
            let mut wake = if sending { plan.end_ns } else { plan.drain_ns };
            if sending {
                if let Some(p) = &pacer {
                    wake = wake.min(p.next_due_ns(book.issued()));
                }
                if let Some(sent) = oldest_in_flight {
                    wake = wake.min(sent + plan.timeout_ns);
                }
                if plan.load == Load::Flood {
                    wake = now;
                }
            }
            // `poll` counts whole milliseconds, rounded up: an open loop sends a millisecond's
            // worth at a time.
            let wait = Duration::from_nanos((wake - now).max(0) as u64);
            let _ = poll.wait(Some(wait.min(Duration::from_millis(100))));
        }
    }
    tally.lost = book.unanswered_measured();
    tally.window_ns = (window_end - plan.measure_ns).max(0);
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_unless_allowed() {
        for ok in [
            "127.0.0.1:123",
            "127.5.6.7:1",
            "[::1]:123",
            "[::ffff:127.0.0.1]:9",
        ] {
            let a: SocketAddr = ok.parse().unwrap();
            assert!(check_target(a, false).is_ok(), "{a}");
        }
        for bad in [
            "192.0.2.1:123",
            "10.0.0.1:123",
            "0.0.0.0:123",
            "[2001:db8::1]:123",
            "[::]:1",
        ] {
            let a: SocketAddr = bad.parse().unwrap();
            let e = check_target(a, false).unwrap_err().to_string();
            assert!(e.contains("not a loopback address"), "{e}");
            assert!(e.contains("--allow-remote"), "{e}");
            assert!(check_target(a, true).is_ok());
        }
    }

    #[test]
    fn cookies_are_unique_nonzero_and_matched_once() {
        for base in [0, u64::MAX, 1 << 62, 12345] {
            let mut book = RequestBook::new(4, 2, base);
            let mut cookies = Vec::new();
            for i in 0..10 {
                let c = book.cookie(0);
                assert_ne!(c, 0);
                assert_eq!(book.cookie(1), c.wrapping_add(1));
                cookies.push(c);
                book.issue(i % 2, 1000 + i as i64, i >= 5);
            }
            cookies.sort_unstable();
            cookies.dedup();
            assert_eq!(cookies.len(), 10);
            assert_eq!((book.in_flight(0), book.in_flight(1)), (5, 5));
            assert_eq!(book.unanswered_measured(), 5);
            let c7 = cookies[7];
            assert_eq!(
                book.answer(c7),
                Answer::Ours {
                    sent_ns: 1007,
                    measured: true,
                    socket: 1
                }
            );
            assert_eq!(book.answer(c7), Answer::Duplicate);
            assert_eq!(book.in_flight(1), 4);
            assert_eq!(book.unanswered_measured(), 4);
            // Never issued: before the first, the next one, far away.
            assert_eq!(book.answer(cookies[0].wrapping_sub(1)), Answer::Unknown);
            assert_eq!(book.answer(book.cookie(0)), Answer::Unknown);
            assert_eq!(book.answer(c7 ^ 1 << 40), Answer::Unknown);
            assert_eq!(book.answer(0), Answer::Unknown);
        }
    }

    #[test]
    fn forgotten_requests_are_unknown_and_stay_lost() {
        let mut book = RequestBook::new(3, 1, 99);
        let first = book.cookie(0);
        for i in 0..8 {
            book.issue(0, i, true);
        }
        assert_eq!(book.in_flight(0), 8);
        book.issue(0, 8, true); // reuses the first request's slot
        assert_eq!(book.in_flight(0), 8);
        assert_eq!(book.answer(first), Answer::Unknown);
        assert_eq!(
            book.unanswered_measured(),
            9,
            "the forgotten one stays unanswered"
        );
        assert!(matches!(
            book.answer(first.wrapping_add(1)),
            Answer::Ours { sent_ns: 1, .. }
        ));
    }

    #[test]
    fn expiry_frees_window_places_but_late_replies_still_match() {
        let mut book = RequestBook::new(6, 2, 7);
        let c: Vec<u64> = (0..6).map(|k| book.cookie(k)).collect();
        for (k, t) in [(0, 100), (1, 200), (0, 300), (1, 400), (0, 500), (1, 600)] {
            book.issue(k, t, true);
        }
        assert!(matches!(book.answer(c[0]), Answer::Ours { .. }));
        assert_eq!(book.expire(50), Some(200));
        assert_eq!(book.expire(350), Some(400));
        assert_eq!((book.in_flight(0), book.in_flight(1)), (1, 2));
        // A late reply to an expired request: counted, and the window is not freed twice.
        assert!(matches!(
            book.answer(c[1]),
            Answer::Ours {
                sent_ns: 200,
                socket: 1,
                ..
            }
        ));
        assert_eq!((book.in_flight(0), book.in_flight(1)), (1, 2));
        assert!(matches!(book.answer(c[3]), Answer::Ours { .. }));
        assert_eq!(book.in_flight(1), 1);
        assert_eq!(book.expire(350), Some(500));
        assert_eq!(book.expire(10_000), None);
        assert_eq!((book.in_flight(0), book.in_flight(1)), (0, 0));
        assert_eq!(book.unanswered_measured(), 3);
    }

    #[test]
    fn pacer_releases_the_schedule_and_catches_up() {
        let p = Pacer::new(1000.0, 1_000_000_000);
        assert_eq!(p.due(0, 0), 0, "before the start");
        assert_eq!(p.due(1_000_000_000, 0), 0);
        assert_eq!(p.due(1_000_999_999, 0), 0);
        assert_eq!(p.due(1_001_000_000, 0), 1);
        assert_eq!(p.due(1_010_000_000, 3), 7);
        assert_eq!(p.due(1_010_000_000, 12), 0, "ahead of schedule");
        assert_eq!(p.due(2_000_000_000, 0), 1000, "a stalled sender catches up");
        assert_eq!(p.next_due_ns(0), 1_001_000_000);
        assert_eq!(p.next_due_ns(9), 1_010_000_000);
        let slow = Pacer::new(0.5, 0);
        assert_eq!(slow.next_due_ns(0), 2_000_000_000);
        assert_eq!(slow.due(3_999_999_999, 1), 0);
        assert_eq!(slow.due(4_000_000_000, 1), 1);
    }

    #[test]
    fn shares_are_even_and_rotate() {
        let mut out = [0u64; 4];
        let mut first = 0;
        let mut sum = [0u64; 4];
        for _ in 0..8 {
            first = share_out(1, first, &mut out);
            assert_eq!(out.iter().sum::<u64>(), 1);
            for (s, o) in sum.iter_mut().zip(out) {
                *s += o;
            }
        }
        assert_eq!(sum, [2, 2, 2, 2]);
        let first = share_out(10, 3, &mut out);
        assert_eq!(out, [3, 2, 2, 3]);
        assert_eq!(first, 1);
        assert_eq!(share_out(0, 1, &mut out), 1);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_narrow() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(i);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            assert!(hi - lo <= lo / 128, "bucket {i} [{lo}, {hi}] too wide");
            prev_hi = Some(hi);
        }
        assert_eq!(prev_hi, Some(u64::MAX));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
        for v in 1..=1000u64 {
            h.record(v * 1000); // 1 µs … 1 ms
        }
        let close = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.01, "{got} vs {want}");
        };
        close(h.quantile(0.5).unwrap(), 500_000);
        close(h.quantile(0.9).unwrap(), 900_000);
        close(h.quantile(0.99).unwrap(), 990_000);
        close(h.quantile(0.999).unwrap(), 999_000);
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!((h.min(), h.max()), (Some(1000), Some(1_000_000)));
        assert_eq!(h.mean(), Some(500_500.0));
        // Small values are exact.
        let mut small = Histogram::default();
        for v in [3, 3, 3, 200] {
            small.record(v);
        }
        assert_eq!(small.quantile(0.5), Some(3));
        assert_eq!(small.quantile(0.75), Some(3));
        assert_eq!(small.quantile(0.76), Some(200));
        let mut merged = Histogram::default();
        merged.merge(&small);
        merged.merge(&h);
        assert_eq!(merged.count(), 1004);
        assert_eq!((merged.min(), merged.max()), (Some(3), Some(1_000_000)));
    }

    fn reply(origin: u64, mode: Mode, stratum: u8, refid: &[u8; 4]) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        Header {
            version: 4,
            mode,
            stratum,
            reference_id: ntpkit_wire::RefId(*refid),
            origin_ts: NtpTimestamp::from_bits(origin),
            receive_ts: NtpTimestamp::from_bits(5),
            transmit_ts: NtpTimestamp::from_bits(6),
            ..Header::default()
        }
        .emit(&mut b);
        b
    }

    #[test]
    fn replies_are_classified() {
        let mut book = RequestBook::new(8, 1, 42);
        let c: Vec<u64> = (0..8).map(|k| book.cookie(k)).collect();
        for k in 0..8 {
            book.issue(0, 1_000 * k as i64, k >= 1);
        }
        let mut t = Tally::default();
        // Warm-up request: valid, but not in the latency of the window.
        t.count_reply(
            &mut book,
            &reply(c[0], Mode::Server, 2, b"LOCL"),
            500,
            false,
        );
        t.count_reply(
            &mut book,
            &reply(c[1], Mode::Server, 2, b"LOCL"),
            1_250,
            true,
        );
        t.count_reply(
            &mut book,
            &reply(c[1], Mode::Server, 2, b"LOCL"),
            1_300,
            true,
        );
        t.count_reply(&mut book, &reply(c[2], Mode::Server, 0, b"RATE"), 0, true);
        t.count_reply(&mut book, &reply(c[3], Mode::Server, 0, b"DENY"), 0, true);
        t.count_reply(&mut book, &reply(c[4], Mode::Server, 0, b"RSTR"), 0, true);
        t.count_reply(&mut book, &reply(c[5], Mode::Server, 0, b"INIT"), 0, true);
        t.count_reply(&mut book, &reply(c[6], Mode::Server, 16, b"LOCL"), 0, true);
        // Not a server reply: does not use up the cookie.
        t.count_reply(&mut book, &reply(c[7], Mode::Client, 2, b"LOCL"), 0, true);
        t.count_reply(
            &mut book,
            &reply(c[7] + 100, Mode::Server, 2, b"LOCL"),
            0,
            true,
        );
        t.count_reply(&mut book, &[0x24; 47], 0, true);
        t.count_reply(
            &mut book,
            &reply(c[7], Mode::Server, 2, b"LOCL")[..],
            7_400,
            false,
        );
        assert_eq!((t.valid, t.valid_total), (1, 3));
        assert_eq!(
            t.kiss,
            KissCounts {
                rate: 1,
                deny: 1,
                rstr: 1,
                other: 1
            }
        );
        assert_eq!(
            t.invalid,
            InvalidCounts {
                unknown_origin: 1,
                duplicate: 1,
                bad_mode: 1,
                bad_stratum: 1,
                malformed: 1
            }
        );
        assert_eq!(t.latency.count(), 2);
        assert_eq!((t.latency.min(), t.latency.max()), (Some(250), Some(400)));
        assert_eq!(book.unanswered_measured(), 0);
    }

    #[test]
    fn report_rates_loss_and_text() {
        let cfg = BenchConfig {
            load: Load::Open { rate: 2000.0 },
            sockets: 2,
            ..BenchConfig::default()
        };
        let mut t = Tally {
            sent: 4000,
            sent_total: 5000,
            valid: 3980,
            valid_total: 4980,
            lost: 20,
            window_ns: 2_000_000_000,
            ..Tally::default()
        };
        t.kiss.rate = 3;
        for v in [10_000, 20_000, 30_000] {
            t.latency.record(v);
        }
        let r = BenchReport::new(&cfg, &t);
        assert_eq!((r.sent_per_s, r.valid_per_s), (2000.0, 1990.0));
        assert_eq!(r.loss_pct, 0.5);
        let l = r.latency_us.unwrap();
        assert!((l.p50 - 20.0).abs() < 0.2, "{}", l.p50);
        assert_eq!((l.max, l.samples), (30.0, 3));
        let text = r.render_text();
        for needle in [
            "target 127.0.0.1:123: open loop at 2,000 requests/s, 2 sockets, 1 thread;",
            "requests:        2,000/s  (4,000 sent)",
            "replies:         1,990/s  (3,980 valid)",
            "loss:     0.500 %  (20 of",
            "latency:  p50 20.0 µs",
            "kiss-o'-death: 3 (RATE 3, DENY 0, RSTR 0, other 0)",
            "invalid: 0 (",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mode"], "open");
        assert_eq!(json["latency_us"]["p99_9"], 30.0);
        assert_eq!(json["kod"]["rate"], 3);
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(12), "12");
        assert_eq!(micros(1234.4), "1,234");
    }

    #[test]
    fn config_is_checked() {
        let ok = BenchConfig::default();
        assert!(validate(&ok).is_ok());
        for bad in [
            BenchConfig {
                sockets: 0,
                ..ok.clone()
            },
            BenchConfig {
                threads: 5,
                ..ok.clone()
            },
            BenchConfig {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            BenchConfig {
                load: Load::Closed { window: 0 },
                ..ok.clone()
            },
            BenchConfig {
                load: Load::Open { rate: f64::NAN },
                ..ok.clone()
            },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
    }

    /// A tiny responder on loopback for the loop tests: answers every request (mode 4,
    /// stratum 2, origin = the request's transmit) until `stop`.
    fn echo_server() -> (
        SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<u64>,
    ) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sock = UdpSocket::bind(
            "127.0.0.1:0".parse().unwrap(),
            &UdpSocketOptions {
                read_timeout: Some(Duration::from_millis(20)),
                recv_buffer: Some(SOCKET_BUFFER),
                ..Default::default()
            },
        )
        .unwrap();
        let addr = sock.local_addr();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let h = std::thread::spawn(move || {
            let mut recv = RecvBatch::new(64, 128);
            let mut send = SendBatch::new(64, 128);
            let mut answered = 0;
            while !flag.load(Ordering::Relaxed) {
                let n = match sock.recv_batch(&mut recv) {
                    Ok(n) => n,
                    Err(_) => continue,
                };
                for i in 0..n {
                    let req = Header::parse(recv.get(i).data).unwrap();
                    let out = send.next_buf().unwrap();
                    let b: &mut [u8; HEADER_LEN] = (&mut out[..HEADER_LEN]).try_into().unwrap();
                    Header {
                        mode: Mode::Server,
                        stratum: 2,
                        origin_ts: req.transmit_ts,
                        receive_ts: NtpTimestamp::from_bits(1),
                        transmit_ts: NtpTimestamp::from_bits(2),
                        ..Header::default()
                    }
                    .emit(b);
                    send.commit_reply(HEADER_LEN, &recv, i);
                }
                answered += sock.send_batch(&mut send).unwrap_or(0) as u64;
            }
            answered
        });
        (addr, stop, h)
    }

    #[test]
    fn closed_and_open_loops_against_a_responder() {
        let (addr, stop, server) = echo_server();
        let base = BenchConfig {
            target: addr,
            sockets: 2,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            grace: Duration::from_millis(200),
            ..BenchConfig::default()
        };
        let closed = run(&BenchConfig {
            load: Load::Closed { window: 4 },
            ..base.clone()
        })
        .unwrap();
        assert!(closed.valid > 100, "{closed:?}");
        assert_eq!(closed.lost, 0, "{closed:?}");
        assert_eq!(closed.invalid.total(), 0);
        assert_eq!(closed.latency.count(), closed.sent);

        let open = run(&BenchConfig {
            load: Load::Open { rate: 2000.0 },
            threads: 2,
            ..base.clone()
        })
        .unwrap();
        let r = BenchReport::new(&base, &open);
        assert!(
            (1500.0..2500.0).contains(&r.sent_per_s),
            "{} requests/s",
            r.sent_per_s
        );
        assert_eq!(open.lost, 0, "{open:?}");
        assert!(open.valid > 400, "{open:?}");

        let limited = run(&BenchConfig {
            load: Load::Closed { window: 8 },
            warmup: Duration::ZERO,
            max_requests: Some(500),
            ..base.clone()
        })
        .unwrap();
        assert_eq!((limited.sent_total, limited.valid_total), (500, 500));
        assert_eq!(limited.lost, 0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answered = server.join().unwrap();
        assert!(answered >= closed.sent_total + open.sent_total + 500);
    }

    #[test]
    fn nobody_listening_is_all_lost_and_refused() {
        // Bind a port and drop it: nothing listens there any more.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let t = run(&BenchConfig {
            target: port,
            load: Load::Open { rate: 1000.0 },
            sockets: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(100),
            grace: Duration::from_millis(50),
            ..BenchConfig::default()
        })
        .unwrap();
        assert_eq!(t.valid_total, 0);
        assert!(t.sent > 0);
        assert_eq!(t.lost, t.sent);
        assert!(t.refused > 0, "{t:?}");
    }
}
