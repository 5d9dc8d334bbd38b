//! `ntpkit daemon` configuration: TOML parsed into types (unknown keys rejected), then checked
//! for what no type can express (minpoll ≤ maxpoll, a stratum in 1–15, an address that can be
//! an address, a directory that exists, …). Every problem in the file is reported, each saying
//! what is wrong and how to fix it. `docs/config.md` lists every key.

use crate::tcp::TcpLimits;
use ntpkit_core::sync::{DisciplineConfig, SampleLimits, SourceConfig, SystemConfig};
use ntpkit_nts::ke::DEFAULT_KE_PORT;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonConfig {
    /// Upstream servers (`[[server]]` tables).
    #[serde(default)]
    pub server: Vec<ServerEntry>,
    /// Pools: one name resolving to several servers (`[[pool]]` tables).
    #[serde(default)]
    pub pool: Vec<PoolEntry>,
    /// UDP addresses to serve NTP on (none: client only).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// TCP addresses to serve ntpkit's framed NTP on.
    #[serde(default)]
    pub tcp: Vec<SocketAddr>,
    /// Threads per `listen` address that serve UDP with batched system calls; 0 (default)
    /// serves from the event loop.
    #[serde(default)]
    pub serve_threads: usize,
    /// Limits of the TCP listeners.
    #[serde(default)]
    pub tcp_limits: TcpLimitsSection,
    /// Who is served, as ordered rules (`allow NET`, `deny NET [drop|kod|rstr]`; the first
    /// that matches wins). None configured: nobody is served.
    #[serde(default)]
    pub access: Vec<String>,
    /// Per-client rate limits of the NTP listeners.
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    /// The clock to discipline.
    #[serde(default)]
    pub clock: ClockSection,
    /// Selection and discipline settings.
    #[serde(default)]
    pub sync: SyncSection,
    /// File that keeps the frequency estimate across restarts (written atomically).
    pub drift_file: Option<PathBuf>,
    /// Unix socket where `ntpkit status` reads the daemon's state (any user may read it).
    pub control_socket: Option<PathBuf>,
    /// `IP:PORT` of the Prometheus metrics endpoint (HTTP, `GET /metrics`); none: off.
    pub metrics: Option<String>,
    /// Log level: error, warn, info, debug, trace.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// User to run as once sockets are bound (started as root); its primary group too.
    pub user: Option<String>,
    /// Confine the running daemon to the system calls it makes (a seccomp filter); on by
    /// default where the kernel supports it.
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Send each request to a source from a new socket (a random source port); false: one
    /// socket per source for its life.
    #[serde(default = "default_true")]
    pub port_per_request: bool,
    /// Users besides root and the daemon's own user who may change the daemon through the
    /// control socket (add and remove sources, burst, step the clock).
    #[serde(default)]
    pub control_users: Vec<String>,
    /// Publish the clock's error bound in shared memory, in AWS ClockBound's layout
    /// (version 2), for ClockBound clients and the `ntpkit-clock` crate: `true` for
    /// ClockBound's own path (/var/run/clockbound/shm0), or a path. Off when absent.
    #[serde(default)]
    pub clockbound_shm: ClockBoundShm,
    /// Serve NTS (`[nts-ke-server]`): a key-exchange server, and authenticated replies to NTS
    /// requests on the NTP listeners.
    pub nts_ke_server: Option<NtsKeServerSection>,
}

/// `clockbound-shm`: off, on at ClockBound's default path, or on at a path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClockBoundShm {
    /// No page.
    #[default]
    Off,
    /// A page at this path.
    At(PathBuf),
}

impl ClockBoundShm {
    /// Where to publish, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ClockBoundShm::Off => None,
            ClockBoundShm::At(p) => Some(p),
        }
    }
}

