//! The whole synchronization state of one node: its sources, selection, the discipline and the
//! state it serves downstream.

use super::bound::{BoundForecast, BoundInputs, BoundStatus, ErrorBound, DEFAULT_MAX_CLOCK_ERROR};
use super::discipline::{Discipline, DisciplineConfig, DisciplineEvent};
use super::filter::FILTER_STAGES;
use super::inline::InlineVec;
use super::select::{select_into, spread_beyond_stated, Candidate, NoSelection, Selection};
use super::source::{
    Reachability, Rejection, ReplyOutcome, SampleLimits, Source, SourceConfig, TIMESTAMP_NOISE,
    UNREACHABLE_AFTER,
};
use super::status::{SourceState, SourceStatus, SyncState, SystemStatus, Tracking};
use crate::clock::{ClockCommand, CommandQueue};
use crate::served::{DispersionFloor, ServedState, PHI};
use crate::time::{ClockTime, MonoTime};
use ntpkit_wire::{KissCode, LeapIndicator, RefId};
use rand_core::RngCore;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Identifies a source within one [`SyncSystem`].
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub struct SourceId(pub u32);

/// System-wide settings.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct SystemConfig {
    /// Sources that must agree before the clock is disciplined (default 1).
    pub minsources: usize,
    /// Discipline thresholds and start state.
    pub discipline: DisciplineConfig,
    /// Acceptance limits for replies.
    pub limits: SampleLimits,
    /// Floor of the delay term in the root distance, seconds (RFC 5905 MINDISP; default 0.01).
    pub min_dispersion: f64,
    /// Stratum to serve while unsynchronized (chrony's `local stratum`); None serves stratum 16.
    pub local_stratum: Option<u8>,
    /// At start-up, how long to wait for every source's first sample before selecting, seconds.
    pub startup_wait: f64,
    /// While no source is selectable, the last update is served (its root dispersion growing
    /// at PHI) for this long (seconds) after it; then the served state becomes unsynchronized
    /// (or the local stratum). Sources that disagree end it at once.
    pub holdover: f64,
    /// Maximum rate (s/s) at which the clock's error may grow beyond what the frequency
    /// estimate predicts, for the error bound (chrony's `maxclockerror`; default 1 ppm, see
    /// [`DEFAULT_MAX_CLOCK_ERROR`]).
    pub max_clock_error: f64,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            minsources: 1,
            discipline: DisciplineConfig::default(),
            limits: SampleLimits::default(),
            min_dispersion: 0.01,
            local_stratum: None,
            startup_wait: 6.0,
            holdover: 3600.0,
            max_clock_error: DEFAULT_MAX_CLOCK_ERROR,
        }
    }
}

/// Something worth logging. Each says what happened to whom; drivers name the source (the
/// core knows its address, a driver may know the name it was configured with) and choose the
/// log level with [`Event::is_warning`].
#[derive(Clone, PartialEq, Debug, Serialize)]
pub enum Event {
    /// A new system peer was selected.
    Selected {
        /// The source.
        source: SourceId,
        /// Its address.
        address: SocketAddr,
    },
    /// No source can be followed.
    NoSelection {
        /// Why, in words.
        reason: String,
        /// What is served meanwhile, in words (unsynchronized, holdover).
        serving: String,
    },
    /// A source stopped answering.
    Unreachable {
        /// The source.
        source: SourceId,
        /// Its address.
        address: SocketAddr,
    },
    /// A source that was unreachable answered again.
    Reachable {
        /// The source.
        source: SourceId,
        /// Its address.
        address: SocketAddr,
    },
    /// The holdover ran out: the last update is too old to serve as synchronized.
    HoldoverExpired {
        /// Seconds since the last update.
        age: f64,
        /// What is served from now on, in words.
        serving: String,
    },
    /// The clock was stepped by this many seconds.
    Stepped {
        /// Step, seconds.
        offset: f64,
    },
    /// An offset beyond the panic threshold is refused (reported once, when refusing starts).
    PanicRefused {
        /// The offset, seconds.
        offset: f64,
    },
    /// The offset is back within the panic threshold.
    PanicCleared {
        /// The offset, seconds.
        offset: f64,
    },
    /// A source sent a kiss-o'-death.
    Kiss {
        /// The source.
        source: SourceId,
        /// Its address.
        address: SocketAddr,
        /// The code.
        code: String,
    },
}

impl Event {
    /// True for events an operator should act on or know about at once (lost sources, no
    /// selection, refused offsets, kisses of death); false for routine ones.
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            Event::Selected { .. } | Event::Reachable { .. } | Event::PanicCleared { .. }
        )
    }

    /// The source the event is about, if one.
    pub fn source(&self) -> Option<SourceId> {
        match self {
            Event::Selected { source, .. }
            | Event::Unreachable { source, .. }
            | Event::Reachable { source, .. }
            | Event::Kiss { source, .. } => Some(*source),
            _ => None,
        }
    }
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Event::Selected { address, .. } => write!(f, "selected source {address}"),
            Event::NoSelection { reason, serving } => {
                write!(f, "no source selected: {reason}; {serving}")
            }
            Event::Unreachable { address, .. } => write!(
                f,
                "source {address} unreachable: no reply to the last {UNREACHABLE_AFTER} requests"
            ),
            Event::Reachable { address, .. } => write!(f, "source {address} reachable again"),
            Event::HoldoverExpired { age, serving } => write!(
                f,
                "holdover ended: no clock update for {age:.0} s; {serving}"
            ),
            Event::Stepped { offset } => write!(f, "clock stepped by {offset:+.6} s"),
            Event::PanicRefused { offset } => write!(
                f,
                "offset {offset:+.3} s exceeds the panic threshold: clock left alone; \
                 set it by hand or raise panic-threshold"
            ),
            Event::PanicCleared { offset } => write!(
                f,
                "offset {offset:+.3} s is within the panic threshold again: correcting the clock"
            ),
            Event::Kiss { address, code, .. } => {
                write!(f, "kiss-o'-death {code} received from {address}")
            }
        }
    }
}

/// A request to send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transmit {
    /// To which source.
    pub source: SourceId,
    /// Bytes written into the caller's buffer.
    pub len: usize,
}

/// Synchronization of one node: sources, selection, discipline, served state.
///
/// Call contract (both drivers follow it):
/// * inputs: [`handle_reply`](Self::handle_reply) for every datagram from a source's address,
///   with the local clock's receive time; [`handle_timeout`](Self::handle_timeout) when
///   [`poll_timeout`](Self::poll_timeout) has passed.
/// * outputs, drained after every input: [`poll_transmit`](Self::poll_transmit) until None
///   (requests due now; the local clock is read just before each), then
///   [`poll_clock_command`](Self::poll_clock_command) until None (apply each at once, in order),
///   then [`poll_event`](Self::poll_event) for logging.
/// * state: [`served_state`](Self::served_state) for the responder, [`status`](Self::status).
///
/// `now` is monotonic time; clock readings are the disciplined clock's.
#[derive(Debug)]
pub struct SyncSystem {
    config: Settings,
    sources: Sources,
    discipline: Discipline,
    step_generation: u64,
    started_at: MonoTime,
    startup_pending: bool,
    selection: Selection,
    no_selection: Option<NoSelection>,
    system_peer: Option<usize>,
    last_update: Option<(MonoTime, ClockTime)>,
    /// A source's reachability changed since the last selection: select again without waiting
    /// for a sample.
    reselect_pending: bool,
    /// The end of the holdover was reported.
    holdover_expired: bool,
    /// Recent mean of the survivors' spread beyond their stated noise (s², see
    /// [`SERVER_ERROR_MEMORY`]).
    server_error: f64,
    /// Configured sources the driver has not added yet (names that do not resolve yet).
    unresolved: u32,
    /// The latest (monotonic, clock) pair an input brought: the clock "now" is extrapolated
    /// from it (e.g. the reference time of the local clock when it serves itself).
    clock_seen: (MonoTime, ClockTime),
    served: Option<ServedState>,
    /// What the error bound grows from: recorded with the served state.
    bound_anchor: Option<BoundAnchor>,
    /// |innovation| / interval of the latest updates (a ring), s/s: the bound allows for the
    /// largest of them.
    recent_drift: [f64; RECENT_DRIFT_UPDATES],
    recent_drift_next: usize,
    sys_poll: i8,
    /// Samples the selection could not use because the sources disagree, since the poll last
    /// backed off (see [`DISAGREEING_POLLS`]).
    disagreeing_samples: u32,
    /// The poll exponent before a disagreement backed it off: restored once sources agree.
    poll_before_disagreement: Option<i8>,
    commands: CommandQueue,
    events: VecDeque<Event>,
}

impl SyncSystem {
    /// A system with no sources, started at `now`, when the local clock reads `clock`.
    pub fn new(config: SystemConfig, now: MonoTime, clock: ClockTime) -> Self {
        let discipline = Discipline::new(config.discipline, now);
        let mut s = SyncSystem {
            config: Settings::from(config),
            sources: Sources::default(),
            discipline,
            step_generation: 0,
            started_at: now,
            startup_pending: true,
            selection: Selection::default(),
            no_selection: None,
            system_peer: None,
            last_update: None,
            reselect_pending: false,
            holdover_expired: false,
            server_error: 0.0,
            unresolved: 0,
            clock_seen: (now, clock),
            served: None,
            bound_anchor: None,
            recent_drift: [0.0; RECENT_DRIFT_UPDATES],
            recent_drift_next: 0,
            sys_poll: i8::MIN,
            disagreeing_samples: 0,
            poll_before_disagreement: None,
            commands: CommandQueue::default(),
            events: VecDeque::new(),
        };
        s.drain_discipline();
        s
    }

    /// Adds a source; its first request is due at once with iburst.
    pub fn add_source(
        &mut self,
        address: SocketAddr,
        config: SourceConfig,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) -> SourceId {
        let source = Source::new(address, config, now, rng);
        self.sys_poll = if self.sys_poll == i8::MIN {
            source.poll()
        } else {
            self.sys_poll.min(source.poll())
        };
        self.sources.push(source);
        SourceId(self.sources.len() as u32 - 1)
    }

    /// Tells how many configured sources are not added yet (their names do not resolve yet):
    /// until they are, a node with no source is not a local reference but waiting for them.
    pub fn set_unresolved_sources(&mut self, count: usize) {
        self.unresolved = count.try_into().unwrap_or(u32::MAX);
    }

    /// Removes a source (a pool member that went bad, an operator's request); selection runs
    /// again at the next [`poll_transmit`](Self::poll_transmit).
    pub fn remove_source(&mut self, id: SourceId) {
        if let Some(slot) = self.sources.get_mut(id.0 as usize) {
            *slot = None;
        }
        if self.system_peer == Some(id.0 as usize) {
            self.system_peer = None;
        }
        self.reselect_pending = true;
    }

