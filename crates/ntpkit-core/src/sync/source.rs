//! One upstream server: when to poll it, what to send, and what its replies are worth.
//!
//! The poll interval is `2^poll` seconds, kept between the source's `minpoll` and `maxpoll`; the
//! system suggests where inside that range (the discipline knows how long the clock can go
//! unwatched). `iburst` sends the first few requests two seconds apart, from half a second
//! after start. The 8-bit reach register
//! shifts left at every poll and records a 1 for every reply; after an unanswered request the
//! next one goes out at the shortest interval allowed (`minpoll`), a source whose register is
//! empty is unreachable and is polled less often, and one that answers again gets a burst.
//! Each request's transmit timestamp is random (the request's identity; RFC 9109): a reply
//! whose origin timestamp does not match is not ours.
//! Kiss-o'-death: `RATE` doubles the poll interval, `DENY` and `RSTR` stop the source.
//!
//! Offsets are judged against the clock as it is now: every reply comes with the phase the
//! clock's own corrections had reached (see [`Discipline::phase_at`]), the filter keeps each
//! offset on that reference, and every reader passes the phase of "now" to take it off again.
//! A sample taken before the clock was slewed or stepped thus shows what the server's time is
//! against the corrected clock, not against the clock as it was. The phase includes the clock's
//! estimated frequency error, which the discipline revises at every update; the held samples are
//! then re-projected ([`Source::reproject`]), so that however old, a sample is carried to "now"
//! at the latest estimate rather than at the ones in force while it aged.
//!
//! [`Discipline::phase_at`]: super::Discipline::phase_at

use super::asymmetry::AsymmetryFit;
use super::band::Bands;
use super::discipline::Prediction;
use super::filter::{ClockFilter, FilterEstimate, Sample};
use crate::exchange::{measure, validate_reply, ReplyError};
use crate::served::PHI;
use crate::time::{ClockTime, MonoTime, NANOS_PER_SEC};
use ntpkit_wire::{Header, KissCode, LeapIndicator, Mode, NtpTimestamp, Packet, RefId};
use rand_core::RngCore;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};

/// Polls in a row without a reply after which a source is unreachable (the reach register's
/// width, as RFC 5905 and chrony count).
pub const UNREACHABLE_AFTER: u32 = 8;
/// Requests sent at start-up by `iburst`.
pub const BURST_LEN: u8 = 4;
/// Spacing of burst requests, seconds (shorter if the poll interval is shorter).
pub const BURST_SPACING: f64 = 2.0;
/// An `iburst` source's first request goes out this long after start (nanoseconds; a source
/// without `iburst` waits a random part of a second), so that the first exchange is not timed
/// while the daemon is still starting up. In clknetsim, whose clock readings gain a growing
/// offset until a process first waits (for chrony's precision measurement), an exchange 2 ms
/// after start measured its round trip 25 µs short, and that delay stood as the path's minimum
/// for hundreds of samples. All of a node's iburst sources start together, so their polls keep
/// step: started at random moments within half a second, the clock lost to chronyd where a
/// majority of five sources turns (0.66× → 0.80× its error, docs/benchmarks.md).
const FIRST_BURST_DELAY_NS: i64 = 500_000_000;
/// Floor of a sample's error (seconds), whatever the clocks' precision says. Timestamps taken
/// in user space on either side carry microseconds of scheduling noise, but each such delay
/// (a request sent after its origin timestamp was read, a reply read after it arrived) also
/// lengthens the measured round trip, so the delay's excess over the path's minimum already
/// accounts for it; the floor is for what the round trip cannot show. At 5 µs it held
/// back the samples of a clean path: in clknetsim, with 10 µs of queueing each way at 64 s
/// polls, 0.81× chronyd's RMS error against 0.66× at 2 µs (20 seeds).
pub const TIMESTAMP_NOISE: f64 = 2e-6;
/// Smallest and largest poll exponents accepted in configuration.
pub const POLL_LIMITS: (i8, i8) = (-4, 17);

/// Per-source settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct SourceConfig {
    /// Shortest poll interval, log2 seconds (default 6 = 64 s).
    pub minpoll: i8,
    /// Longest poll interval, log2 seconds (default 10 = 1024 s).
    pub maxpoll: i8,
    /// Send a burst of requests at start-up (default true in configs, as chrony users expect).
    pub iburst: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            minpoll: 6,
            maxpoll: 10,
            iburst: true,
        }
    }
}

/// Acceptance limits applied to every reply, shared by all sources.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct SampleLimits {
    /// Largest acceptable root distance of a source, seconds (default 1.5 s, as RFC 5905 MAXDIST).
    pub max_distance: f64,
    /// Largest plausible round-trip delay, seconds (default 3 s).
    pub max_delay: f64,
    /// Precision of the local clock, log2 seconds.
    pub local_precision: i8,
}

impl Default for SampleLimits {
    fn default() -> Self {
        SampleLimits {
            max_distance: 1.5,
            max_delay: 3.0,
            local_precision: -20,
        }
    }
}

/// Why a reply that was ours gave no sample.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub enum Rejection {
    /// The reply is malformed or not a proper server reply.
    Invalid,
    /// Leap 3 or stratum ≥ 16.
    Unsynchronized,
    /// Zero receive or transmit timestamp.
    ZeroTimestamp,
    /// Root distance above the maximum (seconds).
    TooDistant(f64),
    /// Round-trip delay negative or above the maximum (seconds).
    ImplausibleDelay(f64),
    /// The local clock was stepped while the request was in flight.
    ClockStepped,
    /// Kiss-o'-death.
    Kiss(
        /// The kiss code, rendered.
        #[serde(serialize_with = "crate::sync::ser_display")]
        KissCode,
    ),
}