impl<'de> Deserialize<'de> for ClockBoundShm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ClockBoundShm;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "true (ClockBound's path, /var/run/clockbound/shm0), false, or the page's \
                     absolute path",
                )
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<ClockBoundShm, E> {
                Ok(if on {
                    ClockBoundShm::At(PathBuf::from(ntpkit_clock::DEFAULT_PATH))
                } else {
                    ClockBoundShm::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<ClockBoundShm, E> {
                if !path.starts_with('/') {
                    return Err(E::custom(format!(
                        "clockbound-shm = {path:?}: give an absolute path, e.g. \
                         \"{}\", or true for that one",
                        ntpkit_clock::DEFAULT_PATH
                    )));
                }
                Ok(ClockBoundShm::At(PathBuf::from(path)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Default for DaemonConfig {
    /// What an empty file gives.
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

/// One upstream server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerEntry {
    /// `host[:port]`, `IPv4[:port]`, `IPv6` or `[IPv6]:port`; port 123 if absent.
    pub address: String,
    /// Shortest poll interval, log2 seconds.
    #[serde(default = "default_minpoll")]
    pub minpoll: i8,
    /// Longest poll interval, log2 seconds.
    #[serde(default = "default_maxpoll")]
    pub maxpoll: i8,
    /// Burst of requests at start.
    #[serde(default = "default_true")]
    pub iburst: bool,
    /// Network Time Security: a key exchange with the host (the port of `address` is then
    /// the NTS-KE port, 4460 unless given), then only authenticated replies are used.
    #[serde(default)]
    pub nts: bool,
    /// PEM file of the certificates trusted for NTS-KE; the system's CA bundle if absent.
    pub ca_file: Option<PathBuf>,
}

/// A pool: a name whose addresses all become sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolEntry {
    /// `name[:port]`.
    pub name: String,
    /// Most addresses used from the pool at once.
    #[serde(default = "default_pool_max")]
    pub max_sources: usize,
    /// Shortest poll interval, log2 seconds.
    #[serde(default = "default_minpoll")]
    pub minpoll: i8,
    /// Longest poll interval, log2 seconds.
    #[serde(default = "default_maxpoll")]
    pub maxpoll: i8,
    /// Burst of requests at start.
    #[serde(default = "default_true")]
    pub iburst: bool,
    /// Network Time Security: a key exchange with the host (the port of `address` is then
    /// the NTS-KE port, 4460 unless given), then only authenticated replies are used.
    #[serde(default)]
    pub nts: bool,
    /// PEM file of the certificates trusted for NTS-KE; the system's CA bundle if absent.
    pub ca_file: Option<PathBuf>,
}

/// Limits of the TCP listeners (`[tcp-limits]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TcpLimitsSection {
    /// Most connections open at once.
    #[serde(default = "default_tcp_max")]
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    #[serde(default = "default_tcp_per_address")]
    pub per_address: usize,
    /// Seconds a connection may stay without a request.
    #[serde(default = "default_tcp_idle")]
    pub idle_timeout: f64,
    /// Seconds a request frame may take to arrive once its first byte has.
    #[serde(default = "default_tcp_frame")]
    pub frame_timeout: f64,
    /// Seconds replies may wait for a client that does not read them.
    #[serde(default = "default_tcp_write")]
    pub write_timeout: f64,
}

/// Per-client rate limits (`[rate-limit]`); see [`ntpkit_core::RateLimit`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RateLimitSection {
    /// Off: every request of an allowed client is answered.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// On average one request per 2^interval seconds per client.
    #[serde(default)]
    pub interval: i8,
    /// Requests a client may send at once above the average.
    #[serde(default = "default_burst")]
    pub burst: u16,
    /// Over the limit, one request in 2^kod-leak gets a RATE kiss-o'-death.
    #[serde(default = "default_kod_leak")]
    pub kod_leak: u8,
    /// Bits of an IPv4 address that make one client.
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 address that make one client.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// The table remembers 2^table-bits clients.
    #[serde(default = "default_table_bits")]
    pub table_bits: u8,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

fn default_burst() -> u16 {
    ntpkit_core::RateLimit::default().burst
}
fn default_kod_leak() -> u8 {
    ntpkit_core::RateLimit::default().kod_leak
}
fn default_ipv4_prefix() -> u8 {
    ntpkit_core::RateLimit::default().ipv4_prefix
}
fn default_ipv6_prefix() -> u8 {
    ntpkit_core::RateLimit::default().ipv6_prefix
}
fn default_table_bits() -> u8 {
    ntpkit_core::RateLimit::default().table_bits
}

impl Default for TcpLimitsSection {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

/// Which clock, and the virtual clock's parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClockSection {
    /// `system` (adjusts the OS clock; needs CAP_SYS_TIME), `observe` (never adjusts it),
    /// `virtual` (a software clock on top of the OS clock).
    #[serde(default)]
    pub backend: ClockBackendKind,
    /// Virtual clock: initial offset from the OS clock, seconds.
    #[serde(default)]
    pub offset: f64,
    /// Virtual clock: frequency error, ppm (positive = fast).
    #[serde(default)]
    pub frequency_ppm: f64,
    /// Virtual clock: random-walk wander of the frequency, ppm per √s.
    #[serde(default)]
    pub wander_ppm: f64,
    /// Seed of the virtual clock's wander (random if absent).
    pub seed: Option<u64>,
}

impl Default for ClockSection {
    fn default() -> Self {
        ClockSection {
            backend: ClockBackendKind::Observe,
            offset: 0.0,
            frequency_ppm: 0.0,
            wander_ppm: 0.0,
            seed: None,
        }
    }
}

/// Clock backends.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClockBackendKind {
    /// The OS clock, adjusted with clock_adjtime.
    System,
    /// The OS clock, read only: corrections are computed and reported, never applied.
    #[default]
    Observe,
    /// A software clock = OS clock + its own offset and frequency error.
    Virtual,
}

/// Selection and discipline settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncSection {
    /// Sources that must agree before the clock is disciplined.
    #[serde(default = "default_minsources")]
    pub minsources: usize,
    /// Offsets beyond this are stepped (seconds).
    #[serde(default = "default_step_threshold")]
    pub step_threshold: f64,
    /// Offsets beyond this are refused (seconds; 0 disables).
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: f64,
    /// Step at start-up.
    #[serde(default = "default_true")]
    pub step_at_startup: bool,
    /// Seconds an offset must exceed the step threshold before a step after start-up.
    #[serde(default = "default_stepout")]
    pub stepout: f64,
    /// Largest root distance accepted (seconds).
    #[serde(default = "default_max_distance")]
    pub max_distance: f64,
    /// Serve this stratum while unsynchronized (like chrony's `local stratum`); a daemon with
    /// no servers and `local-stratum = 1` is a stratum-1 server of its clock.
    pub local_stratum: Option<u8>,
    /// Most slewing, ppm.
    #[serde(default = "default_max_slew")]
    pub max_slew_ppm: f64,
    /// Seconds the last update is served while no source is selectable.
    #[serde(default = "default_holdover")]
    pub holdover: f64,
    /// Largest rate at which the clock's error may grow beyond its frequency estimate, for the
    /// error bound (chrony's `maxclockerror`), ppm.
    #[serde(default = "default_max_clock_error")]
    pub max_clock_error_ppm: f64,
}

impl Default for SyncSection {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

fn default_log_level() -> String {
    "info".into()
}
/// Shortest poll interval of a source unless configured, log2 s.
pub const DEFAULT_MINPOLL: i8 = 6;
/// Longest poll interval of a source unless configured, log2 s.
pub const DEFAULT_MAXPOLL: i8 = 10;
/// Most members of a pool unless configured.
pub const DEFAULT_POOL_MAX: usize = 4;
/// Most members a pool may have.
pub const MAX_POOL_SOURCES: usize = 16;

fn default_minpoll() -> i8 {
    DEFAULT_MINPOLL
}
fn default_maxpoll() -> i8 {
    DEFAULT_MAXPOLL
}
fn default_true() -> bool {
    true
}
fn default_pool_max() -> usize {
    DEFAULT_POOL_MAX
}
fn default_minsources() -> usize {
    1
}
fn default_step_threshold() -> f64 {
    0.128
}
fn default_panic_threshold() -> f64 {
    1000.0
}
fn default_stepout() -> f64 {
    300.0
}
fn default_max_distance() -> f64 {
    1.5
}
fn default_max_slew() -> f64 {
    83_333.0
}
fn default_holdover() -> f64 {
    3600.0
}
fn default_max_clock_error() -> f64 {
    ntpkit_core::sync::bound::DEFAULT_MAX_CLOCK_ERROR * 1e6
}
/// The largest maximum clock error rate accepted: a bound growing faster than 0.1 % is no
/// bound anyone can use.
const MAX_CLOCK_ERROR_PPM: f64 = 1000.0;
/// The largest frequency correction the `system` backend can apply (the kernel's tick length
/// moves by at most 10 %; ntpkit keeps within 99,000 ppm).
const MAX_SLEW_PPM: f64 = 99_000.0;

fn default_tcp_max() -> usize {
    1024
}
fn default_tcp_per_address() -> usize {
    8
}
fn default_tcp_idle() -> f64 {
    30.0
}
fn default_tcp_frame() -> f64 {
    2.0
}
fn default_tcp_write() -> f64 {
    5.0
}

/// A configuration error: what is wrong, where, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the line and the key.
        message: String,
    },
    /// Values out of range or contradicting each other: every one found, one per line.
    #[error("{}", problems.iter().map(|p| format!("{}: {p}", path.display())).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it, one entry per problem.
        problems: Vec<String>,
    },
}

