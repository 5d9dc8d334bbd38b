//! `ntpkit daemon`: the tokio driver of the core's [`SyncSystem`] over real sockets.
//!
//! One task owns the [`SyncSystem`] and the [`ClockBackend`] and runs the core's call contract:
//! replies in (from one receive thread per source, with kernel receive timestamps), deadlines
//! in, then requests, clock commands and events out. The server side is `ntpkit serve`'s UDP
//! workers and TCP tasks, reading the disciplined clock and the served state (stratum, refid,
//! root delay and dispersion, leap) through a [`SharedClock`] updated after every input.
//!
//! Layout: [`config`] (TOML), [`clock`] (system / observe / virtual backends), [`drift`] (the
//! drift file), [`control`] (the status socket).

pub mod clock;
pub mod config;
pub mod control;
pub mod drift;

use crate::serve::{ServeConfig, Shared};
use crate::served_clock::{ServedClock, SharedClock};
use clock::{ClockBackend, ClockError};
use config::DaemonConfig;
use ntpkit_core::sync::{SourceId, SyncSystem};
use ntpkit_core::MonoTime;
use ntpkit_os::{monotonic_nanos, realtime_nanos, UdpSocket, UdpSocketOptions};
use rand_core::{SeedableRng, TryRngCore};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the drift file is rewritten while running.
const DRIFT_SAVE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often a source's receive thread checks the stop flag.
const RECV_POLL: Duration = Duration::from_millis(250);

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The clock backend cannot run.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A server address did not resolve.
    #[error("cannot resolve server {address:?}: {message}; check the name or give an IP address")]
    Resolve {
        /// As configured.
        address: String,
        /// Why.
        message: String,
    },
    /// The drift file is unreadable or cannot be written.
    #[error("drift file: {0}")]
    Drift(std::io::Error),
    /// A listening or client socket failed.
    #[error("{0}")]
    Socket(String),
    /// Runtime, signals.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Input to the sync task.
enum Input {
    Reply {
        source: SourceId,
        bytes: Vec<u8>,
        mono: i64,
        os_rx: i64,
    },
    Status(oneshot::Sender<Vec<u8>>),
}

