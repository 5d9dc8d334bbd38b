//! The TCP server (ntpkit's framing, see [`crate::framing`]), driven by an event loop: the
//! listeners and every connection are non-blocking descriptors in one `poll` set, and a
//! [`Connections`] table decides who may stay.
//!
//! A slow or hostile client cannot hold the server: every request frame must arrive whole
//! within the frame timeout once its first byte has come (a client trickling one byte every few
//! seconds is closed), replies must be taken within the write timeout (a client that never
//! reads is closed, and is not read from while its replies pile up), each address may hold
//! only a few connections, and when the table is full a new connection takes the place of the
//! one that has gone longest without completing a request.
//!
//! The receive timestamp of a request is the served clock read right after the read that
//! completed its frame; the transmit timestamps of the replies to one read are stamped right
//! before the write.

use crate::framing::{self, FrameDecoder, FrameError};
use crate::serve::Counters;
use crate::served_clock::ServedClock;
use ntpkit_core::{Policy, Responder, ResponderStats, Response};
use ntpkit_os::{Interest, PollSet, TcpListener, TcpStream};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Limits of a TCP server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TcpLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub per_address: usize,
    /// A connection with no request started this long after its last one (or its opening) is
    /// closed.
    pub idle_timeout: Duration,
    /// A request frame must arrive whole within this time after its first byte.
    pub frame_timeout: Duration,
    /// Replies waiting to be sent must make progress within this time.
    pub write_timeout: Duration,
    /// Largest NTP packet accepted in a frame.
    pub max_frame: usize,
    /// Replies held for a client that does not read; beyond this its requests wait unread.
    pub max_pending_output: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 16_384,
            per_address: 8,
            idle_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            max_frame: framing::DEFAULT_MAX_FRAME_LEN,
            max_pending_output: 64 * 1024,
        }
    }
}

/// Why a connection was closed or refused, for the log and the counters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum CloseReason {
    /// The client closed it (or the socket failed).
    Closed,
    /// No request within the idle timeout.
    Idle,
    /// A request frame did not arrive whole within the frame timeout.
    SlowFrame,
    /// Replies were not taken within the write timeout.
    SlowReader,
    /// The client broke the framing (a length of 0 or above the maximum).
    BadFrame,
    /// Its place went to a new connection while the table was full.
    Evicted,
    /// The address already holds its share of connections (refused at once).
    PerAddressLimit,
    /// The table is full of connections that are all in use (refused at once).
    Full,
}

/// What to do with a new connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admission {
    /// Take it.
    Accept,
    /// Take it after closing the connection in this slot.
    Evict(usize),
    /// Close it at once.
    Refuse(CloseReason),
}

/// The state of one connection that the limits are about (times in monotonic ns).
#[derive(Clone, Debug)]
struct Timing {
    peer: IpAddr,
    /// Last completed request, or the opening.
    last_request: i64,
    /// A request was completed on this connection.
    answered: bool,
    /// When the first byte of the request being received arrived.
    frame_started: Option<i64>,
    /// When replies started waiting, or last made progress.
    output_since: Option<i64>,
}

/// The bookkeeping of a connection table, without any I/O: admission, per-address counts and
/// deadlines. Slots are indices into the caller's own storage.
#[derive(Debug)]
pub struct Connections {
    limits: TcpLimits,
    slots: Vec<Option<Timing>>,
    free: Vec<usize>,
    per_address: HashMap<IpAddr, usize>,
    open: usize,
}