impl core::fmt::Display for Rejection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Rejection::Invalid => f.write_str("invalid reply"),
            Rejection::Unsynchronized => f.write_str("server unsynchronized"),
            Rejection::ZeroTimestamp => f.write_str("zero timestamp in reply"),
            Rejection::TooDistant(d) => write!(f, "root distance {d:.3} s too large"),
            Rejection::ImplausibleDelay(d) => write!(f, "implausible delay {d:.6} s"),
            Rejection::ClockStepped => f.write_str("clock stepped during exchange"),
            Rejection::Kiss(k) => write!(f, "kiss-o'-death {k}"),
        }
    }
}

/// What a reply did.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum ReplyOutcome {
    /// Not an answer to our outstanding request (ignored, not counted for reach).
    NotOurs,
    /// A usable sample, and the variance (s²) the discipline should give it.
    Sample(Sample, f64),
    /// Ours, but unusable.
    Rejected(Rejection),
}

/// What the server told us about itself in its last valid reply.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct ServerInfo {
    /// Stratum.
    pub stratum: u8,
    /// Leap indicator.
    #[serde(serialize_with = "crate::sync::ser_debug")]
    pub leap: LeapIndicator,
    /// Reference ID.
    #[serde(serialize_with = "crate::sync::ser_refid")]
    pub reference_id: RefId,
    /// Root delay, seconds.
    pub root_delay: f64,
    /// Root dispersion, seconds.
    pub root_dispersion: f64,
    /// Precision, log2 seconds.
    pub precision: i8,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    cookie: NtpTimestamp,
    t1: ClockTime,
    step_generation: u64,
}

/// Counters of one source.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, serde::Deserialize)]
pub struct SourceCounters {
    /// Requests sent.
    pub sent: u64,
    /// Replies that matched a request.
    pub received: u64,
    /// Samples accepted.
    pub accepted: u64,
    /// Matched replies rejected.
    pub rejected: u64,
    /// Datagrams from the source's address that are not NTP packets (dropped).
    #[serde(default)]
    pub malformed: u64,
}

/// The poll state machine and clock filter of one source.
#[derive(Clone, Debug)]
pub struct Source {
    address: SocketAddr,
    config: SourceConfig,
    poll: i8,
    kod_min_poll: i8,
    next_poll: MonoTime,
    burst_left: u8,
    reach: u8,
    polls_unanswered: u32,
    pending: Option<Pending>,
    denied: Option<KissCode>,
    filter: ClockFilter,
    /// The recent samples' bands, for where they confine the clock.
    bands: Bands,
    /// How the offsets of this path's samples depend on their excess delay.
    asymmetry: AsymmetryFit,
    info: Option<ServerInfo>,
    last_rejection: Option<Rejection>,
    counters: SourceCounters,
    /// Reported as unreachable, and not yet as reachable again.
    reported_unreachable: bool,
    /// A change of reachability not yet taken by the system: Some(false) when the source just
    /// became unreachable, Some(true) when it answered again.
    reachability_change: Option<bool>,
}

/// What [`Source::take_reachability_change`] reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reachability {
    /// No reply to the last [`UNREACHABLE_AFTER`] requests.
    Lost,
    /// A reply came again after the source was unreachable.
    Regained,
}

impl Source {
    /// A source whose first request is due within a second (see `FIRST_BURST_DELAY_NS`).
    pub fn new(
        address: SocketAddr,
        config: SourceConfig,
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) -> Self {
        let minpoll = config.minpoll.clamp(POLL_LIMITS.0, POLL_LIMITS.1);
        let maxpoll = config.maxpoll.clamp(minpoll, POLL_LIMITS.1);
        let config = SourceConfig {
            minpoll,
            maxpoll,
            ..config
        };
        let first = if config.iburst {
            FIRST_BURST_DELAY_NS
        } else {
            (rng.next_u64() % NANOS_PER_SEC as u64) as i64
        };
        Source {
            address,
            config,
            poll: minpoll,
            kod_min_poll: minpoll,
            next_poll: now.add_nanos(first),
            burst_left: if config.iburst { BURST_LEN } else { 0 },
            reach: 0,
            polls_unanswered: 0,
            pending: None,
            denied: None,
            filter: ClockFilter::new(),
            bands: Bands::default(),
            asymmetry: AsymmetryFit::default(),
            info: None,
            last_rejection: None,
            counters: SourceCounters::default(),
            reported_unreachable: false,
            reachability_change: None,
        }
    }

    /// The offset of `sample` (just accepted from this source, with the `variance` it was
    /// accepted with) for the discipline, corrected for the path's queueing asymmetry as
    /// measured so far, and its variance once that correction explains part of the error;
    /// `predicted` is the discipline's prediction for the sample, which teaches the
    /// measurement (see [`AsymmetryFit`]).
    pub fn asymmetry_corrected(
        &mut self,
        sample: &Sample,
        variance: f64,
        predicted: Option<Prediction>,
    ) -> (f64, f64) {
        let Some(x) = self.filter.excess_delay(sample) else {
            return (sample.offset, variance);
        };
        if let Some(p) = predicted {
            let credit = self
                .filter
                .residual_asymmetry_variance(sample, self.asymmetry.unexplained());
            self.asymmetry
                .add(x, sample.offset - p.offset, p.variance, credit);
        }
        // `variance` holds the filter's asymmetry variance for the sample (plus the timestamp
        // floor): swap it for what the correction leaves, as measured once it can be (the
        // measurement already holds the minimum delay's own error), else as the share model
        // has it.
        let whole = self.filter.asymmetry_variance(sample);
        let residual = self.asymmetry.corrected_variance(x).unwrap_or_else(|| {
            let unexplained = self.asymmetry.unexplained();
            self.filter.residual_asymmetry_variance(sample, unexplained)
        });
        (
            sample.offset - self.asymmetry.slope() * x,
            (variance - whole).max(0.0) + residual,
        )
    }