struct Client {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: DaemonConfig) -> Result<(), DaemonError> {
    let precision = ntpkit_os::clock_precision_log2();
    let drift = match &config.drift_file {
        Some(p) => drift::read(p).map_err(DaemonError::Drift)?,
        None => None,
    };
    let mut clock = ClockBackend::new(&config.clock, realtime_nanos())?;
    let mono = || MonoTime(monotonic_nanos());
    let mut system = SyncSystem::new(
        config.system_config(precision, drift),
        mono(),
        clock.read_at(realtime_nanos()),
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(os_seed());
    let stop = Arc::new(Shared::default());
    let (input_tx, mut input_rx) = mpsc::channel::<Input>(4096);

    // Upstream sources: one socket and receive thread each.
    let mut clients: HashMap<SourceId, Client> = HashMap::new();
    for (address, cfg) in upstreams(&config)? {
        let id = system.add_source(address.ip(), cfg, mono(), &mut rng);
        let bind: SocketAddr = if address.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let opts = UdpSocketOptions {
            timestamps: true,
            read_timeout: Some(RECV_POLL),
            ..Default::default()
        };
        let socket = Arc::new(UdpSocket::bind(bind, &opts).map_err(|e| {
            DaemonError::Socket(format!("cannot open a client socket for {address}: {e}"))
        })?);
        spawn_receiver(id, address, socket.clone(), input_tx.clone(), stop.clone());
        tracing::info!(
            "source {address}: minpoll {} maxpoll {} iburst {}",
            cfg.minpoll,
            cfg.maxpoll,
            cfg.iburst
        );
        clients.insert(
            id,
            Client {
                socket,
                server: address,
            },
        );
    }

    // Downstream: serve the disciplined clock.
    let shared_clock = Arc::new(SharedClock::new(
        clock.served_view(),
        system.served_state(mono()),
    ));
    let serve_cfg = ServeConfig {
        udp: config.listen.clone(),
        udp_is_default: false,
        tcp: config.tcp.clone(),
        precision: Some(precision),
        ..ServeConfig::default()
    };
    let mut workers = Vec::new();
    for addr in &config.listen {
        let socks = crate::udp::bind(*addr, &serve_cfg).map_err(|e| {
            DaemonError::Socket(
                crate::serve::ServeError::Bind {
                    addr: *addr,
                    transport: crate::serve::Transport::Udp,
                    source: e,
                }
                .to_string(),
            )
        })?;
        for sock in socks {
            tracing::info!("NTP server listening on {} (udp)", sock.local_addr());
            let worker = crate::udp::Worker::new(
                sock,
                ServedClock::shared(shared_clock.clone()),
                stop.clone(),
                &serve_cfg,
            );
            workers.push(std::thread::spawn(move || worker.run()));
        }
    }
    for addr in &config.tcp {
        let listener = crate::tcp::bind(*addr).await.map_err(|e| {
            DaemonError::Socket(
                crate::serve::ServeError::Bind {
                    addr: *addr,
                    transport: crate::serve::Transport::Tcp,
                    source: e,
                }
                .to_string(),
            )
        })?;
        tracing::info!("NTP server listening on {} (tcp)", listener.local_addr()?);
        tokio::spawn(crate::tcp::serve(
            listener,
            ServedClock::shared(shared_clock.clone()),
            stop.clone(),
            serve_cfg.clone(),
        ));
    }
    let _control_guard = match &config.control_socket {
        Some(path) => Some(spawn_control(path.clone(), input_tx.clone())?),
        None => None,
    };

    let mut signals = Signals::new()?;
    let mut wander_tick = tokio::time::interval(Duration::from_secs(1));
    let mut drift_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + DRIFT_SAVE_INTERVAL,
        DRIFT_SAVE_INTERVAL,
    );
    let mut buf = [0u8; 64];
    loop {
        // Outputs of the core, in contract order.
        let now = mono();
        while let Some(tx) =
            system.poll_transmit(now, clock.read_at(realtime_nanos()), &mut rng, &mut buf)
        {
            if let Some(c) = clients.get(&tx.source) {
                if let Err(e) = c.socket.send_to(&buf[..tx.len], c.server) {
                    tracing::debug!("send to {}: {e}", c.server);
                }
            }
        }
        while let Some(cmd) = system.poll_clock_command() {
            tracing::debug!("clock command {cmd:?}");
            clock.apply(realtime_nanos(), cmd)?;
        }
        while let Some(event) = system.poll_event() {
            tracing::info!("{event}");
        }
        shared_clock.update(clock.served_view(), system.served_state(mono()));

        let core_wait = system
            .poll_timeout()
            .map_or(1_000_000_000, |d| d.nanos_since(mono()));
        // The system clock backend times the end of its slews itself.
        let clock_wait = clock
            .poll_timeout()
            .map_or(i64::MAX, |at| at - realtime_nanos());
        let deadline =
            Duration::from_nanos(core_wait.min(clock_wait).clamp(0, 3_600_000_000_000) as u64);
        tokio::select! {
            _ = tokio::time::sleep(deadline) => {
                clock.handle_timeout(realtime_nanos())?;
                system.handle_timeout(mono(), clock.read_at(realtime_nanos()));
            }
            Some(input) = input_rx.recv() => match input {
                Input::Reply { source, bytes, mono: at, os_rx } => {
                    system.handle_reply(MonoTime(at), clock.read_at(os_rx), source, &bytes);
                }
                Input::Status(reply) => {
                    let os = realtime_nanos();
                    let status = control::DaemonStatus::new(
                        system.status(mono()),
                        clock.report(os),
                        serde_json::json!({
                            "udp": counters_json(&stop.udp),
                            "tcp": counters_json(&stop.tcp),
                        }),
                    );
                    let _ = reply.send(serde_json::to_vec_pretty(&status).expect("serializes"));
                }
            },
            _ = wander_tick.tick() => clock.wander(realtime_nanos()),
            _ = drift_tick.tick() => save_drift(&config.drift_file, system.frequency_ppm(mono())),
            _ = signals.recv() => break,
        }
    }
    tracing::info!("stopping");
    save_drift(&config.drift_file, system.frequency_ppm(mono()));
    stop.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if let Some(path) = &config.control_socket {
        let _ = std::fs::remove_file(path);
    }
    eprint!("{}", stop.report());
    Ok(())
}

/// A seed from the OS random source (the daemon's own RNG then runs from it).
pub(crate) fn os_seed() -> u64 {
    rand_core::OsRng.try_next_u64().unwrap_or_else(|_| {
        // No OS randomness (very early boot): the clocks are a weak seed; say so.
        tracing::warn!("OS random source unavailable; seeding from the clock");
        (realtime_nanos() ^ monotonic_nanos().rotate_left(32)) as u64
    })
}

fn counters_json(c: &crate::serve::Counters) -> serde_json::Value {
    let v = c.snapshot();
    serde_json::json!({ "answered": v.answered, "ignored": v.ignored, "malformed": v.malformed })
}

