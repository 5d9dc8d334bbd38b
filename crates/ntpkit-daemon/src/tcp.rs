//! The TCP server (ntpkit's framing, see [`crate::framing`]) on tokio: one task per connection,
//! requests answered in order.
//!
//! The receive timestamp of a request is the clock read right after the read that completed
//! its frame; the transmit timestamps of the replies to one read are stamped right before the
//! write. A frame of zero or too many bytes closes the connection and counts as malformed; so
//! does a connection idle longer than the idle timeout (closed, not counted).

use crate::framing::{self, FrameDecoder};
use crate::serve::{ServeConfig, Shared};
use crate::served_clock::ServedClock;
use ntpkit_core::{Responder, ResponderStats, Response};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Binds a listening socket (IPv6 sockets are v6-only, as for UDP).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_only_v6(true)?;
        s.set_nonblocking(true)?;
        TcpSocket::from_std_stream(s.into())
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Accepts connections until the runtime shuts down.
pub async fn serve(
    listener: TcpListener,
    clock: ServedClock,
    shared: Arc<Shared>,
    cfg: ServeConfig,
) {
    let slots = Arc::new(Semaphore::new(cfg.tcp_max_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("refusing connection from {peer}: too many connections");
            continue; // dropping the stream closes it
        };
        shared.tcp.connections.fetch_add(1, Ordering::Relaxed);
        let conn = Connection {
            clock: clock.clone(),
            shared: shared.clone(),
            decoder: FrameDecoder::new(cfg.tcp_max_frame),
            idle: cfg.tcp_idle_timeout,
            verbose: cfg.verbose,
            peer,
        };
        tokio::spawn(async move {
            if let Err(e) = conn.run(stream).await {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

struct Connection {
    clock: ServedClock,
    shared: Arc<Shared>,
    decoder: FrameDecoder,
    idle: std::time::Duration,
    verbose: bool,
    peer: SocketAddr,
}

impl Connection {
    async fn run(mut self, mut stream: TcpStream) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut responder = Responder::new();
        let mut published = ResponderStats::default();
        let mut inbuf: Vec<u8> = Vec::with_capacity(4096);
        let mut outbuf: Vec<u8> = Vec::with_capacity(4096);
        let mut stamps: Vec<usize> = Vec::new();
        let mut reply = [0u8; framing::DEFAULT_MAX_FRAME_LEN];
        loop {
            let read = tokio::time::timeout(self.idle, stream.read_buf(&mut inbuf)).await;
            let n = match read {
                Err(_) => {
                    tracing::debug!("closing idle connection from {}", self.peer);
                    return Ok(());
                }
                Ok(r) => r?,
            };
            if n == 0 {
                return Ok(());
            }
            let rx = self.clock.read_at(ntpkit_os::realtime_nanos());
            self.clock.refresh();
            let mut pos = 0;
            let mut framing_error = None;
            loop {
                match self.decoder.decode(&inbuf[pos..]) {
                    Ok(Some((request, used))) => {
                        pos += used;
                        if self.verbose {
                            tracing::info!("Received NTP request from {} (tcp)", self.peer);
                        }
                        let state = self.clock.state_at(rx);
                        let room = request.len().min(reply.len());
                        match responder.respond(request, rx, state, &mut reply[..room]) {
                            Response::Reply(len) => {
                                let at = framing::encode(&reply[..len], &mut outbuf)
                                    .expect("reply of 1..=1024 bytes");
                                stamps.push(at);
                            }
                            Response::Ignored(why) if self.verbose => {
                                tracing::info!("Ignored packet from {}: {why:?}", self.peer);
                            }
                            Response::Malformed(e) if self.verbose => {
                                tracing::info!("Malformed packet from {}: {e}", self.peer);
                            }
                            Response::Ignored(_) | Response::Malformed(_) => {}
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        framing_error = Some(e);
                        break;
                    }
                }
            }
            inbuf.drain(..pos);
            if !outbuf.is_empty() {
                let tx = self.clock.read_at(ntpkit_os::realtime_nanos()).to_ntp();
                for &at in &stamps {
                    ntpkit_wire::stamp_transmit(&mut outbuf[at..], tx);
                }
                stream.write_all(&outbuf).await?;
                if self.verbose {
                    for _ in &stamps {
                        tracing::info!("Sent NTP response to {} (tcp)", self.peer);
                    }
                }
                outbuf.clear();
                stamps.clear();
            }
            let extra = u64::from(framing_error.is_some());
            self.shared
                .tcp
                .publish(responder.stats(), &mut published, extra);
            if let Some(e) = framing_error {
                tracing::debug!("closing connection from {}: {e}", self.peer);
                return Ok(());
            }
        }
    }
}
