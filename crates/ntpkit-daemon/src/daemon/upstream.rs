//! The daemon's upstream sources as configured: names to resolve, a socket per source, pools
//! that replace members gone bad.
//!
//! A `[[server]]` or `[[pool]]` whose host is an IP address becomes a source at once. A name
//! is resolved on a short-lived thread (the event loop never blocks on DNS); when resolution
//! fails — DNS is often not up at boot — the failure is logged and retried with a doubling
//! back-off, while the daemon runs on its other sources. A pool keeps up to `max-sources`
//! members: when a member is unreachable, denied us, or stays a falseticker, the name is
//! resolved again, and the member gives its place to a new address if there is one (it stays,
//! and may recover, if there is none; an address given up is not taken back for an hour). A
//! pool with fewer addresses than `max-sources` is resolved again now and then, quietly.
//!
//! Each request goes out from a new socket with a port the kernel picks at random (as chronyd
//! does), closed when the next request goes out: an off-path attacker must guess the port as
//! well as the 64-bit cookie, and a reply later than one poll interval finds the port closed. With
//! `port-per-request = false` each source keeps one socket for its life instead.
//!
//! A server or pool with `nts = true` is resolved to key-exchange servers instead: each address
//! becomes a source once its NTS key exchange succeeds, at the NTP server the exchange
//! negotiated (see [`super::nts`]).
//!
//! Servers and pools can be added and removed while running ([`Upstreams::add_entry`],
//! [`Upstreams::remove`]), from the control socket.

use super::config::{default_port, nts_tls, parse_host_port, DaemonConfig, Host};
use super::nts::{spawn_key_exchange, KeDone, KeSchedule, KeTarget, NtsLink};
use ntpkit_core::sync::{NtsStatus, SourceConfig, SourceId, SourceState, SyncSystem, SystemStatus};
use ntpkit_core::{ClockTime, MonoTime};
use ntpkit_os::{Interest, PollSet, UdpSocket, UdpSocketOptions, Waker};
use rand_core::RngCore;
use rustls::ClientConfig;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;

/// First retry of a failed resolution, seconds; doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: f64 = 4.0;
/// Longest wait between retries of a failed resolution, seconds.
const RETRY_MAX: f64 = 1024.0;
/// Pools are checked for members to replace every this many of their shortest poll
/// intervals (a member is unreachable after eight polls without a reply)…
const POOL_CHECK_POLLS: f64 = 8.0;
/// …but at least and at most this often, seconds.
const POOL_CHECK_LIMITS: (f64, f64) = (8.0, 1024.0);
/// Pool checks in a row a member may be a falseticker before it is replaced.
const FALSETICKER_CHECKS: u32 = 4;
/// How long a replaced pool member is not taken back, seconds.
const AVOID_FOR: f64 = 3600.0;

