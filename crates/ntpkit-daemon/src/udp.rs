//! The UDP server: `recvmmsg` → respond → send, on one socket.
//!
//! [`UdpServer`] answers one batch at a time: one `recvmmsg` (whatever is queued, up to the
//! batch size), one [`Responder::respond`] per datagram with its kernel receive timestamp, one
//! clock read to stamp every reply's transmit timestamp, then the replies go out. No
//! allocation, no lock, no wake-up per datagram; the counters are published once per batch.
//!
//! Two drivers use it: [`Worker`], a dedicated blocking thread per socket sending with
//! `sendmmsg` (`ntpkit serve`, and the daemon's optional serving threads), and the daemon's
//! event loop, which calls [`UdpServer::serve_ready`] when its non-blocking socket is readable
//! and sends one `sendmsg` per reply.

use crate::serve::{Counters, ServeConfig, Shared};
use crate::served_clock::ServedClock;
use ntpkit_core::{Policy, Responder, ResponderStats, Response};
use ntpkit_os::{RecvBatch, SendBatch, UdpSocket, UdpSocketOptions};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ntpkit_nts::{process_request, CookieKeyring, ServerOutcome};
use ntpkit_wire::HEADER_LEN;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Largest datagram read whole; longer ones are truncated by the kernel and counted malformed.
const DATAGRAM_BUF: usize = 2048;
/// `SO_SNDBUF` of serving sockets: room for several whole batches of replies.
const SEND_BUFFER: usize = 1 << 20;
/// How often an idle worker thread checks the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Binds `threads` sockets to `addr` (sharing it with `SO_REUSEPORT` when more than one; port 0
/// resolves to one port for all). `nonblocking` sockets suit an event loop, blocking ones a
/// [`Worker`].
pub fn bind(
    addr: SocketAddr,
    config: &ServeConfig,
    threads: usize,
    nonblocking: bool,
) -> io::Result<Vec<UdpSocket>> {
    let threads = threads.max(1);
    let opts = UdpSocketOptions {
        timestamps: true,
        recv_buffer: Some(config.recv_buffer),
        send_buffer: Some(SEND_BUFFER),
        read_timeout: (!nonblocking).then_some(STOP_POLL),
        reuse_port: threads > 1,
        nonblocking,
        ..Default::default()
    };
    let first = UdpSocket::bind(addr, &opts)?;
    let bound = first.local_addr();
    let mut socks = vec![first];
    for _ in 1..threads {
        socks.push(UdpSocket::bind(bound, &opts)?);
    }
    Ok(socks)
}

/// How replies leave.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SendMode {
    /// One `sendmmsg` per batch (serving threads).
    Batched,
    /// One `sendmsg` per reply (the event loop).
    EachAlone,
}

/// One socket's answering state and buffers.
#[derive(Debug)]
pub struct UdpServer {
    sock: UdpSocket,
    responder: Responder,
    published: ResponderStats,
    recv: RecvBatch,
    send: SendBatch,
    mode: SendMode,
    verbose: bool,
    /// Indices of the datagrams answered in this batch, kept only to log them (`-v`).
    replied: Vec<usize>,
    last_error: Option<io::ErrorKind>,
    nts: Option<NtsServing>,
}

/// What a UDP server needs to answer NTS requests.
#[derive(Debug)]
struct NtsServing {
    ring: Arc<CookieKeyring>,
    rng: ChaCha20Rng,
    shared: Arc<Shared>,
    /// The reply being sealed.
    scratch: Vec<u8>,
    /// Per queued reply of the batch: sealed already (its transmit timestamp is final).
    sealed: Vec<bool>,
    any_sealed: bool,
}

impl UdpServer {
    /// A server on `sock` with buffers for `batch` datagrams, answering as `policy` allows.
    pub fn new(
        sock: UdpSocket,
        batch: usize,
        mode: SendMode,
        policy: Policy,
        verbose: bool,
    ) -> Self {
        UdpServer {
            sock,
            responder: Responder::with_policy(policy),
            published: ResponderStats::default(),
            recv: RecvBatch::new(batch, DATAGRAM_BUF),
            send: SendBatch::new(batch, DATAGRAM_BUF),
            mode,
            verbose,
            replied: Vec::with_capacity(if verbose { batch } else { 0 }),
            last_error: None,
            nts: None,
        }
    }