impl Connections {
    /// An empty table.
    pub fn new(limits: TcpLimits) -> Self {
        Connections {
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            per_address: HashMap::new(),
            open: 0,
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.open
    }

    /// True if no connection is open.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Decides about a connection from `peer` at `now`.
    pub fn admit(&self, peer: IpAddr, now: i64) -> Admission {
        if self.per_address.get(&peer).copied().unwrap_or(0) >= self.limits.per_address.max(1) {
            return Admission::Refuse(CloseReason::PerAddressLimit);
        }
        if self.open < self.limits.max_connections.max(1) {
            return Admission::Accept;
        }
        // Full: the connection that has gone longest without completing a request gives way.
        // One that completed a request within the last frame timeout is in use and stays; if
        // all are, the new one is refused.
        let busy_since = now - self.limits.frame_timeout.as_nanos() as i64;
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
            .filter(|(_, t)| !t.answered || t.last_request < busy_since)
            .map(|(i, t)| (i, t.last_request))
            .min_by_key(|&(_, last)| last)
            .map_or(Admission::Refuse(CloseReason::Full), |(i, _)| {
                Admission::Evict(i)
            })
    }

    /// Records a connection from `peer` opened at `now`; returns its slot.
    pub fn insert(&mut self, peer: IpAddr, now: i64) -> usize {
        let timing = Timing {
            peer,
            last_request: now,
            answered: false,
            frame_started: None,
            output_since: None,
        };
        *self.per_address.entry(peer).or_insert(0) += 1;
        self.open += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(timing);
                i
            }
            None => {
                self.slots.push(Some(timing));
                self.slots.len() - 1
            }
        }
    }

    /// Forgets the connection in `slot`.
    pub fn remove(&mut self, slot: usize) {
        let Some(t) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if let Some(n) = self.per_address.get_mut(&t.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&t.peer);
            }
        }
        self.open -= 1;
        self.free.push(slot);
    }

    /// After reading from `slot` at `now`: `requests` frames completed, and `partial` says
    /// whether bytes of an incomplete frame are waiting.
    pub fn on_read(&mut self, slot: usize, now: i64, requests: usize, partial: bool) {
        let Some(t) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if requests > 0 {
            t.last_request = now;
            t.answered = true;
            t.frame_started = None;
        }
        if partial {
            t.frame_started.get_or_insert(now);
        }
    }

    /// After writing to `slot` at `now`: `progress` bytes went out, `pending` are still waiting.
    pub fn on_write(&mut self, slot: usize, now: i64, progress: usize, pending: usize) {
        let Some(t) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        t.output_since = match (pending, progress, t.output_since) {
            (0, _, _) => None,
            (_, p, _) if p > 0 => Some(now),
            (_, _, since) => Some(since.unwrap_or(now)),
        };
    }

    /// The earliest deadline of any connection.
    pub fn next_deadline(&self) -> Option<i64> {
        self.slots
            .iter()
            .flatten()
            .map(|t| self.deadline(t).0)
            .min()
    }

    /// The slots whose deadline has passed at `now`, with the reason each is to be closed.
    pub fn expired(&self, now: i64) -> Vec<(usize, CloseReason)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, self.deadline(t))))
            .filter(|&(_, (at, _))| at <= now)
            .map(|(i, (_, why))| (i, why))
            .collect()
    }

    fn deadline(&self, t: &Timing) -> (i64, CloseReason) {
        let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        let mut d = (
            t.last_request.saturating_add(ns(self.limits.idle_timeout)),
            CloseReason::Idle,
        );
        if let Some(s) = t.frame_started {
            d = d.min((
                s.saturating_add(ns(self.limits.frame_timeout)),
                CloseReason::SlowFrame,
            ));
        }
        if let Some(s) = t.output_since {
            // Waiting replies keep an idle connection open until they are taken or time out.
            let w = (
                s.saturating_add(ns(self.limits.write_timeout)),
                CloseReason::SlowReader,
            );
            d = if t.frame_started.is_some() {
                d.min(w)
            } else {
                w
            };
        }
        d
    }
}

/// One connection's sockets and buffers.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Offsets in `outbuf` of replies not yet stamped with their transmit time.
    unstamped: Vec<usize>,
}

/// Counters of why connections ended, beyond the transport's request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseCounts {
    /// Closed for a frame that did not arrive in time.
    pub slow_frames: u64,
    /// Closed for replies not taken in time.
    pub slow_readers: u64,
    /// Closed when idle.
    pub idle: u64,
    /// Evicted for a new connection while full.
    pub evicted: u64,
    /// Refused: the address held its share.
    pub refused_per_address: u64,
    /// Refused: the table was full of busy connections.
    pub refused_full: u64,
}