/// One `[[server]]` or `[[pool]]`.
#[derive(Debug)]
struct Entry {
    /// As configured (for logs and status).
    text: String,
    host: Host,
    port: u16,
    config: SourceConfig,
    /// A pool's most members; 1 for a server.
    max_members: usize,
    is_pool: bool,
    members: Vec<SourceId>,
    resolution: Resolution,
    /// Pool members dropped, and until when they are not taken back.
    avoid: HashMap<SocketAddr, MonoTime>,
    /// Pool checks in a row each member was a falseticker.
    strikes: HashMap<SourceId, u32>,
    /// Pool members found bad at the last check, to replace when new addresses come.
    bad: Vec<SourceId>,
    /// Removed while running: nothing is resolved or added for it any more.
    removed: bool,
    /// With NTS: the TLS configuration of its key exchanges.
    nts: Option<Arc<ClientConfig>>,
    /// With NTS: key-exchange servers of members to be, whose first exchange runs.
    ke_in_flight: Vec<SocketAddr>,
    /// With NTS: addresses of the name not tried yet, for when an exchange fails.
    ke_candidates: Vec<SocketAddr>,
    /// With NTS: the back-off of the last retry after every first exchange failed, seconds.
    ke_backoff: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Resolution {
    /// Nothing to do.
    Done,
    /// A resolver thread is working on it; the back-off of the retry that started it.
    InFlight(f64),
    /// Resolve again at this time; the back-off that led there (seconds).
    RetryAt(MonoTime, f64),
}

/// A source's socket and where it sends.
#[derive(Debug)]
struct Link {
    /// The socket of the request in flight (or the source's only one); None between requests
    /// with a port per request.
    socket: Option<UdpSocket>,
    server: SocketAddr,
    entry: usize,
    /// With NTS: keys, cookies, key exchanges.
    nts: Option<NtsLink>,
}

impl Link {
    /// The address the source was found at: its key-exchange server with NTS, else the
    /// server itself (what resolution returns, pools avoid and names are compared with).
    fn found_at(&self) -> SocketAddr {
        self.nts.as_ref().map_or(self.server, |n| n.ke_addr)
    }
}

/// What a resolver thread found for an entry.
type Resolved = (usize, Result<Vec<SocketAddr>, String>);

/// The configured upstreams and their sockets.
#[derive(Debug)]
pub struct Upstreams {
    entries: Vec<Entry>,
    links: HashMap<SourceId, Link>,
    results: (mpsc::Sender<Resolved>, mpsc::Receiver<Resolved>),
    /// Finished NTS key exchanges.
    key_exchanges: (mpsc::Sender<KeDone>, mpsc::Receiver<KeDone>),
    waker: Arc<Waker>,
    next_pool_check: Option<MonoTime>,
    /// Source ids registered in the last poll set, in order, and the index of the first.
    registered: (usize, Vec<SourceId>),
    /// A new socket (random port) for each request.
    port_per_request: bool,
}

impl Upstreams {
    /// The upstreams of `config`, none resolved yet; resolver threads wake `waker`. Fails when
    /// the certificates an NTS source trusts cannot be loaded.
    pub fn new(config: &DaemonConfig, waker: Arc<Waker>) -> Result<Self, String> {
        let servers = config.server.iter().map(|s| {
            let tls = nts_tls(s.nts, s.ca_file.as_deref())
                .map_err(|e| format!("server {:?}: {e}", s.address))?;
            Ok((s.address.as_str(), s.source_config(), 1, false, tls))
        });
        let pools = config.pool.iter().map(|p| {
            let tls = nts_tls(p.nts, p.ca_file.as_deref())
                .map_err(|e| format!("pool {:?}: {e}", p.name))?;
            Ok((p.name.as_str(), p.source_config(), p.max_sources, true, tls))
        });
        let entries: Vec<_> = servers.chain(pools).collect::<Result<_, String>>()?;
        let mut upstreams = Upstreams {
            entries: Vec::new(),
            links: HashMap::new(),
            results: mpsc::channel(),
            key_exchanges: mpsc::channel(),
            waker,
            next_pool_check: None,
            registered: (0, Vec::new()),
            port_per_request: config.port_per_request,
        };
        for (text, cfg, max, is_pool, tls) in entries {
            // The configuration was checked: the address parses.
            let _ = upstreams.add_entry(text, is_pool, cfg, max, tls);
        }
        Ok(upstreams)
    }

    /// Adds a server (`is_pool` false, `max_members` 1) or a pool, with NTS when `nts` holds
    /// its TLS configuration; it is resolved at the next [`handle_timeout`](Self::handle_timeout).
    /// Refused if the address does not parse or the same host and port is configured already.
    pub fn add_entry(
        &mut self,
        text: &str,
        is_pool: bool,
        config: SourceConfig,
        max_members: usize,
        nts: Option<Arc<ClientConfig>>,
    ) -> Result<(), String> {
        let (host, port) = parse_host_port(text, default_port(nts.is_some()))?;
        let taken = self
            .entries
            .iter()
            .any(|e| !e.removed && e.host == host && e.port == port)
            || matches!(host, Host::Ip(ip) if self.links.values().any(|l| l.found_at() == SocketAddr::new(ip, port)));
        if taken {
            return Err(format!("{text} is a source already"));
        }
        self.entries.push(Entry {
            text: text.to_string(),
            host,
            port,
            config,
            max_members: max_members.max(1),
            is_pool,
            members: Vec::new(),
            resolution: Resolution::RetryAt(MonoTime(i64::MIN), 0.0),
            avoid: HashMap::new(),
            strikes: HashMap::new(),
            bad: Vec::new(),
            removed: false,
            nts,
            ke_in_flight: Vec::new(),
            ke_candidates: Vec::new(),
            ke_backoff: 0.0,
        });
        self.next_pool_check = None;
        Ok(())
    }