    /// The server's address and port.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The server's IP address (its reference ID when selected).
    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }

    /// When the next request is due; None once the server denied us.
    pub fn next_deadline(&self) -> Option<MonoTime> {
        self.denied.is_none().then_some(self.next_poll)
    }

    /// Writes a request into `buf` (≥ 48 bytes) if one is due at `now`; `clock` is the local
    /// clock read just before sending (see [`transmitted`](Self::transmitted) for a later
    /// reading). Returns the request's length.
    pub fn transmit(
        &mut self,
        now: MonoTime,
        clock: ClockTime,
        rng: &mut dyn RngCore,
        buf: &mut [u8],
        step_generation: u64,
    ) -> Option<usize> {
        if self.denied.is_some() || now < self.next_poll || buf.len() < 48 {
            return None;
        }
        self.reach <<= 1;
        let missed = self.pending.is_some();
        if missed {
            self.polls_unanswered += 1;
        }
        if self.reach == 0 && self.polls_unanswered >= UNREACHABLE_AFTER {
            // Unreachable: back off.
            self.poll = (self.poll + 1).min(self.config.maxpoll);
        }
        // The last reply's bit just left the register, or a source that never answered has
        // missed as many polls.
        let lost = self.reach == 0
            && (self.counters.received > 0 || self.polls_unanswered >= UNREACHABLE_AFTER);
        if lost && !self.reported_unreachable {
            self.reported_unreachable = true;
            self.reachability_change = Some(false);
        }
        let cookie = NtpTimestamp::from_bits(rng.next_u64() | 1);
        let request = Header {
            leap: LeapIndicator::Unsynchronized,
            version: 4,
            mode: Mode::Client,
            poll: self.poll,
            transmit_ts: cookie,
            ..Header::default()
        };
        let head: &mut [u8; 48] = (&mut buf[..48]).try_into().expect("length checked");
        request.emit(head);
        self.pending = Some(Pending {
            cookie,
            t1: clock,
            step_generation,
        });
        self.counters.sent += 1;
        let interval = if self.burst_left > 0 {
            self.burst_left -= 1;
            BURST_SPACING.min(self.interval())
        } else if missed && self.reach != 0 {
            // The last request went unanswered: ask again at the shortest interval allowed, so
            // that a source gone silent is known unreachable within minutes, not after eight
            // long intervals (hours at 1024 s). Once it is, it is polled less often instead.
            let shortest = self.kod_min_poll.max(self.config.minpoll);
            self.interval().min(crate::time::exp2(shortest as i32))
        } else {
            self.interval()
        };
        // ±1/32 randomization keeps many clients of one server from polling in lockstep.
        let spread = (rng.next_u64() % 1024) as f64 / 1024.0 - 0.5;
        self.next_poll = now.add_secs_f64(interval * (1.0 + spread / 16.0));
        Some(48)
    }

    /// The request [`transmit`](Self::transmit) wrote last left at local clock time `t1`: the
    /// kernel's transmit timestamp, or a reading taken once it was ready to go (a socket opened
    /// for it, NTS protection added) and right before the send. Its exchange is timed from
    /// then. Work between the earlier reading and the send lengthens the round trip on one side
    /// only, and half of it would otherwise show as offset, in the same direction in every
    /// sample (on loopback the clock settled 28–45 µs ahead; docs/benchmarks.md). Ignored
    /// without a pending request or for a reading earlier than the one it was written with.
    pub fn transmitted(&mut self, t1: ClockTime) {
        if let Some(p) = &mut self.pending {
            p.t1 = p.t1.max(t1);
        }
    }

    /// Handles a datagram from this source's address, received at local clock time `t4`, when
    /// the clock's own corrections have reached `phase` seconds (the sample is stored against
    /// it; the returned sample's offset is the measured one).
    pub fn handle_reply(
        &mut self,
        now: MonoTime,
        t4: ClockTime,
        bytes: &[u8],
        limits: &SampleLimits,
        step_generation: u64,
        phase: f64,
    ) -> ReplyOutcome {
        let Ok(packet) = Packet::parse(bytes) else {
            self.counters.malformed += 1;
            return ReplyOutcome::NotOurs;
        };
        let Some(pending) = self.pending else {
            return ReplyOutcome::NotOurs;
        };
        let reply = packet.header;
        let rejection = match validate_reply(pending.cookie, &reply, false) {
            Err(ReplyError::NotOurs) => return ReplyOutcome::NotOurs,
            Err(ReplyError::Kiss(code)) => Some(Rejection::Kiss(code)),
            Err(ReplyError::Unsynchronized { .. }) => Some(Rejection::Unsynchronized),
            Err(ReplyError::ZeroTimestamp) => Some(Rejection::ZeroTimestamp),
            Err(_) => Some(Rejection::Invalid),
            Ok(()) => None,
        };
        // One reply per request: duplicates and replays of it are not ours any more.
        self.pending = None;
        self.counters.received += 1;
        if !matches!(rejection, Some(Rejection::Kiss(_) | Rejection::Invalid)) {
            self.reach |= 1;
            self.polls_unanswered = 0;
            if self.reported_unreachable {
                self.reported_unreachable = false;
                self.reachability_change = Some(true);
                // Back after a silence: a burst refills the filter at once, as `iburst` does
                // at start-up, instead of one sample per long interval.
                self.burst_left = BURST_LEN - 1;
                self.next_poll = now.add_secs_f64(BURST_SPACING.min(self.interval()));
            }
        }
        if let Some(r) = rejection {
            if let Rejection::Kiss(code) = r {
                self.handle_kiss(code, now);
            }
            return self.reject(r);
        }
        if pending.step_generation != step_generation {
            return self.reject(Rejection::ClockStepped);
        }
        let info = ServerInfo {
            stratum: reply.stratum,
            leap: reply.leap,
            reference_id: reply.reference_id,
            root_delay: reply.root_delay.to_seconds_f64(),
            root_dispersion: reply.root_dispersion.to_seconds_f64(),
            precision: reply.precision,
        };
        self.info = Some(info);
        let m = measure(pending.t1.to_ntp(), &reply, t4.to_ntp());
        let precision = exchange_precision(limits, reply.precision);
        let delay = m.delay_ns as f64 / NANOS_PER_SEC as f64;
        if delay < -precision || delay > limits.max_delay {
            return self.reject(Rejection::ImplausibleDelay(delay));
        }
        let delay = delay.max(0.0);
        let sample = Sample {
            offset: m.offset_ns as f64 / NANOS_PER_SEC as f64,
            delay,
            dispersion: precision + PHI * delay,
            time: now,
        };
        let distance = (info.root_delay + delay) / 2.0 + info.root_dispersion + sample.dispersion;
        if distance > limits.max_distance {
            return self.reject(Rejection::TooDistant(distance));
        }
        self.filter.add(
            Sample {
                offset: sample.offset + phase,
                ..sample
            },
            now,
        );
        self.bands.push(
            now,
            sample.offset + phase,
            delay,
            info.root_delay / 2.0 + info.root_dispersion,
        );
        let variance = self.sample_variance(&sample, precision);
        self.counters.accepted += 1;
        self.last_rejection = None;
        ReplyOutcome::Sample(sample, variance)
    }

    /// The variance (s²) of a sample's offset error: the timestamps' noise floor (at least the
    /// two clocks' `precision`, seconds) and the path asymmetry its delay leaves room for (see
    /// [`ClockFilter::asymmetry_variance`]).
    fn sample_variance(&self, sample: &Sample, precision: f64) -> f64 {
        let floor = precision.max(TIMESTAMP_NOISE);
        floor * floor + self.filter.asymmetry_variance(sample)
    }

    /// The variance (s²) of the filter's chosen sample, as [`handle_reply`](Self::handle_reply)
    /// states a sample's, and at least the square of its jitter: what a first sample for the
    /// discipline is worth. The jitter alone is no measure of it: after one sample it is zero.
    pub fn estimate_variance(&self, limits: &SampleLimits) -> Option<f64> {
        let e = self.filter.estimate()?;
        Some(
            self.stated_estimate_variance(limits)?
                .max(e.jitter * e.jitter),
        )
    }

    /// The variance (s²) of the filter's chosen sample as its delay states it, as
    /// [`handle_reply`](Self::handle_reply) states a sample's (no jitter floor).
    pub fn stated_estimate_variance(&self, limits: &SampleLimits) -> Option<f64> {
        let e = self.filter.estimate()?;
        let precision = exchange_precision(limits, self.info.map_or(0, |i| i.precision));
        let sample = Sample {
            offset: e.offset,
            delay: e.delay,
            dispersion: precision + PHI * e.delay,
            time: e.time,
        };
        Some(self.sample_variance(&sample, precision))
    }

    fn reject(&mut self, r: Rejection) -> ReplyOutcome {
        self.counters.rejected += 1;
        self.last_rejection = Some(r);
        ReplyOutcome::Rejected(r)
    }

    fn handle_kiss(&mut self, code: KissCode, now: MonoTime) {
        match code {
            KissCode::Rate => {
                self.kod_min_poll = (self.poll + 1)
                    .min(self.config.maxpoll)
                    .max(self.kod_min_poll);
                self.poll = self.kod_min_poll;
                self.burst_left = 0;
                self.next_poll = now.add_secs_f64(self.interval());
            }
            KissCode::Deny | KissCode::Restrict => self.denied = Some(code),
            _ => {}
        }
    }

    /// Sends a burst of requests from `now` on (four, two seconds apart or one poll interval
    /// if shorter), then polls as before; nothing if the server denied us.
    pub fn burst(&mut self, now: MonoTime) {
        if self.denied.is_none() {
            self.burst_left = BURST_LEN;
            self.next_poll = self.next_poll.min(now);
        }
    }

    /// Sets the poll exponent the system suggests, within this source's limits.
    pub fn set_poll(&mut self, exponent: i8) {
        let poll = exponent.clamp(
            self.kod_min_poll.max(self.config.minpoll),
            self.config.maxpoll,
        );
        if self.reach != 0 || self.polls_unanswered < UNREACHABLE_AFTER {
            self.poll = poll;
        }
    }

    /// Current poll exponent.
    pub fn poll(&self) -> i8 {
        self.poll
    }

    /// The configured (minpoll, maxpoll).
    pub fn poll_range(&self) -> (i8, i8) {
        (self.config.minpoll, self.config.maxpoll)
    }

    /// Poll interval, seconds.
    pub fn interval(&self) -> f64 {
        crate::time::exp2(self.poll as i32)
    }

    /// Reach register.
    pub fn reach(&self) -> u8 {
        self.reach
    }

    /// True if no reply came to the last [`UNREACHABLE_AFTER`] requests (a source that never
    /// answered: to that many requests), as it is reported and logged.
    pub fn is_unreachable(&self) -> bool {
        self.reported_unreachable
    }

    /// Why the source is unreachable, if it is (for status).
    pub fn unreachable_reason(&self) -> Option<String> {
        if !self.is_unreachable() {
            return None;
        }
        Some(if self.counters.received == 0 {
            format!("no reply to any of {} requests", self.counters.sent)
        } else {
            format!("no reply to the last {UNREACHABLE_AFTER} or more requests")
        })
    }

    /// The change of reachability since the last call, if any: the system re-runs selection
    /// on it and logs it.
    pub fn take_reachability_change(&mut self) -> Option<Reachability> {
        self.reachability_change.take().map(|regained| {
            if regained {
                Reachability::Regained
            } else {
                Reachability::Lost
            }
        })
    }

    /// The kiss code that stopped this source, if any.
    pub fn denied(&self) -> Option<KissCode> {
        self.denied
    }

    /// The filter's estimate, its offset against the clock as it is when the clock's
    /// corrections have reached `phase_now` seconds.
    pub fn estimate(&self, phase_now: f64) -> Option<FilterEstimate> {
        self.filter.estimate().map(|e| FilterEstimate {
            offset: e.offset - phase_now,
            ..e
        })
    }

    /// The most recent sample, its offset against the clock as it is when the clock's
    /// corrections have reached `phase_now` seconds.
    pub fn last_sample(&self, phase_now: f64) -> Option<Sample> {
        self.filter.last().map(|s| Sample {
            offset: s.offset - phase_now,
            ..s
        })
    }

    /// Re-projects the held samples after the discipline revised at `now` the frequency its
    /// phase is extrapolated with, by `change` (s/s, new − old): each sample then reads as if
    /// the new estimate had held since it was taken.
    pub fn reproject(&mut self, now: MonoTime, change: f64) {
        self.filter.reproject(now, -change);
        self.bands.reproject(now, -change);
    }

    /// The interval the last samples' bands leave for the offset at `now` (server − local,
    /// seconds; see [`Bands::interval`]), the phase of the clock's corrections at `now` being
    /// `phase_now` and the frequency it was extrapolated at being known within `±rate_bound`
    /// (s/s). None until the path's minimum delay is known, or if the bands leave no room.
    ///
    /// A band's half-width is half the sample's delay in excess of the path's minimum, plus
    /// that minimum's own uncertainty, plus the server's root distance when the sample was
    /// taken (its clock was only known to be within that of true time, and a server that
    /// follows others drifts within it), plus `wander(age)`: what the local clock may have
    /// wandered, unknown, from a straight line since the sample.
    ///
    /// The bands stay those hard bounds where the asymmetry fit found the path queueing one way:
    /// its correction is a statistical model, right on average but not for every sample, and
    /// a band narrowed to it and moved by it excludes the true offset whenever a sample's
    /// queueing differs from the fitted share, or the slope is a chance one on a symmetric
    /// path. The intersection of such bands then holds the clock firmly in the wrong place (in
    /// clknetsim, chrony's Test 1 model with 10 ms of queueing at 1024 s polls: one seed's
    /// clock ran 7 ms off for hours behind a chance slope of 0.3). The fit corrects the
    /// samples the discipline weighs instead.
    pub fn band_interval(
        &self,
        now: MonoTime,
        phase_now: f64,
        wander: impl Fn(f64) -> f64,
        rate_bound: f64,
    ) -> Option<(f64, f64)> {
        if !self.filter.is_trusted() {
            return None;
        }
        let min = self.filter.min_delay()?;
        let min_uncertainty = self.filter.min_delay_uncertainty();
        let half_width = |delay: f64| ((delay - min).max(0.0) + min_uncertainty) / 2.0;
        self.bands
            .interval(now, phase_now, half_width, wander, rate_bound)
    }

    /// True once the filter holds a sample.
    pub fn has_estimate(&self) -> bool {
        self.filter.estimate().is_some()
    }

    /// The rate at which this source's held samples move against the clock's uncorrected
    /// time, and its standard error (s/s; see [`ClockFilter::offset_trend`]).
    pub fn offset_trend(&self) -> Option<(f64, f64)> {
        self.filter.offset_trend()
    }

    /// Samples in the filter (the jitter means something from two on).
    pub fn sample_count(&self) -> usize {
        self.filter.len()
    }

    /// What the server said about itself.
    pub fn info(&self) -> Option<ServerInfo> {
        self.info
    }

    /// Why the last reply was rejected, if it was.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.last_rejection
    }

    /// Counters.
    pub fn counters(&self) -> SourceCounters {
        self.counters
    }

    /// Root distance at `now` (RFC 5905 §11.2.1, with MINDISP as its floor on the delay term):
    /// half the total delay plus all dispersion and jitter, aged by PHI.
    pub fn root_distance(&self, now: MonoTime, min_dispersion: f64) -> Option<f64> {
        let e = self.filter.estimate()?;
        let info = self.info?;
        let age = now.secs_since(e.time).max(0.0);
        Some(
            (min_dispersion.max(info.root_delay + e.delay)) / 2.0
                + info.root_dispersion
                + e.dispersion
                + e.jitter
                + PHI * age,
        )
    }
}