/// A source's host as written in the configuration.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Host {
    /// An IP address: used as it is.
    Ip(IpAddr),
    /// A name: resolved (and retried) while the daemon runs.
    Name(String),
}

/// Splits `host[:port]`, `[IPv6]:port` or a bare IPv6 address into host and port (`default`
/// if absent), checking what can be checked without resolving: the port is a port, something
/// that looks like an IPv4 address is one, a name is a valid host name.
pub fn parse_host_port(text: &str, default: u16) -> Result<(Host, u16), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty address; give host[:port]".into());
    }
    let port_of = |p: &str| match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("{p:?} in {text:?} is not a port number (1–65535)")),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ']' after the IPv6 address"))?;
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} in {text:?} is not an IPv6 address"))?;
        let port = match tail {
            "" => default,
            t => port_of(
                t.strip_prefix(':')
                    .ok_or_else(|| format!("{text:?}: expected ':PORT' after the IPv6 address"))?,
            )?,
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    if text.matches(':').count() > 1 {
        return text
            .parse::<IpAddr>()
            .map(|ip| (Host::Ip(ip), default))
            .map_err(|_| {
                format!("{text:?} is not an IPv6 address (write [IPv6]:PORT to give a port)")
            });
    }
    let (host, port) = match text.split_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (text, default),
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Host::Ip(IpAddr::V4(ip)), port));
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("{host:?} is not an IPv4 address"));
    }
    let valid_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "{host:?} is neither an IP address nor a valid host name"
        ));
    }
    Ok((Host::Name(host.to_string()), port))
}