    /// Removes what `address` names: a configured server or pool as written (`pool.example`,
    /// `192.0.2.1:123`) with all its sources, or one source by its address (`192.0.2.1`,
    /// `192.0.2.1:123`); a pool member so removed is not taken back for an hour and the pool
    /// looks for another. Returns what was removed, in words.
    pub fn remove(
        &mut self,
        address: &str,
        system: &mut SyncSystem,
        now: MonoTime,
    ) -> Result<String, String> {
        let parsed = parse_host_port(address, 123).ok();
        let entry = self.entries.iter().position(|e| {
            !e.removed && (e.text == address || parsed.as_ref() == Some(&(e.host.clone(), e.port)))
        });
        if let Some(i) = entry {
            let members = std::mem::take(&mut self.entries[i].members);
            for id in &members {
                system.remove_source(*id);
                self.links.remove(id);
            }
            let e = &mut self.entries[i];
            e.removed = true;
            e.resolution = Resolution::Done;
            e.bad.clear();
            e.strikes.clear();
            let what = if e.is_pool { "pool" } else { "server" };
            return Ok(format!(
                "removed {what} {} ({} source{})",
                e.text,
                members.len(),
                if members.len() == 1 { "" } else { "s" }
            ));
        }
        let member = self.links.iter().find_map(|(id, l)| {
            let matches = [l.server, l.found_at()]
                .iter()
                .any(|a| a.to_string() == address || a.ip().to_string() == address);
            matches.then_some(*id)
        });
        let Some(id) = member else {
            return Err(format!(
                "no source {address}; `ntpkit sources` lists them (give the address or the name \
                 as configured)"
            ));
        };
        let link = self.links.remove(&id).expect("found above");
        system.remove_source(id);
        let e = &mut self.entries[link.entry];
        e.members.retain(|m| *m != id);
        e.strikes.remove(&id);
        e.bad.retain(|m| *m != id);
        if e.is_pool {
            e.avoid.insert(link.found_at(), now.add_secs_f64(AVOID_FOR));
            if e.resolution == Resolution::Done {
                e.resolution = Resolution::RetryAt(now, 0.0);
            }
            Ok(format!(
                "removed {} from pool {}; the pool looks for another member",
                link.server, e.text
            ))
        } else {
            e.removed = true;
            e.resolution = Resolution::Done;
            Ok(format!("removed server {} ({})", e.text, link.server))
        }
    }

