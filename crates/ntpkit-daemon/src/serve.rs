//! `ntpkit serve`: answer NTP clients with this host's clock, over UDP and ntpkit's TCP framing.
//!
//! Layout: one dedicated blocking OS thread per UDP socket ([`crate::udp`]: `recvmmsg` →
//! [`Responder`] → `sendmmsg`, kernel receive timestamps, no allocation per datagram); the main
//! thread runs an event loop (`poll`) over the TCP listeners and connections
//! ([`crate::tcp`]) and a wake-up descriptor for signals. SIGINT and SIGTERM stop the server
//! and print the counters; SIGUSR1 prints them and goes on; SIGHUP reloads the NTS certificate
//! and key when NTS is served ([`crate::nts_serve`]), and is only logged otherwise. Under a service manager it sends `READY=1` once every socket is bound and its
//! threads run, `STOPPING=1` on the way out, and watchdog pings if asked ([`crate::notify`]).
//! With `--metrics`, one more thread serves the counters to Prometheus ([`crate::metrics`]).
//!
//! [`Responder`]: ntpkit_core::Responder

use crate::served_clock::ServedClock;
use crate::tcp::{TcpLimits, TcpServer};
use ntpkit_os::{Interest, PollSet, Signal, Waker};
use ntpkit_wire::RefId;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Stratum served by default for the local clock, as chrony's `local` directive (and ntpd's
/// conventional `fudge 127.127.1.0 stratum 10`): an undisciplined local clock must never
/// outrank a real time source in a client's selection.
pub const DEFAULT_STRATUM: u8 = 10;

/// `SO_RCVBUF` of serving UDP sockets unless configured, bytes. The kernel doubles it and
/// each queued request costs about 830 bytes of it, so about 157 requests wait at most: half a
/// millisecond at the 300,000 requests/s one core serves. Under overload, what does not fit is
/// dropped at once instead of answered tens of milliseconds late (a 4 MiB buffer held 30 ms of
/// requests); below overload the queue stays far shorter than this.
pub const DEFAULT_UDP_RECV_BUFFER: u32 = 64 << 10;

