//! The whole synchronization state of one node: its sources, selection, the discipline and the
//! state it serves downstream.

use super::discipline::{Discipline, DisciplineConfig, DisciplineEvent};
use super::inline::InlineVec;
use super::select::{select_into, Candidate, NoSelection, Selection};
use super::source::{Rejection, ReplyOutcome, SampleLimits, Source, SourceConfig};
use super::status::{SourceState, SourceStatus, SystemStatus, Tracking};
use crate::clock::{ClockCommand, CommandQueue};
use crate::served::ServedState;
use crate::time::{ClockTime, MonoTime};
use ntpkit_wire::{KissCode, LeapIndicator, RefId};
use rand_core::RngCore;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::IpAddr;

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
    /// After this long without a clock update (seconds), the served state becomes
    /// unsynchronized (or the local stratum).
    pub holdover: f64,
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
        }
    }
}

/// Something worth logging.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub enum Event {
    /// A new system peer was selected.
    Selected {
        /// The source.
        source: SourceId,
        /// Its address.
        address: IpAddr,
    },
    /// No source can be followed.
    NoSelection {
        /// Why, in words.
        reason: String,
    },
    /// The clock was stepped by this many seconds.
    Stepped {
        /// Step, seconds.
        offset: f64,
    },
    /// A step beyond the panic threshold was refused.
    PanicRefused {
        /// The offset, seconds.
        offset: f64,
    },
    /// A source sent a kiss-o'-death.
    Kiss {
        /// The source.
        source: SourceId,
        /// The code.
        code: String,
    },
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Event::Selected { address, .. } => write!(f, "selected source {address}"),
            Event::NoSelection { reason } => write!(f, "no source selected: {reason}"),
            Event::Stepped { offset } => write!(f, "clock stepped by {offset:+.6} s"),
            Event::PanicRefused { offset } => write!(
                f,
                "offset {offset:+.3} s exceeds the panic threshold: clock left alone; \
                 set it by hand or raise panic-threshold"
            ),
            Event::Kiss { code, .. } => write!(f, "kiss-o'-death {code} received"),
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
    /// The latest (monotonic, clock) pair an input brought: the clock "now" is extrapolated
    /// from it (e.g. the reference time of the local clock when it serves itself).
    clock_seen: (MonoTime, ClockTime),
    served: Option<ServedState>,
    sys_poll: i8,
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
            clock_seen: (now, clock),
            served: None,
            sys_poll: i8::MIN,
            commands: CommandQueue::default(),
            events: VecDeque::new(),
        };
        s.drain_discipline();
        s
    }

    /// Adds a source; its first request is due at once with iburst.
    pub fn add_source(
        &mut self,
        address: IpAddr,
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

    /// Removes a source (e.g. a pool member that went away).
    pub fn remove_source(&mut self, id: SourceId) {
        if let Some(slot) = self.sources.get_mut(id.0 as usize) {
            *slot = None;
        }
        if self.system_peer == Some(id.0 as usize) {
            self.system_peer = None;
        }
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
                    return Some(Transmit {
                        source: SourceId(i as u32),
                        len,
                    });
                }
            }
        }
        None
    }

    /// A datagram from source `id`'s address, received at local clock time `received`.
    pub fn handle_reply(&mut self, now: MonoTime, received: ClockTime, id: SourceId, bytes: &[u8]) {
        self.clock_seen = (now, received);
        let idx = id.0 as usize;
        let limits = SampleLimits {
            ..self.config.limits
        };
        let generation = self.step_generation;
        let Some(Some(src)) = self.sources.get_mut(idx) else {
            return;
        };
        match src.handle_reply(now, received, bytes, &limits, generation) {
            ReplyOutcome::NotOurs => {}
            ReplyOutcome::Rejected(Rejection::Kiss(code)) => {
                let code = match code {
                    KissCode::Other(r) => r.as_ascii().unwrap_or("????").to_string(),
                    k => k.to_string(),
                };
                self.events.push_back(Event::Kiss { source: id, code });
            }
            ReplyOutcome::Rejected(_) => {}
            ReplyOutcome::Sample(sample, variance) => {
                if self.startup_pending {
                    self.try_start(now, received);
                } else {
                    self.reselect(now);
                    if self.selection.survivors.contains(&idx) && self.no_selection.is_none() {
                        let interval = self.interval();
                        self.discipline
                            .sample(now, sample.offset, variance, interval);
                        self.after_update(now, received);
                    }
                }
            }
        }
    }

    /// Handles deadlines at `now` (requests due, the start-up wait); `clock` is the local clock
    /// now. Calling it early does no harm.
    pub fn handle_timeout(&mut self, now: MonoTime, clock: ClockTime) {
        self.clock_seen = (now, clock);
        if self.startup_pending && now.secs_since(self.started_at) >= self.config.startup_wait {
            self.try_start(now, clock);
        }
    }

    /// The earliest deadline: the next request due, the start-up wait. (Slews end in the
    /// clock: see [`ClockCommand::Slew`].)
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        let sources = self
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.next_deadline());
        let startup = self
            .startup_pending
            .then(|| self.started_at.add_secs_f64(self.config.startup_wait));
        sources.chain(startup).min()
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

    /// What to tell downstream clients at `now` (monotonic).
    pub fn served_state(&self, now: MonoTime) -> ServedState {
        let fresh = self
            .last_update
            .is_some_and(|(t, _)| now.secs_since(t) <= self.config.holdover);
        match (self.served, fresh) {
            (Some(s), true) => s,
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

    /// True while the clock follows a selected source.
    pub fn is_synchronized(&self, now: MonoTime) -> bool {
        self.served_state(now).is_synchronized() && self.served.is_some()
    }

    /// The discipline's current frequency estimate, ppm (for the drift file).
    pub fn frequency_ppm(&self, now: MonoTime) -> f64 {
        self.discipline.state(now).frequency_ppm
    }

    /// The current poll exponent suggested to sources.
    pub fn poll(&self) -> i8 {
        self.sys_poll
    }

    /// The sources' and the system's state, in `chronyc sources` / `tracking` terms.
    pub fn status(&self, now: MonoTime) -> SystemStatus {
        let d = self.discipline.state(now);
        let served = self.served_state(now);
        let sources = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .map(|(i, s)| {
                let state = if s.denied().is_some() {
                    SourceState::Denied
                } else if self.system_peer == Some(i) && self.no_selection.is_none() {
                    SourceState::Selected
                } else if self.selection.falsetickers.contains(&i) {
                    SourceState::Falseticker
                } else if self.selection.outliers.contains(&i) {
                    SourceState::Outlier
                } else if self.selection.survivors.contains(&i) {
                    SourceState::Candidate
                } else if s.is_unreachable() {
                    SourceState::Unreachable
                } else {
                    SourceState::Unusable
                };
                SourceStatus::new(
                    SourceId(i as u32),
                    s,
                    state,
                    now,
                    self.config.min_dispersion,
                )
            })
            .collect();
        let synchronized = self.is_synchronized(now);
        let reason = if synchronized {
            None
        } else if let Some(n) = self.no_selection {
            Some(n.to_string())
        } else if self.discipline.is_refusing() {
            Some(format!(
                "offset {:+.3} s beyond the panic threshold: not corrected",
                d.offset
            ))
        } else if self.startup_pending {
            Some("starting: waiting for samples".to_string())
        } else if self.served.is_none() {
            Some("no usable source yet".to_string())
        } else {
            Some("no clock update within the holdover time".to_string())
        };
        SystemStatus {
            tracking: Tracking {
                reference_id: served.reference_id.display_for_stratum(served.stratum),
                stratum: served.stratum,
                leap: format!("{:?}", served.leap),
                synchronized,
                reason,
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
                poll: self.sys_poll,
                updates: d.updates,
                steps: d.steps,
            },
            sources,
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
            .any(|s| s.denied().is_none() && s.estimate().is_none() && !s.is_unreachable());
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
        let e = src.estimate().expect("candidates have estimates");
        let interval = src.interval();
        // Start from the best (minimum-delay) sample of the burst.
        self.discipline
            .sample(now, e.offset, e.jitter.powi(2).max(1e-12), interval);
        self.after_update(now, clock);
    }

    /// Runs selection over the current candidates.
    fn reselect(&mut self, now: MonoTime) {
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
            let Some(e) = s.estimate() else { continue };
            let Some(root_distance) = s.root_distance(now, self.config.min_dispersion) else {
                continue;
            };
            if root_distance <= max_distance {
                candidates.push(Candidate {
                    index: i,
                    offset: e.offset,
                    root_distance,
                    jitter: e.jitter,
                });
            }
        }
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
                if self.system_peer != previous || previous_reason.is_some() {
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
                if previous_reason != Some(why) {
                    self.events.push_back(Event::NoSelection {
                        reason: why.to_string(),
                    });
                }
                self.no_selection = Some(why);
            }
        }
    }

    /// After a discipline update: commands, served state, poll interval.
    fn after_update(&mut self, now: MonoTime, clock: ClockTime) {
        self.drain_discipline();
        if self.discipline.is_refusing() {
            self.served = None;
            return;
        }
        let Some(peer) = self.system_peer else { return };
        let src = self.sources[peer].as_ref().expect("peer exists");
        let (Some(info), Some(e)) = (src.info(), src.estimate()) else {
            return;
        };
        let d = self.discipline.state(now);
        let root_delay = info.root_delay + e.delay;
        let root_dispersion =
            info.root_dispersion + e.dispersion + e.jitter + d.offset_sd + d.offset.abs();
        self.served = Some(ServedState {
            leap: info.leap,
            stratum: (info.stratum + 1).min(16),
            precision: self.config.limits.local_precision,
            poll: self.sys_poll,
            root_delay: (root_delay * 1e9) as i64,
            root_dispersion: (root_dispersion * 1e9) as i64,
            reference_id: RefId::from_ip(src.address()),
            reference_time: clock,
        });
        self.last_update = Some((now, clock));
        let adjust = self.discipline.poll_adjustment(src.interval());
        if adjust != 0 {
            let (lo, hi) = self
                .sources
                .iter()
                .flatten()
                .map(|s| s.poll_range())
                .fold((i8::MAX, i8::MIN), |(lo, hi), (a, b)| {
                    (lo.min(a), hi.max(b))
                });
            self.sys_poll = self.sys_poll.saturating_add(adjust).clamp(lo, hi.max(lo));
            for s in self.sources.iter_mut().flatten() {
                s.set_poll(self.sys_poll);
            }
        }
    }

    fn drain_discipline(&mut self) {
        while let Some(cmd) = self.discipline.poll_command() {
            if let ClockCommand::Step { offset_ns } = cmd {
                self.step_generation += 1;
                let step = offset_ns as f64 * 1e-9;
                for s in self.sources.iter_mut().flatten() {
                    s.apply_step(step);
                }
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
                DisciplineEvent::OutlierHeld(_) => {}
            }
        }
    }
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
    use crate::{Responder, ServedState};
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    const S: i64 = 1_000_000_000;
    const EPOCH: i64 = 1_790_000_000 * S;

    /// A node with a SoftClock polling perfect servers whose clocks are offset by `offsets`
    /// (seconds), over a 1 ms one-way path, for `secs` seconds of true time. Returns the node's
    /// true error at the end and its status.
    fn run(offsets: &[f64], local: (f64, f64), secs: i64) -> (f64, SystemStatus) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let cfg = SourceConfig {
            minpoll: 0,
            maxpoll: 2,
            iburst: true,
        };
        let mut sys = SyncSystem::new(SystemConfig::default(), MonoTime(0), ClockTime(EPOCH));
        let mut clock = SoftClock::new(EPOCH, (local.0 * 1e9) as i64, local.1);
        let ids: Vec<SourceId> = (0..offsets.len())
            .map(|i| {
                sys.add_source(
                    IpAddr::from([192, 0, 2, i as u8 + 1]),
                    cfg,
                    MonoTime(0),
                    &mut rng,
                )
            })
            .collect();
        let mut responder = Responder::new();
        let mut t = 0i64;
        let mut buf = [0u8; 64];
        let mut reply = [0u8; 64];
        let one_way = S / 1000;
        while t < secs * S {
            let truth = EPOCH + t;
            while let Some(tx) =
                sys.poll_transmit(MonoTime(t), clock.read(truth), &mut rng, &mut buf)
            {
                let i = ids.iter().position(|&id| id == tx.source).unwrap();
                let server_now = ClockTime(truth + one_way + (offsets[i] * 1e9) as i64);
                let state = ServedState::local(1, RefId::LOCL, -20, server_now);
                let Response::Reply(n) =
                    responder.respond(&buf[..tx.len], server_now, &state, &mut reply)
                else {
                    panic!("no reply")
                };
                let arrival = truth + 2 * one_way;
                sys.handle_reply(
                    MonoTime(t + 2 * one_way),
                    clock.read(arrival),
                    tx.source,
                    &reply[..n],
                );
                while let Some(c) = sys.poll_clock_command() {
                    clock.apply(arrival, c);
                }
            }
            let next = sys.poll_timeout().map_or(t + S, |d| d.0.max(t + 1));
            t = next;
            sys.handle_timeout(MonoTime(t), clock.read(EPOCH + t));
            while let Some(c) = sys.poll_clock_command() {
                clock.apply(EPOCH + t, c);
            }
        }
        (clock.offset_at(EPOCH + t) * 1e-9, sys.status(MonoTime(t)))
    }

    use crate::Response;

    #[test]
    fn follows_a_single_server_from_seconds_off() {
        let (err, st) = run(&[0.0], (3.0, 40.0), 120);
        assert_eq!(
            st.tracking.poll, 2,
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
        assert_eq!(st.sources[0].state, SourceState::Selected);
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
}