    /// Sends a burst of four requests to source `id` (every source if None) from `now` on, as
    /// `chronyc burst` does; returns how many sources burst (denied ones do not).
    pub fn burst(&mut self, now: MonoTime, id: Option<SourceId>) -> usize {
        let mut n = 0;
        for (i, s) in self.sources.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            if id.is_none_or(|id| id.0 as usize == i) && s.denied().is_none() {
                s.burst(now);
                n += 1;
            }
        }
        n
    }

    /// Steps the clock at once by the whole offset the discipline estimates at `now`, ending
    /// any slew, as `chronyc makestep` does (whatever the step and panic thresholds: an
    /// operator asked). Returns the step (seconds), or None if the clock has had no update yet.
    /// The step comes out of [`poll_clock_command`](Self::poll_clock_command) with its event.
    pub fn make_step(&mut self, now: MonoTime) -> Option<f64> {
        let step = self.discipline.step_now(now)?;
        self.drain_discipline();
        Some(step)
    }

    /// The next request due at `now`, written into `buf` (≥ 48 bytes). `clock` is the local
    /// clock read just before sending. Call until None.
    pub fn poll_transmit(
        &mut self,
        now: MonoTime,
        clock: ClockTime,
        rng: &mut dyn RngCore,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        self.clock_seen = (now, clock);
        let generation = self.step_generation;
        for (i, slot) in self.sources.iter_mut().enumerate() {
            if let Some(src) = slot {
                if let Some(len) = src.transmit(now, clock, rng, buf, generation) {
                    if let Some(change) = src.take_reachability_change() {
                        self.reselect_pending = true;
                        let (source, address) = (SourceId(i as u32), src.address());
                        self.events.push_back(match change {
                            Reachability::Lost => Event::Unreachable { source, address },
                            Reachability::Regained => Event::Reachable { source, address },
                        });
                    }
                    return Some(Transmit {
                        source: SourceId(i as u32),
                        len,
                    });
                }
            }
        }
        if std::mem::take(&mut self.reselect_pending) && !self.startup_pending {
            self.reselect(now);
        }
        None
    }

    /// The request [`poll_transmit`](Self::poll_transmit) returned for source `id` left at
    /// local clock time `sent`: the kernel's transmit timestamp, or a reading taken once it was
    /// ready to go, right before the send (see [`Source::transmitted`]). Without this call its
    /// exchange is timed from the clock `poll_transmit` was given.
    pub fn transmitted(&mut self, id: SourceId, sent: ClockTime) {
        if let Some(Some(src)) = self.sources.get_mut(id.0 as usize) {
            src.transmitted(sent);
        }
    }

    /// A datagram from source `id`'s address, received at local clock time `received`.
    pub fn handle_reply(&mut self, now: MonoTime, received: ClockTime, id: SourceId, bytes: &[u8]) {
        self.clock_seen = (now, received);
        let idx = id.0 as usize;
        let limits = SampleLimits {
            ..self.config.limits
        };
        let generation = self.step_generation;
        let phase = self.discipline.phase_at(now);
        let Some(Some(src)) = self.sources.get_mut(idx) else {
            return;
        };
        let outcome = src.handle_reply(now, received, bytes, &limits, generation, phase);
        let address = src.address();
        if let Some(Reachability::Regained) = src.take_reachability_change() {
            self.events.push_back(Event::Reachable {
                source: id,
                address,
            });
        }
        match outcome {
            ReplyOutcome::NotOurs => {}
            ReplyOutcome::Rejected(Rejection::Kiss(code)) => {
                let code = match code {
                    KissCode::Other(r) => r.as_ascii().unwrap_or("????").to_string(),
                    k => k.to_string(),
                };
                self.events.push_back(Event::Kiss {
                    source: id,
                    address,
                    code,
                });
                // A denied source leaves the selection at once.
                if !self.startup_pending {
                    self.reselect(now);
                }
            }
            ReplyOutcome::Rejected(_) => {}
            ReplyOutcome::Sample(sample, variance) => {
                if self.startup_pending {
                    self.try_start(now, received);
                } else {
                    self.reselect_with(now, phase);
                    if self.no_selection.is_some_and(|why| why.is_disagreement()) {
                        self.back_off_while_disagreeing(now, phase);
                    }
                    if self.selection.survivors.contains(&idx) && self.no_selection.is_none() {
                        let interval = self.interval();
                        let predicted = self.discipline.predicted_offset(now);
                        let (offset, variance) = match self.sources.get_mut(idx) {
                            Some(Some(src)) => {
                                src.asymmetry_corrected(&sample, variance, predicted)
                            }
                            _ => (sample.offset, variance),
                        };
                        let server_error = self.update_server_error(phase);
                        self.feed_discipline(now, offset, variance + server_error, interval);
                        self.confine_to_bands(now, idx, server_error, interval);
                        self.after_update(now, received);
                    }
                }
            }
        }
    }

    /// Handles deadlines at `now` (requests due, the start-up wait, the end of a holdover);
    /// `clock` is the local clock now. Calling it early does no harm.
    pub fn handle_timeout(&mut self, now: MonoTime, clock: ClockTime) {
        self.clock_seen = (now, clock);
        if self.startup_pending && now.secs_since(self.started_at) >= self.config.startup_wait {
            self.try_start(now, clock);
        }
        if let Some(end) = self.holdover_end() {
            if now >= end && !self.holdover_expired {
                self.holdover_expired = true;
                let age = self.last_update.map_or(0.0, |(t, _)| now.secs_since(t));
                let serving = self.fallback_serving();
                self.events
                    .push_back(Event::HoldoverExpired { age, serving });
            }
        }
    }

    /// The earliest deadline: the next request due, the start-up wait, the end of a holdover.
    /// (Slews end in the clock: see [`ClockCommand::Slew`].)
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        let sources = self
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.next_deadline());
        let startup = self
            .startup_pending
            .then(|| self.started_at.add_secs_f64(self.config.startup_wait));
        let holdover = self.holdover_end().filter(|_| !self.holdover_expired);
        sources.chain(startup).chain(holdover).min()
    }

    /// When the current holdover (no selectable source, an update to serve) runs out.
    fn holdover_end(&self) -> Option<MonoTime> {
        let holding =
            self.served.is_some() && self.no_selection.is_some_and(|n| !n.is_disagreement());
        let (t, _) = self.last_update?;
        holding.then(|| t.add_secs_f64(self.config.holdover))
    }

    /// The next clock command, to apply at once. Call until None.
    pub fn poll_clock_command(&mut self) -> Option<ClockCommand> {
        self.commands.pop()
    }

    /// The next event, for logging.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 0 {
            // Events are rare (selection changes, steps): hold no memory between them.
            self.events = VecDeque::new();
        }
        ev
    }

    /// Where the served time comes from at `now` (monotonic).
    pub fn sync_state(&self, now: MonoTime) -> SyncState {
        if self.sources.iter().flatten().next().is_none()
            && self.config.local_stratum.is_some()
            && self.unresolved == 0
        {
            return SyncState::Local;
        }
        if self.discipline.is_refusing() {
            return SyncState::Unsynchronized;
        }
        let Some((updated, _)) = self.last_update.filter(|_| self.served.is_some()) else {
            return if self.startup_pending {
                SyncState::Starting
            } else {
                SyncState::Unsynchronized
            };
        };
        if now.secs_since(updated) > self.config.holdover {
            return SyncState::Unsynchronized;
        }
        match self.no_selection {
            None => SyncState::Synchronized,
            Some(_) => SyncState::Holdover,
        }
    }

    /// The clock error bound at `now` (monotonic): true time is within `B` of the clock while
    /// synchronized or holding over; unknown otherwise (see [`super::bound`] for the terms).
    pub fn error_bound(&self, now: MonoTime) -> ErrorBound {
        let status = match self.sync_state(now) {
            SyncState::Synchronized => BoundStatus::Synchronized,
            SyncState::Holdover => BoundStatus::Holdover,
            _ => return ErrorBound::UNKNOWN,
        };
        let (Some(anchor), Some(_)) = (self.bound_anchor, self.served) else {
            return ErrorBound::UNKNOWN;
        };
        let estimate = anchor.estimate;
        let inputs = BoundInputs {
            offset_sd: estimate.offset_sd,
            frequency_sd: estimate.frequency_sd,
            offset_now: self.discipline.state(now).offset,
            measurement_gap: anchor.measurement_gap,
            root_delay: anchor.root_delay,
            root_dispersion: anchor.root_dispersion,
            since_update: now.secs_since(estimate.at),
            unpredicted_drift: estimate.unpredicted_drift,
        };
        ErrorBound::compute(status, &inputs, self.config.max_clock_error)
    }

    /// The bound at `now` with how fast it may grow and for how long (at most `horizon`
    /// seconds) if no update arrives; None when the bound is unknown.
    ///
    /// Without updates the bound is a constant, plus terms linear in the time since the last
    /// update, plus |θ̂|, the estimated offset not yet slewed away, which changes linearly at
    /// one rate until the end of a slew in progress and at another after it. So the bound is
    /// convex on either side of the slew's end, and the steepest line from now that stays
    /// above it reaches it at the slew's end or at the end of the horizon: the growth rate
    /// is the larger of those two slopes.
    pub fn bound_forecast(&self, now: MonoTime, horizon: f64) -> Option<BoundForecast> {
        let current = self.error_bound(now);
        let bound = current.bound()?;
        let (updated, _) = self.last_update?;
        // A millisecond short of the holdover's end, where the bound is still known.
        let valid_for = (self.config.holdover - now.secs_since(updated) - 1e-3).clamp(0.0, horizon);
        let end = now.add_secs_f64(valid_for);
        let slew_end = self.discipline.slew_end().filter(|&t| t > now && t < end);
        let mut growth_rate = self.config.max_clock_error;
        for t in slew_end.into_iter().chain([end]) {
            let dt = t.secs_since(now);
            if let (Some(b), true) = (self.error_bound(t).bound(), dt > 0.0) {
                growth_rate = growth_rate.max((b - bound) / dt);
            }
        }
        Some(BoundForecast {
            status: current.status,
            bound,
            growth_rate,
            valid_for,
        })
    }

    /// The bound AWS ClockBound derives from a chronyd's tracking at `now`: |estimated offset|
    /// plus the root dispersion served (aged since the last update) plus half the root delay
    /// served; None when [`error_bound`](Self::error_bound) is unknown. For comparison only.
    pub fn clockbound_formula(&self, now: MonoTime) -> Option<f64> {
        self.error_bound(now).bound()?;
        // NTP's root dispersion as chronyd would serve it: without ntpkit's own bound under it.
        let served = ServedState {
            dispersion_floor: None,
            ..self.served_state(now)
        };
        let dispersion = served
            .root_dispersion_at(self.clock_at(now))
            .to_seconds_f64();
        Some(
            self.discipline.state(now).offset.abs()
                + dispersion
                + served.root_delay as f64 * 0.5e-9,
        )
    }

    /// What to tell downstream clients at `now` (monotonic).
    pub fn served_state(&self, now: MonoTime) -> ServedState {
        match (self.served, self.sync_state(now)) {
            (Some(s), SyncState::Synchronized | SyncState::Holdover) => s,
            _ => match self.config.local_stratum {
                // The local clock is its own reference: its reference time is now.
                Some(stratum) => ServedState::local(
                    stratum,
                    RefId::LOCL,
                    self.config.limits.local_precision,
                    self.clock_at(now),
                ),
                None => ServedState::unsynchronized(self.config.limits.local_precision),
            },
        }
    }

    /// The local clock's reading at `now`, extrapolated from the latest input.
    fn clock_at(&self, now: MonoTime) -> ClockTime {
        let (t, c) = self.clock_seen;
        c.add_nanos(now.nanos_since(t))
    }

    /// True while the clock follows a selected source (or holds over on its last update).
    pub fn is_synchronized(&self, now: MonoTime) -> bool {
        matches!(
            self.sync_state(now),
            SyncState::Synchronized | SyncState::Holdover
        )
    }

    /// The discipline's current frequency estimate, ppm (for the drift file).
    pub fn frequency_ppm(&self, now: MonoTime) -> f64 {
        self.discipline.state(now).frequency_ppm
    }

    /// The current poll exponent suggested to sources (None without sources).
    pub fn poll(&self) -> Option<i8> {
        (self.sys_poll != i8::MIN).then_some(self.sys_poll)
    }

    /// The sources' and the system's state, in `chronyc sources` / `tracking` terms.
    pub fn status(&self, now: MonoTime) -> SystemStatus {
        let d = self.discipline.state(now);
        let served = self.served_state(now);
        let phase = self.discipline.phase_at(now);
        let sources = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .map(|(i, s)| {
                let (state, reason) = self.source_state(i, s);
                SourceStatus::new(
                    SourceId(i as u32),
                    s,
                    state,
                    reason,
                    (now, phase),
                    self.config.min_dispersion,
                )
            })
            .collect();
        let state = self.sync_state(now);
        let age = self.last_update.map(|(t, _)| now.secs_since(t));
        let why = self.no_selection.map(|n| n.to_string());
        let reason = match state {
            SyncState::Synchronized => None,
            SyncState::Local => Some(format!(
                "the local clock is the reference (no sources; local stratum {})",
                served.stratum
            )),
            SyncState::Starting if self.unresolved > 0 => Some(format!(
                "starting: waiting for {} source name(s) to resolve",
                self.unresolved
            )),
            SyncState::Starting => Some("starting: waiting for the sources' samples".into()),
            SyncState::Holdover => Some(format!(
                "holdover: {} for {:.0} s; serving the last update, root dispersion growing \
                 {:.0} µs/s, until {:.0} s after it",
                why.as_deref().unwrap_or("no selection"),
                age.unwrap_or(0.0),
                PHI * 1e6,
                self.config.holdover
            )),
            SyncState::Unsynchronized => Some(if self.discipline.is_refusing() {
                format!(
                    "offset {:+.3} s beyond the panic threshold: not corrected",
                    d.offset
                )
            } else if self.sources.iter().flatten().next().is_none() && self.unresolved > 0 {
                format!(
                    "no source yet: waiting for {} source name(s) to resolve",
                    self.unresolved
                )
            } else if let Some(why) = why.as_ref().filter(|_| {
                self.no_selection.is_some_and(|n| n.is_disagreement()) || self.served.is_none()
            }) {
                why.clone()
            } else if let Some(age) = age.filter(|&a| a > self.config.holdover) {
                format!(
                    "no clock update for {age:.0} s, beyond the holdover of {:.0} s{}",
                    self.config.holdover,
                    why.map_or(String::new(), |w| format!(" ({w})"))
                )
            } else {
                "no usable source yet".into()
            }),
        };
        SystemStatus {
            tracking: Tracking {
                reference_id: served.reference_id.display_for_stratum(served.stratum),
                stratum: served.stratum,
                leap: format!("{:?}", served.leap),
                synchronized: state.is_synchronized(),
                state,
                reason,
                last_update_age: age,
                offset: d.offset,
                last_offset: d.last_offset,
                offset_sd: d.offset_sd,
                frequency_ppm: d.frequency_ppm,
                frequency_sd_ppm: d.frequency_sd_ppm,
                correction_ppm: d.correction_ppm,
                root_delay: served.root_delay as f64 * 1e-9,
                root_dispersion: served
                    .root_dispersion_at(self.clock_at(now))
                    .to_seconds_f64(),
                poll: self.poll(),
                updates: d.updates,
                steps: d.steps,
            },
            sources,
        }
    }

    /// What selection made of source `i`, and why when that needs saying.
    fn source_state(&self, i: usize, s: &Source) -> (SourceState, Option<String>) {
        if let Some(code) = s.denied() {
            return (
                SourceState::Denied,
                Some(format!("kiss-o'-death {code}: no more requests")),
            );
        }
        if let Some(why) = s.unreachable_reason() {
            return (SourceState::Unreachable, Some(why));
        }
        if self.system_peer == Some(i) && self.no_selection.is_none() {
            (SourceState::Selected, None)
        } else if self.selection.falsetickers.contains(&i) {
            let why = match self.no_selection {
                Some(n) if n.is_disagreement() => n.to_string(),
                _ => "outside the interval the majority agrees on".into(),
            };
            (SourceState::Falseticker, Some(why))
        } else if self.selection.outliers.contains(&i) {
            (SourceState::Outlier, None)
        } else if self.selection.survivors.contains(&i) {
            (SourceState::Candidate, None)
        } else {
            let max = self.config.limits.max_distance;
            let distance = s
                .root_distance(self.clock_seen.0, self.config.min_dispersion)
                .filter(|&d| d > max);
            let why = s
                .last_rejection()
                .map(|r| r.to_string())
                .or_else(|| (!s.has_estimate()).then(|| "no sample yet".into()))
                .or_else(|| {
                    distance.map(|d| {
                        format!("root distance {d:.3} s above the maximum {max} s (its jitter)")
                    })
                });
            (SourceState::Unusable, why)
        }
    }

    fn interval(&self) -> f64 {
        self.system_peer
            .and_then(|i| self.sources.get(i)?.as_ref())
            .map_or(crate::time::exp2(self.sys_poll as i32), |s| s.interval())
    }

    /// First selection: once every live source has a sample, or the start-up wait is over.
    fn try_start(&mut self, now: MonoTime, clock: ClockTime) {
        let waiting = self
            .sources
            .iter()
            .flatten()
            .any(|s| s.denied().is_none() && !s.has_estimate() && !s.is_unreachable());
        if waiting && now.secs_since(self.started_at) < self.config.startup_wait {
            return;
        }
        self.reselect(now);
        let Some(peer) = self.system_peer.filter(|_| self.no_selection.is_none()) else {
            if !self.selection.survivors.is_empty() || self.no_selection.is_some() || !waiting {
                self.startup_pending = false;
            }
            return;
        };
        self.startup_pending = false;
        let src = self.sources[peer].as_ref().expect("peer exists");
        let e = src
            .estimate(self.discipline.phase_at(now))
            .expect("candidates have estimates");
        let variance = src
            .estimate_variance(&self.config.limits)
            .expect("candidates have estimates");
        let interval = src.interval();
        // Start from the best (minimum-delay) sample of the burst, worth what its delay says.
        self.feed_discipline(now, e.offset, variance, interval);
        self.after_update(now, clock);
    }

    /// Runs selection over the current candidates, their offsets judged against the clock as
    /// it is now.
    fn reselect(&mut self, now: MonoTime) {
        self.reselect_with(now, self.discipline.phase_at(now));
    }

    /// Folds the survivors' current spread beyond their stated noise (their filters' chosen
    /// samples, against the clock at `phase`) into its recent mean, and returns that: the
    /// variance every survivor's sample carries beyond its path's, from the server's own error
    /// (see [`spread_beyond_stated`]). The chosen samples may be several polls old, so the
    /// spread also holds how far they disagree once carried forward at the estimated
    /// frequency: servers polling perfect references still show tens of µs of it. Added to
    /// each sample's variance, it keeps one server's error from steering the clock's
    /// frequency until the others confirm it. With one survivor it decays to nothing.
    fn update_server_error(&mut self, phase: f64) -> f64 {
        let limits = &self.config.limits;
        let spread = spread_beyond_stated(self.selection.survivors.iter().filter_map(|i| {
            let src = self.sources.get(i)?.as_ref()?;
            Some((
                src.estimate(phase)?.offset,
                src.stated_estimate_variance(limits)?,
            ))
        }));
        self.server_error += (spread - self.server_error) / SERVER_ERROR_MEMORY;
        self.server_error
    }

    /// [`reselect`](Self::reselect) when the discipline's phase at `now` is already known.
    fn reselect_with(&mut self, now: MonoTime, phase: f64) {
        let candidates = self.candidates(now, phase);
        let previous = self.system_peer;
        let previous_reason = self.no_selection;
        match select_into(
            candidates.as_slice(),
            self.config.minsources as usize,
            self.system_peer,
            &mut self.selection,
        ) {
            Ok(()) => {
                self.system_peer = self.selection.system_peer;
                self.no_selection = None;
                self.disagreeing_samples = 0;
                if let Some(poll) = self.poll_before_disagreement.take() {
                    self.set_sys_poll(poll);
                }
                if self.system_peer != previous || previous_reason.is_some() {
                    // A new peer of a node that serves its time (not refusing, not
                    // unsynchronized): serve through the new peer at once, not from the next
                    // update on.
                    if let (Some(_), Some((_, at))) = (self.served, self.last_update) {
                        if !self.discipline.is_refusing() && self.serve_peer(now, at) {
                            self.floor_served_dispersion(now);
                        }
                    }
                    if let Some(p) = self.system_peer {
                        let address = self.sources[p].as_ref().expect("peer exists").address();
                        self.events.push_back(Event::Selected {
                            source: SourceId(p as u32),
                            address,
                        });
                    }
                }
            }
            Err(why) => {
                self.system_peer = None;
                self.no_selection = Some(why);
                if why.is_disagreement() {
                    // The time can no longer be vouched for: stop serving it as synchronized
                    // now, not after the holdover.
                    self.served = None;
                }
                if previous_reason != Some(why) {
                    let serving = match self.sync_state(now) {
                        SyncState::Holdover => format!(
                            "holding over on the last update for up to {:.0} s",
                            self.config.holdover
                        ),
                        _ => self.fallback_serving(),
                    };
                    self.events.push_back(Event::NoSelection {
                        reason: why.to_string(),
                        serving,
                    });
                }
            }
        }
    }

    /// The sources selection may choose from at `now` (reachable, not denied, synchronized,
    /// within `max-distance`), their offsets judged against the clock at `phase`.
    fn candidates(&self, now: MonoTime, phase: f64) -> InlineVec<Candidate, 16> {
        let max_distance = self.config.limits.max_distance;
        let mut candidates = InlineVec::<Candidate, 16>::new(Candidate {
            index: 0,
            offset: 0.0,
            root_distance: 0.0,
            jitter: 0.0,
        });
        for (i, s) in self.sources.iter().enumerate() {
            let Some(s) = s.as_ref() else { continue };
            if s.denied().is_some() || s.reach() == 0 {
                continue;
            }
            let Some(info) = s.info() else { continue };
            if info.stratum >= 16 || info.leap == LeapIndicator::Unsynchronized {
                continue;
            }
            let Some(e) = s.estimate(phase) else { continue };
            let Some(root_distance) = s.root_distance(now, self.config.min_dispersion) else {
                continue;
            };
            if root_distance <= max_distance {
                candidates.push(Candidate {
                    index: i,
                    offset: e.offset,
                    root_distance,
                    jitter: clustering_jitter(s, &e),
                });
            }
        }
        candidates
    }

    /// What is served when the node does not follow its sources, in words.
    fn fallback_serving(&self) -> String {
        match self.config.local_stratum {
            Some(stratum) => format!("serving the local clock at stratum {stratum}"),
            None => "serving as unsynchronized (leap 3, stratum 16)".into(),
        }
    }

    /// Serves the system peer's time: its leap and stratum + 1, the root delay and dispersion
    /// through it, its reference ID, `reference_time` as the last update. False if the peer has
    /// no estimate yet.
    fn serve_peer(&mut self, now: MonoTime, reference_time: ClockTime) -> bool {
        let Some(peer) = self.system_peer else {
            return false;
        };
        let phase = self.discipline.phase_at(now);
        let d = self.discipline.state(now);
        let src = self.sources[peer].as_ref().expect("peer exists");
        let (Some(info), Some(e)) = (src.info(), src.estimate(phase)) else {
            return false;
        };
        // The estimate's uncertainty and the growth since are anchored at the discipline's
        // latest update: a new peer, or a sample held back as an outlier, brings new path terms
        // but teaches nothing about the clock, and must not restart the growth.
        let estimate = match self.bound_anchor {
            Some(a) if a.updates == d.updates => a.estimate,
            _ => EstimateAnchor {
                at: now,
                offset_sd: d.offset_sd,
                frequency_sd: d.frequency_sd_ppm * 1e-6,
                unpredicted_drift: self.note_unpredicted_drift(
                    now,
                    d.unexplained_innovation(),
                    d.updates,
                ),
            },
        };
        let src = self.sources[peer].as_ref().expect("peer exists");
        let root_delay = info.root_delay + e.delay;
        self.bound_anchor = Some(BoundAnchor {
            updates: d.updates,
            estimate,
            // The filtered estimate and the latest sample: the filter prefers an older sample
            // of smaller delay, the discipline may hold the latest back as an outlier.
            measurement_gap: src
                .last_sample(phase)
                .map_or(0.0, |x| (x.offset - d.offset).abs())
                .max((e.offset - d.offset).abs()),
            root_delay,
            root_dispersion: info.root_dispersion,
        });
        let root_dispersion =
            info.root_dispersion + e.dispersion + e.jitter + d.offset_sd + d.offset.abs();
        self.served = Some(ServedState {
            leap: info.leap,
            stratum: (info.stratum + 1).min(16),
            precision: self.config.limits.local_precision,
            poll: self.sys_poll,
            root_delay: (root_delay * 1e9) as i64,
            root_dispersion: (root_dispersion * 1e9) as i64,
            reference_id: RefId::from_ip(src.ip()),
            reference_time,
            dispersion_floor: None,
        });
        true
    }

    /// Puts the node's own error bound under the root dispersion it serves (see
    /// [`DispersionFloor`]): called once the served state and the last update are current.
    fn floor_served_dispersion(&mut self, now: MonoTime) {
        let forecast = self.bound_forecast(now, self.config.holdover);
        let at = self.clock_at(now);
        if let (Some(served), Some(f)) = (self.served.as_mut(), forecast) {
            served.dispersion_floor = Some(DispersionFloor {
                at,
                dispersion: f.bound - served.root_delay as f64 * 0.5e-9,
                growth: f.growth_rate,
            });
        }
    }

    /// Records the drift rate the update at `now` found unpredicted (the unexplained part of
    /// its `innovation` over the interval since the previous update; `updates` counts them)
    /// and returns the largest of the latest
    /// [`RECENT_DRIFT_UPDATES`]: one quiet update after unsettled ones does not mean the
    /// frequency estimate has settled (a source slewing at start-up makes its clients'
    /// estimates swing for several updates).
    fn note_unpredicted_drift(&mut self, now: MonoTime, innovation: f64, updates: u64) -> f64 {
        let rate = self
            .bound_anchor
            .map(|a| now.secs_since(a.estimate.at))
            .filter(|&dt| dt > 0.0)
            .map_or(0.0, |dt| innovation.abs() / dt);
        // Older updates count less: each one back, by RECENT_DRIFT_DECAY.
        for r in &mut self.recent_drift {
            *r *= RECENT_DRIFT_DECAY;
        }
        // The first updates' innovations are the initial offset being found, not drift: they
        // count for their own interval only.
        if updates > SETTLING_UPDATES {
            self.recent_drift[self.recent_drift_next] = rate;
            self.recent_drift_next = (self.recent_drift_next + 1) % RECENT_DRIFT_UPDATES;
        }
        self.recent_drift.iter().copied().fold(rate, f64::max)
    }

    /// After a discipline update: commands, served state, poll interval.
    fn after_update(&mut self, now: MonoTime, clock: ClockTime) {
        self.drain_discipline();
        if self.discipline.is_refusing() {
            self.served = None;
            return;
        }
        let Some(peer) = self.system_peer else { return };
        if !self.serve_peer(now, clock) {
            return;
        }
        self.last_update = Some((now, clock));
        self.holdover_expired = false;
        self.floor_served_dispersion(now);
        let src = self.sources[peer].as_ref().expect("peer exists");
        let adjust = self.discipline.poll_adjustment(src.interval());
        if adjust != 0 {
            self.set_sys_poll(self.sys_poll.saturating_add(adjust));
        }
    }

    /// How fast, at most, the `candidates`' samples may move against the clock's time (s/s):
    /// after an update, by the frequency estimate's error (two deviations); before any, by the
    /// clock's own frequency error, which every source's samples show alike as their trend:
    /// the steepest trend among them (plus two standard errors), or without one from each
    /// source, the error a clock may start with.
    fn drift_rate_bound(&self, candidates: &[Candidate]) -> f64 {
        if self.discipline.is_started() {
            return self.discipline.frequency_bound();
        }
        let prior = self.discipline.prior_frequency_bound();
        if candidates.is_empty() {
            return prior;
        }
        candidates
            .iter()
            .map(|c| {
                self.sources[c.index]
                    .as_ref()
                    .and_then(Source::offset_trend)
                    .map_or(prior, |(rate, se)| rate.abs() + 2.0 * se)
            })
            .fold(0.0, f64::max)
            .min(prior)
    }

    /// Sets the poll exponent suggested to every source, within the widest of their ranges
    /// (each source keeps to its own).
    fn set_sys_poll(&mut self, exponent: i8) {
        let (lo, hi) = self
            .sources
            .iter()
            .flatten()
            .map(|s| s.poll_range())
            .fold((i8::MAX, i8::MIN), |(lo, hi), (a, b)| {
                (lo.min(a), hi.max(b))
            });
        self.sys_poll = exponent.clamp(lo, hi.max(lo));
        for s in self.sources.iter_mut().flatten() {
            s.set_poll(self.sys_poll);
        }
    }

    /// After a sample the selection could not use because the sources disagree: once the
    /// reachable sources have answered [`DISAGREEING_POLLS`] times each since the last step, the
    /// poll grows one step, up to `maxpoll`, unless the longer poll could make the disagreement
    /// look like agreement. Sooner samples settle no disagreement between servers (it lasts as
    /// long as their error does), and a node with no majority would otherwise ask every server
    /// at `minpoll` for as long as it lasts. The poll from before comes back as soon as the
    /// sources agree again.
    fn back_off_while_disagreeing(&mut self, now: MonoTime, phase: f64) {
        let reachable = self
            .sources
            .iter()
            .flatten()
            .filter(|s| s.reach() != 0)
            .count()
            .max(1) as u32;
        self.disagreeing_samples += 1;
        if self.disagreeing_samples < DISAGREEING_POLLS * reachable {
            return;
        }
        self.disagreeing_samples = 0;
        // A longer poll spreads a filter's samples over a longer span, and each source's
        // samples move by the clock's unknown frequency error over it: its jitter grows with
        // the span. Step up only while the sources would still disagree if that drift widened
        // every interval, so that the longer poll cannot blur them into a false majority.
        let longer = crate::time::exp2(i32::from(self.sys_poll) + 1);
        let mut widened = self.candidates(now, phase);
        let drift = self.drift_rate_bound(widened.as_slice()) * FILTER_STAGES as f64 * longer;
        for c in widened.as_mut_slice() {
            c.root_distance += drift;
        }
        let still_disagree = select_into(
            widened.as_slice(),
            self.config.minsources as usize,
            None,
            &mut Selection::default(),
        )
        .is_err_and(|why| why.is_disagreement());
        if still_disagree {
            self.poll_before_disagreement.get_or_insert(self.sys_poll);
            self.set_sys_poll(self.sys_poll.saturating_add(1));
        }
    }

    /// One sample for the discipline (see [`Discipline::sample`]); the sources' samples follow
    /// the frequency estimate it revises.
    fn feed_discipline(&mut self, now: MonoTime, offset: f64, variance: f64, interval: f64) {
        let frequency = self.discipline.estimated_frequency();
        self.discipline
            .set_several_sources(self.selection.survivors.len() > 1);
        self.discipline.sample(now, offset, variance, interval);
        self.reproject_sources(now, frequency);
    }

    /// After source `idx`'s sample updated the discipline at `now`, blends the estimate with
    /// where its recent samples confine the offset (see [`band`](super::band)): the interval
    /// their bands leave, sharing one error of the frequency estimate, bounds the estimate,
    /// and its middle counts as an estimate with the variance of a uniform spread over it, plus
    /// the servers' error. Only while the source is the one survivor: several servers' bands
    /// are widened by each one's root distance, and the middle of their wide intersections,
    /// blended in again at every update, drags the estimate with its slowly changing noise (in
    /// the own simulator's large network, whose clients poll four stratum-3 servers over a path
    /// of 1 ms of queueing, one seed's clients went from 185 to 258 µs median RMS; in clknetsim
    /// the models with several sources gained 0.01× at most). Nothing if the bands leave no
    /// room (the path or the server's clock just changed).
    fn confine_to_bands(&mut self, now: MonoTime, idx: usize, server_error: f64, interval: f64) {
        if self.selection.survivors.len() != 1 {
            return;
        }
        let phase = self.discipline.phase_at(now);
        let discipline = &self.discipline;
        let Some(Some(src)) = self.sources.get(idx) else {
            return;
        };
        let Some((lo, hi)) = src.band_interval(
            now,
            phase,
            |age| discipline.wander_bound(age),
            discipline.frequency_bound(),
        ) else {
            return;
        };
        let variance = (hi - lo) * (hi - lo) / 12.0 + server_error;
        let before = self.discipline.estimated_frequency();
        self.discipline
            .confine(now, 0.5 * (lo + hi), variance, Some((lo, hi)), interval);
        self.reproject_sources(now, before);
    }

    /// After a discipline update at `now` that may have revised the frequency the phase is
    /// extrapolated with (it was `before`), carries every source's samples over to the new one.
    fn reproject_sources(&mut self, now: MonoTime, before: f64) {
        let change = self.discipline.estimated_frequency() - before;
        if change != 0.0 {
            for src in self.sources.iter_mut().flatten() {
                src.reproject(now, change);
            }
        }
    }

    fn drain_discipline(&mut self) {
        while let Some(cmd) = self.discipline.poll_command() {
            if let ClockCommand::Step { .. } = cmd {
                // Exchanges in flight across a step are discarded; stored samples follow the
                // step through the discipline's phase.
                self.step_generation += 1;
            }
            self.commands.push(cmd);
        }
        while let Some(ev) = self.discipline.poll_event() {
            match ev {
                DisciplineEvent::Stepped(offset) => {
                    self.events.push_back(Event::Stepped { offset })
                }
                DisciplineEvent::PanicRefused(offset) => {
                    self.events.push_back(Event::PanicRefused { offset })
                }
                DisciplineEvent::PanicCleared(offset) => {
                    self.events.push_back(Event::PanicCleared { offset })
                }
                DisciplineEvent::OutlierHeld(_) => {}
            }
        }
    }
}