/// What `ntpkit serve` is asked to do.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// UDP addresses to listen on.
    pub udp: Vec<SocketAddr>,
    /// Whether `udp` is the built-in default (`0.0.0.0:123` and `[::]:123`): then a host
    /// without IPv6 only gets a warning.
    pub udp_is_default: bool,
    /// TCP addresses to listen on (ntpkit's framing).
    pub tcp: Vec<SocketAddr>,
    /// Stratum to advertise, 1–15.
    pub stratum: u8,
    /// Reference ID to advertise.
    pub refid: RefId,
    /// Precision to advertise (log2 s); measured from the clock when None.
    pub precision: Option<i8>,
    /// Sockets (threads) per UDP address, sharing it with `SO_REUSEPORT`.
    pub udp_threads: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg`.
    pub batch: usize,
    /// `SO_RCVBUF` for UDP sockets, bytes.
    pub recv_buffer: usize,
    /// Limits of the TCP listeners: connections in all and per address, timeouts.
    pub tcp_limits: TcpLimits,
    /// Who is served (empty: everybody).
    pub access: ntpkit_core::AccessList,
    /// Per-client rate limits (None: off).
    pub rate_limit: Option<ntpkit_core::RateLimit>,
    /// Address of the Prometheus metrics endpoint (None: none).
    pub metrics: Option<SocketAddr>,
    /// Log every request and response.
    pub verbose: bool,
    /// User to run as once the sockets are bound.
    pub user: Option<String>,
    /// Install the system-call filter once started.
    pub seccomp: bool,
    /// NTS: key exchange and authenticated replies (None: plain NTP only).
    pub nts: Option<crate::nts_serve::NtsServeConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            udp: vec![
                "0.0.0.0:123".parse().expect("literal"),
                "[::]:123".parse().expect("literal"),
            ],
            udp_is_default: true,
            tcp: Vec::new(),
            stratum: DEFAULT_STRATUM,
            refid: RefId::LOCL,
            precision: None,
            udp_threads: 1,
            batch: 64,
            recv_buffer: DEFAULT_UDP_RECV_BUFFER as usize,
            tcp_limits: TcpLimits::default(),
            access: ntpkit_core::AccessList::default(),
            rate_limit: Some(ntpkit_core::RateLimit::default()),
            metrics: None,
            verbose: false,
            user: None,
            seccomp: true,
            nts: None,
        }
    }
}

impl ServeConfig {
    /// A fresh policy for one responder: the access rules, and its own rate-limit table keyed
    /// from the OS random source (each serving thread keeps its own table).
    pub fn policy(&self) -> ntpkit_core::Policy {
        ntpkit_core::Policy {
            access: self.access.clone(),
            rate: self.rate_limit.map(|r| {
                let key = [crate::daemon::os_seed(), crate::daemon::os_seed()];
                ntpkit_core::RateLimiter::new(r, key)
            }),
        }
    }
}

/// Transport of a listener, as error messages and the counters name it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// UDP (RFC 5905).
    Udp,
    /// ntpkit's TCP framing.
    Tcp,
    /// NTS key establishment (TLS over TCP).
    NtsKe,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::NtsKe => "nts-ke",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Transport::Udp => "--listen",
            Transport::Tcp => "--tcp",
            Transport::NtsKe => "--nts-ke",
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// A listening socket could not be bound; the message says why and what to do.
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Its transport.
        transport: Transport,
        /// The OS error.
        source: io::Error,
    },
    /// The metrics endpoint could not be bound; the message says why and what to do.
    Metrics(String),
    /// Any other OS failure (thread or runtime creation, signal handlers).
    Io(io::Error),
    /// Switching user, dropping capabilities or installing the system-call filter failed; the
    /// message says why and what to do.
    Privileges(String),
    /// The NTS certificate, key or master secret could not be used; the message says why and
    /// what to do.
    Nts(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Bind {
                addr,
                transport,
                source,
            } => {
                let flag = transport.flag();
                let port = addr.port();
                let alt = SocketAddr::new(addr.ip(), if port == 1123 { 11123 } else { 1123 });
                write!(f, "cannot listen on {addr} ({}): ", transport.name())?;
                match source.raw_os_error() {
                    Some(EACCES) => write!(
                        f,
                        "permission denied (port {port} needs root or CAP_NET_BIND_SERVICE); \
                         use an unprivileged port, e.g. {flag} {alt}"
                    ),
                    Some(EADDRINUSE) => write!(
                        f,
                        "address already in use (another NTP server, e.g. chronyd, ntpd or \
                         systemd-timesyncd, or another ntpkit?); stop it or use another port, \
                         e.g. {flag} {alt}"
                    ),
                    Some(EADDRNOTAVAIL) => write!(
                        f,
                        "address not available (no interface of this host has {}); use one of \
                         this host's addresses, e.g. {flag} {}",
                        addr.ip(),
                        if addr.is_ipv4() {
                            format!("0.0.0.0:{port}")
                        } else {
                            format!("[::]:{port}")
                        }
                    ),
                    Some(EAFNOSUPPORT) => write!(
                        f,
                        "IPv6 is not available on this host; listen on IPv4 only, e.g. \
                         {flag} 0.0.0.0:{port}"
                    ),
                    _ => write!(f, "{source}"),
                }
            }
            ServeError::Metrics(e) => write!(f, "{e}"),
            ServeError::Io(e) => write!(f, "{e}"),
            ServeError::Privileges(e) => write!(f, "{e}"),
            ServeError::Nts(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {}

// errno values (Linux), kept here so that this crate needs no libc.
const EACCES: i32 = 13;
const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;
const EAFNOSUPPORT: i32 = 97;

/// Counters of one transport, shared between its workers and the reporter.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered.
    pub answered: AtomicU64,
    /// Well-formed packets not answered (not client mode).
    pub ignored: AtomicU64,
    /// Datagrams or frames that are not NTP packets (including oversize and bad framing).
    pub malformed: AtomicU64,
    /// Requests refused by the access rules (dropped, or answered with DENY / RSTR).
    pub denied: AtomicU64,
    /// Requests over their client's rate (dropped, or answered with RATE).
    pub limited: AtomicU64,
    /// Kisses-o'-death sent.
    pub kissed: AtomicU64,
    /// TCP connections accepted (0 for UDP).
    pub connections: AtomicU64,
    /// TCP connections open now (0 for UDP).
    pub open: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CounterValues {
    /// Requests answered.
    pub answered: u64,
    /// Well-formed packets not answered.
    pub ignored: u64,
    /// Not NTP packets.
    pub malformed: u64,
    /// Refused by the access rules.
    pub denied: u64,
    /// Over their client's rate.
    pub limited: u64,
    /// Kisses-o'-death sent.
    pub kissed: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// TCP connections open.
    pub open: u64,
}

impl Counters {
    /// Reads all counters.
    pub fn snapshot(&self) -> CounterValues {
        CounterValues {
            answered: self.answered.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            limited: self.limited.load(Ordering::Relaxed),
            kissed: self.kissed.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }

    /// Adds the change of a responder's counters since `last`, and remembers them.
    pub(crate) fn publish(
        &self,
        now: ntpkit_core::ResponderStats,
        last: &mut ntpkit_core::ResponderStats,
        extra_malformed: u64,
    ) {
        let add = |c: &AtomicU64, d: u64| {
            if d != 0 {
                c.fetch_add(d, Ordering::Relaxed);
            }
        };
        add(&self.answered, now.answered - last.answered);
        add(&self.ignored, now.ignored - last.ignored);
        add(
            &self.malformed,
            now.malformed - last.malformed + extra_malformed,
        );
        add(&self.denied, now.denied - last.denied);
        add(&self.limited, now.limited - last.limited);
        add(&self.kissed, now.kissed - last.kissed);
        *last = now;
    }
}

/// Everything the workers share: counters per transport and the stop flag.
#[derive(Debug, Default)]
pub struct Shared {
    /// UDP counters.
    pub udp: Counters,
    /// TCP counters.
    pub tcp: Counters,
    /// Set once to stop every worker.
    pub stop: AtomicBool,
    /// NTS counters.
    pub nts: crate::nts_serve::NtsCounters,
    /// Whether NTS is served (its counters are reported).
    pub nts_on: AtomicBool,
    /// Set to have the NTS-KE server load its certificate and key again (SIGHUP).
    pub nts_reload: AtomicBool,
}

impl Shared {
    /// The counters in the form `ntpkit serve` prints (first line: totals, for scripts).
    pub fn report(&self) -> String {
        let u = self.udp.snapshot();
        let t = self.tcp.snapshot();
        let mut nts = String::new();
        if self.nts_on.load(Ordering::Relaxed) {
            let n = self.nts.snapshot();
            nts = format!(
                "served nts: ke_served={} ke_failed={} replies={} naks={} dropped={} \
                 ke_denied={} ke_limited={}\n",
                n.ke_served, n.ke_failed, n.replies, n.naks, n.dropped, n.ke_denied, n.ke_limited,
            );
        }
        format!(
            "served: answered={} ignored={} malformed={} denied={} limited={} kissed={}\n\
             served udp: answered={} ignored={} malformed={} denied={} limited={} kissed={}\n\
             served tcp: answered={} ignored={} malformed={} denied={} limited={} kissed={} \
             connections={}\n{}",
            u.answered + t.answered,
            u.ignored + t.ignored,
            u.malformed + t.malformed,
            u.denied + t.denied,
            u.limited + t.limited,
            u.kissed + t.kissed,
            u.answered,
            u.ignored,
            u.malformed,
            u.denied,
            u.limited,
            u.kissed,
            t.answered,
            t.ignored,
            t.malformed,
            t.denied,
            t.limited,
            t.kissed,
            t.connections,
            nts,
        )
    }
}

/// Runs the server until SIGINT or SIGTERM. Prints "NTP server listening on ADDR (udp|tcp)"
/// per socket at start (with the port the kernel chose for port 0) and the counters at exit.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let precision = config
        .precision
        .unwrap_or_else(ntpkit_os::clock_precision_log2);
    let shared = Arc::new(Shared::default());
    let mut clock = ServedClock::local(config.stratum, config.refid, precision);

    let mut udp_sockets = Vec::new();
    for &addr in &config.udp {
        match crate::udp::bind(addr, &config, config.udp_threads, false) {
            Ok(socks) => udp_sockets.push(socks),
            Err(e) => {
                let unavailable_v6 = addr.is_ipv6()
                    && matches!(e.raw_os_error(), Some(EAFNOSUPPORT | EADDRNOTAVAIL));
                if config.udp_is_default && unavailable_v6 {
                    tracing::warn!("IPv6 unavailable, not listening on {addr}: {e}");
                    continue;
                }
                return Err(ServeError::Bind {
                    addr,
                    transport: Transport::Udp,
                    source: e,
                });
            }
        }
    }
    let mut tcp = bind_tcp(
        &config.tcp,
        config.tcp_limits,
        config.policy(),
        config.verbose,
    )?;
    let nts = match &config.nts {
        Some(n) => {
            // Clients use port 123 unless told otherwise: announce the first UDP port if not 123.
            let ntp_port = udp_sockets.first().map(|s| s[0].local_addr().port());
            Some(crate::nts_serve::prepare(n, config.policy(), ntp_port)?)
        }
        None => None,
    };
    let metrics = match config.metrics {
        Some(addr) => Some(
            crate::metrics::Endpoint::bind(addr, |a| format!("--metrics {a}"))
                .map_err(ServeError::Metrics)?,
        ),
        None => None,
    };

    // What the server announces once it is ready: collected now, while the sockets are at hand,
    // and printed only after the signal handlers are installed and the workers run, so that a
    // supervisor reacting to "Waiting for NTP requests" can already signal the process.
    let mut listening = Vec::new();
    for socks in &udp_sockets {
        listening.push(format!("{} (udp)", socks[0].local_addr()));
    }
    for a in tcp.iter().flat_map(|t| t.local_addrs()) {
        listening.push(format!("{a} (tcp)"));
    }
    let mut announce: Vec<String> = listening
        .iter()
        .map(|l| format!("NTP server listening on {l}"))
        .collect();
    if let Some(n) = &nts {
        for a in n.listener.local_addrs() {
            announce.push(format!("NTS-KE server listening on {a} (tcp)"));
        }
        if n.master_created {
            if let Some(c) = &config.nts {
                announce.push(format!(
                    "Created NTS master secret {} (32 random bytes, mode 0600)",
                    c.master.display()
                ));
            }
        }
    }
    if let Some(m) = &metrics {
        announce.push(format!("Metrics on http://{}/metrics", m.local_addr()));
    }
    announce.push(format!(
        "Serving the local clock: stratum {}, reference ID {}, precision 2^{} s",
        config.stratum,
        crate::query::refid_text(config.refid, config.stratum),
        precision
    ));
    announce.push("Waiting for NTP requests... (Press Ctrl+C to stop)".to_string());
    if let Ok(k) = ntpkit_os::kernel_clock_status() {
        if !k.synchronized {
            tracing::warn!(
                "the kernel reports the system clock as unsynchronized (max error {} ms); \
                 serving it anyway",
                k.max_error_us / 1000
            );
        }
    }

    let waker = Waker::new().map_err(ServeError::Io)?;
    ntpkit_os::handle_signals(
        &[
            Signal::Interrupt,
            Signal::Terminate,
            Signal::Hangup,
            Signal::User1,
        ],
        &waker,
    )
    .map_err(ServeError::Io)?;

    // Nothing privileged is left to do: serving needs no capability at all.
    crate::confine::drop_privileges(config.user.as_deref(), &[], &[])
        .map_err(ServeError::Privileges)?;
    crate::confine::install_seccomp(config.seccomp).map_err(ServeError::Privileges)?;
    let mut threads = Vec::new();
    for socks in udp_sockets {
        for sock in socks {
            let mut worker = crate::udp::Worker::new(
                sock,
                clock.clone(),
                shared.clone(),
                &config,
                config.policy(),
            );
            if let Some(n) = &nts {
                worker.serve_nts(n.ring.clone()).map_err(ServeError::Io)?;
            }
            let name = format!("udp {}", worker.local_addr());
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker.run())
                .map_err(ServeError::Io)?;
            threads.push(h);
        }
    }

    if let Some(n) = nts {
        threads.push(n.listener.spawn(shared.clone()).map_err(ServeError::Io)?);
    }
    if let Some(m) = metrics {
        m.spawn(shared.clone()).map_err(ServeError::Io)?;
    }
    let mut out = io::stdout().lock();
    for line in &announce {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    drop(out);
    crate::notify::ready(&format!(
        "serving the local clock at stratum {} on {}",
        config.stratum,
        listening.join(", ")
    ));
    let mut watchdog = crate::notify::Watchdog::from_env(ntpkit_os::monotonic_nanos());

    // The event loop: signals, watchdog pings, and the TCP listeners and connections.
    let mut set = PollSet::new();
    'serve: loop {
        set.clear();
        let wake = set.push(waker.as_raw_fd(), Interest::Read);
        if let Some(t) = &mut tcp {
            t.register(&mut set);
        }
        let deadline = [
            tcp.as_ref().and_then(|t| t.next_deadline()),
            watchdog.as_ref().map(|w| w.deadline()),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = deadline
            .map(|at| Duration::from_nanos((at - ntpkit_os::monotonic_nanos()).max(0) as u64));
        set.wait(timeout).map_err(ServeError::Io)?;
        // Cleared before signals are taken, so that a signal arriving in between is not lost.
        if set.readable(wake) {
            waker.drain();
        }
        for signal in ntpkit_os::take_signals() {
            match signal {
                Signal::Interrupt | Signal::Terminate => break 'serve,
                Signal::User1 => print_report(&shared),
                Signal::Hangup if config.nts.is_some() => {
                    tracing::info!("SIGHUP: reloading the NTS certificate and key");
                    shared.nts_reload.store(true, Ordering::Relaxed);
                }
                Signal::Hangup => tracing::info!("SIGHUP: nothing to reload"),
            }
        }
        if let Some(t) = &mut tcp {
            let now = ntpkit_os::monotonic_nanos();
            t.handle_ready(&set, now, &mut clock, &shared.tcp);
            t.handle_timeout(ntpkit_os::monotonic_nanos(), &shared.tcp);
        }
        if let Some(w) = &mut watchdog {
            w.handle_timeout(ntpkit_os::monotonic_nanos());
        }
    }
    tracing::info!("stopping");
    crate::notify::stopping();
    shared.stop.store(true, Ordering::SeqCst);
    for h in threads {
        let _ = h.join();
    }
    print_report(&shared);
    Ok(())
}

/// Binds every TCP address into one server (None if there are none).
pub(crate) fn bind_tcp(
    addrs: &[SocketAddr],
    limits: TcpLimits,
    policy: ntpkit_core::Policy,
    verbose: bool,
) -> Result<Option<TcpServer>, ServeError> {
    if addrs.is_empty() {
        return Ok(None);
    }
    match ntpkit_os::raise_nofile_limit() {
        Ok(n) => tracing::debug!("open file limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
    let mut listeners = Vec::new();
    for &addr in addrs {
        let l = ntpkit_os::TcpListener::bind(addr, 1024).map_err(|source| ServeError::Bind {
            addr,
            transport: Transport::Tcp,
            source,
        })?;
        listeners.push(l);
    }
    Ok(Some(TcpServer::new(listeners, limits, policy, verbose)))
}

/// Prints the counters to stdout, as at exit.
pub(crate) fn print_report(shared: &Shared) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(shared.report().as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_messages_name_cause_and_fix() {
        let e = ServeError::Bind {
            addr: "0.0.0.0:123".parse().unwrap(),
            transport: Transport::Udp,
            source: io::Error::from_raw_os_error(EACCES),
        };
        assert_eq!(
            e.to_string(),
            "cannot listen on 0.0.0.0:123 (udp): permission denied (port 123 needs root or \
             CAP_NET_BIND_SERVICE); use an unprivileged port, e.g. --listen 0.0.0.0:1123"
        );
        let e = ServeError::Bind {
            addr: "[::1]:1123".parse().unwrap(),
            transport: Transport::Tcp,
            source: io::Error::from_raw_os_error(EADDRINUSE),
        };
        let s = e.to_string();
        assert!(
            s.contains("address already in use") && s.contains("--tcp [::1]:11123"),
            "{s}"
        );
        let e = ServeError::Bind {
            addr: "192.0.2.7:1123".parse().unwrap(),
            transport: Transport::Udp,
            source: io::Error::from_raw_os_error(EADDRNOTAVAIL),
        };
        assert!(e.to_string().contains("--listen 0.0.0.0:1123"));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn report_format() {
        let s = Shared::default();
        s.udp.answered.store(5, Ordering::Relaxed);
        s.tcp.answered.store(2, Ordering::Relaxed);
        s.tcp.malformed.store(1, Ordering::Relaxed);
        let r = s.report();
        assert_eq!(
            r.lines().next(),
            Some("served: answered=7 ignored=0 malformed=1 denied=0 limited=0 kissed=0")
        );
    }
}
