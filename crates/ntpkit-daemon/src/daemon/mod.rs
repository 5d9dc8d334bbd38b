//! `ntpkit daemon`: one event loop that drives the core's [`SyncSystem`] over real sockets.
//!
//! One thread does everything, as chronyd does: it waits in `poll` on every socket — the
//! sources', the NTP listeners (UDP and TCP), the control socket — and on a wake-up descriptor
//! (signals, name resolution), with the earliest deadline as the timeout (the core's next
//! request, the clock backend's end of a slew, a connection's timeout, a retry); then it feeds
//! what arrived and what fell due to the core and carries out what comes out, in the core's
//! call contract order: requests, clock commands, events. It reads the clock it disciplines
//! directly, so every reply carries the clock as it is at that instant.
//!
//! Only `poll`, plain socket calls and `clock_adjtime` are used, from that one thread, so the
//! unmodified binary also runs under clknetsim (which preloads those calls). Other threads run
//! only where configured: `serve-threads` (batched UDP serving, reading the clock through a
//! [`SharedClock`]), `metrics` (the Prometheus endpoint, which asks this loop for the state
//! through the wake-up descriptor), and short-lived resolver threads for names (never for IP
//! addresses).
//!
//! Signals: SIGTERM and SIGINT stop it (the drift file is saved); SIGHUP saves the drift file,
//! resolves source names again and reloads the NTS certificate and key; SIGUSR1 prints the
//! server counters.
//!
//! NTS (`[nts-ke-server]`) is set up as `ntpkit serve` sets it up ([`crate::nts_serve`]): the
//! key-exchange server runs on a thread of its own, and the UDP servers, in the loop or on
//! serving threads, answer NTS requests.
//!
//! Under a service manager ([`crate::notify`]): `READY=1` once every socket is bound and the
//! drift file read, `STATUS=` lines on selection changes, `STOPPING=1` on the way out, and
//! `WATCHDOG=1` pings as one more deadline of the loop, so a loop that hangs stops pinging.
//!
//! Layout: [`config`] (TOML), [`clock`] (system / observe / virtual backends), [`drift`] (the
//! drift file), [`control`] (the status socket), [`upstream`] (sources, names and pools).

pub mod bound;
pub mod clock;
pub mod config;
pub mod control;
pub mod drift;
pub mod nts;
pub mod upstream;

use crate::notify;
use crate::serve::{ServeConfig, Shared};
use crate::served_clock::{ServedClock, SharedClock};
use crate::tcp::TcpServer;
use crate::udp::{SendMode, UdpServer};
use bound::BoundPublisher;
use clock::{ClockBackend, ClockError};
use config::{ClockBackendKind, DaemonConfig};
use control::{ControlCommand, ControlServer, DaemonStatus, Request};
use ntpkit_core::sync::{Event, SyncSystem};
use ntpkit_core::MonoTime;
use ntpkit_os::privilege::Capability;
use ntpkit_os::{monotonic_nanos, realtime_nanos, Interest, PollSet, Signal, Waker};
use rand_chacha::ChaCha20Rng;
use rand_core::{SeedableRng, TryRngCore};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use upstream::Upstreams;

/// How often the drift file is rewritten while running.
const DRIFT_SAVE_INTERVAL: f64 = 3600.0;
/// How often a wandering virtual clock's frequency is advanced.
const WANDER_INTERVAL: f64 = 1.0;

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The clock backend cannot run.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The drift file is unreadable or cannot be written.
    #[error("drift file: {0}")]
    Drift(std::io::Error),
    /// A listening socket or the control socket failed.
    #[error("{0}")]
    Socket(String),
    /// Switching user, dropping capabilities or installing the system-call filter failed.
    #[error("{0}")]
    Privileges(String),
    /// The NTS certificate, key, master secret or key-exchange listener cannot be used.
    #[error("{0}")]
    Nts(String),
    /// The error bound's shared-memory page cannot be created.
    #[error("{0}")]
    Publish(String),
    /// Waiting on the sockets, threads, signals.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A configured source cannot be set up (the certificates an NTS source trusts).
    #[error("{0}")]
    Source(String),
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    Daemon::start(config)?.run()
}

