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

/// Where the time a node serves comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// Waiting for the first samples of the sources.
    Starting,
    /// Following the selected sources.
    Synchronized,
    /// No source is selectable (unreachable, unusable): the clock runs on its last update,
    /// served with a root dispersion that grows with the time since, until the holdover limit.
    Holdover,
    /// No sources configured: the local clock is the reference, served at the local stratum.
    Local,
    /// Not synchronized: the sources disagree, the offset is beyond the panic threshold, or
    /// the holdover ran out. Served as unsynchronized (or at the local stratum, if set).
    Unsynchronized,
}

impl SyncState {
    /// True if the served time is vouched for: following sources, holding over, or a local
    /// reference by configuration.
    pub fn is_synchronized(self) -> bool {
        matches!(
            self,
            SyncState::Synchronized | SyncState::Holdover | SyncState::Local
        )
    }
}

/// One source.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Identifier within the system.
    pub id: SourceId,
    /// Address and port.
    pub address: String,
    /// The name it was configured with, if any (filled in by the daemon).
    #[serde(default)]
    pub name: Option<String>,
    /// Selection state.
    pub state: SourceState,
    /// Why it is in that state, when that needs saying (unreachable, unusable, denied,
    /// falseticker).
    #[serde(default)]
    pub reason: Option<String>,
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
    /// Round-trip delay of the last sample, seconds: its offset is within half of it of the
    /// truth, whatever the path's asymmetry.
    #[serde(default)]
    pub last_delay: Option<f64>,
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
    /// Network Time Security, when the source uses it (filled in by the driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nts: Option<NtsStatus>,
}

/// What NTS did for one source: its cookies, key exchanges and the replies it refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NtsStatus {
    /// The AEAD algorithm of the current keys; none before the first key exchange.
    pub aead: Option<String>,
    /// Unused cookies held (at most 8).
    pub cookies: usize,
    /// Key exchanges completed.
    pub key_exchanges: u64,
    /// Key exchanges that failed.
    pub key_exchange_failures: u64,
    /// Why the last key exchange failed, if the last one did.
    pub last_error: Option<String>,
    /// Requests sent with a cookie and an authenticator.
    pub requests: u64,
    /// Replies that authenticated (only these reach the clock).
    pub authenticated: u64,
    /// Replies dropped because they did not authenticate (or were not NTS at all).
    pub rejected: u64,
    /// NTS NAKs: the server could not open our cookie.
    pub naks: u64,
    /// Polls skipped because no cookie was left.
    pub starved: u64,
}

impl SourceStatus {
    pub(crate) fn new(
        id: SourceId,
        s: &Source,
        state: SourceState,
        reason: Option<String>,
        (now, phase_now): (MonoTime, f64),
        min_disp: f64,
    ) -> Self {
        let e = s.estimate(phase_now);
        let last = s.last_sample(phase_now);
        let info = s.info();
        SourceStatus {
            id,
            address: s.address().to_string(),
            name: None,
            state,
            reason,
            stratum: info.map(|i| i.stratum),
            reference_id: info.map(|i| i.reference_id.display_for_stratum(i.stratum)),
            poll: s.poll(),
            reach: s.reach(),
            last_offset: last.map(|x| x.offset),
            last_delay: last.map(|x| x.delay),
            offset: e.map(|e| e.offset),
            delay: e.map(|e| e.delay),
            jitter: e.map(|e| e.jitter),
            root_distance: s.root_distance(now, min_disp),
            last_sample_age: last.map(|x| now.secs_since(x.time)),
            last_rejection: s.last_rejection().map(|r| r.to_string()),
            counters: s.counters(),
            nts: None,
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
    /// True while the served time is vouched for (see [`SyncState::is_synchronized`]).
    pub synchronized: bool,
    /// Where the served time comes from.
    pub state: SyncState,
    /// What the state means now (why not synchronized, how long in holdover), if anything.
    pub reason: Option<String>,
    /// Seconds since the last clock update, if there was one.
    #[serde(default)]
    pub last_update_age: Option<f64>,
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
    /// Poll exponent suggested to sources (None without sources).
    pub poll: Option<i8>,
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
