//! Scenario files (TOML): the file's shape as serde types, and [`Scenario`], the validated and
//! expanded form the simulator runs. The format is documented in `docs/scenarios.md`.

use crate::units::Duration;
use ntpkit_core::sync::DisciplineMode;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Why a scenario cannot be run. Every variant is the scenario author's to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read. The OS error is the [`source`](std::error::Error::source),
    /// not part of the message: print the chain (anyhow's `{:#}`) to show it once.
    #[error("cannot read scenario file {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key or value the format does not have.
    #[error("{0}")]
    Syntax(String),
    /// A source names a node that does not exist.
    #[error("node `{node}`: source `{server}` is not a node of this scenario")]
    UnknownNode {
        /// The node whose source it is.
        node: String,
        /// The missing name.
        server: String,
    },
    /// A source names a link profile that does not exist.
    #[error("node `{node}`: link `{link}` is not defined under [links]")]
    UnknownLink {
        /// The node.
        node: String,
        /// The missing profile.
        link: String,
    },
    /// Two nodes share a name.
    #[error("node name `{0}` is used twice")]
    DuplicateNode(String),
    /// A value outside its allowed range.
    #[error("{what}: {why}")]
    OutOfRange {
        /// Where (e.g. `links.lan.delay`).
        what: String,
        /// What is wrong and what is allowed.
        why: String,
    },
}

fn range(what: impl Into<String>, why: impl Into<String>) -> ScenarioError {
    ScenarioError::OutOfRange {
        what: what.into(),
        why: why.into(),
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScenarioFile {
    /// Short name (defaults to the file name).
    pub name: Option<String>,
    /// What the scenario shows.
    pub description: Option<String>,
    /// Run settings.
    pub simulation: SimulationSpec,
    /// Named link profiles; a source without `link` uses `default` (zero delay if undefined).
    #[serde(default)]
    pub links: BTreeMap<String, LinkSpec>,
    /// The nodes, in order.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeSpec>,
}

/// `[simulation]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SimulationSpec {
    /// Simulated time to run.
    pub duration: Duration,
    /// Seed of every random stream (default 1).
    #[serde(default = "one")]
    pub seed: u64,
    /// Statistics (RMS, max, mean) use samples from this time on (default 0).
    #[serde(default)]
    pub stats_start: Duration,
    /// |true error| below which a node counts as synchronized (default 1 ms).
    #[serde(default = "default_threshold")]
    pub sync_threshold: Duration,
    /// Interval of the true-error samples behind the statistics, the CSV and plots (default 1 s).
    #[serde(default = "default_sample_interval")]
    pub sample_interval: Duration,
}

fn one() -> u64 {
    1
}
fn default_threshold() -> Duration {
    Duration(1_000_000)
}
fn default_sample_interval() -> Duration {
    Duration::secs(1)
}

/// A link profile: the same parameters both ways unless `request` / `reply` override them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LinkSpec {
    /// Base one-way delay.
    #[serde(default)]
    pub delay: Duration,
    /// Random extra delay per packet.
    pub jitter: Option<JitterSpec>,
    /// Probability that a packet is lost, 0–1.
    #[serde(default)]
    pub loss: f64,
    /// Server time between receiving a request (T2) and sending the reply (T3).
    #[serde(default)]
    pub processing: Duration,
    /// Overrides for client → server.
    pub request: Option<DirectionSpec>,
    /// Overrides for server → client.
    pub reply: Option<DirectionSpec>,
    /// Listed windows during which the link carries nothing.
    #[serde(default)]
    pub outages: Vec<OutageSpec>,
    /// A window repeating forever.
    pub periodic_outage: Option<PeriodicOutageSpec>,
}

/// One direction's overrides.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DirectionSpec {
    /// Base one-way delay.
    pub delay: Option<Duration>,
    /// Random extra delay per packet.
    pub jitter: Option<JitterSpec>,
    /// Loss probability.
    pub loss: Option<f64>,
}

/// Random extra delay: a distribution and its scale.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JitterSpec {
    /// The distribution.
    pub distribution: Distribution,
    /// Exponential: the mean; normal: the standard deviation (truncated at 0); uniform: the
    /// width of [0, scale).
    pub scale: Duration,
}