/// Everything the event loop owns.
struct Daemon {
    config: DaemonConfig,
    system: SyncSystem,
    clock: ClockBackend,
    rng: Xoshiro256PlusPlus,
    /// Unique identifiers and nonces of NTS requests: unpredictable, so a cryptographic
    /// generator.
    nts_rng: ChaCha20Rng,
    upstreams: Upstreams,
    /// Listeners served from the loop.
    udp: Vec<UdpServer>,
    tcp: Option<TcpServer>,
    control: Option<ControlServer>,
    /// Scrapes of the metrics endpoint waiting for the state (None: no endpoint).
    metrics: Option<crate::metrics::SnapshotRequests>,
    /// The error bound's shared-memory page and the kernel's estimates.
    bound: BoundPublisher,
    /// Server counters (shared with serving threads, if any).
    shared: Arc<Shared>,
    /// What serving threads serve, if there are any, and the threads.
    published: Option<Arc<SharedClock>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    waker: Arc<Waker>,
    next_drift_save: MonoTime,
    next_wander: Option<MonoTime>,
    /// Keep-alive pings for a service manager's watchdog, if one asks for them.
    watchdog: Option<notify::Watchdog>,
    /// What the node listens on, for status lines ("NTP on ADDR (udp), …").
    serving: String,
}

fn mono() -> MonoTime {
    MonoTime(monotonic_nanos())
}

