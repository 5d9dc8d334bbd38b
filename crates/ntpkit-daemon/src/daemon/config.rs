//! `ntpkit daemon` configuration: TOML parsed into types (unknown keys rejected), then checked
//! for values no type can express (minpoll ≤ maxpoll, a stratum in 1–15, …). Every error says
//! what is wrong and how to fix it.

use ntpkit_core::sync::{DisciplineConfig, SampleLimits, SourceConfig, SystemConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Default)]
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
    /// The clock to discipline.
    #[serde(default)]
    pub clock: ClockSection,
    /// Selection and discipline settings.
    #[serde(default)]
    pub sync: SyncSection,
    /// File that keeps the frequency estimate across restarts (written atomically).
    pub drift_file: Option<PathBuf>,
    /// Unix socket that `ntpkit status` reads.
    pub control_socket: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

/// One upstream server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerEntry {
    /// `host[:port]` or `[v6]:port`; port 123 if absent.
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
}

/// A pool: a name whose addresses all become sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolEntry {
    /// `name[:port]`.
    pub name: String,
    /// Most addresses used from the pool.
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
}

impl Default for SyncSection {
    fn default() -> Self {
        toml::from_str("").expect("all fields have defaults")
    }
}

fn default_log_level() -> String {
    "info".into()
}
fn default_minpoll() -> i8 {
    6
}
fn default_maxpoll() -> i8 {
    10
}
fn default_true() -> bool {
    true
}
fn default_pool_max() -> usize {
    4
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

/// A configuration error: what is wrong, where, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the line and the key.
        message: String,
    },
    /// A value out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
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
        config.check().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let polls = self
            .server
            .iter()
            .map(|s| (format!("server {:?}", s.address), s.minpoll, s.maxpoll))
            .chain(
                self.pool
                    .iter()
                    .map(|p| (format!("pool {:?}", p.name), p.minpoll, p.maxpoll)),
            );
        for (what, min, max) in polls {
            let (lo, hi) = ntpkit_core::sync::source::POLL_LIMITS;
            if !(lo..=hi).contains(&min) || !(lo..=hi).contains(&max) {
                return Err(format!(
                    "{what}: minpoll and maxpoll must be within {lo}..={hi} (log2 seconds)"
                ));
            }
            if min > max {
                return Err(format!(
                    "{what}: minpoll {min} is above maxpoll {max}; swap them"
                ));
            }
        }
        for s in &self.server {
            if s.address.trim().is_empty() {
                return Err("a [[server]] has an empty address; give host[:port]".into());
            }
        }
        if let Some(st) = self.sync.local_stratum {
            if !(1..=15).contains(&st) {
                return Err(format!("sync.local-stratum = {st}: must be 1–15"));
            }
        }
        if self.server.is_empty() && self.pool.is_empty() && self.sync.local_stratum.is_none() {
            return Err(
                "no [[server]] or [[pool]] and no sync.local-stratum: nothing to synchronize to; \
                 add a [[server]] with an address, or set sync.local-stratum to serve this clock"
                    .into(),
            );
        }
        let positive = [
            ("sync.step-threshold", self.sync.step_threshold),
            ("sync.max-distance", self.sync.max_distance),
            ("sync.max-slew-ppm", self.sync.max_slew_ppm),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} = {v}: must be a positive number"));
            }
        }
        if !(self.sync.panic_threshold.is_finite() && self.sync.panic_threshold >= 0.0) {
            return Err("sync.panic-threshold must be ≥ 0 (0 disables it)".into());
        }
        if self.sync.minsources == 0 {
            return Err("sync.minsources = 0: must be at least 1".into());
        }
        if self.clock.backend != ClockBackendKind::Virtual
            && (self.clock.offset != 0.0
                || self.clock.frequency_ppm != 0.0
                || self.clock.wander_ppm != 0.0)
        {
            return Err(
                "clock.offset, clock.frequency-ppm and clock.wander-ppm apply to the virtual clock only; \
                 set clock.backend = \"virtual\" or remove them"
                    .into(),
            );
        }
        if self.clock.frequency_ppm.abs() > 500.0 {
            return Err(
                "clock.frequency-ppm beyond ±500 ppm cannot be corrected (max slew 500 ppm)".into(),
            );
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(format!(
                "log-level = {:?}: use one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        Ok(())
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
                ..DisciplineConfig::default()
            },
            limits: SampleLimits {
                max_distance: self.sync.max_distance,
                local_precision: precision,
                ..SampleLimits::default()
            },
            local_stratum: self.sync.local_stratum,
            ..SystemConfig::default()
        }
    }
}

impl ServerEntry {
    /// The core's per-source configuration.
    pub fn source_config(&self) -> SourceConfig {
        SourceConfig {
            minpoll: self.minpoll,
            maxpoll: self.maxpoll,
            iburst: self.iburst,
        }
    }
}

impl PoolEntry {
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
            "#,
        )
        .unwrap();
        assert_eq!(c.server[0].minpoll, 0);
        assert!(c.server[0].iburst);
        assert_eq!(c.clock.backend, ClockBackendKind::Virtual);
        assert_eq!(c.sync.step_threshold, 0.128);
        assert_eq!(c.pool[0].max_sources, 4);
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
}