/// Jitter distributions.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Exponential with mean `scale`.
    Exponential,
    /// |N(0, scale)|: a normal truncated at 0.
    Normal,
    /// Uniform in [0, scale).
    Uniform,
}

/// A listed outage.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutageSpec {
    /// When it begins.
    pub start: Duration,
    /// How long it lasts.
    pub length: Duration,
}

/// An outage of `length` every `every`, the first at `start`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeriodicOutageSpec {
    /// Period.
    pub every: Duration,
    /// Length of each outage.
    pub length: Duration,
    /// Start of the first (default 0).
    #[serde(default)]
    pub start: Duration,
}

/// `[[node]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSpec {
    /// Unique name; with `count` > 1 the members are `name-1` … `name-N`.
    pub name: String,
    /// How many identical nodes this entry makes (default 1).
    #[serde(default = "one_u32")]
    pub count: u32,
    /// A reference clock served at `stratum` (default 1): never disciplined, no sources.
    #[serde(default)]
    pub reference: bool,
    /// Stratum a reference serves (default 1).
    pub stratum: Option<u8>,
    /// Initial clock offset (clock − true time).
    #[serde(default)]
    pub offset: Duration,
    /// Each member's offset is drawn uniformly from offset ± this.
    #[serde(default)]
    pub offset_spread: Duration,
    /// Intrinsic frequency error, ppm (positive = fast).
    #[serde(default)]
    pub frequency_ppm: f64,
    /// Each member's frequency is drawn uniformly from frequency-ppm ± this.
    #[serde(default)]
    pub frequency_spread_ppm: f64,
    /// Random walk of frequency: standard deviation (s/s) of a normal step per second.
    #[serde(default)]
    pub wander: f64,
    /// The discipline (default "kalman"; "naive" steps by every raw offset).
    #[serde(default)]
    pub discipline: DisciplineSpec,
    /// Sources that must agree (default 1).
    pub minsources: Option<usize>,
    /// Step threshold (default 128 ms).
    pub step_threshold: Option<Duration>,
    /// Largest frequency correction including slewing, ppm (core default 500).
    pub max_slew_ppm: Option<f64>,
    /// Scheduled disturbances of the clock.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// When the node starts (default 0): before, it sends nothing and answers nothing, and its
    /// sync time counts from here.
    #[serde(default)]
    pub start: Duration,
    /// Upstream servers.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// As an NTS server: times at which it replaces its cookie master (a restart that lost
    /// it), so that the cookies its clients hold no longer open.
    #[serde(default)]
    pub nts_master_changes: Vec<Duration>,
}

fn one_u32() -> u32 {
    1
}

/// The core's discipline modes as scenario files name them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DisciplineSpec {
    /// The core's default discipline.
    #[default]
    Kalman,
    /// Step by every raw measured offset, as the source documents' clients do.
    Naive,
}

impl From<DisciplineSpec> for DisciplineMode {
    fn from(d: DisciplineSpec) -> DisciplineMode {
        match d {
            DisciplineSpec::Kalman => DisciplineMode::Kalman,
            DisciplineSpec::Naive => DisciplineMode::Naive,
        }
    }
}

/// A scheduled step of a node's clock (not commanded by the core: a disturbance).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StepSpec {
    /// When.
    pub at: Duration,
    /// By how much (positive = forward).
    pub offset: Duration,
}

/// One upstream of a node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSpec {
    /// A node's name, or a group's (`count` > 1): then every member is a source.
    pub server: String,
    /// Link profile (default `default`).
    pub link: Option<String>,
    /// Fixed poll exponent: sets minpoll = maxpoll.
    pub poll: Option<i8>,
    /// Shortest poll exponent (default 6).
    pub minpoll: Option<i8>,
    /// Longest poll exponent (default 10).
    pub maxpoll: Option<i8>,
    /// Burst at start-up (default true).
    pub iburst: Option<bool>,
    /// Protect the exchanges with NTS (default false).
    #[serde(default)]
    pub nts: bool,
    /// Probability that an on-path attacker flips a bit of an NTS reply (default 0; needs
    /// `nts = true`).
    #[serde(default)]
    pub nts_tamper: f64,
}