impl Daemon {
    fn start(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let precision = ntpkit_os::clock_precision_log2();
        let drift = match &config.drift_file {
            Some(p) => drift::read(p).map_err(DaemonError::Drift)?,
            None => None,
        };
        let clock = ClockBackend::new(&config.clock, realtime_nanos())?;
        let now = mono();
        let system = SyncSystem::new(
            config.system_config(precision, drift),
            now,
            clock.read_at(realtime_nanos()),
        );
        let waker = Waker::new()?;
        ntpkit_os::handle_signals(
            &[
                Signal::Interrupt,
                Signal::Terminate,
                Signal::Hangup,
                Signal::User1,
            ],
            &waker,
        )?;
        // Before privileges are dropped: NTS sources read the certificates they trust.
        let upstreams = Upstreams::new(&config, waker.clone()).map_err(DaemonError::Source)?;
        let shared = Arc::new(Shared::default());
        let serve_cfg = ServeConfig {
            udp: config.listen.clone(),
            udp_is_default: false,
            tcp: config.tcp.clone(),
            precision: Some(precision),
            tcp_limits: config.tcp_limits(),
            access: config.access_list(),
            rate_limit: config.rate_limit(),
            ..ServeConfig::default()
        };
        if config.access.is_empty() && !(config.listen.is_empty() && config.tcp.is_empty()) {
            tracing::warn!(
                "listening, but no `access` rule allows anyone: nobody is served; add e.g. \
                 access = [\"allow 192.0.2.0/24\"] (or \"allow all\")"
            );
        }
        let bind_error = |addr, transport, source| {
            DaemonError::Socket(
                crate::serve::ServeError::Bind {
                    addr,
                    transport,
                    source,
                }
                .to_string(),
            )
        };
        let threads = config.serve_threads;
        let mut udp = Vec::new();
        let mut worker_sockets = Vec::new();
        let mut listening = Vec::new();
        for &addr in &config.listen {
            let socks = crate::udp::bind(addr, &serve_cfg, threads.max(1), threads == 0)
                .map_err(|e| bind_error(addr, crate::serve::Transport::Udp, e))?;
            if let Some(first) = socks.first() {
                listening.push(format!("{} (udp)", first.local_addr()));
            }
            for sock in socks {
                tracing::info!("NTP server listening on {} (udp)", sock.local_addr());
                if threads == 0 {
                    udp.push(UdpServer::new(
                        sock,
                        serve_cfg.batch,
                        SendMode::EachAlone,
                        serve_cfg.policy(),
                        false,
                    ));
                } else {
                    worker_sockets.push(sock);
                }
            }
        }
        let tcp =
            crate::serve::bind_tcp(&config.tcp, serve_cfg.tcp_limits, serve_cfg.policy(), false)
                .map_err(|e| DaemonError::Socket(e.to_string()))?;
        for a in tcp.iter().flat_map(|t| t.local_addrs()) {
            tracing::info!("NTP server listening on {a} (tcp)");
            listening.push(format!("{a} (tcp)"));
        }
        let nts = start_nts(&config, &serve_cfg, &shared, &mut udp, &worker_sockets)?;
        if let Some(n) = &nts {
            for a in n.listener.local_addrs() {
                listening.push(format!("{a} (nts-ke)"));
            }
        }
        let serving = if listening.is_empty() {
            "client only (no NTP listener)".to_string()
        } else {
            format!("NTP on {}", listening.join(", "))
        };
        let control = match &config.control_socket {
            Some(path) => Some(
                ControlServer::bind(path, control_uids(&config.control_users)?)
                    .map_err(DaemonError::Socket)?,
            ),
            None => None,
        };
        let metrics = match config.metrics_addr() {
            Some(addr) => {
                let endpoint =
                    crate::metrics::Endpoint::bind(addr, |a| format!("metrics = \"{a}\""))
                        .map_err(DaemonError::Socket)?;
                tracing::info!("metrics on http://{}/metrics", endpoint.local_addr());
                Some(endpoint)
            }
            None => None,
        };
        let bound = BoundPublisher::new(
            config.clockbound_shm.path(),
            config.clock.backend == ClockBackendKind::System,
            now,
        )
        .map_err(DaemonError::Publish)?;
        // Everything privileged is done: sockets bound, drift file read, the clock probed,
        // the bound's page created.
        let keep: &[Capability] = match config.clock.backend {
            ClockBackendKind::System => &[Capability::SysTime],
            ClockBackendKind::Observe | ClockBackendKind::Virtual => &[],
        };
        let writable: Vec<(&str, &std::path::Path)> = config
            .drift_file
            .iter()
            .map(|p| ("drift file", p.as_path()))
            .collect();
        crate::confine::drop_privileges(config.user.as_deref(), keep, &writable)
            .map_err(DaemonError::Privileges)?;
        // Before any thread starts: the filter holds for the threads started from here.
        crate::confine::install_seccomp(config.seccomp).map_err(DaemonError::Privileges)?;
        let metrics = match metrics {
            Some(endpoint) => Some(endpoint.spawn_for_daemon(shared.clone(), waker.clone())?),
            None => None,
        };
        let (published, workers) = if worker_sockets.is_empty() {
            (None, Vec::new())
        } else {
            let published = Arc::new(SharedClock::new(
                clock.served_view(),
                system.served_state(now),
                serves_itself(&system, now),
            ));
            let mut workers = Vec::new();
            for sock in worker_sockets {
                let mut worker = crate::udp::Worker::new(
                    sock,
                    ServedClock::shared(published.clone()),
                    shared.clone(),
                    &serve_cfg,
                    serve_cfg.policy(),
                );
                if let Some(n) = &nts {
                    worker.serve_nts(n.ring.clone())?;
                }
                workers.push(
                    std::thread::Builder::new()
                        .name(format!("udp {}", worker.local_addr()))
                        .spawn(move || worker.run())?,
                );
            }
            (Some(published), workers)
        };
        let mut workers = workers;
        if let Some(n) = nts {
            workers.push(n.listener.spawn(shared.clone())?);
        }
        let next_wander = clock.wanders().then(|| now.add_secs_f64(WANDER_INTERVAL));
        Ok(Daemon {
            upstreams,
            config,
            system,
            clock,
            rng: Xoshiro256PlusPlus::seed_from_u64(os_seed()),
            nts_rng: ChaCha20Rng::try_from_os_rng().map_err(std::io::Error::other)?,
            udp,
            tcp,
            control,
            metrics,
            bound,
            shared,
            published,
            workers,
            waker,
            next_drift_save: now.add_secs_f64(DRIFT_SAVE_INTERVAL),
            next_wander,
            watchdog: None,
            serving,
        })
    }