/// A source's jitter as clustering weighs it: no offset is known better than timestamping
/// allows, and a source with a single sample has no measured jitter yet: its offset is only
/// known to within half its delay (the path's asymmetry).
fn clustering_jitter(s: &Source, e: &super::filter::FilterEstimate) -> f64 {
    let jitter = if s.sample_count() < 2 {
        e.jitter.max(e.delay / 2.0)
    } else {
        e.jitter
    };
    jitter.max(TIMESTAMP_NOISE)
}

/// [`SystemConfig`] without the discipline's part, which the [`Discipline`] keeps: one copy
/// per node.
#[derive(Clone, Copy, Debug)]
struct Settings {
    minsources: u32,
    limits: SampleLimits,
    min_dispersion: f64,
    local_stratum: Option<u8>,
    startup_wait: f64,
    holdover: f64,
    max_clock_error: f64,
}

/// Updates over which the survivors' spread beyond their stated noise is averaged (as the
/// discipline's noise scale is): one round of samples from four servers is a poor measure of
/// it, and a variance that jumps from sample to sample would make the gain jump with it.
const SERVER_ERROR_MEMORY: f64 = 8.0;
/// While the sources disagree, the poll grows one step after this many answers from each
/// reachable source: from 64 s, 1024 s is reached after 4 × (64 + 128 + 256 + 512) s, about
/// an hour.
const DISAGREEING_POLLS: u32 = 4;
/// How many of the latest updates' unpredicted drift rates the error bound allows for.
const RECENT_DRIFT_UPDATES: usize = 8;
/// How much less an update's unpredicted drift counts for each later update.
const RECENT_DRIFT_DECAY: f64 = 0.7;
/// Updates whose unpredicted drift counts for their own interval only (the initial offset).
const SETTLING_UPDATES: u64 = 4;