/// One direction of a link, resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Direction {
    /// Base delay, ns.
    pub delay: i64,
    /// Jitter.
    pub jitter: Option<JitterSpec>,
    /// Loss probability.
    pub loss: f64,
}

/// A link profile, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkProfile {
    /// Client → server.
    pub request: Direction,
    /// Server → client.
    pub reply: Direction,
    /// Server processing time, ns.
    pub processing: i64,
    /// Listed outages as [start, end) in ns.
    pub outages: Vec<(i64, i64)>,
    /// Periodic outage (every, length, start) in ns.
    pub periodic: Option<(i64, i64, i64)>,
}

impl LinkProfile {
    /// True if the link carries nothing at `t`.
    pub fn is_down(&self, t: i64) -> bool {
        if self.outages.iter().any(|&(a, b)| t >= a && t < b) {
            return true;
        }
        match self.periodic {
            Some((every, length, start)) if t >= start => (t - start) % every < length,
            _ => false,
        }
    }
}

/// A node, expanded and resolved.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// The entry it came from (index into the file's nodes).
    pub group: usize,
    /// Reference stratum, if a reference clock.
    pub reference: Option<u8>,
    /// Offset (ns) and its spread.
    pub offset: (i64, i64),
    /// Frequency (ppm) and its spread.
    pub frequency_ppm: (f64, f64),
    /// Wander, s/s per √s.
    pub wander: f64,
    /// Discipline mode.
    pub discipline: DisciplineMode,
    /// minsources.
    pub minsources: Option<usize>,
    /// Step threshold, seconds.
    pub step_threshold: Option<f64>,
    /// Maximum slew, ppm.
    pub max_slew_ppm: Option<f64>,
    /// (at, offset) in ns.
    pub steps: Vec<(i64, i64)>,
    /// When the node starts, ns.
    pub start: i64,
    /// Sources.
    pub sources: Vec<Source>,
    /// Whether some source with NTS names this node.
    pub nts_server: bool,
    /// Times (ns) at which this node, as an NTS server, replaces its cookie master.
    pub nts_master_changes: Vec<i64>,
}

/// A source, resolved.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// Index of the server node.
    pub server: usize,
    /// Index of the link profile.
    pub profile: usize,
    /// minpoll, maxpoll.
    pub poll: (i8, i8),
    /// iburst.
    pub iburst: bool,
    /// Protected with NTS.
    pub nts: bool,
    /// Probability that a reply is tampered with on the way (NTS sources only).
    pub nts_tamper: f64,
}

/// A validated scenario, ready to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Duration, ns.
    pub duration: i64,
    /// Seed.
    pub seed: u64,
    /// Statistics start, ns.
    pub stats_start: i64,
    /// Sync threshold, ns.
    pub sync_threshold: i64,
    /// Sample interval, ns.
    pub sample_interval: i64,
    /// Link profiles (names in `profile_names`).
    pub profiles: Vec<LinkProfile>,
    /// Their names.
    pub profile_names: Vec<String>,
    /// Nodes, expanded.
    pub nodes: Vec<Node>,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let default_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        Scenario::parse(&text, &default_name)
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile =
            toml::from_str(text).map_err(|e| ScenarioError::Syntax(e.to_string()))?;
        file.validate(default_name)
    }

    /// Total number of sources (each is one link).
    pub fn link_count(&self) -> usize {
        self.nodes.iter().map(|n| n.sources.len()).sum()
    }
}

fn check_nonneg(what: &str, d: Duration) -> Result<i64, ScenarioError> {
    if d.0 < 0 {
        return Err(range(what, format!("{d} is negative; it must be ≥ 0")));
    }
    Ok(d.0)
}

fn check_prob(what: &str, p: f64) -> Result<f64, ScenarioError> {
    if !(0.0..=1.0).contains(&p) {
        return Err(range(what, format!("{p} is not a probability in [0, 1]")));
    }
    Ok(p)
}