    fn run(mut self) -> Result<(), DaemonError> {
        let mut set = PollSet::new();
        // Every socket is bound and the drift file read: ready for the service manager.
        let sources = self.config.server.len();
        let pools = self.config.pool.len();
        notify::ready(&format!(
            "starting: {sources} server{} and {pools} pool{} configured; {}",
            if sources == 1 { "" } else { "s" },
            if pools == 1 { "" } else { "s" },
            self.serving
        ));
        self.watchdog = notify::Watchdog::from_env(monotonic_nanos());
        self.handle_timeouts(mono())?;
        loop {
            self.drain_core()?;
            set.clear();
            let wake = set.push(self.waker.as_raw_fd(), Interest::Read);
            self.upstreams.register(&mut set);
            let udp_first = set.len();
            for u in &self.udp {
                set.push(u.socket().as_raw_fd(), Interest::Read);
            }
            if let Some(t) = &mut self.tcp {
                t.register(&mut set);
            }
            if let Some(c) = &mut self.control {
                c.register(&mut set);
            }
            set.wait(self.timeout())?;

            // The wake-up is cleared before signals are taken: a signal that arrives in between
            // then leaves its wake-up pending instead of being lost until the next event.
            let woken = set.readable(wake);
            if woken {
                self.waker.drain();
            }
            for signal in ntpkit_os::take_signals() {
                match signal {
                    Signal::Interrupt | Signal::Terminate => {
                        tracing::info!("stopping on {signal:?}");
                        return self.stop();
                    }
                    Signal::Hangup => {
                        tracing::info!(
                            "SIGHUP: saving the drift file and resolving source names again"
                        );
                        self.save_drift();
                        self.upstreams.resolve_again(mono());
                        if self.config.nts_ke_server.is_some() {
                            tracing::info!("SIGHUP: reloading the NTS certificate and key");
                            self.shared.nts_reload.store(true, Ordering::Relaxed);
                        }
                    }
                    Signal::User1 => crate::serve::print_report(&self.shared),
                }
            }
            if woken {
                self.upstreams
                    .take_resolved(&mut self.system, mono(), &mut self.rng);
                self.upstreams
                    .take_key_exchanges(&mut self.system, mono(), &mut self.rng);
                self.system
                    .set_unresolved_sources(self.upstreams.unresolved());
                if let Some(m) = &self.metrics {
                    m.answer(|| self.metrics_snapshot());
                }
            }
            self.receive_replies(&set)?;
            for (k, u) in self.udp.iter_mut().enumerate() {
                if set.readable(udp_first + k) {
                    let mut clock = ServedClock::fixed(
                        self.clock.served_view(),
                        self.system.served_state(mono()),
                    );
                    let _ = u.serve_ready(&mut clock, &self.shared.udp);
                }
            }
            if let Some(t) = &mut self.tcp {
                let mut clock =
                    ServedClock::fixed(self.clock.served_view(), self.system.served_state(mono()));
                t.handle_ready(&set, monotonic_nanos(), &mut clock, &self.shared.tcp);
            }
            if let Some(c) = &mut self.control {
                let (system, clock, shared, upstreams) = (
                    &mut self.system,
                    &self.clock,
                    &self.shared,
                    &mut self.upstreams,
                );
                c.handle_ready(&set, monotonic_nanos(), |request| {
                    answer(request, system, clock, shared, upstreams)
                });
            }
            self.handle_timeouts(mono())?;
        }
    }