impl DaemonConfig {
    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks configuration text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<DaemonConfig, ConfigError> {
        let config: DaemonConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Every problem of the configuration, in file order as far as possible.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (lo, hi) = ntpkit_core::sync::source::POLL_LIMITS;
        let polls = |what: &str, min: i8, max: i8, out: &mut Vec<String>| {
            if !(lo..=hi).contains(&min) || !(lo..=hi).contains(&max) {
                out.push(format!(
                    "{what}: minpoll and maxpoll must be within {lo}..={hi} (log2 seconds)"
                ));
            } else if min > max {
                out.push(format!(
                    "{what}: minpoll {min} is above maxpoll {max}; swap them"
                ));
            }
        };
        let mut seen = HashSet::new();
        for s in &self.server {
            let what = format!("server {:?}", s.address);
            match parse_host_port(&s.address, s.default_port()) {
                Err(e) => out.push(format!("{what}: {e}")),
                Ok(key) => {
                    if !seen.insert(key) {
                        out.push(format!(
                            "{what} is listed twice; remove the duplicate (one server is one \
                             source, whatever minsources counts on)"
                        ));
                    }
                }
            }
            polls(&what, s.minpoll, s.maxpoll, &mut out);
            nts_problems(&what, s.nts, &s.ca_file, &mut out);
        }
        for p in &self.pool {
            let what = format!("pool {:?}", p.name);
            if let Err(e) = parse_host_port(&p.name, p.default_port()) {
                out.push(format!("{what}: {e}"));
            }
            if p.max_sources == 0 || p.max_sources > MAX_POOL_SOURCES {
                out.push(format!(
                    "{what}: max-sources = {} must be 1–16",
                    p.max_sources
                ));
            }
            polls(&what, p.minpoll, p.maxpoll, &mut out);
            nts_problems(&what, p.nts, &p.ca_file, &mut out);
        }
        if let Some(st) = self.sync.local_stratum {
            if !(1..=15).contains(&st) {
                out.push(format!("sync.local-stratum = {st}: must be 1–15"));
            }
        }
        let possible: usize =
            self.server.len() + self.pool.iter().map(|p| p.max_sources).sum::<usize>();
        if possible == 0 && self.sync.local_stratum.is_none() {
            out.push(
                "no [[server]] or [[pool]] and no sync.local-stratum: nothing to synchronize to; \
                 add a [[server]] with an address, or set sync.local-stratum to serve this clock"
                    .into(),
            );
        }
        if self.sync.minsources == 0 {
            out.push("sync.minsources = 0: must be at least 1".into());
        } else if possible > 0 && self.sync.minsources > possible {
            out.push(format!(
                "sync.minsources = {} but at most {possible} source(s) are configured: the clock \
                 would never be disciplined; lower minsources or add sources",
                self.sync.minsources
            ));
        }
        let positive = [
            ("sync.step-threshold", self.sync.step_threshold),
            ("sync.max-distance", self.sync.max_distance),
            ("sync.holdover", self.sync.holdover),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                out.push(format!("{name} = {v}: must be a positive number"));
            }
        }
        let bounded = [
            (
                "sync.max-slew-ppm",
                self.sync.max_slew_ppm,
                MAX_SLEW_PPM,
                " ppm",
            ),
            (
                "sync.max-clock-error-ppm",
                self.sync.max_clock_error_ppm,
                MAX_CLOCK_ERROR_PPM,
                " ppm",
            ),
            (
                "tcp-limits.idle-timeout",
                self.tcp_limits.idle_timeout,
                86_400.0,
                " s",
            ),
            (
                "tcp-limits.frame-timeout",
                self.tcp_limits.frame_timeout,
                3_600.0,
                " s",
            ),
            (
                "tcp-limits.write-timeout",
                self.tcp_limits.write_timeout,
                3_600.0,
                " s",
            ),
        ];
        for (name, v, max, unit) in bounded {
            if !(v.is_finite() && v > 0.0 && v <= max) {
                out.push(format!(
                    "{name} = {v}: must be more than 0 and at most {max}{unit}"
                ));
            }
        }
        let non_negative = [
            (
                "sync.panic-threshold",
                self.sync.panic_threshold,
                " (0 disables it)",
            ),
            ("sync.stepout", self.sync.stepout, ""),
            ("clock.wander-ppm", self.clock.wander_ppm, ""),
        ];
        for (name, v, note) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                out.push(format!("{name} = {v}: must be a number ≥ 0{note}"));
            }
        }
        if !self.clock.offset.is_finite() {
            out.push(format!(
                "clock.offset = {}: must be a number of seconds",
                self.clock.offset
            ));
        }
        if !(self.clock.frequency_ppm.is_finite() && self.clock.frequency_ppm.abs() <= 500.0) {
            out.push(format!(
                "clock.frequency-ppm = {}: must be within ±500 ppm (beyond, a clock cannot be \
                 corrected)",
                self.clock.frequency_ppm
            ));
        }
        if self.clock.backend != ClockBackendKind::Virtual
            && (self.clock.offset != 0.0
                || self.clock.frequency_ppm != 0.0
                || self.clock.wander_ppm != 0.0
                || self.clock.seed.is_some())
        {
            out.push(
                "clock.offset, clock.frequency-ppm, clock.wander-ppm and clock.seed apply to the \
                 virtual clock only; set clock.backend = \"virtual\" or remove them"
                    .into(),
            );
        }
        for (key, addrs) in [("listen", &self.listen), ("tcp", &self.tcp)] {
            let mut seen = HashSet::new();
            for a in addrs {
                if !seen.insert(a) {
                    out.push(format!("{key}: {a} is listed twice; remove the duplicate"));
                }
            }
        }
        for rule in &self.access {
            if let Err(e) = rule.parse::<ntpkit_core::Rule>() {
                out.push(format!("access: {e}"));
            }
        }
        let r = &self.rate_limit;
        if !(-20..=12).contains(&r.interval) {
            out.push(format!(
                "rate-limit.interval = {}: must be −20…12 (log2 seconds)",
                r.interval
            ));
        }
        if r.burst == 0 {
            out.push("rate-limit.burst = 0: must be at least 1".into());
        }
        if r.kod_leak > 16 {
            out.push(format!(
                "rate-limit.kod-leak = {}: must be 0–16",
                r.kod_leak
            ));
        }
        if r.ipv4_prefix > 32 || r.ipv6_prefix > 128 {
            out.push("rate-limit.ipv4-prefix must be 0–32 and ipv6-prefix 0–128".into());
        }
        if !(8..=24).contains(&r.table_bits) {
            out.push(format!(
                "rate-limit.table-bits = {}: must be 8–24",
                r.table_bits
            ));
        }
        if self.serve_threads > 64 {
            out.push(format!(
                "serve-threads = {}: at most 64",
                self.serve_threads
            ));
        }
        if self.tcp_limits.max_connections == 0 || self.tcp_limits.per_address == 0 {
            out.push("tcp-limits.max-connections and per-address must be at least 1".into());
        }
        for (key, path) in [
            ("drift-file", &self.drift_file),
            ("control-socket", &self.control_socket),
        ] {
            if let Some(p) = path {
                if let Some(problem) = directory_problem(p) {
                    out.push(format!("{key} = {:?}: {problem}", p.display().to_string()));
                }
            }
        }
        for user in &self.control_users {
            match ntpkit_os::privilege::lookup_user(user) {
                Ok(Some(_)) => {}
                Ok(None) => out.push(format!(
                    "control-users: no user {user:?}; remove it or create the user"
                )),
                Err(e) => out.push(format!("control-users: cannot look up {user:?}: {e}")),
            }
        }
        if !self.control_users.is_empty() && self.control_socket.is_none() {
            out.push(
                "control-users is set but there is no control-socket to use it on; add \
                 control-socket = \"/run/ntpkit/ntpkit.sock\" or remove control-users"
                    .into(),
            );
        }
        if let Some(user) = &self.user {
            match ntpkit_os::privilege::lookup_user(user) {
                Ok(Some(_)) => {}
                Ok(None) => out.push(format!(
                    "user = {user:?}: no such user; create it (e.g. `useradd --system \
                     --no-create-home --shell /usr/sbin/nologin {user}`) or remove `user`"
                )),
                Err(e) => out.push(format!("user = {user:?}: cannot look it up: {e}")),
            }
        }
        if let Some(p) = self.clockbound_shm.path() {
            if p.file_name().is_none() || p.is_dir() {
                out.push(format!(
                    "clockbound-shm = {:?}: names a directory, not a file; e.g. \"{}\"",
                    p.display().to_string(),
                    ntpkit_clock::DEFAULT_PATH
                ));
            }
        }
        if let Some(problem) = self.metrics_problem() {
            out.push(problem);
        }
        out.extend(self.nts_server_problems());
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            out.push(format!(
                "log-level = {:?}: use one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        out
    }

    /// The metrics endpoint's address, if configured (checked when loading).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_deref().and_then(|m| m.trim().parse().ok())
    }

    fn metrics_problem(&self) -> Option<String> {
        let text = self.metrics.as_deref()?;
        let example = "e.g. metrics = \"127.0.0.1:9975\" (this host only) or \"[::]:9975\" \
                       (every interface)";
        let Ok(addr) = text.trim().parse::<SocketAddr>() else {
            return Some(format!(
                "metrics = {text:?}: not an IP address and port; write IP:PORT or [IPv6]:PORT, \
                 {example}"
            ));
        };
        if addr.port() == 0 {
            return Some(format!(
                "metrics = {text:?}: port 0 would be a different port at every start; give the \
                 port Prometheus scrapes, {example}"
            ));
        }
        // The endpoint's `[::]` takes IPv4 too; the NTP listeners' `[::]` is IPv6 only.
        let clash = |a: &SocketAddr| {
            let same_family = a.is_ipv4() == addr.is_ipv4();
            a.port() == addr.port()
                && (a.ip() == addr.ip()
                    || (same_family && (a.ip().is_unspecified() || addr.ip().is_unspecified()))
                    || (addr.is_ipv6() && addr.ip().is_unspecified()))
        };
        self.tcp.iter().find(|a| clash(a)).map(|a| {
            format!(
                "metrics = {text:?}: the same TCP port as tcp {a}; give the metrics endpoint a \
                 port of its own, {example}"
            )
        })
    }

    /// The core's system configuration.
    pub fn system_config(&self, precision: i8, initial_frequency_ppm: Option<f64>) -> SystemConfig {
        SystemConfig {
            minsources: self.sync.minsources,
            discipline: DisciplineConfig {
                step_threshold: self.sync.step_threshold,
                panic_threshold: self.sync.panic_threshold,
                stepout: self.sync.stepout,
                step_at_startup: self.sync.step_at_startup,
                max_slew_ppm: self.sync.max_slew_ppm,
                initial_frequency_ppm,
                // The kernel applies the frequency correction to CLOCK_MONOTONIC too.
                slewed_time_base: self.clock.backend == ClockBackendKind::System,
                ..DisciplineConfig::default()
            },
            limits: SampleLimits {
                max_distance: self.sync.max_distance,
                local_precision: precision,
                ..SampleLimits::default()
            },
            local_stratum: self.sync.local_stratum,
            holdover: self.sync.holdover,
            max_clock_error: self.sync.max_clock_error_ppm * 1e-6,
            ..SystemConfig::default()
        }
    }

    /// Who is served: the `access` rules, or nobody without any.
    pub fn access_list(&self) -> ntpkit_core::AccessList {
        if self.access.is_empty() {
            return ntpkit_core::AccessList::nobody();
        }
        // Checked when loading: every rule parses.
        ntpkit_core::AccessList::new(self.access.iter().filter_map(|r| r.parse().ok()).collect())
    }

    /// The rate limits, if on.
    pub fn rate_limit(&self) -> Option<ntpkit_core::RateLimit> {
        let r = &self.rate_limit;
        r.enabled.then_some(ntpkit_core::RateLimit {
            interval: r.interval,
            burst: r.burst,
            kod_leak: r.kod_leak,
            ipv4_prefix: r.ipv4_prefix,
            ipv6_prefix: r.ipv6_prefix,
            table_bits: r.table_bits,
        })
    }

    /// The TCP listeners' limits.
    pub fn tcp_limits(&self) -> TcpLimits {
        let l = &self.tcp_limits;
        TcpLimits {
            max_connections: l.max_connections,
            per_address: l.per_address,
            idle_timeout: Duration::from_secs_f64(l.idle_timeout),
            frame_timeout: Duration::from_secs_f64(l.frame_timeout),
            write_timeout: Duration::from_secs_f64(l.write_timeout),
            ..TcpLimits::default()
        }
    }
}