fn save_drift(path: &Option<PathBuf>, ppm: f64) {
    if let Some(p) = path {
        match drift::write(p, ppm) {
            Ok(()) => tracing::debug!("drift file {} = {ppm:.3} ppm", p.display()),
            Err(e) => tracing::warn!("cannot write drift file {}: {e}", p.display()),
        }
    }
}

/// Resolves every `[[server]]` (first address) and `[[pool]]` (up to max-sources addresses).
fn upstreams(
    config: &DaemonConfig,
) -> Result<Vec<(SocketAddr, ntpkit_core::SourceConfig)>, DaemonError> {
    let mut out = Vec::new();
    for s in &config.server {
        let addr = resolve(&s.address)?
            .into_iter()
            .next()
            .ok_or_else(|| DaemonError::Resolve {
                address: s.address.clone(),
                message: "no address".into(),
            })?;
        out.push((addr, s.source_config()));
    }
    for p in &config.pool {
        let mut addrs = resolve(&p.name)?;
        addrs.dedup();
        for addr in addrs.into_iter().take(p.max_sources) {
            if !out.iter().any(|(a, _)| *a == addr) {
                out.push((addr, p.source_config()));
            }
        }
    }
    Ok(out)
}

fn resolve(address: &str) -> Result<Vec<SocketAddr>, DaemonError> {
    let with_port = if address.parse::<SocketAddr>().is_ok() || has_port(address) {
        address.to_string()
    } else if address.contains(':') {
        format!("[{address}]:123")
    } else {
        format!("{address}:123")
    };
    with_port
        .to_socket_addrs()
        .map(|a| a.collect())
        .map_err(|e| DaemonError::Resolve {
            address: address.to_string(),
            message: e.to_string(),
        })
}

fn has_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

/// One blocking thread per source: kernel receive timestamps, replies only from the server's
/// address, forwarded to the sync task.
fn spawn_receiver(
    id: SourceId,
    server: SocketAddr,
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<Input>,
    shared: Arc<Shared>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !shared.stop.load(Ordering::Relaxed) {
            match socket.recv_from(&mut buf) {
                Ok((n, from, os_rx)) => {
                    let mono = monotonic_nanos() - (realtime_nanos() - os_rx).max(0);
                    if from != server {
                        continue;
                    }
                    let input = Input::Reply {
                        source: id,
                        bytes: buf[..n].to_vec(),
                        mono,
                        os_rx,
                    };
                    if tx.blocking_send(input).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP port unreachable and the like: the source stays unreachable.
                    tracing::debug!("receive from {server}: {e}");
                    std::thread::sleep(RECV_POLL);
                }
            }
        }
    });
}

/// Removes the control socket file when dropped.
struct ControlGuard(PathBuf);

impl Drop for ControlGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spawn_control(path: PathBuf, tx: mpsc::Sender<Input>) -> Result<ControlGuard, DaemonError> {
    if path.exists() {
        // A live daemon on it answers; a stale file from a crash is removed.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(DaemonError::Socket(format!(
                "control socket {} is in use by a running daemon; stop it or choose another control-socket",
                path.display()
            )));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
        DaemonError::Socket(format!(
            "cannot create control socket {}: {e}",
            path.display()
        ))
    })?;
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read);
                let read_line = reader.read_line(&mut line);
                if tokio::time::timeout(Duration::from_secs(2), read_line)
                    .await
                    .is_err()
                {
                    return;
                }
                if line.trim() != "status" {
                    let _ = write
                        .write_all(b"{\"error\":\"unknown request; send `status`\"}\n")
                        .await;
                    return;
                }
                let (reply_tx, reply_rx) = oneshot::channel();
                if tx.send(Input::Status(reply_tx)).await.is_ok() {
                    if let Ok(body) = reply_rx.await {
                        let _ = write.write_all(&body).await;
                    }
                }
            });
        }
    });
    Ok(ControlGuard(path))
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_port_123_by_default() {
        assert_eq!(
            resolve("127.0.0.1").unwrap()[0],
            "127.0.0.1:123".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:1123").unwrap()[0],
            "127.0.0.1:1123".parse().unwrap()
        );
        assert_eq!(resolve("::1").unwrap()[0], "[::1]:123".parse().unwrap());
        assert_eq!(
            resolve("[::1]:1123").unwrap()[0],
            "[::1]:1123".parse().unwrap()
        );
        assert!(resolve("localhost")
            .unwrap()
            .iter()
            .all(|a| a.port() == 123));
    }
}
