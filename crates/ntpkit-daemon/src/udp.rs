//! The UDP server: one blocking OS thread per socket, `recvmmsg` → respond → `sendmmsg`.
//!
//! Per batch: one `recvmmsg` (blocks for the first datagram, takes what else is queued), one
//! [`Responder::respond`] per datagram with its kernel receive timestamp, one clock read to
//! stamp every reply's transmit timestamp, one `sendmmsg`. No allocation, no lock, no wakeup
//! per datagram; the counters are published once per batch. A read timeout of a few hundred
//! milliseconds lets an idle thread notice the stop flag.

use crate::serve::{ServeConfig, Shared};
use crate::served_clock::ServedClock;
use ntpkit_core::{Responder, ResponderStats, Response};
use ntpkit_os::{RecvBatch, SendBatch, UdpSocket, UdpSocketOptions};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Largest datagram read whole; longer ones are truncated by the kernel and counted malformed.
const DATAGRAM_BUF: usize = 2048;
/// How often an idle worker checks the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Binds `config.udp_threads` sockets to `addr` (sharing it with `SO_REUSEPORT` when more than
/// one; port 0 resolves to one port for all).
pub fn bind(addr: SocketAddr, config: &ServeConfig) -> io::Result<Vec<UdpSocket>> {
    let threads = config.udp_threads.max(1);
    let opts = UdpSocketOptions {
        timestamps: true,
        recv_buffer: Some(config.recv_buffer),
        send_buffer: Some(config.recv_buffer),
        read_timeout: Some(STOP_POLL),
        reuse_port: threads > 1,
    };
    let first = UdpSocket::bind(addr, &opts)?;
    let bound = first.local_addr();
    let mut socks = vec![first];
    for _ in 1..threads {
        socks.push(UdpSocket::bind(bound, &opts)?);
    }
    Ok(socks)
}

/// One socket's server loop and its buffers.
#[derive(Debug)]
pub struct Worker {
    sock: UdpSocket,
    clock: ServedClock,
    shared: Arc<Shared>,
    responder: Responder,
    recv: RecvBatch,
    send: SendBatch,
    verbose: bool,
    /// Indices of the datagrams answered in this batch, kept only to log them (`-v`).
    replied: Vec<usize>,
}

impl Worker {
    /// A worker for `sock`, with buffers for `config.batch` datagrams.
    pub fn new(
        sock: UdpSocket,
        clock: ServedClock,
        shared: Arc<Shared>,
        cfg: &ServeConfig,
    ) -> Self {
        Worker {
            sock,
            clock,
            shared,
            responder: Responder::new(),
            recv: RecvBatch::new(cfg.batch, DATAGRAM_BUF),
            send: SendBatch::new(cfg.batch, DATAGRAM_BUF),
            verbose: cfg.verbose,
            replied: Vec::with_capacity(if cfg.verbose { cfg.batch } else { 0 }),
        }
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr()
    }

    /// Serves until the shared stop flag is set.
    pub fn run(mut self) {
        let mut published = ResponderStats::default();
        let mut last_error: Option<io::ErrorKind> = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let n = match self.sock.recv_batch(&mut self.recv) {
                Ok(n) => n,
                Err(e) => {
                    match e.kind() {
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted => {}
                        kind => {
                            if last_error != Some(kind) {
                                tracing::warn!("receive on {}: {e}", self.sock.local_addr());
                                last_error = Some(kind);
                            }
                            // Do not spin on a persistent error.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    continue;
                }
            };
            let truncated = self.answer(n);
            if !self.send.is_empty() {
                // T3 as late as possible: one clock read for the batch, right before sendmmsg.
                let tx = self.clock.read_at(ntpkit_os::realtime_nanos()).to_ntp();
                self.send
                    .for_each_mut(|p| ntpkit_wire::stamp_transmit(p, tx));
                let queued = self.send.len();
                match self.sock.send_batch(&mut self.send) {
                    Ok(sent) if sent < queued => {
                        tracing::debug!("sent {sent} of {queued} replies");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("send on {}: {e}", self.sock.local_addr()),
                }
                for &i in &self.replied {
                    if let Some(src) = self.recv.source(i) {
                        tracing::info!("Sent NTP response to {src}");
                    }
                }
            }
            self.shared
                .udp
                .publish(self.responder.stats(), &mut published, truncated);
        }
    }

    /// Answers the `n` datagrams of the receive batch into the send batch; returns how many
    /// were truncated (too long to be read whole), which count as malformed.
    fn answer(&mut self, n: usize) -> u64 {
        let mut truncated = 0;
        self.replied.clear();
        self.clock.refresh();
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
            let now = self.clock.read_at(d.rx_nanos);
            let state = self.clock.state_at(now);
            let Some(buf) = self.send.next_buf() else {
                break; // the send batch is as large as the receive batch: not reached
            };
            // A reply buffer no longer than the request: the responder can never amplify.
            let room = d.data.len().min(buf.len());
            match self.responder.respond(d.data, now, state, &mut buf[..room]) {
                Response::Reply(len) => {
                    self.send.commit_reply(len, &self.recv, i);
                    if self.verbose {
                        self.replied.push(i);
                    }
                }
                Response::Ignored(why) if self.verbose => {
                    tracing::info!("Ignored packet from {:?}: {why:?}", self.recv.source(i));
                }
                Response::Malformed(e) if self.verbose => {
                    tracing::info!("Malformed packet from {:?}: {e}", self.recv.source(i));
                }
                Response::Ignored(_) | Response::Malformed(_) => {}
            }
        }
        truncated
    }
}