/// What is wrong with the directory that will hold `path`, if anything.
fn directory_problem(path: &Path) -> Option<String> {
    if path.file_name().is_none() || path.is_dir() {
        return Some("names a directory, not a file".into());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "directory {} does not exist; create it (mkdir -p {}) or choose another path",
            dir.display(),
            dir.display()
        )),
        Err(e) => Some(format!("cannot use directory {}: {e}", dir.display())),
    }
}

/// NTS serving (`[nts-ke-server]`): the key-exchange server and its files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NtsKeServerSection {
    /// TCP addresses of the key-exchange server, `IP[:PORT]` or `[IPv6]:PORT`; port 4460 if
    /// absent.
    pub listen: Vec<String>,
    /// PEM file of the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key.
    pub key: PathBuf,
    /// File of the cookie master secret; created (32 random bytes, mode 0600) when missing.
    pub master: PathBuf,
    /// Seconds after which cookies are sealed with a new key derived from the master secret.
    #[serde(default = "default_nts_rotation")]
    pub rotation: u64,
    /// NTP server announced to clients (none: this host).
    pub ntp_server: Option<String>,
    /// NTP port announced to clients (none: the first `listen` port, unless 123).
    pub ntp_port: Option<u16>,
}

fn default_nts_rotation() -> u64 {
    86_400
}

impl DaemonConfig {
    /// What NTS serving is asked to do, if anything (checked when loading).
    pub fn nts_serve_config(&self) -> Option<crate::nts_serve::NtsServeConfig> {
        let n = self.nts_ke_server.as_ref()?;
        let ke = n
            .listen
            .iter()
            .filter_map(|l| match parse_host_port(l, DEFAULT_KE_PORT) {
                Ok((Host::Ip(ip), port)) => Some(SocketAddr::new(ip, port)),
                _ => None,
            })
            .collect();
        Some(crate::nts_serve::NtsServeConfig {
            ke,
            cert: n.cert.clone(),
            key: n.key.clone(),
            master: n.master.clone(),
            rotation_secs: n.rotation,
            ntp_server: n.ntp_server.clone(),
            ntp_port: n.ntp_port,
            names: crate::nts_serve::NtsOptionNames::DAEMON,
        })
    }