/// The listeners and connections of a TCP server, for an event loop: register them in the
/// loop's [`PollSet`], then let the server handle what became ready and what timed out.
#[derive(Debug)]
pub struct TcpServer {
    listeners: Vec<TcpListener>,
    table: Connections,
    conns: Vec<Option<Conn>>,
    decoder: FrameDecoder,
    responder: Responder,
    published: ResponderStats,
    /// Connections closed for bad framing since the counters were last published.
    bad_frames: u64,
    closes: CloseCounts,
    verbose: bool,
    /// Poll-set index of the first listener, and the slots of the connections registered
    /// after the listeners, in order.
    registered: (usize, Vec<usize>),
    max_pending_output: usize,
}

/// Bytes read per `recv`.
const READ_CHUNK: usize = 4096;

impl TcpServer {
    /// A server on `listeners` with `limits`, answering as `policy` allows; `verbose` logs
    /// every request.
    pub fn new(
        listeners: Vec<TcpListener>,
        limits: TcpLimits,
        policy: Policy,
        verbose: bool,
    ) -> Self {
        TcpServer {
            listeners,
            table: Connections::new(limits),
            conns: Vec::new(),
            decoder: FrameDecoder::new(limits.max_frame),
            responder: Responder::with_policy(policy),
            published: ResponderStats::default(),
            bad_frames: 0,
            closes: CloseCounts::default(),
            verbose,
            registered: (0, Vec::new()),
            max_pending_output: limits.max_pending_output,
        }
    }

    /// The listening addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr()).collect()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// Why connections ended so far.
    pub fn close_counts(&self) -> CloseCounts {
        self.closes
    }

    /// Adds the listeners and connections to `set`: connections wait for reading while their
    /// replies fit, and for writing while replies wait.
    pub fn register(&mut self, set: &mut PollSet) {
        self.registered.0 = set.len();
        for l in &self.listeners {
            set.push(l.as_raw_fd(), Interest::Read);
        }
        self.registered.1.clear();
        for (slot, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            let read = c.outbuf.len() < self.max_pending_output;
            let interest = match (read, c.outbuf.is_empty()) {
                (true, true) => Interest::Read,
                (true, false) => Interest::ReadWrite,
                (false, _) => Interest::Write,
            };
            set.push(c.stream.as_raw_fd(), interest);
            self.registered.1.push(slot);
        }
    }

    /// Handles what `set` (filled by [`register`](Self::register)) reports ready: accepts new
    /// connections, reads requests and answers them with `clock`, writes waiting replies.
    /// `now` is monotonic ns.
    pub fn handle_ready(
        &mut self,
        set: &PollSet,
        now: i64,
        clock: &mut ServedClock,
        counters: &Counters,
    ) {
        let first = self.registered.0;
        for i in 0..self.listeners.len() {
            if set.readable(first + i) {
                self.accept(i, now, counters);
            }
        }
        let slots = std::mem::take(&mut self.registered.1);
        for (k, &slot) in slots.iter().enumerate() {
            let at = first + self.listeners.len() + k;
            if set.readable(at) {
                if let Err(why) = self.read(slot, now, clock) {
                    self.close(slot, why);
                    continue;
                }
            }
            if set.writable(at) || self.has_output(slot) {
                if let Err(why) = self.write(slot, now, clock) {
                    self.close(slot, why);
                }
            }
        }
        self.registered.1 = slots;
        let bad_frames = std::mem::take(&mut self.bad_frames);
        counters.publish(self.responder.stats(), &mut self.published, bad_frames);
        self.publish_open(counters);
    }

    /// The earliest deadline of a connection (monotonic ns).
    pub fn next_deadline(&self) -> Option<i64> {
        self.table.next_deadline()
    }