fn resolve_direction(
    what: &str,
    base: &LinkSpec,
    over: Option<DirectionSpec>,
) -> Result<Direction, ScenarioError> {
    let o = over.unwrap_or_default();
    let delay = check_nonneg(&format!("{what}.delay"), o.delay.unwrap_or(base.delay))?;
    let jitter = o.jitter.or(base.jitter);
    if let Some(j) = jitter {
        check_nonneg(&format!("{what}.jitter.scale"), j.scale)?;
    }
    let loss = check_prob(&format!("{what}.loss"), o.loss.unwrap_or(base.loss))?;
    Ok(Direction {
        delay,
        jitter,
        loss,
    })
}

impl ScenarioFile {
    /// Checks every value and expands groups.
    pub fn validate(self, default_name: &str) -> Result<Scenario, ScenarioError> {
        let sim = &self.simulation;
        if sim.duration.0 <= 0 {
            return Err(range("simulation.duration", "must be positive"));
        }
        let stats_start = check_nonneg("simulation.stats-start", sim.stats_start)?;
        if stats_start >= sim.duration.0 {
            return Err(range(
                "simulation.stats-start",
                format!(
                    "{} is not before the end of the run ({})",
                    sim.stats_start, sim.duration
                ),
            ));
        }
        if sim.sync_threshold.0 <= 0 {
            return Err(range("simulation.sync-threshold", "must be positive"));
        }
        if sim.sample_interval.0 <= 0 {
            return Err(range("simulation.sample-interval", "must be positive"));
        }

        let mut profile_names: Vec<String> = self.links.keys().cloned().collect();
        let mut specs: Vec<LinkSpec> = self.links.values().cloned().collect();
        if !self.links.contains_key("default") {
            profile_names.push("default".into());
            specs.push(LinkSpec::default());
        }
        let mut profiles = Vec::new();
        for (name, spec) in profile_names.iter().zip(&specs) {
            let what = format!("links.{name}");
            let mut outages = Vec::new();
            for (i, o) in spec.outages.iter().enumerate() {
                let start = check_nonneg(&format!("{what}.outages[{i}].start"), o.start)?;
                let length = check_nonneg(&format!("{what}.outages[{i}].length"), o.length)?;
                outages.push((start, start + length));
            }
            let periodic = match spec.periodic_outage {
                Some(p) => {
                    if p.every.0 <= 0 {
                        return Err(range(
                            format!("{what}.periodic-outage.every"),
                            "must be positive",
                        ));
                    }
                    let length = check_nonneg(&format!("{what}.periodic-outage.length"), p.length)?;
                    if length >= p.every.0 {
                        return Err(range(
                            format!("{what}.periodic-outage.length"),
                            "must be shorter than `every` (the link would never be up)",
                        ));
                    }
                    let start = check_nonneg(&format!("{what}.periodic-outage.start"), p.start)?;
                    Some((p.every.0, length, start))
                }
                None => None,
            };
            profiles.push(LinkProfile {
                request: resolve_direction(&format!("{what}.request"), spec, spec.request)?,
                reply: resolve_direction(&format!("{what}.reply"), spec, spec.reply)?,
                processing: check_nonneg(&format!("{what}.processing"), spec.processing)?,
                outages,
                periodic,
            });
        }

        // Expand groups; remember each group's members.
        let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut nodes = Vec::new();
        for (g, spec) in self.nodes.iter().enumerate() {
            let what = format!("node `{}`", spec.name);
            if spec.name.is_empty() {
                return Err(range("node.name", "must not be empty"));
            }
            if spec.count == 0 {
                return Err(range(format!("{what}.count"), "must be at least 1"));
            }
            if spec.reference && !spec.sources.is_empty() {
                return Err(range(
                    format!("{what}.sources"),
                    "a reference clock has no sources",
                ));
            }
            if spec.stratum.is_some() && !spec.reference {
                return Err(range(
                    format!("{what}.stratum"),
                    "only a reference sets its stratum; others take their source's + 1",
                ));
            }
            let stratum = spec.stratum.unwrap_or(1);
            if !(1..16).contains(&stratum) {
                return Err(range(format!("{what}.stratum"), "must be 1–15"));
            }
            check_nonneg(&format!("{what}.offset-spread"), spec.offset_spread)?;
            if !(spec.frequency_spread_ppm >= 0.0 && spec.frequency_spread_ppm.is_finite()) {
                return Err(range(format!("{what}.frequency-spread-ppm"), "must be ≥ 0"));
            }
            if !spec.frequency_ppm.is_finite() || spec.frequency_ppm.abs() > 10_000.0 {
                return Err(range(
                    format!("{what}.frequency-ppm"),
                    "must be within ±10000 ppm",
                ));
            }
            if !(spec.wander >= 0.0 && spec.wander < 1e-3) {
                return Err(range(
                    format!("{what}.wander"),
                    "must be ≥ 0 and < 1e-3 (s/s per second)",
                ));
            }
            if let Some(m) = spec.max_slew_ppm {
                if !(m > 0.0 && m <= 1e6) {
                    return Err(range(format!("{what}.max-slew-ppm"), "must be in (0, 1e6]"));
                }
            }
            if let Some(st) = spec.step_threshold {
                check_nonneg(&format!("{what}.step-threshold"), st)?;
            }
            let start = check_nonneg(&format!("{what}.start"), spec.start)?;
            if start > 0 && spec.reference {
                return Err(range(
                    format!("{what}.start"),
                    "a reference runs from the start; give `start` to disciplined nodes",
                ));
            }
            let mut steps = Vec::new();
            for (i, s) in spec.steps.iter().enumerate() {
                steps.push((
                    check_nonneg(&format!("{what}.steps[{i}].at"), s.at)?,
                    s.offset.0,
                ));
            }
            let mut master_changes = Vec::new();
            for (i, &at) in spec.nts_master_changes.iter().enumerate() {
                master_changes.push(check_nonneg(
                    &format!("{what}.nts-master-changes[{i}]"),
                    at,
                )?);
            }
            master_changes.sort_unstable();
            let members = groups.entry(spec.name.as_str()).or_default();
            for k in 0..spec.count {
                let name = if spec.count == 1 {
                    spec.name.clone()
                } else {
                    format!("{}-{}", spec.name, k + 1)
                };
                if names.insert(name.clone(), nodes.len()).is_some() {
                    return Err(ScenarioError::DuplicateNode(name));
                }
                members.push(nodes.len());
                nodes.push(Node {
                    name,
                    group: g,
                    reference: spec.reference.then_some(stratum),
                    offset: (spec.offset.0, spec.offset_spread.0),
                    frequency_ppm: (spec.frequency_ppm, spec.frequency_spread_ppm),
                    wander: spec.wander,
                    discipline: spec.discipline.into(),
                    minsources: spec.minsources,
                    step_threshold: spec.step_threshold.map(|d| d.as_secs_f64()),
                    max_slew_ppm: spec.max_slew_ppm,
                    steps: steps.clone(),
                    start,
                    sources: Vec::new(),
                    nts_server: false,
                    nts_master_changes: master_changes.clone(),
                });
            }
        }
        if nodes.is_empty() {
            return Err(range("node", "a scenario needs at least one [[node]]"));
        }

        // Resolve sources, now that every name is known.
        let mut node_sources: Vec<Vec<Source>> = vec![Vec::new(); self.nodes.len()];
        for (g, spec) in self.nodes.iter().enumerate() {
            for src in &spec.sources {
                let what = format!("node `{}` source `{}`", spec.name, src.server);
                let servers: Vec<usize> = match groups.get(src.server.as_str()) {
                    Some(m) => m.clone(),
                    None => match names.get(&src.server) {
                        Some(&i) => vec![i],
                        None => {
                            return Err(ScenarioError::UnknownNode {
                                node: spec.name.clone(),
                                server: src.server.clone(),
                            })
                        }
                    },
                };
                let link = src.link.as_deref().unwrap_or("default");
                let profile = profile_names
                    .iter()
                    .position(|n| n == link)
                    .ok_or_else(|| ScenarioError::UnknownLink {
                        node: spec.name.clone(),
                        link: link.to_string(),
                    })?;
                let (lo, hi) = ntpkit_core::sync::source::POLL_LIMITS;
                let (minpoll, maxpoll) = match src.poll {
                    Some(p) => {
                        if src.minpoll.is_some() || src.maxpoll.is_some() {
                            return Err(range(
                                what,
                                "give either `poll` or `minpoll`/`maxpoll`, not both",
                            ));
                        }
                        (p, p)
                    }
                    None => (src.minpoll.unwrap_or(6), src.maxpoll.unwrap_or(10)),
                };
                for (key, p) in [("minpoll", minpoll), ("maxpoll", maxpoll)] {
                    if !(lo..=hi).contains(&p) {
                        return Err(range(
                            format!("{what}: {key}"),
                            format!("{p} is outside {lo}..={hi} (log2 seconds)"),
                        ));
                    }
                }
                if minpoll > maxpoll {
                    return Err(range(
                        what,
                        format!("minpoll {minpoll} is above maxpoll {maxpoll}"),
                    ));
                }
                check_prob(&format!("{what}: nts-tamper"), src.nts_tamper)?;
                if src.nts_tamper > 0.0 && !src.nts {
                    return Err(range(
                        format!("{what}: nts-tamper"),
                        "only NTS replies are tampered with; add `nts = true` to this source",
                    ));
                }
                for server in servers {
                    node_sources[g].push(Source {
                        server,
                        profile,
                        poll: (minpoll, maxpoll),
                        iburst: src.iburst.unwrap_or(true),
                        nts: src.nts,
                        nts_tamper: src.nts_tamper,
                    });
                }
            }
        }
        for node in nodes.iter_mut() {
            node.sources = node_sources[node.group].clone();
        }
        let nts_servers: Vec<usize> = nodes
            .iter()
            .flat_map(|n| n.sources.iter().filter(|s| s.nts).map(|s| s.server))
            .collect();
        for s in nts_servers {
            nodes[s].nts_server = true;
        }
        if let Some(n) = nodes
            .iter()
            .find(|n| !n.nts_server && !n.nts_master_changes.is_empty())
        {
            return Err(range(
                format!("node `{}`.nts-master-changes", self.nodes[n.group].name),
                "no source with `nts = true` names this node: add `nts = true` to a source \
                 that uses it, or remove the key",
            ));
        }
        for (i, node) in nodes.iter().enumerate() {
            if node.sources.iter().any(|s| s.server == i) {
                return Err(range(
                    format!("node `{}`", node.name),
                    "names itself as a source",
                ));
            }
        }
        Ok(Scenario {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            description: self.description.clone(),
            duration: sim.duration.0,
            seed: sim.seed,
            stats_start,
            sync_threshold: sim.sync_threshold.0,
            sample_interval: sim.sample_interval.0,
            profiles,
            profile_names,
            nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Scenario::parse(text, "t").unwrap_err().to_string()
    }

    const BASE: &str = "[simulation]\nduration = \"10s\"\n";

    #[test]
    fn rejects_unknown_source() {
        let e = err(&format!(
            "{BASE}[[node]]\nname = \"c\"\nsources = [{{ server = \"nope\" }}]\n"
        ));
        assert!(e.contains("source `nope` is not a node"), "{e}");
    }

    #[test]
    fn rejects_negative_delay() {
        let e = err(&format!(
            "{BASE}[links.default]\ndelay = \"-1ms\"\n[[node]]\nname = \"s\"\nreference = true\n"
        ));
        assert!(
            e.contains("links.default.request.delay") && e.contains("negative"),
            "{e}"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_links() {
        let e = err(&format!("{BASE}[[node]]\nname = \"s\"\nrefrence = true\n"));
        assert!(e.contains("unknown field `refrence`"), "{e}");
        let e = err(&format!(
            "{BASE}[[node]]\nname = \"s\"\nreference = true\n[[node]]\nname = \"c\"\nsources = [{{ server = \"s\", link = \"wan\" }}]\n"
        ));
        assert!(e.contains("link `wan` is not defined"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        let e = err(&format!(
            "{BASE}[links.default]\nloss = 1.5\n[[node]]\nname = \"s\"\nreference = true\n"
        ));
        assert!(e.contains("probability"), "{e}");
        let e = err(&format!(
            "{BASE}[[node]]\nname = \"s\"\nreference = true\n[[node]]\nname = \"s\"\n"
        ));
        assert!(e.contains("used twice"), "{e}");
        let e = err(&format!(
            "{BASE}[[node]]\nname = \"s\"\nreference = true\n[[node]]\nname = \"c\"\nsources = [{{ server = \"s\", minpoll = 8, maxpoll = 4 }}]\n"
        ));
        assert!(e.contains("above maxpoll"), "{e}");
        let e = err("[simulation]\nduration = \"0s\"\n[[node]]\nname = \"s\"\n");
        assert!(e.contains("duration"), "{e}");
    }

    #[test]
    fn expands_groups_and_resolves_sources() {
        let s = Scenario::parse(
            &format!(
                "{BASE}[links.lan]\ndelay = \"1ms\"\nreply = {{ delay = \"3ms\" }}\n\
                 [[node]]\nname = \"s\"\nreference = true\ncount = 2\n\
                 [[node]]\nname = \"c\"\ncount = 3\nsources = [{{ server = \"s\", link = \"lan\", poll = 4 }}]\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(s.nodes.len(), 5);
        assert_eq!(s.nodes[2].name, "c-1");
        assert_eq!(s.nodes[4].sources.len(), 2);
        assert_eq!(s.nodes[4].sources[1].server, 1);
        assert_eq!(s.nodes[4].sources[0].poll, (4, 4));
        let p = &s.profiles[s.nodes[4].sources[0].profile];
        assert_eq!((p.request.delay, p.reply.delay), (1_000_000, 3_000_000));
        assert_eq!(s.link_count(), 6);
    }

    #[test]
    fn nts_options_are_checked() {
        let two = format!("{BASE}[[node]]\nname = \"s\"\nreference = true\n");
        let e = err(&format!(
            "{two}[[node]]\nname = \"c\"\nsources = [{{ server = \"s\", nts-tamper = 0.1 }}]\n"
        ));
        assert!(
            e.contains("nts-tamper") && e.contains("add `nts = true`"),
            "{e}"
        );
        let e = err(&format!(
            "{two}[[node]]\nname = \"c\"\nsources = [{{ server = \"s\", nts = true, nts-tamper = 2.0 }}]\n"
        ));
        assert!(e.contains("nts-tamper") && e.contains("probability"), "{e}");
        let e = err(&format!(
            "{BASE}[[node]]\nname = \"s\"\nreference = true\ncount = 2\nnts-master-changes = [\"1h\"]\n\
             [[node]]\nname = \"c\"\nsources = [{{ server = \"s\" }}]\n"
        ));
        assert!(
            e.contains("node `s`.nts-master-changes") && e.contains("add `nts = true`"),
            "{e}"
        );
        let e = err(&format!(
            "{BASE}[[node]]\nname = \"s\"\nreference = true\nnts-master-changes = [\"-1s\"]\n\
             [[node]]\nname = \"c\"\nsources = [{{ server = \"s\", nts = true }}]\n"
        ));
        assert!(
            e.contains("nts-master-changes[0]") && e.contains("negative"),
            "{e}"
        );
        let s = Scenario::parse(
            &format!(
                "{BASE}[[node]]\nname = \"s\"\nreference = true\nnts-master-changes = [\"2h\", \"1h\"]\n\
                 [[node]]\nname = \"c\"\nsources = [{{ server = \"s\", nts = true }}]\n"
            ),
            "t",
        )
        .unwrap();
        assert!(s.nodes[0].nts_server && !s.nodes[1].nts_server);
        assert_eq!(
            s.nodes[0].nts_master_changes,
            [3_600e9 as i64, 7_200e9 as i64]
        );
        assert!(s.nodes[1].sources[0].nts);
    }

    #[test]
    fn periodic_outages() {
        let p = LinkProfile {
            request: Direction {
                delay: 0,
                jitter: None,
                loss: 0.0,
            },
            reply: Direction {
                delay: 0,
                jitter: None,
                loss: 0.0,
            },
            processing: 0,
            outages: vec![(5, 7)],
            periodic: Some((100, 10, 50)),
        };
        assert!(!p.is_down(4) && p.is_down(5) && !p.is_down(7));
        assert!(!p.is_down(10) && p.is_down(50) && p.is_down(159) && !p.is_down(160));
    }
}