    /// What is wrong with `[nts-ke-server]`: addresses, rotation, and the files as they would
    /// be read at start (the certificate and key loaded, the master secret read or its
    /// directory checked).
    fn nts_server_problems(&self) -> Vec<String> {
        let Some(n) = &self.nts_ke_server else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if n.listen.is_empty() {
            out.push(format!(
                "nts-ke-server.listen is empty: give the key-exchange server an address, e.g. \
                 listen = [\"0.0.0.0:{DEFAULT_KE_PORT}\", \"[::]:{DEFAULT_KE_PORT}\"]"
            ));
        }
        let mut seen = HashSet::new();
        for l in &n.listen {
            match parse_host_port(l, DEFAULT_KE_PORT) {
                Ok((Host::Ip(ip), port)) => {
                    let addr = SocketAddr::new(ip, port);
                    if !seen.insert(addr) {
                        out.push(format!(
                            "nts-ke-server.listen: {addr} is listed twice; remove the duplicate"
                        ));
                    }
                    if self.tcp.contains(&addr) || self.metrics_addr() == Some(addr) {
                        out.push(format!(
                            "nts-ke-server.listen: {addr} is also a tcp or metrics address; \
                             give the key-exchange server a port of its own (standard: \
                             {DEFAULT_KE_PORT})"
                        ));
                    }
                }
                Ok((Host::Name(_), _)) => out.push(format!(
                    "nts-ke-server.listen: {l:?} is not an IP address; listen on an address \
                     of this host, e.g. \"0.0.0.0:{DEFAULT_KE_PORT}\""
                )),
                Err(e) => out.push(format!("nts-ke-server.listen: {e}")),
            }
        }
        if n.rotation == 0 {
            out.push(
                "nts-ke-server.rotation = 0: must be at least 1 second (default 86400, one day)"
                    .into(),
            );
        }
        if n.ntp_port == Some(0) {
            out.push("nts-ke-server.ntp-port = 0: must be a port number (1–65535)".into());
        }
        if let Some(server) = &n.ntp_server {
            // Port 0 stands for "none given".
            match parse_host_port(server, 0) {
                Ok((_, 0)) => {}
                Ok(_) => out.push(format!(
                    "nts-ke-server.ntp-server = {server:?}: give the host only, and the port \
                     with ntp-port"
                )),
                Err(e) => out.push(format!("nts-ke-server.ntp-server: {e}")),
            }
        }
        if self.listen.is_empty() && n.ntp_server.is_none() {
            out.push(
                "[nts-ke-server] without an NTP listener: clients would get cookies for a \
                 server that is not here; add listen = [\"0.0.0.0:123\"] or set \
                 nts-ke-server.ntp-server to the host that serves NTP with the same master"
                    .into(),
            );
        }
        let names = crate::nts_serve::NtsOptionNames::DAEMON;
        if let Err(e) = crate::nts_serve::load_tls(&n.cert, &n.key, names) {
            out.push(format!("nts-ke-server: {e}"));
        }
        match crate::nts_serve::read_master(&n.master, names.master) {
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Some(problem) = directory_problem(&n.master) {
                    out.push(format!(
                        "nts-ke-server.master = {:?}: {problem}",
                        n.master.display().to_string()
                    ));
                }
            }
            Err(e) => out.push(format!("nts-ke-server: {e}")),
        }
        out
    }
}

/// The problems of a source's NTS settings.
fn nts_problems(what: &str, nts: bool, ca_file: &Option<PathBuf>, out: &mut Vec<String>) {
    match (nts, ca_file) {
        (false, Some(_)) => out.push(format!(
            "{what}: ca-file is for NTS sources; add nts = true or remove ca-file"
        )),
        (true, ca) => {
            if let Err(e) = crate::nts_ke::load_roots(ca.as_deref()) {
                let fix = match ca {
                    Some(_) => "set ca-file to a PEM file of trusted certificates",
                    None => "install the system's CA certificates or set ca-file",
                };
                let text = e.to_string();
                let cause = text.split(": give").next().unwrap_or(&text);
                out.push(format!("{what}: {cause}; {fix}"));
            }
        }
        (false, None) => {}
    }
}