    /// Closes the connections whose deadline passed by `now`.
    pub fn handle_timeout(&mut self, now: i64, counters: &Counters) {
        for (slot, why) in self.table.expired(now) {
            self.close(slot, why);
        }
        self.publish_open(counters);
    }

    fn publish_open(&self, counters: &Counters) {
        counters.open.store(
            self.table.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn accept(&mut self, listener: usize, now: i64, counters: &Counters) {
        // One accept per readiness: the loop comes back while more are waiting.
        let (stream, peer) = match self.listeners[listener].accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!("accept: {e}");
                return;
            }
        };
        match self.table.admit(peer.ip(), now) {
            Admission::Refuse(why) => {
                match why {
                    CloseReason::PerAddressLimit => self.closes.refused_per_address += 1,
                    _ => self.closes.refused_full += 1,
                }
                tracing::debug!("refusing connection from {peer}: {why:?}");
                return; // dropping the stream closes it
            }
            Admission::Evict(slot) => self.close(slot, CloseReason::Evicted),
            Admission::Accept => {}
        }
        let slot = self.table.insert(peer.ip(), now);
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some(Conn {
            stream,
            peer,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            unstamped: Vec::new(),
        });
        counters
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// One read from `slot`, and the answers to every request it completed.
    fn read(&mut self, slot: usize, now: i64, clock: &mut ServedClock) -> Result<(), CloseReason> {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        let mut chunk = [0u8; READ_CHUNK];
        let n = match c.stream.recv(&mut chunk) {
            Ok(0) => return Err(CloseReason::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(_) => return Err(CloseReason::Closed),
        };
        let rx = clock.read_at(ntpkit_os::realtime_nanos());
        clock.refresh();
        c.inbuf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        let mut requests = 0;
        let mut reply = [0u8; framing::DEFAULT_MAX_FRAME_LEN];
        let mut error: Option<FrameError> = None;
        loop {
            match self.decoder.decode(&c.inbuf[pos..]) {
                Ok(Some((request, used))) => {
                    pos += used;
                    requests += 1;
                    if self.verbose {
                        tracing::info!("Received NTP request from {} (tcp)", c.peer);
                    }
                    let state = clock.state_at(rx);
                    let room = request.len().min(reply.len());
                    let response = self.responder.respond_from(
                        request,
                        c.peer.ip(),
                        now,
                        rx,
                        state,
                        &mut reply[..room],
                    );
                    match response {
                        Response::Reply(len) | Response::Kiss(len, _) => {
                            let at = framing::encode(&reply[..len], &mut c.outbuf)
                                .expect("reply of 1..=1024 bytes");
                            c.unstamped.push(at);
                        }
                        Response::Ignored(why) if self.verbose => {
                            tracing::info!("Ignored packet from {}: {why:?}", c.peer);
                        }
                        Response::Malformed(e) if self.verbose => {
                            tracing::info!("Malformed packet from {}: {e}", c.peer);
                        }
                        Response::Ignored(_) | Response::Malformed(_) => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        c.inbuf.drain(..pos);
        let partial = !c.inbuf.is_empty();
        self.table.on_read(slot, now, requests, partial);
        if let Some(e) = error {
            tracing::debug!("closing connection from {}: {e}", c.peer);
            return Err(CloseReason::BadFrame);
        }
        Ok(())
    }

    fn has_output(&self, slot: usize) -> bool {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| !c.outbuf.is_empty())
    }

    /// Writes what the socket takes of `slot`'s waiting replies, stamping new ones first.
    fn write(&mut self, slot: usize, now: i64, clock: &ServedClock) -> Result<(), CloseReason> {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        if c.outbuf.is_empty() {
            return Ok(());
        }
        if !c.unstamped.is_empty() {
            let tx = clock.read_at(ntpkit_os::realtime_nanos()).to_ntp();
            for &at in &c.unstamped {
                ntpkit_wire::stamp_transmit(&mut c.outbuf[at..], tx);
                if self.verbose {
                    tracing::info!("Sent NTP response to {} (tcp)", c.peer);
                }
            }
            c.unstamped.clear();
        }
        let sent = match c.stream.send(&c.outbuf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(_) => return Err(CloseReason::Closed),
        };
        c.outbuf.drain(..sent);
        self.table.on_write(slot, now, sent, c.outbuf.len());
        Ok(())
    }

    fn close(&mut self, slot: usize, why: CloseReason) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.table.remove(slot);
        match why {
            CloseReason::SlowFrame => self.closes.slow_frames += 1,
            CloseReason::SlowReader => self.closes.slow_readers += 1,
            CloseReason::Idle => self.closes.idle += 1,
            CloseReason::Evicted => self.closes.evicted += 1,
            _ => {}
        }
        if why == CloseReason::BadFrame {
            self.bad_frames += 1;
        }
        tracing::debug!("closing connection from {}: {why:?}", c.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn limits() -> TcpLimits {
        TcpLimits {
            max_connections: 3,
            per_address: 2,
            ..TcpLimits::default()
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn per_address_limit_and_slot_reuse() {
        let mut t = Connections::new(limits());
        let a = t.insert(ip(1), 0);
        t.insert(ip(1), 0);
        assert_eq!(
            t.admit(ip(1), 0),
            Admission::Refuse(CloseReason::PerAddressLimit)
        );
        assert_eq!(t.admit(ip(2), 0), Admission::Accept);
        t.remove(a);
        assert_eq!(t.admit(ip(1), 0), Admission::Accept);
        assert_eq!(t.insert(ip(1), 0), a, "the freed slot is reused");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_full_table_evicts_the_longest_without_a_request() {
        let mut t = Connections::new(limits());
        let old = t.insert(ip(1), 0);
        let busy = t.insert(ip(2), S);
        let newer = t.insert(ip(3), 2 * S);
        t.on_read(busy, 10 * S, 1, false);
        // Full: the one opened first and silent since goes.
        assert_eq!(t.admit(ip(4), 10 * S), Admission::Evict(old));
        t.remove(old);
        let fresh = t.insert(ip(4), 10 * S);
        // A connection that never completed a request can go even when just opened…
        t.on_read(newer, 10 * S, 1, false);
        assert_eq!(t.admit(ip(5), 10 * S + 1), Admission::Evict(fresh));
        // …but when everyone completed a request just now, nobody is evicted.
        t.on_read(fresh, 10 * S, 1, false);
        assert_eq!(
            t.admit(ip(5), 10 * S + 1),
            Admission::Refuse(CloseReason::Full)
        );
    }

    #[test]
    fn a_trickled_frame_times_out_even_while_bytes_arrive() {
        let mut t = Connections::new(limits());
        let s = t.insert(ip(1), 0);
        assert_eq!(t.next_deadline(), Some(30 * S), "idle timeout");
        // One byte of a frame at 1 s, one more every second after: the frame deadline holds.
        for k in 1..=3 {
            t.on_read(s, k * S, 0, true);
        }
        assert_eq!(t.next_deadline(), Some(3 * S));
        assert_eq!(t.expired(3 * S - 1), vec![]);
        assert_eq!(t.expired(3 * S), vec![(s, CloseReason::SlowFrame)]);
        // A completed frame clears it.
        t.on_read(s, 2 * S, 1, false);
        assert_eq!(t.next_deadline(), Some(32 * S));
    }

    #[test]
    fn replies_must_be_taken_in_time() {
        let mut t = Connections::new(limits());
        let s = t.insert(ip(1), 0);
        t.on_read(s, S, 1, false);
        t.on_write(s, S, 0, 48);
        assert_eq!(t.next_deadline(), Some(6 * S));
        t.on_write(s, 4 * S, 10, 38);
        assert_eq!(t.next_deadline(), Some(9 * S), "progress resets it");
        assert_eq!(t.expired(9 * S), vec![(s, CloseReason::SlowReader)]);
        t.on_write(s, 5 * S, 38, 0);
        assert_eq!(t.next_deadline(), Some(31 * S), "back to idle");
    }
}