    /// The replies of the sources, each an input to the core.
    fn receive_replies(&mut self, set: &PollSet) -> Result<(), DaemonError> {
        let mut replies = Vec::new();
        self.upstreams.receive(set, mono(), |id, bytes, os_rx| {
            replies.push((id, bytes.to_vec(), os_rx));
        });
        let any = !replies.is_empty();
        for (id, bytes, os_rx) in replies {
            let at = MonoTime(monotonic_nanos() - (realtime_nanos() - os_rx).max(0));
            self.system
                .handle_reply(at, self.clock.read_at(os_rx), id, &bytes);
            self.drain_core()?;
        }
        if any {
            self.bound.publish(&self.system, &self.clock, mono(), true);
        }
        Ok(())
    }

    /// Everything whose time has come at `now`.
    fn handle_timeouts(&mut self, now: MonoTime) -> Result<(), DaemonError> {
        self.clock.handle_timeout(realtime_nanos())?;
        if self.system.poll_timeout().is_some_and(|t| t <= now) {
            self.system
                .handle_timeout(now, self.clock.read_at(realtime_nanos()));
        }
        self.upstreams
            .handle_timeout(&mut self.system, now, &mut self.rng);
        self.system
            .set_unresolved_sources(self.upstreams.unresolved());
        if self.upstreams.next_deadline().is_some_and(|t| t <= now) {
            let status = self.system.status(now);
            self.upstreams.check_pools(&status, now);
        }
        if let Some(t) = &mut self.tcp {
            t.handle_timeout(now.0, &self.shared.tcp);
        }
        if let Some(c) = &mut self.control {
            c.handle_timeout(now.0);
        }
        if self.next_wander.is_some_and(|t| t <= now) {
            self.clock.wander(realtime_nanos());
            self.next_wander = Some(now.add_secs_f64(WANDER_INTERVAL));
        }
        if self.next_drift_save <= now {
            self.save_drift();
            self.next_drift_save = now.add_secs_f64(DRIFT_SAVE_INTERVAL);
        }
        if self.bound.deadline().is_some_and(|t| t <= now) {
            // The time now, not the loop's: the page's as-of is read when it is written.
            self.bound.publish(&self.system, &self.clock, mono(), false);
        }
        if let Some(w) = &mut self.watchdog {
            w.handle_timeout(now.0);
        }
        Ok(())
    }