    /// Answers NTS requests too: cookies open with `ring`; the cryptographic random source
    /// (fresh cookies) is seeded from the OS now.
    pub fn serve_nts(&mut self, ring: Arc<CookieKeyring>, shared: Arc<Shared>) -> io::Result<()> {
        let rng = ChaCha20Rng::try_from_os_rng().map_err(io::Error::other)?;
        self.nts = Some(NtsServing {
            ring,
            rng,
            shared,
            scratch: Vec::with_capacity(DATAGRAM_BUF),
            sealed: vec![false; self.send_capacity()],
            any_sealed: false,
        });
        Ok(())
    }

    fn send_capacity(&self) -> usize {
        self.recv.capacity()
    }

    /// The socket (to poll it).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr()
    }

    /// Receives one batch (blocking or not, as the socket is) and answers it with `clock`;
    /// returns how many datagrams came (0: nothing waiting, or a timeout). A receive error
    /// other than those is logged (once per kind in a row) and returned.
    pub fn serve_ready(
        &mut self,
        clock: &mut ServedClock,
        counters: &Counters,
    ) -> io::Result<usize> {
        let n = match self.sock.recv_batch(&mut self.recv) {
            Ok(n) => n,
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => Ok(0),
                    kind => {
                        if self.last_error != Some(kind) {
                            tracing::warn!("receive on {}: {e}", self.sock.local_addr());
                            self.last_error = Some(kind);
                        }
                        Err(e)
                    }
                };
            }
        };
        self.last_error = None;
        let truncated = self.answer(n, clock);
        if !self.send.is_empty() {
            // T3 as late as possible: one clock read for the batch, right before sending.
            let tx = clock.read_at(ntpkit_os::realtime_nanos()).to_ntp();
            match &self.nts {
                Some(n) if n.any_sealed => {
                    // NTS replies were stamped before sealing: leave them as they are.
                    let mut i = 0;
                    self.send.for_each_mut(|p| {
                        if !n.sealed[i] {
                            ntpkit_wire::stamp_transmit(p, tx);
                        }
                        i += 1;
                    });
                }
                _ => self
                    .send
                    .for_each_mut(|p| ntpkit_wire::stamp_transmit(p, tx)),
            }
            let queued = self.send.len();
            let result = match self.mode {
                SendMode::Batched => self.sock.send_batch(&mut self.send),
                SendMode::EachAlone => self.sock.send_batch_each(&mut self.send),
            };
            match result {
                Ok(sent) if sent < queued => tracing::debug!("sent {sent} of {queued} replies"),
                Ok(_) => {}
                Err(e) => tracing::debug!("send on {}: {e}", self.sock.local_addr()),
            }
            for &i in &self.replied {
                if let Some(src) = self.recv.source(i) {
                    tracing::info!("Sent NTP response to {src}");
                }
            }
        }
        counters.publish(self.responder.stats(), &mut self.published, truncated);
        Ok(n)
    }

    /// Answers the `n` datagrams of the receive batch into the send batch; returns how many
    /// were truncated (too long to be read whole), which count as malformed.
    fn answer(&mut self, n: usize, clock: &mut ServedClock) -> u64 {
        let mut truncated = 0;
        self.replied.clear();
        clock.refresh();
        let mut nts_unix = None;
        let (mut nts_replies, mut nts_naks, mut nts_dropped) = (0u64, 0u64, 0u64);
        if let Some(n) = &mut self.nts {
            if n.any_sealed {
                n.sealed.iter_mut().for_each(|s| *s = false);
                n.any_sealed = false;
            }
        }
        for i in 0..n {
            let d = self.recv.get(i);
            if self.verbose {
                if let Some(src) = self.recv.source(i) {
                    tracing::info!("Received NTP request from {src}");
                }
            }
            if d.truncated {
                truncated += 1;
                continue;
            }
            let Some(from) = self.recv.source(i) else {
                continue;
            };
            let now = clock.read_at(d.rx_nanos);
            let state = clock.state_at(now);
            let Some(buf) = self.send.next_buf() else {
                break; // the send batch is as large as the receive batch: not reached
            };
            // A reply buffer no longer than the request: the responder can never amplify.
            let room = d.data.len().min(buf.len());
            let response = self.responder.respond_from(
                d.data,
                from.ip(),
                d.rx_nanos,
                now,
                state,
                &mut buf[..room],
            );
            match (response, &mut self.nts) {
                (Response::Reply(HEADER_LEN), Some(n)) if d.data.len() > HEADER_LEN => {
                    // NTS: the transmit timestamp is final before the reply is sealed.
                    let tx = clock.read_at(ntpkit_os::realtime_nanos()).to_ntp();
                    ntpkit_wire::stamp_transmit(&mut buf[..HEADER_LEN], tx);
                    n.scratch.clear();
                    n.scratch.extend_from_slice(&buf[..HEADER_LEN]);
                    let unix = *nts_unix.get_or_insert_with(crate::nts_serve::unix_secs);
                    let outcome =
                        process_request(d.data, &n.ring, unix, &mut n.rng, &mut n.scratch);
                    let len = match outcome {
                        ServerOutcome::NotNts => HEADER_LEN,
                        ServerOutcome::Reply { len, .. } | ServerOutcome::Nak { len, .. } => {
                            if matches!(outcome, ServerOutcome::Reply { .. }) {
                                nts_replies += 1;
                            } else {
                                nts_naks += 1;
                            }
                            if len > buf.len() {
                                continue; // never: the reply is no longer than the request
                            }
                            buf[..len].copy_from_slice(&n.scratch[..len]);
                            n.sealed[self.send.len()] = true;
                            n.any_sealed = true;
                            len
                        }
                        ServerOutcome::Drop(why) => {
                            nts_dropped += 1;
                            self.responder.withdraw_reply();
                            if self.verbose {
                                tracing::info!(
                                    "Dropped NTS request from {:?}: {why}",
                                    self.recv.source(i)
                                );
                            }
                            continue;
                        }
                    };
                    self.send.commit_reply(len, &self.recv, i);
                    if self.verbose {
                        self.replied.push(i);
                    }
                }
                (Response::Reply(len) | Response::Kiss(len, _), _) => {
                    self.send.commit_reply(len, &self.recv, i);
                    if self.verbose {
                        self.replied.push(i);
                    }
                }
                (Response::Ignored(why), _) if self.verbose => {
                    tracing::info!("Ignored packet from {:?}: {why:?}", self.recv.source(i));
                }
                (Response::Malformed(e), _) if self.verbose => {
                    tracing::info!("Malformed packet from {:?}: {e}", self.recv.source(i));
                }
                (Response::Ignored(_) | Response::Malformed(_), _) => {}
            }
        }
        if let Some(n) = &self.nts {
            let c = &n.shared.nts;
            for (counter, v) in [
                (&c.replies, nts_replies),
                (&c.naks, nts_naks),
                (&c.dropped, nts_dropped),
            ] {
                if v != 0 {
                    counter.fetch_add(v, Ordering::Relaxed);
                }
            }
        }
        truncated
    }
}

/// A dedicated serving thread: one blocking socket, batches in and out with `sendmmsg`.
#[derive(Debug)]
pub struct Worker {
    server: UdpServer,
    clock: ServedClock,
    shared: Arc<Shared>,
}

impl Worker {
    /// A worker for a blocking `sock` (see [`bind`]), with buffers for `config.batch`
    /// datagrams, answering as `policy` allows.
    pub fn new(
        sock: UdpSocket,
        clock: ServedClock,
        shared: Arc<Shared>,
        cfg: &ServeConfig,
        policy: Policy,
    ) -> Self {
        Worker {
            server: UdpServer::new(sock, cfg.batch, SendMode::Batched, policy, cfg.verbose),
            clock,
            shared,
        }
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Answers NTS requests too, opening cookies with `ring`.
    pub fn serve_nts(&mut self, ring: Arc<CookieKeyring>) -> io::Result<()> {
        self.server.serve_nts(ring, self.shared.clone())
    }

    /// Serves until the shared stop flag is set.
    pub fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self
                .server
                .serve_ready(&mut self.clock, &self.shared.udp)
                .is_err()
            {
                // Do not spin on a persistent error.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