/// The TLS configuration of an NTS source's key exchanges (None without NTS).
pub fn nts_tls(
    nts: bool,
    ca_file: Option<&Path>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    if !nts {
        return Ok(None);
    }
    let roots = crate::nts_ke::load_roots(ca_file).map_err(|e| e.to_string())?;
    crate::nts_ke::ke_config(roots)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl ServerEntry {
    /// The port `address` means without one: NTS-KE's 4460 with NTS, else NTP's 123.
    pub fn default_port(&self) -> u16 {
        default_port(self.nts)
    }

    /// The core's per-source configuration.
    pub fn source_config(&self) -> SourceConfig {
        SourceConfig {
            minpoll: self.minpoll,
            maxpoll: self.maxpoll,
            iburst: self.iburst,
        }
    }
}

/// The port a source's address means without one.
pub fn default_port(nts: bool) -> u16 {
    if nts {
        DEFAULT_KE_PORT
    } else {
        123
    }
}

impl PoolEntry {
    /// The port `name` means without one: NTS-KE's 4460 with NTS, else NTP's 123.
    pub fn default_port(&self) -> u16 {
        default_port(self.nts)
    }

    /// The core's per-source configuration for each pool member.
    pub fn source_config(&self) -> SourceConfig {
        SourceConfig {
            minpoll: self.minpoll,
            maxpoll: self.maxpoll,
            iburst: self.iburst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DaemonConfig, String> {
        DaemonConfig::parse(s, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
            listen = ["127.0.0.1:1123", "[::1]:1123"]
            tcp = ["127.0.0.1:1124"]
            drift-file = "/tmp/x.drift"
            control-socket = "/tmp/x.sock"
            [[server]]
            address = "127.0.0.1:11123"
            minpoll = 0
            maxpoll = 2
            [[pool]]
            name = "localhost"
            [clock]
            backend = "virtual"
            offset = 0.5
            frequency-ppm = 50
            [sync]
            minsources = 1
            local-stratum = 10
            holdover = 600
            [tcp-limits]
            per-address = 2
            "#,
        )
        .unwrap();
        assert_eq!(c.server[0].minpoll, 0);
        assert!(c.server[0].iburst);
        assert_eq!(c.clock.backend, ClockBackendKind::Virtual);
        assert_eq!(c.sync.step_threshold, 0.128);
        assert_eq!(c.pool[0].max_sources, 4);
        assert_eq!(c.system_config(-20, None).holdover, 600.0);
        assert_eq!(c.system_config(-20, None).max_clock_error, 1e-6);
        assert_eq!(c.tcp_limits().per_address, 2);
        assert_eq!(c.tcp_limits().frame_timeout, Duration::from_secs(2));
    }

    #[test]
    fn only_the_system_backend_times_the_discipline_on_the_clock_it_corrects() {
        // CLOCK_MONOTONIC follows the kernel's frequency correction; the virtual and observe
        // clocks leave it alone.
        for (backend, slewed) in [("system", true), ("virtual", false), ("observe", false)] {
            let text =
                format!("[[server]]\naddress = \"127.0.0.1\"\n[clock]\nbackend = \"{backend}\"\n");
            let c = parse(&text).unwrap();
            let d = c.system_config(-20, None).discipline;
            assert_eq!(d.slewed_time_base, slewed, "{backend}");
        }
    }

    #[test]
    fn errors_name_the_problem_and_the_fix() {
        let e = parse("[[server]]\naddress = \"x\"\nminpol = 3\n").unwrap_err();
        assert!(e.contains("unknown field `minpol`"), "{e}");
        let e = parse("[[server]]\naddress = \"x\"\nminpoll = 8\nmaxpoll = 4\n").unwrap_err();
        assert!(e.contains("swap"), "{e}");
        let e = parse("").unwrap_err();
        assert!(e.contains("add a [[server]]"), "{e}");
        let e = parse("[sync]\nlocal-stratum = 16\n").unwrap_err();
        assert!(e.contains("1–15"), "{e}");
        let e = parse("[sync]\nlocal-stratum = 1\n[clock]\noffset = 1.0\n").unwrap_err();
        assert!(e.contains("backend = \"virtual\""), "{e}");
        let e = parse("[sync]\nlocal-stratum = 1\n[clock]\nbackend = \"atomic\"\n").unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_once_each() {
        let e = parse(
            r#"
            listen = ["127.0.0.1:123", "127.0.0.1:123"]
            drift-file = "/nonexistent-ntpkit-dir/drift"
            control-socket = "/nonexistent-ntpkit-dir/ntpkit.sock"
            [[server]]
            address = "127.0.0.1:70000"
            [[server]]
            address = "1.2.3.4.5"
            [[pool]]
            name = "pool.example"
            max-sources = 0
            [clock]
            backend = "virtual"
            offset = nan
            wander-ppm = -1
            frequency-ppm = inf
            [sync]
            minsources = 3
            panic-threshold = -5
            step-threshold = nan
            "#,
        )
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "\"70000\" in \"127.0.0.1:70000\" is not a port number",
            "\"1.2.3.4.5\" is not an IPv4 address",
            "max-sources = 0 must be 1–16",
            "sync.minsources = 3 but at most 2 source(s)",
            "sync.step-threshold = NaN: must be a positive number",
            "sync.panic-threshold = -5: must be a number ≥ 0",
            "clock.wander-ppm = -1: must be a number ≥ 0",
            "clock.offset = NaN",
            "clock.frequency-ppm = inf",
            "listen: 127.0.0.1:123 is listed twice",
            "drift-file = \"/nonexistent-ntpkit-dir/drift\": directory /nonexistent-ntpkit-dir \
             does not exist",
            "control-socket = \"/nonexistent-ntpkit-dir/ntpkit.sock\": directory",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(want)),
                "missing {want:?} in:\n{e}"
            );
        }
        assert!(lines.iter().all(|l| l.starts_with("test.toml: ")), "{e}");
        assert_eq!(lines.len(), 12, "one line per problem:\n{e}");
    }

    #[test]
    fn what_would_fail_at_start_is_rejected() {
        let e = parse(
            "drift-file = \"/tmp\"\n[[server]]\naddress = \"192.0.2.1\"\n\
             [[server]]\naddress = \"192.0.2.1:123\"\n[tcp-limits]\nidle-timeout = 1e30\n\
             [sync]\nmax-slew-ppm = 500000\nmax-clock-error-ppm = -1\n",
        )
        .unwrap_err();
        for want in [
            "drift-file = \"/tmp\": names a directory",
            "server \"192.0.2.1:123\" is listed twice",
            "tcp-limits.idle-timeout = 1000000000000000000000000000000: must be more than 0",
            "sync.max-slew-ppm = 500000: must be more than 0 and at most 99000 ppm",
            "sync.max-clock-error-ppm = -1: must be more than 0 and at most 1000 ppm",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn clockbound_shm_is_a_switch_or_a_path() {
        let base = "[[server]]\naddress = \"127.0.0.1\"";
        assert_eq!(parse(base).unwrap().clockbound_shm, ClockBoundShm::Off);
        let on = parse(&format!("clockbound-shm = true\n{base}")).unwrap();
        assert_eq!(
            on.clockbound_shm.path(),
            Some(Path::new("/var/run/clockbound/shm0"))
        );
        let off = parse(&format!("clockbound-shm = false\n{base}")).unwrap();
        assert_eq!(off.clockbound_shm.path(), None);
        let at = parse(&format!("clockbound-shm = \"/run/ntpkit/bound\"\n{base}")).unwrap();
        assert_eq!(
            at.clockbound_shm.path(),
            Some(Path::new("/run/ntpkit/bound"))
        );
        for (value, want) in [
            (
                "\"shm0\"",
                "give an absolute path, e.g. \"/var/run/clockbound/shm0\"",
            ),
            ("3", "expected true (ClockBound's path"),
            ("\"/tmp/\"", "names a directory, not a file"),
        ] {
            let e = parse(&format!("clockbound-shm = {value}\n{base}")).unwrap_err();
            assert!(e.contains(want), "{value}: {e}");
        }
    }

    #[test]
    fn metrics_address_is_checked() {
        let base = "[sync]\nlocal-stratum = 1\n";
        let ok = parse(&format!("metrics = \"127.0.0.1:9975\"\n{base}")).unwrap();
        assert_eq!(ok.metrics_addr(), Some("127.0.0.1:9975".parse().unwrap()));
        assert_eq!(parse(base).unwrap().metrics_addr(), None);
        let ok = parse(&format!(
            "metrics = \"[::1]:9975\"\ntcp = [\"[::1]:123\"]\n{base}"
        ));
        assert!(ok.is_ok());
        for (value, want) in [
            (
                "localhost:9975",
                "not an IP address and port; write IP:PORT",
            ),
            ("127.0.0.1", "not an IP address and port"),
            ("127.0.0.1:99999", "not an IP address and port"),
            (
                "127.0.0.1:0",
                "port 0 would be a different port at every start",
            ),
        ] {
            let e = parse(&format!("metrics = \"{value}\"\n{base}")).unwrap_err();
            assert!(
                e.contains(&format!("metrics = \"{value}\": {want}"))
                    && e.contains("metrics = \"127.0.0.1:9975\""),
                "{value}: {e}"
            );
        }
        let e = parse(&format!(
            "metrics = \"127.0.0.1:4460\"\ntcp = [\"0.0.0.0:4460\"]\n{base}"
        ))
        .unwrap_err();
        assert!(e.contains("the same TCP port as tcp 0.0.0.0:4460"), "{e}");
    }

    #[test]
    fn nts_ke_server_is_checked_with_its_files() {
        let dir = std::env::temp_dir().join(format!("ntpkit-nts-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let d = dir.display();
        let ok = parse(&format!(
            "listen = [\"127.0.0.1:1123\"]\n[sync]\nlocal-stratum = 1\n[nts-ke-server]\n\
             listen = [\"127.0.0.1\", \"[::1]:4461\"]\ncert = \"{d}/cert.pem\"\n\
             key = \"{d}/key.pem\"\nmaster = \"{d}/master\"\nntp-server = \"time.example\"\n"
        ))
        .unwrap();
        let n = ok.nts_serve_config().unwrap();
        assert_eq!(
            n.ke,
            vec![
                "127.0.0.1:4460".parse().unwrap(),
                "[::1]:4461".parse().unwrap()
            ]
        );
        assert_eq!(n.rotation_secs, 86_400);
        assert_eq!(n.ntp_server.as_deref(), Some("time.example"));
        assert!(!dir.join("master").exists(), "checking creates nothing");

        std::fs::write(dir.join("short"), [1u8; 8]).unwrap();
        let e = parse(&format!(
            "[sync]\nlocal-stratum = 1\n[nts-ke-server]\nlisten = []\n\
             cert = \"{d}/missing.pem\"\nkey = \"{d}/cert.pem\"\nmaster = \"{d}/short\"\n\
             rotation = 0\nntp-port = 0\n"
        ))
        .unwrap_err();
        for want in [
            "nts-ke-server.listen is empty: give the key-exchange server an address, e.g. \
             listen = [\"0.0.0.0:4460\"",
            "nts-ke-server.rotation = 0: must be at least 1 second",
            "nts-ke-server.ntp-port = 0",
            "without an NTP listener",
            "missing.pem",
            "give a PEM file with nts-ke-server.cert",
            "holds 8 bytes, at least 32 are needed",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        // A key that is not the certificate's, a master in a directory that does not exist.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.pem"), other.serialize_pem()).unwrap();
        let e = parse(&format!(
            "listen = [\"127.0.0.1:1123\"]\n[sync]\nlocal-stratum = 1\n[nts-ke-server]\n\
             listen = [\"localhost:4460\"]\ncert = \"{d}/cert.pem\"\nkey = \"{d}/other.pem\"\n\
             master = \"{d}/nonexistent/master\"\nntp-server = \"time.example:123\"\n"
        ))
        .unwrap_err();
        for want in [
            "\"localhost:4460\" is not an IP address",
            "check that the key belongs to the certificate",
            "nts-ke-server.master = ",
            "does not exist; create it",
            "give the host only, and the port with ntp-port",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        let e = parse(
            "[sync]\nlocal-stratum = 1\n[nts-ke-server]\nlisten = []\ncert = \"c\"\nkey = \"k\"\n\
             master = \"m\"\nrotation = -5\n",
        )
        .unwrap_err();
        assert!(e.contains("rotation"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_are_checked_without_resolving() {
        let ok = |s: &str| parse_host_port(s, 123).unwrap();
        assert_eq!(
            ok("192.0.2.1"),
            (Host::Ip("192.0.2.1".parse().unwrap()), 123)
        );
        assert_eq!(ok("192.0.2.1:1123").1, 1123);
        assert_eq!(ok("::1"), (Host::Ip("::1".parse().unwrap()), 123));
        assert_eq!(ok("[::1]:1123"), (Host::Ip("::1".parse().unwrap()), 1123));
        assert_eq!(ok("[2001:db8::1]").1, 123);
        assert_eq!(
            ok("time.example.org"),
            (Host::Name("time.example.org".into()), 123)
        );
        assert_eq!(ok("ntp-1.example:4123").1, 4123);
        for bad in [
            "1.2.3.4.5",
            "192.0.2.1:70000",
            "192.0.2.1:0",
            "host:port",
            "[::1",
            "[::1]1123",
            "[zz::1]:1",
            "-bad.example",
            "under score.example",
            "",
        ] {
            assert!(parse_host_port(bad, 123).is_err(), "{bad:?} accepted");
        }
    }
}