    /// How long the loop may wait: until the earliest deadline of anyone.
    fn timeout(&self) -> Option<Duration> {
        let now = monotonic_nanos();
        let os_now = realtime_nanos();
        let deadlines = [
            self.system.poll_timeout().map(|t| t.0),
            self.clock.poll_timeout().map(|at| now + (at - os_now)),
            self.upstreams.next_deadline().map(|t| t.0),
            self.tcp.as_ref().and_then(|t| t.next_deadline()),
            self.control.as_ref().and_then(|c| c.next_deadline()),
            self.next_wander.map(|t| t.0),
            self.bound.deadline().map(|t| t.0),
            Some(self.next_drift_save.0),
            self.watchdog.as_ref().map(|w| w.deadline()),
        ];
        deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_nanos((at - now).max(0) as u64))
    }

    /// The core's outputs, in contract order: requests, clock commands, events; then what
    /// serving threads serve.
    fn drain_core(&mut self) -> Result<(), DaemonError> {
        let mut buf = [0u8; 64];
        let now = mono();
        while let Some(tx) = self.system.poll_transmit(
            now,
            self.clock.read_at(realtime_nanos()),
            &mut self.rng,
            &mut buf,
        ) {
            // The exchange is timed from when the request left (the kernel's transmit
            // timestamp, else a reading taken once it was ready to go): a socket opened per
            // request, NTS protection or the send call's own path between the two would
            // otherwise put the clock ahead by half their time.
            let clock = &self.clock;
            let sent = self.upstreams.send(
                tx.source,
                &buf[..tx.len],
                now,
                &mut self.nts_rng,
                |unix_ns| clock.read_at(unix_ns),
            );
            if let Some(sent) = sent {
                self.system.transmitted(tx.source, sent);
            }
        }
        let mut changed = false;
        while let Some(cmd) = self.system.poll_clock_command() {
            tracing::debug!("clock command {cmd:?}");
            if matches!(cmd, ntpkit_core::ClockCommand::Step { .. }) {
                // Readers must not apply the bound from before the step to the stepped clock:
                // no bound until the page is refreshed below.
                self.bound.withdraw();
            }
            self.clock.apply(realtime_nanos(), cmd)?;
            changed = true;
        }
        while let Some(event) = self.system.poll_event() {
            if let Event::Unreachable { source, .. } = event {
                self.upstreams.on_unreachable(source, now);
            }
            self.log(&event);
            changed = true;
        }
        if changed {
            self.bound.publish(&self.system, &self.clock, mono(), true);
        }
        if let Some(p) = &self.published {
            let now = mono();
            p.update(
                self.clock.served_view(),
                self.system.served_state(now),
                serves_itself(&self.system, now),
            );
        }
        Ok(())
    }

    /// Logs a core event, naming its source as it was configured.
    fn log(&self, event: &Event) {
        let mut text = event.to_string();
        if let Some(id) = event.source() {
            if let (Some(name), Some(address)) = (self.upstreams.name(id), event_address(event)) {
                text = text.replacen(&address, &format!("{name} ({address})"), 1);
            }
        }
        if event.is_warning() {
            tracing::warn!("{text}");
        } else {
            tracing::info!("{text}");
        }
        if matches!(
            event,
            Event::Selected { .. } | Event::NoSelection { .. } | Event::HoldoverExpired { .. }
        ) {
            notify::status(&format!("{text}; {}", self.serving));
        }
    }

    /// The state a metrics scrape shows, now.
    fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let (now, os) = (mono(), realtime_nanos());
        let mut system = self.system.status(now);
        for s in &mut system.sources {
            s.name = self.upstreams.name(s.id);
        }
        crate::metrics::Snapshot {
            system,
            clock: self.clock.report(os),
            leap: self.system.served_state(now).leap as u8,
            unresolved: self.upstreams.unresolved(),
            bound: self.system.error_bound(now),
        }
    }

    fn save_drift(&self) {
        save_drift(&self.config.drift_file, self.system.frequency_ppm(mono()));
    }

    fn stop(mut self) -> Result<(), DaemonError> {
        notify::stopping();
        // Nobody vouches for the clock any more.
        self.bound.withdraw();
        self.save_drift();
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in std::mem::take(&mut self.workers) {
            let _ = w.join();
        }
        // Dropping the control server removes its socket file.
        self.control = None;
        eprint!("{}", self.shared.report());
        Ok(())
    }
}

/// True while the node serves its local clock as its own reference (local stratum).
fn serves_itself(system: &SyncSystem, now: MonoTime) -> bool {
    !system.is_synchronized(now) && system.served_state(now).is_synchronized()
}

/// The address an event names, as it prints it.
fn event_address(event: &Event) -> Option<String> {
    match event {
        Event::Selected { address, .. }
        | Event::Unreachable { address, .. }
        | Event::Reachable { address, .. }
        | Event::Kiss { address, .. } => Some(address.to_string()),
        _ => None,
    }
}