    /// The source whose address is `address` (`192.0.2.1` or `192.0.2.1:123`), or the sources
    /// of the server or pool configured as `address`.
    pub fn find(&self, address: &str) -> Vec<SourceId> {
        let by_entry: Vec<SourceId> = self
            .entries
            .iter()
            .filter(|e| !e.removed && e.text == address)
            .flat_map(|e| e.members.iter().copied())
            .collect();
        if !by_entry.is_empty() {
            return by_entry;
        }
        self.links
            .iter()
            .filter(|(_, l)| {
                [l.server, l.found_at()]
                    .iter()
                    .any(|a| a.to_string() == address || a.ip().to_string() == address)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// How to name source `id` in logs and status: the configured name with its address, or
    /// the address.
    pub fn label(&self, id: SourceId) -> Option<String> {
        let link = self.links.get(&id)?;
        let e = &self.entries[link.entry];
        Some(match (&e.host, e.is_pool) {
            (Host::Ip(_), _) => link.server.to_string(),
            (Host::Name(n), false) => format!("{n} ({})", link.server),
            (Host::Name(n), true) => format!("pool {n} ({})", link.server),
        })
    }

    /// The name source `id` was configured with, if it was a name.
    pub fn name(&self, id: SourceId) -> Option<String> {
        let link = self.links.get(&id)?;
        match &self.entries[link.entry].host {
            Host::Name(n) => Some(n.clone()),
            Host::Ip(_) => None,
        }
    }

    /// Resolves what is due at `now`: IP addresses at once, names on a resolver thread.
    pub fn handle_timeout(
        &mut self,
        system: &mut SyncSystem,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) {
        for i in 0..self.entries.len() {
            let due = matches!(self.entries[i].resolution, Resolution::RetryAt(at, _) if at <= now);
            if !due {
                continue;
            }
            let e = &mut self.entries[i];
            match e.host.clone() {
                Host::Ip(ip) => {
                    e.resolution = Resolution::Done;
                    let addr = SocketAddr::new(ip, e.port);
                    if e.nts.is_some() {
                        self.start_first_key_exchanges(i, vec![addr], now);
                    } else {
                        self.add(i, vec![addr], system, now, rng);
                    }
                }
                Host::Name(name) => {
                    let backoff = match e.resolution {
                        Resolution::RetryAt(_, b) => b,
                        _ => 0.0,
                    };
                    e.resolution = Resolution::InFlight(backoff);
                    let port = e.port;
                    let tx = self.results.0.clone();
                    let waker = self.waker.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("resolve".into())
                            .spawn(move || {
                                let found = (name.as_str(), port)
                                    .to_socket_addrs()
                                    .map(|a| a.collect::<Vec<_>>())
                                    .map_err(|e| e.to_string());
                                let _ = tx.send((i, found));
                                waker.wake();
                            });
                    if let Err(err) = spawned {
                        tracing::warn!("cannot start a resolver thread: {err}");
                        self.entries[i].resolution =
                            Resolution::RetryAt(now.add_secs_f64(RETRY_FIRST), backoff);
                    }
                }
            }
        }
        if self.next_pool_check.is_none() {
            self.next_pool_check = self.pool_check_interval().map(|i| now.add_secs_f64(i));
        }
        self.start_due_key_exchanges(now);
    }

    /// Starts the first key exchange with each of `addrs` (key-exchange servers of an NTS
    /// entry) that could become a member; the rest are tried when an exchange fails.
    fn start_first_key_exchanges(&mut self, entry: usize, addrs: Vec<SocketAddr>, now: MonoTime) {
        self.entries[entry].ke_candidates = addrs;
        self.try_ke_candidates(entry, now);
    }

    /// Starts first key exchanges with the entry's untried addresses while it has free places;
    /// with no member, none running and none left to try, schedules a new resolution.
    fn try_ke_candidates(&mut self, entry: usize, now: MonoTime) {
        let in_use: Vec<SocketAddr> = self.links.values().map(|l| l.found_at()).collect();
        let e = &mut self.entries[entry];
        let Some(tls) = e.nts.clone() else {
            return;
        };
        e.avoid.retain(|_, until| *until > now);
        while !e.ke_candidates.is_empty() {
            let addr = e.ke_candidates.remove(0);
            if e.members.len() + e.ke_in_flight.len() >= e.max_members {
                e.ke_candidates.insert(0, addr);
                break;
            }
            if in_use.contains(&addr)
                || e.avoid.contains_key(&addr)
                || e.ke_in_flight.contains(&addr)
            {
                continue;
            }
            let host = match &e.host {
                Host::Name(n) => n.clone(),
                Host::Ip(ip) => ip.to_string(),
            };
            tracing::debug!("{}: NTS key exchange with {addr}", e.text);
            match spawn_key_exchange(
                host,
                addr,
                tls.clone(),
                KeTarget::NewMember(entry),
                self.key_exchanges.0.clone(),
                self.waker.clone(),
            ) {
                Ok(()) => e.ke_in_flight.push(addr),
                Err(err) => tracing::warn!("cannot start an NTS key-exchange thread: {err}"),
            }
        }
        if e.members.is_empty() && e.ke_in_flight.is_empty() {
            let wait = next_backoff(e.ke_backoff);
            e.ke_backoff = wait;
            e.resolution = Resolution::RetryAt(now.add_secs_f64(wait), wait);
            tracing::warn!(
                "{}: no NTS key exchange succeeded; trying again in {wait:.0} s",
                e.text
            );
        }
    }

    /// Starts the key exchanges of running sources that are due.
    fn start_due_key_exchanges(&mut self, now: MonoTime) {
        for (id, l) in self.links.iter_mut() {
            let Some(nts) = l.nts.as_mut() else {
                continue;
            };
            if nts.due().is_none_or(|at| at > now) {
                continue;
            }
            let Some(tls) = self.entries[l.entry].nts.clone() else {
                continue;
            };
            tracing::debug!("{}: NTS key exchange with {}", l.server, nts.ke_addr);
            nts.ke = KeSchedule::InFlight;
            if let Err(err) = spawn_key_exchange(
                nts.ke_host.clone(),
                nts.ke_addr,
                tls,
                KeTarget::Source(*id),
                self.key_exchanges.0.clone(),
                self.waker.clone(),
            ) {
                nts.failed(format!("cannot start a key-exchange thread: {err}"), now);
            }
        }
    }

    /// Takes the finished NTS key exchanges: adds the members whose first exchange
    /// succeeded, gives running sources their new keys and cookies, schedules retries.
    pub fn take_key_exchanges(
        &mut self,
        system: &mut SyncSystem,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) {
        while let Ok(done) = self.key_exchanges.1.try_recv() {
            match done.target {
                KeTarget::NewMember(i) => self.first_key_exchange_done(i, done, system, now, rng),
                KeTarget::Source(id) => self.key_exchange_done(id, done, system, now, rng),
            }
        }
    }

    fn first_key_exchange_done(
        &mut self,
        entry: usize,
        done: KeDone,
        system: &mut SyncSystem,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) {
        let e = &mut self.entries[entry];
        e.ke_in_flight.retain(|a| *a != done.ke_addr);
        if e.removed {
            return;
        }
        match done.result {
            Ok((outcome, text, ntp)) => {
                e.ke_backoff = 0.0;
                if e.members.len() >= e.max_members {
                    return;
                }
                if self.links.values().any(|l| l.server == ntp) {
                    tracing::warn!(
                        "{}: NTS-KE server {} sends us to {ntp}, a source already",
                        e.text,
                        done.ke_addr
                    );
                    self.try_ke_candidates(entry, now);
                    return;
                }
                tracing::info!(
                    "{}: NTS key exchange with {} done: {} cookies, {}, NTP server {text}",
                    e.text,
                    done.ke_addr,
                    outcome.cookies.len(),
                    outcome.keys.aead.name()
                );
                let host = match &e.host {
                    Host::Name(n) => n.clone(),
                    Host::Ip(ip) => ip.to_string(),
                };
                let link = NtsLink::new(host, done.ke_addr, outcome, text);
                self.attach(entry, ntp, Some(link), system, now, rng);
            }
            Err(why) => {
                tracing::warn!("{}: {why}", e.text);
                self.try_ke_candidates(entry, now);
            }
        }
    }

    fn key_exchange_done(
        &mut self,
        id: SourceId,
        done: KeDone,
        system: &mut SyncSystem,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) {
        let label = self.label(id).unwrap_or_default();
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(nts) = link.nts.as_mut() else {
            return;
        };
        match done.result {
            Ok((outcome, text, ntp)) => {
                tracing::info!(
                    "{label}: new NTS key exchange done: {} cookies",
                    outcome.cookies.len()
                );
                nts.installed(outcome, text);
                if ntp != link.server {
                    // The key-exchange server sends us elsewhere: the source moves.
                    tracing::info!("{label}: NTS-KE moved the source to {ntp}");
                    let entry = link.entry;
                    let nts = link.nts.take();
                    self.links.remove(&id);
                    system.remove_source(id);
                    self.entries[entry].members.retain(|m| *m != id);
                    self.attach(entry, ntp, nts, system, now, rng);
                }
            }
            Err(why) => {
                let wait = nts.failed(why.clone(), now);
                tracing::warn!("{label}: {why}; next key exchange in {wait:.0} s");
            }
        }
    }

    /// Call when source `id` became unreachable: an NTS source runs a new key exchange (its
    /// server may have moved or changed keys).
    pub fn on_unreachable(&mut self, id: SourceId, now: MonoTime) {
        if let Some(nts) = self.links.get_mut(&id).and_then(|l| l.nts.as_mut()) {
            nts.want_key_exchange(now);
        }
    }

    /// What NTS did for source `id`, if it uses NTS.
    pub fn nts_status(&self, id: SourceId) -> Option<NtsStatus> {
        self.links.get(&id)?.nts.as_ref().map(NtsLink::status)
    }

    /// How often the pools are checked: eight of their shortest poll intervals.
    fn pool_check_interval(&self) -> Option<f64> {
        self.entries
            .iter()
            .filter(|e| e.is_pool && !e.removed)
            .map(|e| {
                (POOL_CHECK_POLLS * 2f64.powi(e.config.minpoll.into()))
                    .clamp(POOL_CHECK_LIMITS.0, POOL_CHECK_LIMITS.1)
            })
            .min_by(f64::total_cmp)
    }

    /// Takes the resolver threads' answers: adds sources, or schedules retries.
    pub fn take_resolved(&mut self, system: &mut SyncSystem, now: MonoTime, rng: &mut dyn RngCore) {
        while let Ok((i, found)) = self.results.1.try_recv() {
            if self.entries[i].removed {
                continue;
            }
            let backoff = match self.entries[i].resolution {
                Resolution::InFlight(b) => b,
                _ => 0.0,
            };
            let text = self.entries[i].text.clone();
            match found {
                Ok(addrs) if !addrs.is_empty() && self.entries[i].nts.is_some() => {
                    self.entries[i].resolution = Resolution::Done;
                    self.replace_bad(i, &addrs, system, now);
                    self.start_first_key_exchanges(i, addrs, now);
                }
                Ok(addrs) if !addrs.is_empty() => {
                    self.entries[i].resolution = Resolution::Done;
                    self.replace_bad(i, &addrs, system, now);
                    self.add(i, addrs, system, now, rng);
                    let e = &mut self.entries[i];
                    if e.members.is_empty() {
                        let wait = next_backoff(backoff);
                        tracing::warn!(
                            "{text}: none of its addresses can be used; resolving again in \
                             {wait:.0} s"
                        );
                        e.resolution = Resolution::RetryAt(now.add_secs_f64(wait), wait);
                    } else if e.members.len() < e.max_members {
                        // A pool smaller than max-sources: look for more now and then.
                        tracing::debug!(
                            "{text}: {} of {} members; resolving again in {RETRY_MAX:.0} s",
                            e.members.len(),
                            e.max_members
                        );
                        e.resolution = Resolution::RetryAt(now.add_secs_f64(RETRY_MAX), RETRY_MAX);
                    }
                }
                Ok(_) | Err(_) => {
                    let why = match &found {
                        Err(e) => e.clone(),
                        Ok(_) => "no addresses".into(),
                    };
                    let wait = next_backoff(backoff);
                    tracing::warn!(
                        "cannot resolve {text}: {why}; retrying in {wait:.0} s (running on the \
                         other sources meanwhile)"
                    );
                    self.entries[i].resolution = Resolution::RetryAt(now.add_secs_f64(wait), wait);
                }
            }
        }
    }

    /// Drops the entry's bad members, one for each address in `addrs` that could replace it,
    /// making room for [`add`](Self::add).
    fn replace_bad(
        &mut self,
        entry: usize,
        addrs: &[SocketAddr],
        system: &mut SyncSystem,
        now: MonoTime,
    ) {
        let in_use: Vec<SocketAddr> = self.links.values().map(|l| l.found_at()).collect();
        let e = &mut self.entries[entry];
        e.avoid.retain(|_, until| *until > now);
        let fresh = addrs
            .iter()
            .filter(|a| !in_use.contains(a) && !e.avoid.contains_key(a))
            .count();
        let free = e.max_members.saturating_sub(e.members.len());
        let drop = fresh.saturating_sub(free).min(e.bad.len());
        for id in e.bad.drain(..drop).collect::<Vec<_>>() {
            let label = self.label(id).unwrap_or_default();
            tracing::warn!("{label}: replaced by another member of the pool");
            system.remove_source(id);
            let e = &mut self.entries[entry];
            e.members.retain(|m| *m != id);
            e.strikes.remove(&id);
            if let Some(link) = self.links.remove(&id) {
                self.entries[entry]
                    .avoid
                    .insert(link.found_at(), now.add_secs_f64(AVOID_FOR));
            }
        }
        self.entries[entry].bad.clear();
    }

    /// Configured servers and pools with no source yet (names not resolved so far).
    pub fn unresolved(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !e.removed && e.members.is_empty())
            .count()
    }

    /// Adds up to the entry's free places from `addrs` as sources; returns how many.
    fn add(
        &mut self,
        entry: usize,
        addrs: Vec<SocketAddr>,
        system: &mut SyncSystem,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) -> usize {
        let in_use: Vec<SocketAddr> = self.links.values().map(|l| l.server).collect();
        self.entries[entry].avoid.retain(|_, until| *until > now);
        let mut added = 0;
        for addr in addrs {
            let e = &self.entries[entry];
            if e.members.len() >= e.max_members {
                break;
            }
            if in_use.contains(&addr) || e.avoid.contains_key(&addr) {
                continue;
            }
            if self.attach(entry, addr, None, system, now, rng).is_some() {
                added += 1;
            }
        }
        added
    }

    /// Makes `addr` a source of `entry` (with its NTS state, if any).
    fn attach(
        &mut self,
        entry: usize,
        addr: SocketAddr,
        nts: Option<NtsLink>,
        system: &mut SyncSystem,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) -> Option<SourceId> {
        let e = &mut self.entries[entry];
        // With a port per request, the socket is opened when a request goes out.
        let socket = if self.port_per_request {
            None
        } else {
            match client_socket(addr) {
                Ok(s) => Some(s),
                Err(err) => {
                    tracing::warn!("{}: cannot open a client socket for {addr}: {err}", e.text);
                    return None;
                }
            }
        };
        let id = system.add_source(addr, e.config, now, rng);
        e.members.push(id);
        tracing::info!(
            "source {}{addr}: minpoll {} maxpoll {} iburst {}{}",
            match &e.host {
                Host::Name(n) => format!("{n} "),
                Host::Ip(_) => String::new(),
            },
            e.config.minpoll,
            e.config.maxpoll,
            e.config.iburst,
            if nts.is_some() { " nts" } else { "" }
        );
        self.links.insert(
            id,
            Link {
                socket,
                server: addr,
                entry,
                nts,
            },
        );
        Some(id)
    }

    /// Re-resolves every name at once (SIGHUP).
    pub fn resolve_again(&mut self, now: MonoTime) {
        for e in &mut self.entries {
            if matches!(e.host, Host::Name(_))
                && !e.removed
                && e.members.len() < e.max_members
                && !matches!(e.resolution, Resolution::InFlight(_))
            {
                e.resolution = Resolution::RetryAt(now, 0.0);
            }
        }
    }

    /// Checks the pools against the sources' states: members that are unreachable, denied, or
    /// falsetickers for several checks in a row are marked for replacement and the pool is
    /// resolved again (see [`take_resolved`](Self::take_resolved)).
    pub fn check_pools(&mut self, status: &SystemStatus, now: MonoTime) {
        if self.next_pool_check.is_none_or(|at| at > now) {
            return;
        }
        self.next_pool_check = self.pool_check_interval().map(|i| now.add_secs_f64(i));
        let states: HashMap<SourceId, SourceState> =
            status.sources.iter().map(|s| (s.id, s.state)).collect();
        for i in 0..self.entries.len() {
            if !self.entries[i].is_pool || self.entries[i].removed {
                continue;
            }
            let e = &mut self.entries[i];
            e.bad.clear();
            for &id in &e.members {
                let state = states.get(&id).copied();
                let strikes = e.strikes.entry(id).or_insert(0);
                *strikes = if state == Some(SourceState::Falseticker) {
                    *strikes + 1
                } else {
                    0
                };
                let bad = match state {
                    Some(SourceState::Unreachable | SourceState::Denied) => true,
                    Some(SourceState::Falseticker) => *strikes >= FALSETICKER_CHECKS,
                    _ => false,
                };
                if bad {
                    e.bad.push(id);
                }
            }
            let wanted = !e.bad.is_empty() || e.members.len() < e.max_members;
            if wanted && e.resolution == Resolution::Done {
                e.resolution = Resolution::RetryAt(now, 0.0);
            }
        }
    }

    /// The earliest deadline: a resolution to retry, a pool check.
    pub fn next_deadline(&self) -> Option<MonoTime> {
        self.entries
            .iter()
            .filter_map(|e| match e.resolution {
                Resolution::RetryAt(at, _) => Some(at),
                _ => None,
            })
            .chain(self.next_pool_check)
            .chain(
                self.links
                    .values()
                    .filter_map(|l| l.nts.as_ref().and_then(NtsLink::due)),
            )
            .min()
    }

    /// Sends `request` to source `id`: from a new socket with a port per request (closing the
    /// previous request's), else from the source's socket. With NTS the request spends a
    /// cookie; without one it is not sent. Returns when the request left, if the kernel took
    /// it (see [`SyncSystem::transmitted`](ntpkit_core::SyncSystem::transmitted)), as
    /// `to_clock` makes local clock time of a system clock reading (Unix ns): the kernel's
    /// transmit timestamp where it gives one, else the system clock read right before the send,
    /// once the socket and the request are ready.
    pub fn send(
        &mut self,
        id: SourceId,
        request: &[u8],
        now: MonoTime,
        rng: &mut dyn RngCore,
        to_clock: impl FnOnce(i64) -> ClockTime,
    ) -> Option<ClockTime> {
        let l = self.links.get_mut(&id)?;
        let protected;
        let request = match l.nts.as_mut() {
            None => request,
            Some(nts) => match nts.protect(request, now, rng) {
                Some(bytes) => {
                    protected = bytes;
                    &protected[..]
                }
                None => return None,
            },
        };
        if self.port_per_request {
            // The previous request's socket closes once this one is open, so that some socket
            // asks for receive timestamps throughout: while none does, the kernel stops
            // stamping arrivals, and turns it on again only after a moment.
            match client_socket(l.server) {
                Ok(s) => l.socket = Some(s),
                Err(e) => {
                    l.socket = None;
                    tracing::warn!("cannot open a client socket for {}: {e}", l.server);
                    return None;
                }
            }
        }
        let socket = l.socket.as_ref()?;
        match socket.send_to_timed(request, l.server) {
            Ok(sent) => Some(to_clock(sent)),
            Err(e) => {
                tracing::debug!("send to {}: {e}", l.server);
                None
            }
        }
    }

    /// Adds every open source socket to `set`.
    pub fn register(&mut self, set: &mut PollSet) {
        self.registered.0 = set.len();
        self.registered.1.clear();
        for (id, l) in &self.links {
            if let Some(socket) = &l.socket {
                set.push(socket.as_raw_fd(), Interest::Read);
                self.registered.1.push(*id);
            }
        }
    }

    /// The datagrams that `set` says arrived (one per readable socket): source, bytes, and
    /// receive time (Unix ns). Datagrams from any other address than the source's are dropped;
    /// so are replies to NTS requests that do not authenticate (an authentic one is passed on
    /// as its NTP header).
    pub fn receive(
        &mut self,
        set: &PollSet,
        now: MonoTime,
        mut each: impl FnMut(SourceId, &[u8], i64),
    ) {
        let mut buf = [0u8; 2048];
        for (k, id) in self.registered.1.iter().enumerate() {
            if !set.readable(self.registered.0 + k) {
                continue;
            }
            let Some(l) = self.links.get_mut(id) else {
                continue;
            };
            let Some(socket) = &l.socket else {
                continue;
            };
            match socket.recv_from(&mut buf) {
                Ok((n, from, rx)) if from == l.server => match l.nts.as_mut() {
                    None => each(*id, &buf[..n], rx),
                    Some(nts) => {
                        if let Some(header) = nts.open(&buf[..n], now) {
                            each(*id, header, rx);
                        }
                    }
                },
                Ok((_, from, _)) => tracing::debug!(
                    "dropped a datagram from {from} on the socket of {}",
                    l.server
                ),
                // Readable without a datagram: a transmit timestamp came late into the error
                // queue, which reports an error until it is emptied.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    socket.take_transmit_timestamp();
                }
                // ICMP port unreachable and the like: the source stays unreachable.
                Err(e) => tracing::debug!("receive from {}: {e}", l.server),
            }
        }
    }
}

fn next_backoff(previous: f64) -> f64 {
    if previous <= 0.0 {
        RETRY_FIRST
    } else {
        (previous * 2.0).min(RETRY_MAX)
    }
}

/// A non-blocking client socket with kernel receive and transmit timestamps, for talking to
/// `server`.
fn client_socket(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(
        bind,
        &UdpSocketOptions {
            timestamps: true,
            transmit_timestamps: true,
            nonblocking: true,
            ..Default::default()
        },
    )
}