/// The timestamps' precision in one exchange (seconds): the local clock's and the server's,
/// as it states it (`precision`, log₂ seconds; anything above 1 s counts as 1 s).
fn exchange_precision(limits: &SampleLimits, server_precision: i8) -> f64 {
    crate::time::exp2(limits.local_precision as i32)
        + crate::time::exp2(server_precision.clamp(-32, 0) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_wire::NtpShort;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    const T0: ClockTime = ClockTime(1_790_000_000_000_000_000);

    fn rng() -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(1)
    }

    /// A server `server_ahead` seconds ahead of us, one-way delay `d`.
    fn answer(
        request: &[u8],
        t1: ClockTime,
        server_ahead: f64,
        d: f64,
        edit: impl Fn(&mut Header),
    ) -> (Vec<u8>, ClockTime) {
        let req = Header::parse(request).unwrap();
        let ahead = (server_ahead * 1e9) as i64;
        let dn = (d * 1e9) as i64;
        let mut h = Header {
            mode: Mode::Server,
            stratum: 1,
            precision: -20,
            reference_id: RefId::LOCL,
            root_dispersion: NtpShort::from_seconds_f64(0.0001),
            origin_ts: req.transmit_ts,
            receive_ts: t1.add_nanos(ahead + dn).to_ntp(),
            transmit_ts: t1.add_nanos(ahead + dn + 1000).to_ntp(),
            ..Header::default()
        };
        edit(&mut h);
        let mut b = [0u8; 48];
        h.emit(&mut b);
        (b.to_vec(), t1.add_nanos(2 * dn + 1000))
    }

    fn exchange(
        src: &mut Source,
        now: MonoTime,
        ahead: f64,
        d: f64,
        edit: impl Fn(&mut Header),
    ) -> ReplyOutcome {
        let mut buf = [0u8; 64];
        let n = src.transmit(now, T0, &mut rng(), &mut buf, 0).expect("due");
        let (reply, t4) = answer(&buf[..n], T0, ahead, d, edit);
        src.handle_reply(now, t4, &reply, &SampleLimits::default(), 0, 0.0)
    }

    /// A source without iburst, polling within `minpoll`–`maxpoll`.
    fn polling(minpoll: i8, maxpoll: i8) -> Source {
        let config = SourceConfig {
            minpoll,
            maxpoll,
            iburst: false,
        };
        Source::new(
            "192.0.2.1:123".parse().unwrap(),
            config,
            MonoTime(0),
            &mut rng(),
        )
    }

    /// An iburst source whose first request is due at 0 (instead of after its start-up delay).
    fn src() -> Source {
        let mut s = Source::new(
            "192.0.2.1:123".parse().unwrap(),
            SourceConfig::default(),
            MonoTime(0),
            &mut rng(),
        );
        s.next_poll = MonoTime(0);
        s
    }

    #[test]
    fn the_first_burst_starts_half_a_second_after_start() {
        let start = MonoTime(7 * NANOS_PER_SEC);
        let new = |r: &mut dyn RngCore| {
            Source::new(
                "192.0.2.1:123".parse().unwrap(),
                SourceConfig::default(),
                start,
                r,
            )
        };
        let mut r = rng();
        let firsts: Vec<f64> = (0..64)
            .map(|_| new(&mut r).next_deadline().unwrap().secs_since(start))
            .collect();
        assert!(firsts.iter().all(|&f| f == 0.5), "{firsts:?}");
        // Nothing is sent before it.
        let mut s = new(&mut rng());
        let mut buf = [0u8; 48];
        let early = start.add_nanos(FIRST_BURST_DELAY_NS - 1);
        assert_eq!(s.transmit(early, T0, &mut rng(), &mut buf, 0), None);
    }

    #[test]
    fn a_reply_read_late_shows_in_the_delay_and_its_variance_covers_it() {
        // A clean path: 1 ms each way, every time, so the window's minimum is the path's.
        let mut s = polling(6, 6);
        for _ in 0..16 {
            let now = s.next_deadline().expect("polling");
            assert!(matches!(
                exchange(&mut s, now, 0.0, 1e-3, |_| {}),
                ReplyOutcome::Sample(..)
            ));
        }
        // Another clean exchange is trusted to better than 5 µs, no better than the floor.
        let now = s.next_deadline().expect("polling");
        let ReplyOutcome::Sample(_, clean) = exchange(&mut s, now, 0.0, 1e-3, |_| {}) else {
            panic!("a sample");
        };
        assert!(clean < 5e-6 * 5e-6, "clean sample's sd {} s", clean.sqrt());
        assert!(clean >= TIMESTAMP_NOISE * TIMESTAMP_NOISE);
        // The reply read 30 µs after it arrived (user-space scheduling): the offset is 15 µs
        // off, the round trip 30 µs long, and the variance allows that error.
        let now = s.next_deadline().expect("polling");
        let mut buf = [0u8; 64];
        let n = s.transmit(now, T0, &mut rng(), &mut buf, 0).expect("due");
        let (reply, t4) = answer(&buf[..n], T0, 0.0, 1e-3, |_| {});
        let late = s.handle_reply(
            now,
            t4.add_nanos(30_000),
            &reply,
            &SampleLimits::default(),
            0,
            0.0,
        );
        let ReplyOutcome::Sample(smp, variance) = late else {
            panic!("a sample: {late:?}");
        };
        assert!((smp.offset + 15e-6).abs() < 1e-8, "{}", smp.offset);
        // Uniform within ± half the excess: a half-width of √(3 σ²).
        assert!(
            (3.0 * variance).sqrt() >= 15e-6,
            "sd {} s for a 15 µs error",
            variance.sqrt()
        );
    }

    #[test]
    fn an_exchange_is_timed_from_when_its_request_left() {
        // The request is written at T0 and leaves 40 µs later (a socket opened for it); the
        // server, on time, takes it after 1 ms and answers at once over the same 1 ms.
        let (d, gap) = (1e-3, 40_000);
        let sent = T0.add_nanos(gap);
        let sample = |told: Option<ClockTime>| {
            let mut s = src();
            let mut buf = [0u8; 64];
            let n = s
                .transmit(MonoTime(0), T0, &mut rng(), &mut buf, 0)
                .expect("due");
            if let Some(t) = told {
                s.transmitted(t);
            }
            let (reply, t4) = answer(&buf[..n], sent, 0.0, d, |_| {});
            match s.handle_reply(MonoTime(0), t4, &reply, &SampleLimits::default(), 0, 0.0) {
                ReplyOutcome::Sample(smp, _) => smp,
                other => panic!("{other:?}"),
            }
        };
        // Timed from the reading when it was written, half the gap shows as offset, all of
        // it as delay.
        let early = sample(None);
        assert!((early.offset - 20e-6).abs() < 1e-8, "{}", early.offset);
        assert!(
            (early.delay - (2.0 * d + 40e-6)).abs() < 1e-8,
            "{}",
            early.delay
        );
        // Told when it left, the exchange is exact.
        let exact = sample(Some(sent));
        assert!(exact.offset.abs() < 1e-8, "{}", exact.offset);
        assert!((exact.delay - 2.0 * d).abs() < 1e-8, "{}", exact.delay);
        // A reading earlier than the one it was written with changes nothing.
        let ignored = sample(Some(T0.add_nanos(-1_000_000)));
        assert_eq!(ignored.offset, early.offset);
    }

    #[test]
    fn a_fast_client_measures_a_negative_offset() {
        // We are 2.5 s fast = the server is 2.5 s behind us.
        let mut s = src();
        match exchange(&mut s, MonoTime(0), -2.5, 0.1, |_| {}) {
            ReplyOutcome::Sample(smp, _) => {
                assert!((smp.offset + 2.5).abs() < 1e-6, "{}", smp.offset);
                assert!((smp.delay - 0.2).abs() < 1e-5, "{}", smp.delay);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.reach(), 1);
    }

    #[test]
    fn request_hides_local_time_and_reply_must_match() {
        let mut s = src();
        let mut buf = [0u8; 48];
        s.transmit(MonoTime(0), T0, &mut rng(), &mut buf, 0)
            .unwrap();
        let req = Header::parse(&buf).unwrap();
        assert_eq!(req.mode, Mode::Client);
        assert_ne!(req.transmit_ts, T0.to_ntp());
        let (mut reply, t4) = answer(&buf, T0, 0.0, 0.001, |_| {});
        assert_eq!(
            s.handle_reply(
                MonoTime(0),
                t4,
                &reply[..47],
                &SampleLimits::default(),
                0,
                0.0
            ),
            ReplyOutcome::NotOurs
        );
        assert_eq!(
            s.counters().malformed,
            1,
            "a truncated datagram is dropped and counted"
        );
        reply[24] ^= 1; // corrupt origin
        assert_eq!(
            s.handle_reply(MonoTime(0), t4, &reply, &SampleLimits::default(), 0, 0.0),
            ReplyOutcome::NotOurs
        );
        assert_eq!(s.reach(), 0);
    }

    #[test]
    fn iburst_then_poll_interval() {
        let mut s = src();
        let mut buf = [0u8; 48];
        let mut now = MonoTime(0);
        for _ in 0..BURST_LEN {
            s.transmit(now, T0, &mut rng(), &mut buf, 0).unwrap();
            let next = s.next_deadline().unwrap();
            assert!((next.secs_since(now) - 2.0).abs() < 0.1);
            now = next;
        }
        s.transmit(now, T0, &mut rng(), &mut buf, 0).unwrap();
        assert!((s.next_deadline().unwrap().secs_since(now) - 64.0).abs() < 3.0);
    }

    #[test]
    fn a_burst_sends_four_requests_two_seconds_apart_then_polls_as_before() {
        let defaults = SourceConfig::default();
        let mut s = polling(defaults.minpoll, defaults.maxpoll);
        let mut buf = [0u8; 48];
        // Polling every 64 s.
        let first = s.next_deadline().unwrap();
        s.transmit(first, T0, &mut rng(), &mut buf, 0).unwrap();
        let now = s.next_deadline().unwrap();
        assert!((now.secs_since(first) - 64.0).abs() < 3.0);
        let asked = now.add_secs_f64(-30.0);
        s.burst(asked);
        assert_eq!(s.next_deadline(), Some(asked), "due at once");
        let mut at = asked;
        for _ in 0..BURST_LEN {
            s.transmit(at, T0, &mut rng(), &mut buf, 0).unwrap();
            let next = s.next_deadline().unwrap();
            assert!((next.secs_since(at) - 2.0).abs() < 0.1);
            at = next;
        }
        s.transmit(at, T0, &mut rng(), &mut buf, 0).unwrap();
        assert!((s.next_deadline().unwrap().secs_since(at) - 64.0).abs() < 3.0);
    }

    #[test]
    fn unusable_replies_rejected() {
        type Edit = fn(&mut Header);
        let cases: [(Edit, &str); 4] = [
            (|h| h.leap = LeapIndicator::Unsynchronized, "unsync"),
            (|h| h.stratum = 16, "stratum 16"),
            (|h| h.receive_ts = NtpTimestamp::ZERO, "zero"),
            (
                |h| h.root_dispersion = NtpShort::from_seconds_f64(5.0),
                "distance",
            ),
        ];
        for (edit, name) in cases {
            let mut s = src();
            assert!(
                matches!(
                    exchange(&mut s, MonoTime(0), 0.0, 0.01, edit),
                    ReplyOutcome::Rejected(_)
                ),
                "{name}"
            );
        }
        let mut s = src();
        assert!(matches!(
            exchange(&mut s, MonoTime(0), 0.0, 5.0, |_| {}),
            ReplyOutcome::Rejected(Rejection::ImplausibleDelay(_))
        ));
    }

    #[test]
    fn kiss_rate_slows_and_deny_stops() {
        let mut s = src();
        let r = exchange(&mut s, MonoTime(0), 0.0, 0.01, |h| {
            h.stratum = 0;
            h.reference_id = RefId(*b"RATE");
        });
        assert_eq!(r, ReplyOutcome::Rejected(Rejection::Kiss(KissCode::Rate)));
        assert_eq!(s.poll(), 7);
        let mut s = src();
        exchange(&mut s, MonoTime(0), 0.0, 0.01, |h| {
            h.stratum = 0;
            h.reference_id = RefId(*b"DENY");
        });
        assert_eq!(s.next_deadline(), None);
        let mut buf = [0u8; 48];
        assert!(s
            .transmit(MonoTime(1 << 40), T0, &mut rng(), &mut buf, 0)
            .is_none());
    }

    #[test]
    fn unreachable_after_eight_silent_polls_and_backs_off() {
        let mut s = polling(4, 8);
        let mut buf = [0u8; 48];
        for _ in 0..12 {
            let now = s.next_deadline().unwrap();
            s.transmit(now, T0, &mut rng(), &mut buf, 0).unwrap();
        }
        assert!(s.is_unreachable());
        assert!(s.poll() > 4, "backed off to {}", s.poll());
    }

    #[test]
    fn a_source_gone_silent_at_long_intervals_is_unreachable_within_minutes_and_bursts_when_back() {
        let mut s = polling(6, 10);
        s.set_poll(10);
        let mut now = s.next_deadline().unwrap();
        for _ in 0..8 {
            exchange(&mut s, now, 0.0, 0.001, |_| {});
            now = s.next_deadline().unwrap();
        }
        assert_eq!(s.reach(), 0xff);
        // Silent from here: the first request is found unanswered one long interval later,
        // then seven more at 64 s (±1/32) make the register empty.
        let silent_from = now;
        let mut buf = [0u8; 48];
        let mut last_sent = now;
        while !s.is_unreachable() {
            s.transmit(now, T0, &mut rng(), &mut buf, 0).unwrap();
            last_sent = now;
            now = s.next_deadline().unwrap();
        }
        let took = last_sent.secs_since(silent_from);
        assert!(took < 1100.0 + 7.0 * 66.0, "unreachable after {took} s");
        // Unreachable, it is polled at the long interval again, not every 64 s.
        assert!(now.secs_since(last_sent) > 900.0);
        // Back: a burst refills the filter, four more requests 2 s apart, then the long
        // interval.
        exchange(&mut s, now, 0.0, 0.001, |_| {});
        assert!(!s.is_unreachable());
        let mut sent = vec![now];
        for _ in 0..5 {
            now = s.next_deadline().unwrap();
            exchange(&mut s, now, 0.0, 0.001, |_| {});
            sent.push(now);
        }
        let gaps: Vec<f64> = sent.windows(2).map(|w| w[1].secs_since(w[0])).collect();
        assert!(gaps[..4].iter().all(|&g| g <= 2.1), "{gaps:?}");
        assert!(gaps[4] > 900.0, "{gaps:?}");
    }

    #[test]
    fn samples_are_read_against_the_corrected_clock() {
        // Measured 50 ms behind the server when the corrections had reached 0.01 s; since
        // then the clock was slewed forward by another 0.05 s: the server is now level.
        let mut s = src();
        let mut buf = [0u8; 48];
        s.transmit(MonoTime(0), T0, &mut rng(), &mut buf, 0)
            .unwrap();
        let (reply, t4) = answer(&buf, T0, 0.05, 0.001, |_| {});
        let out = s.handle_reply(MonoTime(0), t4, &reply, &SampleLimits::default(), 0, 0.01);
        let ReplyOutcome::Sample(sample, _) = out else {
            panic!("{out:?}")
        };
        assert!((sample.offset - 0.05).abs() < 1e-6, "as measured");
        assert!((s.estimate(0.01).unwrap().offset - 0.05).abs() < 1e-6);
        assert!(s.estimate(0.06).unwrap().offset.abs() < 1e-6);
        assert!(s.last_sample(0.06).unwrap().offset.abs() < 1e-6);
    }

    #[test]
    fn a_slope_the_asymmetry_fit_finds_moves_the_samples_not_their_bands() {
        // A symmetric path (every sample's offset exact, whatever its delay), and predictions
        // off by 0.3 of each sample's excess delay: the fit finds a slope that is not there.
        let ahead = 0.002;
        let mut s = src();
        let mut now = MonoTime(0);
        let mut corrected = ahead;
        for k in 0..40 {
            now = MonoTime(k * 1024 * NANOS_PER_SEC);
            s.next_poll = now;
            let one_way = 1e-3 + 1e-3 * ((k * 7) % 11) as f64;
            let out = exchange(&mut s, now, ahead, one_way, |_| {});
            let ReplyOutcome::Sample(sample, variance) = out else {
                panic!("{out:?}")
            };
            let excess = s.filter.excess_delay(&sample).unwrap_or(0.0);
            let predicted = Prediction {
                offset: ahead - 0.3 * excess,
                variance: 1e-12,
            };
            corrected = s.asymmetry_corrected(&sample, variance, Some(predicted)).0;
        }
        assert!(s.asymmetry.slope() > 0.2, "{}", s.asymmetry.slope());
        assert!(
            (corrected - ahead).abs() > 1e-3,
            "the samples are corrected: {corrected}"
        );
        // Every band still holds the true offset, and so does what they leave.
        let (lo, hi) = s.band_interval(now, 0.0, |_| 0.0, 0.0).unwrap();
        assert!(lo <= ahead && ahead <= hi, "[{lo}, {hi}]");
    }

    #[test]
    fn step_during_exchange_discards_sample() {
        let mut s = src();
        let mut buf = [0u8; 48];
        s.transmit(MonoTime(0), T0, &mut rng(), &mut buf, 0)
            .unwrap();
        let (reply, t4) = answer(&buf, T0, 0.0, 0.001, |_| {});
        assert_eq!(
            s.handle_reply(MonoTime(0), t4, &reply, &SampleLimits::default(), 1, 0.0),
            ReplyOutcome::Rejected(Rejection::ClockStepped)
        );
    }
}