/// The answer to a control request.
fn answer(
    request: &Request,
    system: &mut SyncSystem,
    clock: &ClockBackend,
    shared: &Shared,
    upstreams: &mut Upstreams,
) -> Vec<u8> {
    let command = match ControlCommand::parse(&request.line) {
        Ok(c) => c,
        Err(e) => return control::error_answer(&e),
    };
    if command.changes_state() && !request.privileged {
        return control::error_answer(&format!(
            "permission denied: `ntpkit {}` changes the daemon; run it as root or as the \
             daemon's user, or add your user to control-users",
            command.cli_name()
        ));
    }
    // The sync state and the clock are read at one instant: while the clock slews, a status
    // whose source offsets and clock error are read apart would show them disagree.
    let (now, os) = (mono(), realtime_nanos());
    let result = match command {
        ControlCommand::Status => {
            let mut st = system.status(now);
            for s in &mut st.sources {
                s.name = upstreams.name(s.id);
                s.nts = upstreams.nts_status(s.id);
            }
            let mut server = serde_json::json!({
                "udp": counters_json(&shared.udp),
                "tcp": counters_json(&shared.tcp),
            });
            if let (Some(nts), Some(o)) = (nts_counters_json(shared), server.as_object_mut()) {
                o.insert("nts".into(), nts);
            }
            let status = DaemonStatus::new(st, clock.report(os), server);
            return serde_json::to_vec_pretty(&status).expect("serializes");
        }
        ControlCommand::Now => {
            // The clock is read at the instant the bound is computed for.
            let time = clock.read_at(os);
            let bound = system.error_bound(now);
            let report = control::NowReport::new(time.0, &bound, clock.report(os));
            return serde_json::to_vec_pretty(&report).expect("serializes");
        }
        ControlCommand::SourceAdd {
            address,
            pool,
            minpoll,
            maxpoll,
            iburst,
            max_sources,
            nts,
            ca_file,
        } => add_source(
            upstreams,
            &address,
            pool,
            (minpoll, maxpoll, iburst, max_sources),
            (nts, ca_file),
        ),
        ControlCommand::SourceRemove { address } => upstreams.remove(&address, system, now),
        ControlCommand::Burst { address } => {
            let ids = match &address {
                Some(a) => upstreams.find(a),
                None => Vec::new(),
            };
            if address.is_some() && ids.is_empty() {
                Err(format!(
                    "no source {}; `ntpkit sources` lists them",
                    address.unwrap_or_default()
                ))
            } else {
                let n = if address.is_none() {
                    system.burst(now, None)
                } else {
                    ids.iter().map(|id| system.burst(now, Some(*id))).sum()
                };
                Ok(format!(
                    "burst of 4 requests to {n} source{}",
                    if n == 1 { "" } else { "s" }
                ))
            }
        }
        ControlCommand::MakeStep => match system.make_step(now) {
            Some(step) => Ok(format!("stepping the clock by {step:+.9} s")),
            None => Err("nothing to step by: the clock has had no update from a source yet".into()),
        },
    };
    match result {
        Ok(message) => {
            if command_logged(&request.line) {
                tracing::info!(
                    "control (uid {}): {message}",
                    request.uid.map_or("?".into(), |u| u.to_string())
                );
            }
            control::ok_answer(&message)
        }
        Err(e) => control::error_answer(&e),
    }
}

/// Every command but `status` is logged.
fn command_logged(line: &str) -> bool {
    line != "status" && !line.contains("\"status\"")
}

/// `ntpkit source add`: checks the settings as the configuration would, then adds the entry.
fn add_source(
    upstreams: &mut Upstreams,
    address: &str,
    pool: bool,
    (minpoll, maxpoll, iburst, max_sources): (Option<i8>, Option<i8>, Option<bool>, Option<usize>),
    (nts, ca_file): (bool, Option<PathBuf>),
) -> Result<String, String> {
    let defaults = ntpkit_core::sync::SourceConfig::default();
    let (lo, hi) = ntpkit_core::sync::source::POLL_LIMITS;
    let minpoll = minpoll.unwrap_or(config::DEFAULT_MINPOLL);
    let maxpoll = maxpoll.unwrap_or(config::DEFAULT_MAXPOLL.max(minpoll));
    if !(lo..=hi).contains(&minpoll) || !(lo..=hi).contains(&maxpoll) || minpoll > maxpoll {
        return Err(format!(
            "minpoll {minpoll} / maxpoll {maxpoll}: both within {lo}..={hi}, minpoll ≤ maxpoll"
        ));
    }
    if !pool && max_sources.is_some() {
        return Err("--max-sources is for pools (add --pool)".into());
    }
    let max = if pool {
        max_sources.unwrap_or(config::DEFAULT_POOL_MAX)
    } else {
        1
    };
    if !(1..=config::MAX_POOL_SOURCES).contains(&max) {
        return Err(format!("max-sources {max}: 1–{}", config::MAX_POOL_SOURCES));
    }
    let cfg = ntpkit_core::sync::SourceConfig {
        minpoll,
        maxpoll,
        iburst: iburst.unwrap_or(defaults.iburst),
    };
    if ca_file.is_some() && !nts {
        return Err("--ca-file is for NTS sources (add --nts)".into());
    }
    let tls = config::nts_tls(nts, ca_file.as_deref())?;
    upstreams.add_entry(address, pool, cfg, max, tls)?;
    Ok(format!(
        "added {} {address} (minpoll {minpoll}, maxpoll {maxpoll}, iburst {}{})",
        if pool { "pool" } else { "server" },
        cfg.iburst,
        if nts { ", nts" } else { "" }
    ))
}