/// The state the error bound grows from: the discipline's uncertainties at its latest update,
/// and the path terms through the system peer, refreshed at every reply it sends and when the
/// peer changes.
#[derive(Clone, Copy, Debug)]
struct BoundAnchor {
    /// The discipline's update count when `estimate` was taken.
    updates: u64,
    estimate: EstimateAnchor,
    /// |the peer's filtered offset or latest sample − the discipline's estimate|, the larger.
    measurement_gap: f64,
    root_delay: f64,
    root_dispersion: f64,
}

/// The discipline's estimate at its latest update, from which the bound grows.
#[derive(Clone, Copy, Debug)]
struct EstimateAnchor {
    at: MonoTime,
    offset_sd: f64,
    frequency_sd: f64,
    /// The largest recent unexplained innovation over its interval, s/s.
    unpredicted_drift: f64,
}

impl From<SystemConfig> for Settings {
    fn from(c: SystemConfig) -> Self {
        Settings {
            minsources: c.minsources.try_into().unwrap_or(u32::MAX),
            limits: c.limits,
            min_dispersion: c.min_dispersion,
            local_stratum: c.local_stratum,
            startup_wait: c.startup_wait,
            holdover: c.holdover,
            max_clock_error: c.max_clock_error,
        }
    }
}

/// The sources, the first one inline: most nodes follow one or a few servers, and keeping the
/// first in the system's own memory saves a pointer chase (a cache miss) on every input.
#[derive(Debug, Default)]
struct Sources {
    first: Option<Source>,
    rest: Vec<Option<Source>>,
    len: usize,
}

