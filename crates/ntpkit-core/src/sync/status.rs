//! Status of the sources and the system, in the vocabulary of `chronyc sources` and
//! `chronyc tracking`. Serializable, for `ntpkit status --json`.

use super::source::{Source, SourceCounters};
use super::system::SourceId;
use crate::time::MonoTime;
use serde::{Deserialize, Serialize};

/// What selection made of a source.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceState {
    /// The system peer: the clock follows it (`^*`).
    Selected,
    /// A truechimer whose samples are combined (`^+`).
    Candidate,
    /// A truechimer dropped by clustering (`^-`).
    Outlier,
    /// Its time disagrees with the majority (`^x`).
    Falseticker,
    /// No reply in the last eight polls (`^?`).
    Unreachable,
    /// Replies, but none usable yet (unsynchronized, too distant, no sample) (`^?`).
    Unusable,
    /// Stopped by a DENY or RSTR kiss-o'-death.
    Denied,
}

impl SourceState {
    /// chronyc's state symbol.
    pub fn symbol(self) -> char {
        match self {
            SourceState::Selected => '*',
            SourceState::Candidate => '+',
            SourceState::Outlier => '-',
            SourceState::Falseticker => 'x',
            SourceState::Unreachable | SourceState::Unusable => '?',
            SourceState::Denied => '!',
        }
    }
}

/// One source.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Identifier within the system.
    pub id: SourceId,
    /// Address.
    pub address: String,
    /// Selection state.
    pub state: SourceState,
    /// Stratum the source advertises.
    pub stratum: Option<u8>,
    /// Its reference ID.
    pub reference_id: Option<String>,
    /// Poll exponent.
    pub poll: i8,
    /// Reach register (print as octal).
    pub reach: u8,
    /// Offset of the last sample, seconds (server − local).
    pub last_offset: Option<f64>,
    /// Filtered offset (minimum-delay sample), seconds.
    pub offset: Option<f64>,
    /// Delay of the filtered sample, seconds.
    pub delay: Option<f64>,
    /// Jitter, seconds.
    pub jitter: Option<f64>,
    /// Root distance, seconds.
    pub root_distance: Option<f64>,
    /// Seconds since the last sample.
    pub last_sample_age: Option<f64>,
    /// Why the last reply was rejected, if it was.
    pub last_rejection: Option<String>,
    /// Counters.
    pub counters: SourceCounters,
}

impl SourceStatus {
    pub(crate) fn new(
        id: SourceId,
        s: &Source,
        state: SourceState,
        now: MonoTime,
        min_disp: f64,
    ) -> Self {
        let e = s.estimate();
        let info = s.info();
        SourceStatus {
            id,
            address: s.address().to_string(),
            state,
            stratum: info.map(|i| i.stratum),
            reference_id: info.map(|i| i.reference_id.display_for_stratum(i.stratum)),
            poll: s.poll(),
            reach: s.reach(),
            last_offset: s.last_sample().map(|x| x.offset),
            offset: e.map(|e| e.offset),
            delay: e.map(|e| e.delay),
            jitter: e.map(|e| e.jitter),
            root_distance: s.root_distance(now, min_disp),
            last_sample_age: s.last_sample().map(|x| now.secs_since(x.time)),
            last_rejection: s.last_rejection().map(|r| r.to_string()),
            counters: s.counters(),
        }
    }
}

/// The system, as `chronyc tracking` shows it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Tracking {
    /// Reference ID served (IPv4 form, or ASCII for stratum 1).
    pub reference_id: String,
    /// Stratum served.
    pub stratum: u8,
    /// Leap indicator served.
    pub leap: String,
    /// True while following a selected source.
    pub synchronized: bool,
    /// Why not synchronized, if not.
    pub reason: Option<String>,
    /// Estimated offset of true time from the local clock now (server − local), seconds.
    pub offset: f64,
    /// Innovation of the last sample, seconds.
    pub last_offset: f64,
    /// Standard deviation of the offset estimate, seconds.
    pub offset_sd: f64,
    /// Estimated frequency error of the local clock, ppm (positive = fast).
    pub frequency_ppm: f64,
    /// Its standard deviation, ppm.
    pub frequency_sd_ppm: f64,
    /// Frequency correction in force, ppm.
    pub correction_ppm: f64,
    /// Root delay served, seconds.
    pub root_delay: f64,
    /// Root dispersion served, seconds.
    pub root_dispersion: f64,
    /// Poll exponent suggested to sources.
    pub poll: i8,
    /// Clock updates.
    pub updates: u64,
    /// Steps.
    pub steps: u64,
}

/// Everything `ntpkit status` shows.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SystemStatus {
    /// The system.
    pub tracking: Tracking,
    /// The sources.
    pub sources: Vec<SourceStatus>,
}