/// The user IDs of `control-users`.
fn control_uids(users: &[String]) -> Result<Vec<u32>, DaemonError> {
    users
        .iter()
        .map(|u| match ntpkit_os::privilege::lookup_user(u) {
            Ok(Some(a)) => Ok(a.uid),
            Ok(None) => Err(DaemonError::Privileges(format!(
                "control-users: no user {u:?}"
            ))),
            Err(e) => Err(DaemonError::Privileges(format!(
                "control-users: cannot look up {u:?}: {e}"
            ))),
        })
        .collect()
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
    serde_json::json!({
        "answered": v.answered,
        "ignored": v.ignored,
        "malformed": v.malformed,
        "denied": v.denied,
        "limited": v.limited,
        "kissed": v.kissed,
    })
}

/// The NTS counters, when NTS is served.
fn nts_counters_json(shared: &Shared) -> Option<serde_json::Value> {
    if !shared.nts_on.load(Ordering::Relaxed) {
        return None;
    }
    let n = shared.nts.snapshot();
    Some(serde_json::json!({
        "ke_served": n.ke_served,
        "ke_failed": n.ke_failed,
        "ke_denied": n.ke_denied,
        "ke_limited": n.ke_limited,
        "replies": n.replies,
        "naks": n.naks,
        "dropped": n.dropped,
    }))
}

/// NTS serving as `[nts-ke-server]` asks, set up as `ntpkit serve` sets it up: the files read,
/// the key-exchange listeners bound, the event loop's UDP servers answering NTS (serving
/// threads are given the keyring as they are made).
fn start_nts(
    config: &DaemonConfig,
    serve_cfg: &ServeConfig,
    shared: &Arc<Shared>,
    udp: &mut [UdpServer],
    worker_sockets: &[ntpkit_os::UdpSocket],
) -> Result<Option<crate::nts_serve::NtsStart>, DaemonError> {
    let Some(n) = config.nts_serve_config() else {
        return Ok(None);
    };
    // The first `listen` address's port, whichever driver serves it.
    let ntp_port = udp
        .first()
        .map(|u| u.local_addr().port())
        .or_else(|| worker_sockets.first().map(|s| s.local_addr().port()));
    let start = crate::nts_serve::prepare(&n, serve_cfg.policy(), ntp_port)
        .map_err(|e| DaemonError::Nts(e.to_string()))?;
    for u in udp.iter_mut() {
        u.serve_nts(start.ring.clone(), shared.clone())?;
    }
    for a in start.listener.local_addrs() {
        tracing::info!("NTS-KE server listening on {a} (tcp)");
    }
    if start.master_created {
        tracing::info!(
            "created NTS master secret {} (32 random bytes, mode 0600)",
            n.master.display()
        );
    }
    Ok(Some(start))
}

fn save_drift(path: &Option<PathBuf>, ppm: f64) {
    if let Some(p) = path {
        match drift::write(p, ppm) {
            Ok(()) => tracing::debug!("drift file {} = {ppm:.3} ppm", p.display()),
            Err(e) => tracing::warn!("cannot write drift file {}: {e}", p.display()),
        }
    }
}