impl Sources {
    fn push(&mut self, source: Source) {
        if self.len == 0 {
            self.first = Some(source);
        } else {
            self.rest.push(Some(source));
        }
        self.len += 1;
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> Option<&Option<Source>> {
        match i {
            _ if i >= self.len => None,
            0 => Some(&self.first),
            _ => self.rest.get(i - 1),
        }
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Option<Source>> {
        match i {
            _ if i >= self.len => None,
            0 => Some(&mut self.first),
            _ => self.rest.get_mut(i - 1),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Option<Source>> {
        std::iter::once(&self.first)
            .take(self.len.min(1))
            .chain(&self.rest)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<Source>> {
        std::iter::once(&mut self.first)
            .take(self.len.min(1))
            .chain(&mut self.rest)
    }
}

impl std::ops::Index<usize> for Sources {
    type Output = Option<Source>;

    fn index(&self, i: usize) -> &Option<Source> {
        self.get(i).expect("source index in range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SoftClock;
    use crate::sync::bound::BoundStatus;
    use crate::{Responder, Response, ServedState};
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    const S: i64 = 1_000_000_000;
    const EPOCH: i64 = 1_790_000_000 * S;

    /// A node with a SoftClock polling perfect servers over a 1 ms one-way path. Each server's
    /// clock is `offsets[i]` seconds off true time and answers only while `alive[i]`; both may
    /// change between calls to [`Bench::run_for`].
    struct Bench {
        sys: SyncSystem,
        clock: SoftClock,
        rng: Xoshiro256PlusPlus,
        responder: Responder,
        ids: Vec<SourceId>,
        offsets: Vec<f64>,
        alive: Vec<bool>,
        events: Vec<Event>,
        /// True time since the start, ns.
        t: i64,
        /// Scale of an exponential queueing delay added to each direction, ns (0: none).
        jitter_ns: f64,
    }

    impl Bench {
        fn new(
            offsets: &[f64],
            local: (f64, f64),
            config: SystemConfig,
            src: SourceConfig,
        ) -> Self {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
            let mut sys = SyncSystem::new(config, MonoTime(0), ClockTime(EPOCH));
            let clock = SoftClock::new(EPOCH, (local.0 * 1e9) as i64, local.1);
            let ids = (0..offsets.len())
                .map(|i| {
                    let address = SocketAddr::from(([192, 0, 2, i as u8 + 1], 123));
                    sys.add_source(address, src, MonoTime(0), &mut rng)
                })
                .collect();
            Bench {
                sys,
                clock,
                rng,
                responder: Responder::new(),
                ids,
                offsets: offsets.to_vec(),
                alive: vec![true; offsets.len()],
                events: Vec::new(),
                t: 0,
                jitter_ns: 0.0,
            }
        }

        fn fast(offsets: &[f64], local: (f64, f64)) -> Self {
            let src = polling(0, 2);
            Bench::new(offsets, local, SystemConfig::default(), src)
        }

        /// [`fast`](Self::fast) at a fixed 1 s poll, for tests that need a source's newest
        /// sample to become its estimate at once. The bench's paths have no jitter, so its
        /// delays differ only by the clock's rate while they are measured: once the poll
        /// grows, a sample taken during a slower slew keeps the minimum-delay filter's choice.
        fn fixed(offsets: &[f64], local: (f64, f64)) -> Self {
            Bench::new(offsets, local, SystemConfig::default(), polling(0, 0))
        }

        /// Runs for `secs` seconds of true time, calling `each` after every input.
        fn run_for(&mut self, secs: i64, mut each: impl FnMut(&SyncSystem, MonoTime)) {
            let end = self.t + secs * S;
            let mut buf = [0u8; 64];
            let mut reply = [0u8; 64];
            let one_way = S / 1000;
            while self.t < end {
                let truth = EPOCH + self.t;
                while let Some(tx) = self.sys.poll_transmit(
                    MonoTime(self.t),
                    self.clock.read(truth),
                    &mut self.rng,
                    &mut buf,
                ) {
                    let i = self.ids.iter().position(|&id| id == tx.source).unwrap();
                    if !self.alive[i] {
                        continue;
                    }
                    let (out, back) = (self.queueing(), self.queueing());
                    let server_now =
                        ClockTime(truth + one_way + out + (self.offsets[i] * 1e9) as i64);
                    let state = ServedState::local(1, RefId::LOCL, -20, server_now);
                    let Response::Reply(n) =
                        self.responder
                            .respond(&buf[..tx.len], server_now, &state, &mut reply)
                    else {
                        panic!("no reply")
                    };
                    let arrival = truth + 2 * one_way + out + back;
                    self.sys.handle_reply(
                        MonoTime(self.t + 2 * one_way + out + back),
                        self.clock.read(arrival),
                        tx.source,
                        &reply[..n],
                    );
                    while let Some(c) = self.sys.poll_clock_command() {
                        self.clock.apply(arrival, c);
                    }
                    each(&self.sys, MonoTime(self.t + 2 * one_way + out + back));
                }
                self.events
                    .extend(std::iter::from_fn(|| self.sys.poll_event()));
                let next = self
                    .sys
                    .poll_timeout()
                    .map_or(self.t + S, |d| d.0.max(self.t + 1));
                self.t = next.min(end);
                self.sys
                    .handle_timeout(MonoTime(self.t), self.clock.read(EPOCH + self.t));
                while let Some(c) = self.sys.poll_clock_command() {
                    self.clock.apply(EPOCH + self.t, c);
                }
                self.events
                    .extend(std::iter::from_fn(|| self.sys.poll_event()));
                each(&self.sys, MonoTime(self.t));
            }
        }

        /// One direction's queueing delay, ns: exponential with scale `jitter_ns`.
        fn queueing(&mut self) -> i64 {
            if self.jitter_ns == 0.0 {
                return 0;
            }
            let u = ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (-u.ln() * self.jitter_ns) as i64
        }

        /// A uniform draw in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// True error of the clock now, seconds.
        fn error(&self) -> f64 {
            self.clock.offset_at(EPOCH + self.t) * 1e-9
        }

        fn status(&self) -> SystemStatus {
            self.sys.status(MonoTime(self.t))
        }

        fn served(&self) -> ServedState {
            self.sys.served_state(MonoTime(self.t))
        }

        fn states(&self) -> Vec<SourceState> {
            self.status().sources.iter().map(|s| s.state).collect()
        }
    }

    /// Sources polled every 2^`minpoll` to 2^`maxpoll` seconds, starting with a burst.
    fn polling(minpoll: i8, maxpoll: i8) -> SourceConfig {
        SourceConfig {
            minpoll,
            maxpoll,
            iburst: true,
        }
    }

    /// Runs a fast-polling node for `secs` seconds; returns its true error and status.
    fn run(offsets: &[f64], local: (f64, f64), secs: i64) -> (f64, SystemStatus) {
        let mut b = Bench::fast(offsets, local);
        b.run_for(secs, |_, _| {});
        (b.error(), b.status())
    }

    /// The RMS true error over the second half of `hours`, one server over a path with
    /// `jitter_ms` of exponential queueing each way, the clock's frequency wandering by
    /// `wander_ppm` per √s, polled every 2^`poll` s.
    fn rms_error_with(jitter_ms: f64, wander_ppm: f64, poll: i8, hours: i64) -> f64 {
        let mut b = Bench::new(
            &[0.0],
            (0.01, 20.0),
            SystemConfig::default(),
            polling(poll, poll),
        );
        b.jitter_ns = jitter_ms * 1e6;
        let minutes = hours * 60;
        let mut sum = 0.0;
        for minute in 0..minutes {
            b.run_for(60, |_, _| {});
            let (u1, u2) = (b.uniform(), b.uniform());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let ppm = b.clock.intrinsic_ppm() + wander_ppm * 60f64.sqrt() * normal;
            b.clock.set_intrinsic_ppm(EPOCH + b.t, ppm);
            if minute >= minutes / 2 {
                sum += b.error() * b.error();
            }
        }
        (sum / (minutes - minutes / 2) as f64).sqrt()
    }

    #[test]
    fn at_long_polls_bands_that_share_a_frequency_error_hold_the_clock_closer() {
        // 10 ms of queueing each way, a clock wandering 1 ppb/√s, 1024 s polls, measured over
        // the last 45 of 90 days: 918 µs RMS with the bands sharing one frequency error and
        // the frequency moved by the whole share; 991 µs with the shared error alone; 1,010 µs
        // with each band widened by the whole frequency uncertainty over its age and the
        // frequency moved by 64 s over the interval of its share.
        let rms = rms_error_with(10.0, 0.001, 10, 24 * 90);
        assert!(rms < 965e-6, "RMS {rms}");
    }

    #[test]
    fn the_samples_bands_hold_the_clock_closer_than_their_weights_alone() {
        // Measured over the second day: 585 µs RMS with the bands blended in, 800 µs from the
        // filters' weighted samples alone.
        // chrony's Test 2 model: the frequency wanders by 10 ppb per √s; 64 s polls.
        let rms = rms_error_with(10.0, 0.01, 6, 48);
        assert!(rms < 690e-6, "RMS {rms}");
    }

    #[test]
    fn follows_a_single_server_from_seconds_off() {
        let (err, st) = run(&[0.0], (3.0, 40.0), 120);
        assert_eq!(
            st.tracking.poll,
            Some(2),
            "the poll interval adapted up to maxpoll"
        );
        assert!(err.abs() < 1e-4, "true error {err}");
        assert!(
            (st.tracking.frequency_ppm - 40.0).abs() < 1.0,
            "{}",
            st.tracking.frequency_ppm
        );
        assert_eq!(st.tracking.stratum, 2);
        assert_eq!(st.tracking.reference_id, "192.0.2.1");
        assert_eq!(st.tracking.state, SyncState::Synchronized);
        assert_eq!(st.sources[0].state, SourceState::Selected);
        assert_eq!(st.sources[0].address, "192.0.2.1:123");
    }

    #[test]
    fn removing_the_peer_serves_through_the_next_one_at_once() {
        let mut b = Bench::fast(&[0.0, 0.0], (0.0, 0.0));
        b.run_for(30, |_, _| {});
        let peer = b.served().reference_id;
        let (gone, other) = if peer == RefId::from_ip("192.0.2.1".parse().unwrap()) {
            (b.ids[0], "192.0.2.2")
        } else {
            (b.ids[1], "192.0.2.1")
        };
        b.sys.remove_source(gone);
        let mut buf = [0u8; 64];
        let now = MonoTime(b.t);
        while b
            .sys
            .poll_transmit(now, b.clock.read(EPOCH + b.t), &mut b.rng, &mut buf)
            .is_some()
        {}
        let served = b.served();
        assert_eq!(served.reference_id, RefId::from_ip(other.parse().unwrap()));
        assert_eq!(served.stratum, 2);
        assert_eq!(b.status().tracking.state, SyncState::Synchronized);
    }

    #[test]
    fn make_step_corrects_the_whole_offset_at_once() {
        // 50 ms off, no step at start and at most 500 ppm of slew: it takes 100 s to slew away.
        let mut cfg = SystemConfig::default();
        cfg.discipline.step_at_startup = false;
        cfg.discipline.max_slew_ppm = 500.0;
        let src = polling(0, 2);
        let mut b = Bench::new(&[0.0], (0.05, 0.0), cfg, src);
        b.run_for(12, |_, _| {});
        assert!(b.error().abs() > 0.01, "still slewing: {}", b.error());
        let now = MonoTime(b.t);
        let step = b.sys.make_step(now).expect("has had updates");
        while let Some(c) = b.sys.poll_clock_command() {
            b.clock.apply(EPOCH + b.t, c);
        }
        let events: Vec<Event> = std::iter::from_fn(|| b.sys.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(e, Event::Stepped { .. })),
            "{events:?}"
        );
        assert!(step.abs() > 0.01, "{step}");
        assert!(b.error().abs() < 1e-3, "after the step: {}", b.error());
        // And it stays synchronized afterwards.
        b.run_for(20, |_, _| {});
        assert!(b.error().abs() < 1e-3, "{}", b.error());
        assert_eq!(b.status().tracking.state, SyncState::Synchronized);
        // Before any update there is nothing to step by.
        let mut fresh = SyncSystem::new(SystemConfig::default(), MonoTime(0), ClockTime(EPOCH));
        assert_eq!(fresh.make_step(MonoTime(S)), None);
    }

    #[test]
    fn local_stratum_serves_itself_with_a_current_reference_time() {
        let cfg = SystemConfig {
            local_stratum: Some(1),
            ..SystemConfig::default()
        };
        let sys = SyncSystem::new(cfg, MonoTime(0), ClockTime(EPOCH));
        let st = sys.served_state(MonoTime(5 * S));
        assert_eq!(
            (st.stratum, st.reference_id, st.leap),
            (1, RefId::LOCL, LeapIndicator::NoWarning)
        );
        assert_eq!(st.reference_time, ClockTime(EPOCH + 5 * S));
        assert!(
            st.root_dispersion_at(ClockTime(EPOCH + 5 * S))
                .to_seconds_f64()
                < 1e-4
        );
        // Status says what it is: a reference, synchronized, no poll.
        let t = sys.status(MonoTime(5 * S)).tracking;
        assert_eq!(
            (t.state, t.synchronized, t.poll),
            (SyncState::Local, true, None)
        );
        assert!(t.reason.unwrap().contains("local clock is the reference"));
    }

    #[test]
    fn two_of_five_falsetickers_rejected() {
        let (err, st) = run(&[0.0, 1.0, 0.0, 2.0, 0.0], (0.5, -20.0), 60);
        assert!(err.abs() < 1e-3, "true error {err}");
        let states: Vec<_> = st.sources.iter().map(|s| s.state).collect();
        assert_eq!(states[1], SourceState::Falseticker);
        assert_eq!(states[3], SourceState::Falseticker);
        for i in [0, 2, 4] {
            assert!(
                matches!(states[i], SourceState::Selected | SourceState::Candidate),
                "{states:?}"
            );
        }
        assert!(st.tracking.synchronized);
    }

    #[test]
    fn three_of_five_wrong_follows_none_and_says_why() {
        let (err, st) = run(&[0.0, 1.0, 0.0, 2.0, 3.0], (0.05, 0.0), 30);
        assert!((err - 0.05).abs() < 1e-3, "the clock was left alone: {err}");
        assert!(!st.tracking.synchronized);
        assert!(
            st.tracking
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("no majority"),
            "{:?}",
            st.tracking.reason
        );
        assert_eq!(st.tracking.stratum, 16);
    }

    #[test]
    fn while_no_majority_agrees_the_polls_back_off_and_come_back_once_one_does() {
        let mut b = Bench::new(
            &[0.0, 1.0, 0.0, 2.0, 3.0],
            (0.05, 0.0),
            SystemConfig::default(),
            polling(0, 4),
        );
        b.run_for(2, |_, _| {});
        assert_eq!(
            b.sys.poll(),
            Some(0),
            "at minpoll while the first answers come"
        );
        let sent_before =
            |b: &Bench| -> u64 { b.status().sources.iter().map(|s| s.counters.sent).sum() };
        // Four answers from each of the five sources per step: 1 → 16 s within a minute.
        b.run_for(98, |_, _| {});
        assert_eq!(b.sys.poll(), Some(4), "backed off to maxpoll");
        assert!(b.status().sources.iter().all(|s| s.poll == 4));
        let before = sent_before(&b);
        b.run_for(160, |_, _| {});
        let sent = sent_before(&b) - before;
        assert!(
            sent <= 5 * 11,
            "five sources at 16 s for 160 s: {sent} requests"
        );
        assert!(!b.status().tracking.synchronized);
        // One falseticker mends: three of five agree, and the polls are where they began.
        b.offsets[1] = 0.0;
        let mut poll_at_sync = None;
        b.run_for(40, |sys, now| {
            if poll_at_sync.is_none() && sys.status(now).tracking.synchronized {
                poll_at_sync = sys.poll();
            }
        });
        assert_eq!(
            poll_at_sync,
            Some(0),
            "the poll from before the disagreement"
        );
    }

    #[test]
    fn the_polls_back_off_no_further_than_keeps_a_disagreement_apart() {
        // Four offsets 30 ms apart, each interval about ±5 ms, and no update yet: each
        // source's samples move at the clock's own frequency error. At 100 ppm, eight samples
        // at 16 s polls spread by 12.8 ms and the intervals of 0 and 30 ms could meet: the
        // polls stop short of 16 s. A clock with no frequency error can poll at 16 s.
        let backed_off_to = |ppm: f64| {
            let mut b = Bench::new(
                &[0.0, 0.03, 0.0, 0.06, 0.09],
                (0.0, ppm),
                SystemConfig::default(),
                polling(0, 4),
            );
            b.run_for(300, |_, _| {});
            let st = b.status();
            assert!(!st.tracking.synchronized, "{:?}", st.tracking.reason);
            b.sys.poll().unwrap()
        };
        assert_eq!(backed_off_to(0.0), 4);
        let drifting = backed_off_to(100.0);
        assert!((1..4).contains(&drifting), "{drifting}");
    }

    #[test]
    fn losing_the_majority_unsynchronizes_at_once_and_leaves_the_clock_alone() {
        let mut b = Bench::fixed(&[0.0, 0.0, 0.0, 1.0, 2.0], (0.05, 10.0));
        b.run_for(60, |_, _| {});
        assert_eq!(b.status().tracking.state, SyncState::Synchronized);
        assert_eq!(b.served().stratum, 2);
        assert!(b.error().abs() < 1e-3, "synchronized first: {}", b.error());
        // One good source turns falseticker: at most two of five agree.
        b.offsets[2] = 3.0;
        b.events.clear();
        let before = b.error();
        let mut first_unsync = None;
        let mut lost_at = None;
        let mut samples_after = 0;
        b.run_for(30, |sys, now| {
            if first_unsync.is_none() {
                if !sys.status(now).tracking.synchronized {
                    first_unsync = Some(now);
                    assert_eq!(sys.served_state(now).stratum, 16);
                    assert_eq!(sys.served_state(now).leap, LeapIndicator::Unsynchronized);
                } else if sys.status(now).sources[2]
                    .last_offset
                    .is_some_and(|o| o > 1.0)
                {
                    // The falseticker's first sample has arrived: selection must act on it.
                    lost_at.get_or_insert(now);
                    samples_after += 1;
                }
            }
        });
        assert_eq!(
            samples_after, 0,
            "unsynchronized within the selection that saw it"
        );
        assert!(first_unsync.is_some(), "never lost sync");
        let st = b.status();
        assert_eq!(st.tracking.state, SyncState::Unsynchronized);
        assert!(st
            .tracking
            .reason
            .as_deref()
            .unwrap()
            .contains("no majority"));
        assert!(st
            .sources
            .iter()
            .all(|s| s.state == SourceState::Falseticker));
        assert_eq!(b.served().stratum, 16);
        assert!(
            (b.error() - before - 30.0 * 10e-6 * 0.0).abs() < 2e-4,
            "the clock was not moved: {before} → {}",
            b.error()
        );
        let logged: Vec<String> = b.events.iter().map(|e| e.to_string()).collect();
        assert!(
            logged
                .iter()
                .any(|e| e.contains("no majority") && e.contains("unsynchronized")),
            "{logged:?}"
        );
        // The majority back: synchronized again.
        b.offsets[2] = 0.0;
        b.run_for(30, |_, _| {});
        assert_eq!(b.status().tracking.state, SyncState::Synchronized);
    }

    #[test]
    fn local_stratum_takes_over_when_the_majority_is_lost() {
        let cfg = SystemConfig {
            local_stratum: Some(10),
            ..SystemConfig::default()
        };
        let src = polling(0, 0);
        let mut b = Bench::new(&[0.0, 0.0, 1.0], (0.0, 0.0), cfg, src);
        b.run_for(40, |_, _| {});
        assert_eq!(b.served().stratum, 2);
        b.offsets[1] = 2.0;
        b.run_for(20, |_, _| {});
        let served = b.served();
        assert_eq!((served.stratum, served.reference_id), (10, RefId::LOCL));
        assert_eq!(b.status().tracking.state, SyncState::Unsynchronized);
    }

    #[test]
    fn a_dead_source_is_unreachable_the_node_holds_over_then_recovers() {
        let cfg = SystemConfig {
            holdover: 120.0,
            ..SystemConfig::default()
        };
        let src = polling(2, 2);
        let mut b = Bench::new(&[0.0], (0.01, 5.0), cfg, src);
        b.run_for(60, |_, _| {});
        assert_eq!(b.status().tracking.state, SyncState::Synchronized);
        let disp0 = b.status().tracking.root_dispersion;
        b.alive[0] = false;
        b.events.clear();
        // Eight polls of 4 s go unanswered.
        b.run_for(40, |_, _| {});
        let st = b.status();
        assert_eq!(st.sources[0].state, SourceState::Unreachable, "{st:?}");
        assert!(st.sources[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("no reply"));
        assert_eq!(st.tracking.state, SyncState::Holdover);
        assert!(st.tracking.synchronized);
        assert!(st
            .tracking
            .reason
            .as_deref()
            .unwrap()
            .contains("no selectable sources"));
        assert_eq!(b.served().stratum, 2, "still served as synchronized");
        let logged: Vec<String> = b.events.iter().map(|e| e.to_string()).collect();
        assert!(
            logged.iter().any(|e| e.contains("unreachable")),
            "{logged:?}"
        );
        assert!(
            logged.iter().any(|e| e.contains("no selectable sources")),
            "{logged:?}"
        );
        // Root dispersion grows at PHI with the time since the last update.
        let age = st.tracking.last_update_age.unwrap();
        let grown = st.tracking.root_dispersion - disp0;
        assert!(
            (grown - PHI * age).abs() < PHI * 8.0,
            "grew {grown} s in {age} s"
        );
        // The holdover limit: unsynchronized, logged once.
        b.run_for(100, |_, _| {});
        let st = b.status();
        assert_eq!(st.tracking.state, SyncState::Unsynchronized);
        assert!(st.tracking.reason.as_deref().unwrap().contains("holdover"));
        assert_eq!(b.served().stratum, 16);
        let expired = b
            .events
            .iter()
            .filter(|e| matches!(e, Event::HoldoverExpired { .. }))
            .count();
        assert_eq!(expired, 1);
        // The source answers again: it is selected and the node synchronized by itself.
        b.alive[0] = true;
        b.run_for(40, |_, _| {});
        assert_eq!(b.status().tracking.state, SyncState::Synchronized);
        assert_eq!(b.states(), vec![SourceState::Selected]);
        assert!(b
            .events
            .iter()
            .any(|e| matches!(e, Event::Reachable { .. })));
        assert!(b.error().abs() < 1e-3, "{}", b.error());
    }

    #[test]
    fn no_good_source_is_an_outlier_while_a_startup_offset_is_slewed() {
        // 50 ms off, below the step threshold: slewed away. Ten good sources at default
        // polling; their burst samples were taken before the slew.
        let src = SourceConfig::default();
        let offsets = [0.0; 10];
        let mut b = Bench::new(&offsets, (0.05, 0.0), SystemConfig::default(), src);
        let mut worst: Vec<(i64, Vec<SourceState>)> = Vec::new();
        b.run_for(400, |sys, now| {
            let st = sys.status(now);
            let bad = st
                .sources
                .iter()
                .any(|s| matches!(s.state, SourceState::Outlier | SourceState::Falseticker));
            if bad && worst.len() < 3 {
                worst.push((now.0 / S, st.sources.iter().map(|s| s.state).collect()));
            }
        });
        assert!(worst.is_empty(), "good sources rejected: {worst:?}");
        assert!(b.error().abs() < 1e-3, "{}", b.error());
        // After the slew, every source's offset reads as it is now, not as before the slew.
        for s in b.status().sources {
            let off = s.offset.unwrap();
            assert!(off.abs() < 1e-3, "{}: {off}", s.address);
        }
    }

    #[test]
    fn the_first_sample_is_trusted_no_more_than_its_delay_allows() {
        // One sample per source when the selection starts: its jitter, the spread of the
        // source's other samples, is zero. Taken as the sample's error, it pinned the phase to
        // a microsecond (the floor of its variance), the burst that followed read as frequency
        // alone, and the slow wander models stayed sure of a frequency ppm off for thousands of
        // seconds.
        let mut b = Bench::fast(&[0.0, 0.0, 0.0], (0.01, 100.0));
        let mut first = None;
        b.run_for(10, |sys, now| {
            if first.is_none() && sys.discipline.state(now).updates == 1 {
                first = Some(sys.discipline.state(now).offset_sd);
            }
        });
        // Over a 2 ms round trip of unknown asymmetry the offset is known to within 1 ms,
        // uniformly: a standard deviation of 2 ms / √12.
        let expected = 2e-3 / 12f64.sqrt();
        let sd = first.expect("the discipline started");
        assert!(sd >= 0.9 * expected, "first sample's sd {sd:e} s");
    }

    #[test]
    fn sources_read_the_slewed_clock_at_the_latest_frequency_estimate() {
        // 50 ms off and slewed at hundreds of ppm over noisy paths, while the frequency estimate
        // is still being learned. A source's offset reads the clock's error now, however old
        // its sample: within the path's noise plus what the frequency is not known to, over
        // the sample's age. (Carried at the estimates in force while it aged, a burst sample
        // stayed off by their error times the slew's duration, long after the slew.)
        for seed in 1..=5 {
            let offsets = [0.0; 10];
            let src = SourceConfig::default();
            let mut b = Bench::new(&offsets, (0.05, 0.0), SystemConfig::default(), src);
            b.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            b.jitter_ns = 30_000.0;
            for _ in 0..600 {
                b.run_for(1, |_, _| {});
                let now = MonoTime(b.t);
                let (phase, error) = (b.sys.discipline.phase_at(now), b.error());
                let sd = b.status().tracking.frequency_sd_ppm * 1e-6;
                for src in b.sys.sources.iter().flatten() {
                    let Some(e) = src.estimate(phase) else {
                        continue;
                    };
                    let allowed = 1e-4 + 3.0 * sd * now.secs_since(e.time);
                    assert!(
                        (e.offset + error).abs() < allowed,
                        "seed {seed}, {} s: {} reads {} with the clock {error} off (±{allowed})",
                        b.t / S,
                        src.address(),
                        e.offset
                    );
                }
            }
            assert!(b.error().abs() < 1e-4, "seed {seed}: {}", b.error());
        }
    }

    #[test]
    fn the_panic_threshold_is_reported_once() {
        let cfg = SystemConfig {
            discipline: DisciplineConfig {
                panic_threshold: 1.0,
                ..DisciplineConfig::default()
            },
            ..SystemConfig::default()
        };
        let src = polling(0, 0);
        let mut b = Bench::new(&[5.0], (0.0, 0.0), cfg, src);
        b.run_for(30, |_, _| {});
        let refused = b
            .events
            .iter()
            .filter(|e| matches!(e, Event::PanicRefused { .. }))
            .count();
        assert_eq!(refused, 1, "{:?}", b.events);
        assert!(b.events.iter().filter(|e| e.is_warning()).count() <= 2);
        assert_eq!(b.status().tracking.state, SyncState::Unsynchronized);
    }

    /// Runs `b` for `secs` seconds in steps of one second; after each, checks that a bound,
    /// if there is one, covers the true error; returns the bounds seen.
    fn bounds_over(b: &mut Bench, secs: i64) -> Vec<ErrorBound> {
        (0..secs)
            .map(|_| {
                b.run_for(1, |_, _| {});
                let bound = b.sys.error_bound(MonoTime(b.t));
                if bound.status != BoundStatus::Unknown {
                    assert!(
                        bound.covers(b.error()),
                        "{} not within {bound:?}",
                        b.error()
                    );
                }
                bound
            })
            .collect()
    }

    #[test]
    fn error_bound_is_unknown_until_synchronized_then_covers_the_true_error() {
        let mut b = Bench::fast(&[0.0], (0.01, 5.0));
        assert_eq!(b.sys.error_bound(MonoTime(0)), ErrorBound::UNKNOWN);
        let bounds = bounds_over(&mut b, 120);
        let first = bounds
            .iter()
            .position(|x| x.status == BoundStatus::Synchronized)
            .expect("synchronizes");
        assert!(bounds[..first].iter().all(|x| x.bound().is_none()));
        let t = bounds.last().unwrap().terms.unwrap();
        // A 2 ms round trip to a stratum-1 server: half of it is the asymmetry floor.
        assert!((t.path_asymmetry - 1e-3).abs() < 1e-5, "{t:?}");
        assert!(
            t.root_dispersion < 1e-4,
            "a reference's own dispersion: {t:?}"
        );
        assert!(
            t.offset_uncertainty > 0.0 && t.offset_uncertainty < 1e-4,
            "{t:?}"
        );
        assert!(t.since_update <= 4.0, "polls every 4 s at most: {t:?}");
        let growth = SystemConfig::default().max_clock_error * t.since_update;
        assert!((t.clock_error_growth - growth).abs() < 1e-12, "{t:?}");
        let cb = b.sys.clockbound_formula(MonoTime(b.t)).unwrap();
        assert!(cb > 0.0);
    }

    #[test]
    fn error_bound_holds_over_grows_then_is_unknown_and_comes_back() {
        let cfg = SystemConfig {
            holdover: 120.0,
            max_clock_error: 5e-6,
            ..SystemConfig::default()
        };
        let src = polling(2, 2);
        let mut b = Bench::new(&[0.0], (0.01, 5.0), cfg, src);
        bounds_over(&mut b, 60);
        assert_eq!(
            b.sys.error_bound(MonoTime(b.t)).status,
            BoundStatus::Synchronized
        );
        b.alive[0] = false;
        let bounds = bounds_over(&mut b, 140);
        let holdover: Vec<&ErrorBound> = bounds
            .iter()
            .filter(|x| x.status == BoundStatus::Holdover)
            .collect();
        assert!(holdover.len() > 20, "{} in holdover", holdover.len());
        // In holdover the bound grows at least at the maximum clock error rate.
        let (a, z) = (
            holdover[0].terms.unwrap(),
            holdover.last().unwrap().terms.unwrap(),
        );
        let dt = z.since_update - a.since_update;
        assert!(dt > 20.0);
        assert!(z.total() - a.total() >= 5e-6 * dt * 0.999, "{a:?} → {z:?}");
        // Past the holdover limit (120 s after the last update): unknown, no number.
        let last = bounds.last().unwrap();
        assert_eq!(*last, ErrorBound::UNKNOWN);
        assert_eq!(b.sys.clockbound_formula(MonoTime(b.t)), None);
        // The source answers again: synchronized.
        b.alive[0] = true;
        let bounds = bounds_over(&mut b, 60);
        assert_eq!(bounds.last().unwrap().status, BoundStatus::Synchronized);
        assert!(bounds.last().unwrap().terms.unwrap().since_update <= 4.0);
    }

    #[test]
    fn the_bound_forecast_stays_above_the_bound_until_it_runs_out() {
        let cfg = SystemConfig {
            holdover: 300.0,
            ..SystemConfig::default()
        };
        let src = polling(4, 4);
        // 10 ms off: the first corrections are slews that take a while.
        let mut b = Bench::new(&[0.0], (0.01, 5.0), cfg, src);
        assert_eq!(
            b.sys.bound_forecast(MonoTime(0), 60.0),
            None,
            "no bound yet"
        );
        let mut checked = 0;
        let mut slewing = 0;
        for second in 0..200 {
            b.run_for(1, |_, _| {});
            if second == 120 {
                b.alive[0] = false;
            }
            let now = MonoTime(b.t);
            let Some(f) = b.sys.bound_forecast(now, 60.0) else {
                continue;
            };
            assert_eq!(Some(f.bound), b.sys.error_bound(now).bound());
            assert!(f.growth_rate >= cfg.max_clock_error);
            assert!(f.valid_for > 0.0 && f.valid_for <= 60.0, "{f:?}");
            if b.sys.discipline.slew_end().is_some_and(|e| e > now) {
                slewing += 1;
            }
            for k in 1..=600 {
                let dt = f.valid_for * k as f64 / 600.0;
                let later = b.sys.error_bound(now.add_secs_f64(dt)).bound().unwrap();
                assert!(
                    later <= f.bound + f.growth_rate * dt + 1e-12,
                    "{dt} s on: {later} above {f:?}"
                );
            }
            checked += 1;
        }
        assert!(checked > 150, "{checked} forecasts");
        assert!(slewing > 10, "forecasts made during a slew: {slewing}");
        // Near the end of the holdover the forecast is cut short.
        b.run_for(180, |_, _| {});
        let f = b.sys.bound_forecast(MonoTime(b.t), 600.0).unwrap();
        assert!(f.valid_for < 60.0, "{f:?}");
    }

    #[test]
    fn an_unsettled_update_widens_the_bound_for_several_updates() {
        let mut b = Bench::fast(&[0.0], (0.01, 5.0));
        b.run_for(60, |_, _| {});
        let last = b.sys.bound_anchor.expect("updated").estimate.at;
        let updates = b.sys.discipline.state(MonoTime(b.t)).updates;
        assert!(updates > SETTLING_UPDATES);
        // 1 ms unpredicted over 10 s: 100 ppm, counted in full now.
        let at = |s: f64| last.add_secs_f64(s);
        let first = b.sys.note_unpredicted_drift(at(10.0), 1e-3, updates);
        assert!((first - 1e-4).abs() < 1e-12, "{first}");
        // Quiet updates after it: still allowed for, less each time, gone after the ring.
        let mut previous = first;
        for k in 1..RECENT_DRIFT_UPDATES {
            let r = b.sys.note_unpredicted_drift(at(10.0), 0.0, updates);
            let want = 1e-4 * RECENT_DRIFT_DECAY.powi(k as i32);
            assert!(
                (r - want).abs() < 1e-12 && r < previous,
                "update {k}: {r} vs {want}"
            );
            previous = r;
        }
        assert_eq!(b.sys.note_unpredicted_drift(at(10.0), 0.0, updates), 0.0);
    }

    #[test]
    fn the_root_distance_served_covers_the_nodes_own_bound() {
        // 20 ms off and 200 ppm fast: the start-up slews and the unsettled frequency estimate
        // make the bound grow faster than NTP's 15 ppm dispersion.
        let mut b = Bench::fixed(&[0.0], (0.02, 200.0));
        let (mut checked, mut floored) = (0, 0);
        b.run_for(120, |sys, now| {
            let Some(bound) = sys.error_bound(now).bound() else {
                return;
            };
            let served = sys.served_state(now);
            let clock = sys.clock_at(now);
            let distance = served.root_delay as f64 * 0.5e-9
                + served.root_dispersion_at(clock).to_seconds_f64();
            assert!(
                distance >= bound - 1e-9,
                "served {distance} under the bound {bound}"
            );
            let classic = ServedState {
                dispersion_floor: None,
                ..served
            };
            if classic.root_dispersion_at(clock) < served.root_dispersion_at(clock) {
                floored += 1;
            }
            checked += 1;
        });
        assert!(checked > 100, "{checked} instants");
        assert!(floored > 10, "the floor decided at {floored} instants");
    }

    #[test]
    fn a_new_peer_does_not_restart_the_bounds_growth() {
        let src = polling(4, 4);
        let mut b = Bench::new(&[0.0, 0.0], (0.0, 0.0), SystemConfig::default(), src);
        b.run_for(100, |_, _| {});
        let updated = b.sys.bound_anchor.expect("synchronized").estimate.at;
        let before = b.sys.error_bound(MonoTime(b.t)).terms.unwrap();
        assert!(before.since_update > 1.0, "{before:?}");
        // The peer goes away: the other one is selected at once, with its own path terms,
        // but the clock is no better known than at the last update.
        let peer = b.sys.system_peer.expect("a peer");
        b.sys.remove_source(SourceId(peer as u32));
        let mut buf = [0u8; 64];
        let now = MonoTime(b.t);
        while b
            .sys
            .poll_transmit(now, b.clock.read(EPOCH + b.t), &mut b.rng, &mut buf)
            .is_some()
        {}
        assert_ne!(b.sys.system_peer, Some(peer));
        let after = b.sys.error_bound(now).terms.unwrap();
        assert_eq!(b.sys.bound_anchor.unwrap().estimate.at, updated);
        assert_eq!(after.since_update, now.secs_since(updated));
        assert!(
            after.clock_error_growth >= before.clock_error_growth,
            "{after:?}"
        );
    }

    #[test]
    fn error_bound_is_unknown_when_the_sources_disagree() {
        let mut b = Bench::fixed(&[0.0, 0.0, 1.0], (0.0, 0.0));
        bounds_over(&mut b, 40);
        assert_eq!(
            b.sys.error_bound(MonoTime(b.t)).status,
            BoundStatus::Synchronized
        );
        b.offsets[1] = 2.0;
        bounds_over(&mut b, 20);
        assert_eq!(b.sys.error_bound(MonoTime(b.t)), ErrorBound::UNKNOWN);
    }

    #[test]
    fn error_bound_is_unknown_for_a_local_reference() {
        let cfg = SystemConfig {
            local_stratum: Some(10),
            ..SystemConfig::default()
        };
        let b = Bench::new(&[], (0.0, 0.0), cfg, SourceConfig::default());
        assert_eq!(b.sys.sync_state(MonoTime(0)), SyncState::Local);
        assert_eq!(b.sys.error_bound(MonoTime(0)), ErrorBound::UNKNOWN);
    }
}
