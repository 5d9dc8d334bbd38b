//! The clock discipline: phase and frequency, from weighted offset samples.
//!
//! The estimator is a Kalman filter on the state `[θ, ν]`: θ is the offset of true time from
//! the local clock (what an NTP exchange measures, server − local) and ν the clock's intrinsic
//! frequency error (s/s, positive = fast). Between samples `dθ/dt = −(ν + c)`, where `c` is the
//! frequency correction the discipline itself commanded, so the prediction is exact for the
//! part we control and only the oscillator's wander (a random walk of ν with intensity `q`) is
//! uncertain. Each sample `z = θ + noise` carries its own variance from the filter (path
//! asymmetry from excess delay, plus a noise floor), so a queueing spike weighs almost nothing.
//!
//! The wander intensity is not known in advance (a temperature-stable crystal and a laptop
//! differ by orders of magnitude), so several filters with different `q` run side by side on the
//! same samples, and their mixture, each weighted by its recent likelihood, drives the clock
//! (multiple-model adaptive estimation), in place of RFC 5905's hand-tuned PLL/FLL crossover.
//! Mixed rather than picked: while the samples cannot yet tell the models apart (the first
//! minutes, or one surprising sample), no fast-wandering model takes the clock alone. After
//! each update the models interact, as in an interacting-multiple-model filter: each goes on
//! from a blend of all the models' states, mostly its own, so one the samples come to favour
//! late has not been left behind with what it learned long ago. The
//! choice is justified by measurement against chrony's published simulation figures (chrony
//! itself outperforms ntpd's PLL/FLL there): docs/benchmarks.md. No PLL/FLL was built to
//! compare.
//!
//! The model can still be wrong in ways the bank does not express: samples worse than their
//! delays say (a short window of delays, whose minimum is not yet the path's), or a frequency
//! that changed more than any wander model expects. Two guards follow the innovations: every
//! sample's variance is scaled by the recent mean of the squared innovation in units of what
//! the samples and the estimate account for, when that exceeds 1; and a CUSUM of the
//! normalized innovations (the `bias` module) finds a lean of one sign that no single innovation
//! shows, and widens the phase and frequency uncertainty by what it implies.
//!
//! Control: after each update the discipline sets the frequency correction to cancel ν̂ and
//! to slew θ̂ away within [`slew_time`](Discipline::slew_time) (bounded by the maximum slew
//! rate), as one [`ClockCommand::Slew`]: the clock itself goes back to −ν̂ at the slew's end.
//! The slew's length is inversely proportional to the correction in standard deviations of the
//! estimate (as chrony's `corrtimeratio`): a correction within the estimate's own uncertainty,
//! mostly noise, is spread over three poll intervals, one of three standard deviations or more
//! over one interval, so the clock's rate changes little and only at updates (slewing every
//! correction over half an interval gave RMS frequency errors 5× chronyd's in clknetsim). A
//! start-up offset below the step threshold is therefore gone within about one poll interval.
//! Offsets beyond the step threshold are stepped at start-up, or after they persist for the
//! step-out time; offsets beyond the panic threshold are refused and reported.
//!
//! Time base: intervals are read on the monotonic time the discipline is driven with. When that
//! runs with the corrected clock (CLOCK_MONOTONIC under the `system` backend: the kernel
//! adjusts both), a second of it is `1 + ν + c` true seconds, and the discipline divides by
//! that ([`DisciplineConfig::slewed_time_base`]). It matters while a start-up offset is slewed
//! at thousands of ppm: uncorrected, each slew misses by its rate times the offset, the next
//! samples surprise the filters by hundreds of µs, and the filter bank takes that for a fast
//! wandering clock long after (in clknetsim this alone doubled the frequency error of
//! chrony's 001 model).

use super::bias::BiasDetector;
use super::inline::InlineVec;
use crate::clock::{ClockCommand, CommandQueue};
use crate::time::MonoTime;
use serde::Serialize;

/// Wander intensities (s⁻¹, variance of ν per second) of the filter bank: from an oven-stable
/// oscillator to a clock whose frequency changes fast (e.g. a disciplined upstream that slews).
const WANDER_MODELS: [f64; 6] = [1e-22, 1e-20, 1e-18, 1e-16, 1e-14, 1e-12];
/// Per-update forgetting factor of the models' log-likelihoods (memory of ~100 updates: a
/// shorter one lets noisy paths switch models on chance runs; docs/benchmarks.md).
const LIKELIHOOD_MEMORY: f64 = 0.99;
/// A sample's innovation counts against a model's likelihood up to this many of its standard
/// deviations: one sample between this and the outlier threshold ([`OUTLIER_SIGMAS`]) is as
/// likely a path or an upstream that moved as a sign of fast wander, and taken whole it
/// could hand the clock to the fast-wandering models at once, whose frequency follows it.
const LIKELIHOOD_CLIP: f64 = 3.0;
/// The same limit while the samples come from several servers (see
/// [`Discipline::set_several_sources`]): each then carries its own server's error, which no
/// delay shows and which wanders with that server's own discipline, so a surprise is even
/// less a sign of the local clock's wander. In clknetsim's hierarchy (clients of four
/// stratum-3 servers, 60 seeds) the clients' frequency error went from 1.08× chronyd's to
/// 1.00× (their RMS error 0.81× → 0.86×); with one server it cost clean paths (Test 1 with
/// J = 10 µs at 1024 s: 0.41× → 0.68× chronyd's RMS).
const SEVERAL_SOURCES_LIKELIHOOD_CLIP: f64 = 2.0;
/// Rate (s⁻¹) at which the clock's wander may change from one model's to another's
/// (interacting multiple models): after each update every model goes on from the models'
/// states blended by how likely each is to be the one the clock followed and then switched to
/// it over the time since the previous update (about 3 % at 1024 s polls, 0.2 % at 64 s).
/// Without it a slow-wander model holds on to a frequency it learned long ago while the
/// samples cannot yet tell it from a faster one that follows the clock, and the mixture that
/// drives the clock lags behind the wander (in clknetsim, chrony's 001 model at 1024 s polls:
/// RMS error 0.87x chronyd's without, 0.77x with). Per unit of time, not per update: a fixed
/// 1 % per update blended the faster models' noise into the slow ones at 64 s polls (Test 1
/// with 10 ms of jitter at 64 s: 0.65x -> 0.78x chronyd's RMS; see docs/benchmarks.md).
const MODEL_SWITCH_RATE: f64 = 3e-5;
/// Largest log-likelihood by which a model may trail the best (a floor on its weight of about
/// e⁻¹⁰, as an interacting-multiple-model filter's switching probability gives): a start-up
/// transient can make the slow models look hopeless, and with the memory above they would
/// take hundreds of updates, days at long poll intervals, to recover.
const MAX_LIKELIHOOD_DEFICIT: f64 = 10.0;
/// Largest intrinsic frequency error a clock is believed to have (s/s), as chrony's `maxdrift`.
const MAX_DRIFT: f64 = 500e-6;
/// Phase random-walk intensity (s²/s): white frequency noise of the oscillator and timestamping.
const PHASE_NOISE: f64 = 1e-20;
/// A sample whose innovation exceeds this many standard deviations is held back as a possible
/// outlier; [`MAX_HELD_OUTLIERS`] in a row are taken as a real change.
const OUTLIER_SIGMAS: f64 = 5.0;
const MAX_HELD_OUTLIERS: u32 = 3;
/// Samples over which the mean squared innovation (in units of the variance the samples and
/// the estimate account for) is averaged to scale the samples' variances.
const NOISE_SCALE_MEMORY: f64 = 8.0;
/// Well-predicted samples in a row, each finding the clock settled (see
/// [`POLL_SETTLED_SIGMAS`]), before the poll interval may grow.
const POLL_UP_AFTER: i32 = 4;
/// Samples over which the samples' information is averaged.
const SAMPLE_INFO_MEMORY: f64 = 16.0;
/// The poll interval doubles only while the clock's predicted drift over the doubled interval
/// (wander plus frequency uncertainty, as a variance) stays within this many typical samples'
/// variances: a sample taken sooner would tell little the estimate does not already know, so
/// its packet would buy little accuracy. chrony's models then poll about as often as chronyd.
const POLL_UP_DRIFT: f64 = 3.0;
/// Of that drift, the frequency's uncertainty alone may reach this many typical samples'
/// variances: the interval grows only once the frequency is known to within a typical
/// sample's deviation over the doubled interval, so that a clock that follows servers whose
/// own errors wander (stratum 3 and below) does not learn its frequency from samples hundreds
/// of seconds apart too soon.
const POLL_UP_FREQUENCY: f64 = 1.0;
/// The poll interval halves once the drift over one interval exceeds this many typical
/// samples' variances (a doubling's drift is 8 times its interval's: no oscillation). At 4
/// (with doubling up to 2), a clock on a clean path (10 µs of queueing) went back from 512 s
/// to 256 s at once, and polled 1.08× as often as chronyd for 0.39× its error in clknetsim;
/// at 12 (up to 3), 0.93× as often for 0.46× (docs/benchmarks.md).
const POLL_DOWN_DRIFT: f64 = 12.0;
/// A sample's band is carried to "now" widened by this many standard deviations of what the
/// clock may have wandered since ([`Discipline::wander_bound`]), and the bands share a
/// frequency error within this many deviations of the estimate's
/// ([`Discipline::frequency_bound`]). At one, too many bands missed the clock: in clknetsim,
/// chrony's Test 2 model with 10 ms of queueing came to 0.70× chronyd's RMS error instead of
/// 0.67×.
const BAND_DRIFT_SIGMAS: f64 = 2.0;
/// The poll interval grows only once the estimate's offset variance is within a typical
/// sample's divided by this (it holds that many samples' information).
const POLL_TARGET: f64 = 2.0;
/// A sample counts towards a longer poll interval only if the offset it leaves the estimate
/// with is within this many standard deviations of a typical sample: not while the start-up
/// offset is still slewed away, which a longer interval would slow down.
const POLL_SETTLED_SIGMAS: f64 = 3.0;
/// Phase corrections are slewed over a time inversely proportional to their size in standard
/// deviations of the estimate: this many poll intervals for one within a standard deviation
/// (mostly noise: the clock's rate then changes little), one interval from three on.
const CORRECTION_TIME_RATIO: f64 = 3.0;

/// How samples become clock corrections.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisciplineMode {
    /// The Kalman filter bank described in the module docs.
    #[default]
    Kalman,
    /// Step the clock by every raw measured offset at once, as the project's source documents'
    /// clients do: no filtering, no frequency correction. For comparison only.
    Naive,
}

/// Discipline settings.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct DisciplineConfig {
    /// The algorithm (default [`DisciplineMode::Kalman`]).
    pub mode: DisciplineMode,
    /// Offsets beyond this (seconds) are stepped rather than slewed (default 0.128 s).
    pub step_threshold: f64,
    /// Offsets beyond this (seconds) are refused and reported; 0 disables (default 1000 s).
    pub panic_threshold: f64,
    /// How long (seconds) an offset must stay beyond the step threshold before it is stepped
    /// after start-up (default 300 s).
    pub stepout: f64,
    /// Step at the first update, whatever the offset below the panic threshold (default true).
    pub step_at_startup: bool,
    /// Largest frequency correction, ppm, including slewing (default 83,333 ppm = 1/12, as
    /// chrony's maxslewrate: a 0.1 s offset is gone in seconds, not minutes).
    pub max_slew_ppm: f64,
    /// Frequency error to start from (ppm), e.g. from the drift file.
    pub initial_frequency_ppm: Option<f64>,
    /// The monotonic time the discipline is driven with runs at the rate of the clock it
    /// corrects, as Linux's CLOCK_MONOTONIC does when the corrections go to the kernel (it
    /// applies the frequency adjustment to both clocks). Intervals are then converted to true
    /// seconds by the clock's rate: during a fast start-up slew (83,333 ppm at most) an
    /// interval read on the slewed clock is off by that much, and the clock's phase with it.
    /// Default false: a monotonic clock the corrections do not reach (the `virtual` and
    /// `observe` clocks, the simulator's true time).
    pub slewed_time_base: bool,
}

impl Default for DisciplineConfig {
    fn default() -> Self {
        DisciplineConfig {
            mode: DisciplineMode::Kalman,
            step_threshold: 0.128,
            panic_threshold: 1000.0,
            stepout: 300.0,
            step_at_startup: true,
            max_slew_ppm: 83_333.0,
            initial_frequency_ppm: None,
            slewed_time_base: false,
        }
    }
}

/// Something the discipline did, for logs and status.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub enum DisciplineEvent {
    /// The clock was stepped by this many seconds.
    Stepped(f64),
    /// An offset beyond the panic threshold is refused (seconds): reported once when the
    /// discipline starts refusing, not at every sample.
    PanicRefused(f64),
    /// The offset is back within the panic threshold: corrections resume (seconds).
    PanicCleared(f64),
    /// A sample was held back as an outlier (innovation in seconds).
    OutlierHeld(f64),
}

/// The discipline's view, for status output.
#[derive(Clone, Copy, PartialEq, Debug, Default, Serialize)]
pub struct DisciplineState {
    /// Estimated offset of true time from the local clock now (server − local), seconds.
    pub offset: f64,
    /// Estimated intrinsic frequency error, ppm (positive = the clock runs fast).
    pub frequency_ppm: f64,
    /// Standard deviation of the offset estimate, seconds.
    pub offset_sd: f64,
    /// Standard deviation of the frequency estimate, ppm.
    pub frequency_sd_ppm: f64,
    /// Commanded frequency correction now, ppm.
    pub correction_ppm: f64,
    /// Wander intensity of the model driving the clock (s⁻¹).
    pub wander: f64,
    /// Innovation of the last accepted sample, seconds.
    pub last_offset: f64,
    /// The standard deviation the model expected of that innovation (the estimate's and the
    /// sample's uncertainty together), seconds; 0 before the first update.
    pub last_innovation_sd: f64,
    /// Samples accepted.
    pub updates: u64,
    /// Steps made.
    pub steps: u64,
}

/// Updates after which the model's expected innovation is trusted (see
/// [`DisciplineState::unexplained_innovation`]).
pub const SETTLED_UPDATES: u64 = 16;

/// How many of the model's standard deviations of an innovation its noise may explain.
pub const EXPLAINED_SIGMAS: f64 = 3.0;

impl DisciplineState {
    /// The part of the last innovation the model does not explain, seconds: beyond
    /// [`EXPLAINED_SIGMAS`] of the deviation it expected, once the discipline has taken
    /// [`SETTLED_UPDATES`]. Before that the whole innovation: a young model's idea of its own
    /// uncertainty is itself an estimate from a few samples, and too confident (a server that
    /// follows an upstream slewing at start-up takes the slew for its own frequency).
    pub fn unexplained_innovation(&self) -> f64 {
        if self.updates > SETTLED_UPDATES {
            (self.last_offset.abs() - EXPLAINED_SIGMAS * self.last_innovation_sd).max(0.0)
        } else {
            self.last_offset.abs()
        }
    }
}

/// One Kalman filter of the bank. Its wander intensity is its entry of [`WANDER_MODELS`] (by
/// position in [`Models`]), and its covariance is symmetric, so only three terms are stored:
/// a simulation holds one bank per client.
#[derive(Clone, Copy, Debug, Default)]
struct Model {
    theta: f64,
    nu: f64,
    /// Covariance of (θ, ν): P₀₀, P₀₁ = P₁₀, P₁₁.
    p00: f64,
    p01: f64,
    p11: f64,
    loglik: f64,
}

impl Model {
    /// Propagates by `dt` true seconds under wander intensity `q` and the commanded
    /// `correction`.
    fn predict(&mut self, q: f64, dt: f64, correction: f64) {
        if dt <= 0.0 {
            return;
        }
        self.theta -= (self.nu + correction) * dt;
        // F = [[1, −dt], [0, 1]]; P = F P Fᵀ + Q.
        let (p00, p01, p11) = (self.p00, self.p01, self.p11);
        let n00 = p00 - 2.0 * dt * p01 + dt * dt * p11;
        let n01 = p01 - dt * p11;
        self.p00 = n00 + PHASE_NOISE * dt + q * dt * dt * dt / 3.0;
        self.p01 = n01 - q * dt * dt / 2.0;
        self.p11 = p11 + q * dt;
    }

    /// Innovation and its variance for a sample `z` of variance `r`.
    fn innovation(&self, z: f64, r: f64) -> (f64, f64) {
        (z - self.theta, self.p00 + r)
    }

    fn update(&mut self, z: f64, r: f64, clip: f64) {
        let (y, s) = self.innovation(z, r);
        let k0 = self.p00 / s;
        let k1 = self.p01 / s;
        self.theta += k0 * y;
        // No oscillator is off by more than MAX_DRIFT: an estimate beyond it comes from
        // following an upstream's fast slew, and would carry the clock away.
        self.nu = (self.nu + k1 * y).clamp(-MAX_DRIFT, MAX_DRIFT);
        let (p00, p01, p11) = (self.p00, self.p01, self.p11);
        // (I − K H) P computed in full is symmetric only up to rounding: its two off-diagonal
        // terms are averaged.
        self.p00 = (1.0 - k0) * p00;
        self.p01 = 0.5 * ((1.0 - k0) * p01 + (p01 - k1 * p00));
        self.p11 = p11 - k1 * p01;
        let surprise = (y * y / s).min(clip * clip);
        self.loglik = LIKELIHOOD_MEMORY * self.loglik - 0.5 * (s.ln() + surprise);
    }
}

/// The filter bank, held inline: empty until the first sample, then one model per entry of
/// [`WANDER_MODELS`], in that order.
#[derive(Clone, Copy, Debug)]
struct Models {
    bank: [Model; WANDER_MODELS.len()],
    len: usize,
}

impl Models {
    fn iter(&self) -> std::slice::Iter<'_, Model> {
        self.bank[..self.len].iter()
    }

    fn iter_mut(&mut self) -> std::slice::IterMut<'_, Model> {
        self.bank[..self.len].iter_mut()
    }

    fn get(&self, i: usize) -> Option<&Model> {
        self.bank[..self.len].get(i)
    }
}

impl Default for Models {
    fn default() -> Self {
        Models {
            bank: [Model::default(); WANDER_MODELS.len()],
            len: 0,
        }
    }
}

impl FromIterator<Model> for Models {
    fn from_iter<I: IntoIterator<Item = Model>>(iter: I) -> Self {
        let mut models = Models::default();
        for m in iter {
            models.bank[models.len] = m;
            models.len += 1;
        }
        models
    }
}

impl std::ops::Index<usize> for Models {
    type Output = Model;

    fn index(&self, i: usize) -> &Model {
        &self.bank[..self.len][i]
    }
}

impl<'a> IntoIterator for &'a mut Models {
    type Item = &'a mut Model;
    type IntoIter = std::slice::IterMut<'a, Model>;

    fn into_iter(self) -> Self::IntoIter {
        self.bank[..self.len].iter_mut()
    }
}

/// What the discipline expects a sample to read.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Prediction {
    /// The predicted offset (seconds).
    pub offset: f64,
    /// Its variance (s²): how far a perfect sample may still differ from it.
    pub variance: f64,
}

/// The clock discipline. Call contract: [`Discipline::sample`] for each combined sample; then
/// drain [`Discipline::poll_command`]. It has no deadlines of its own: slews end in the clock.
/// Every call takes the monotonic `now`.
#[derive(Clone, Debug)]
pub struct Discipline {
    config: DisciplineConfig,
    models: Models,
    started: bool,
    last_time: MonoTime,
    /// Commanded correction, s/s.
    correction: f64,
    /// End of the slew in progress, and the correction from then on (s/s): the clock
    /// switches by itself (see [`ClockCommand::Slew`]).
    slew_end: Option<MonoTime>,
    after_slew: f64,
    over_threshold_since: Option<MonoTime>,
    held_outliers: u32,
    /// Innovations that keep leaning one way.
    bias: BiasDetector,
    /// Recent mean of the squared innovations in units of the variance the samples' own
    /// variances and the estimate's account for; above 1, the samples are worse than stated.
    noise_scale: f64,
    /// Time of the last accepted sample.
    last_accepted: MonoTime,
    /// Consecutive well-predicted samples (> 0), or −1 after a badly predicted one.
    poll_trend: i32,
    /// The last offset exceeded the panic threshold: the clock is not being corrected.
    refusing: bool,
    /// How far the clock has moved against true time from the start to `last_time` (seconds),
    /// as far as the discipline knows: every step, plus the commanded correction and the
    /// estimated frequency error integrated over time. The system subtracts its change since a
    /// sample to judge the sample against the clock as it is now.
    phase: f64,
    commands: CommandQueue,
    events: InlineVec<DisciplineEvent, 2>,
    /// Samples accepted (u32 like the other counters here: the discipline is most of a
    /// simulated node's memory).
    updates: u32,
    /// Steps made.
    steps: u32,
    /// Innovation of the last accepted sample, seconds.
    last_offset: f64,
    last_innovation_sd: f64,
    /// Recent average of the samples' information (1 / variance, s⁻²).
    sample_info: f64,
    /// The offset estimated at the last update, before its correction (seconds).
    last_estimate: f64,
    /// The most likely model after the last update (its wander is the one reported and
    /// planned with), kept so that every read of the state does not search for it.
    best_model: u8,
    /// Each model's share of the mixture that drives the clock, from the last update.
    weights: [f32; WANDER_MODELS.len()],
    /// The samples come from several servers (see [`Discipline::set_several_sources`]).
    several_sources: bool,
}

impl Discipline {
    /// A discipline that has seen no sample yet. If an initial frequency is configured, the
    /// first command (available at once) applies it.
    pub fn new(config: DisciplineConfig, now: MonoTime) -> Self {
        let nu0 = config.initial_frequency_ppm.unwrap_or(0.0) * 1e-6;
        let mut d = Discipline {
            config,
            models: Models::default(),
            started: false,
            last_time: now,
            correction: 0.0,
            slew_end: None,
            after_slew: 0.0,
            over_threshold_since: None,
            held_outliers: 0,
            bias: BiasDetector::default(),
            noise_scale: 1.0,
            last_accepted: now,
            poll_trend: 0,
            refusing: false,
            phase: 0.0,
            commands: CommandQueue::default(),
            events: InlineVec::new(DisciplineEvent::Stepped(0.0)),
            updates: 0,
            steps: 0,
            last_offset: 0.0,
            last_innovation_sd: 0.0,
            sample_info: 0.0,
            last_estimate: 0.0,
            best_model: 0,
            weights: [0.0; WANDER_MODELS.len()],
            several_sources: false,
        };
        if nu0 != 0.0 {
            d.set_correction(now, -nu0);
        }
        d
    }

    /// Feeds one sample: offset `z` (server − local, seconds) measured at `now`, with variance
    /// `variance` (s²). `poll_interval` (seconds) is the current interval between samples.
    pub fn sample(&mut self, now: MonoTime, z: f64, variance: f64, poll_interval: f64) {
        self.advance(now);
        if self.config.mode == DisciplineMode::Naive {
            self.started = true;
            self.updates = self.updates.saturating_add(1);
            self.last_offset = z;
            if z != 0.0 {
                let offset_ns = (z * 1e9).round() as i64;
                self.commands.push(ClockCommand::Step { offset_ns });
                self.phase += offset_ns as f64 * 1e-9;
                self.steps = self.steps.saturating_add(1);
            }
            return;
        }
        let r = variance.max(1e-18);
        if !self.started {
            self.start(z, r);
            self.last_accepted = now;
            self.steer(now, poll_interval);
            return;
        }
        let best = self.best();
        // A sample's variance comes from its delay; when the innovations are larger than
        // those variances and the estimate's own uncertainty explain (e.g. while the window
        // of delays is short and its minimum not yet the path's), every sample is trusted less
        // by their recent ratio.
        let (_, stated) = self.models[best].innovation(z, r);
        let r = r * self.noise_scale.max(1.0);
        let (y, s) = self.models[best].innovation(z, r);
        let ratio = y * y / s;
        let outlier = ratio > OUTLIER_SIGMAS * OUTLIER_SIGMAS;
        // Outliers are the outlier rule's business; the lean detector sees the rest.
        let lean = (!outlier)
            .then(|| self.bias.add(now, y, s.sqrt()))
            .flatten();
        if outlier && self.held_outliers < MAX_HELD_OUTLIERS {
            // Held back, but a badly predicted sample all the same: the next one comes
            // sooner, so that a real change of the clock is confirmed within a shorter
            // interval, not after MAX_HELD_OUTLIERS of the longest (at 1024 s, an hour in
            // which a wandering clock drifted hundreds of µs unheeded).
            self.held_outliers += 1;
            self.poll_trend = -1;
            self.events.push(DisciplineEvent::OutlierHeld(y));
            return;
        }
        // The filters were overconfident: widen phase and frequency uncertainty so they follow
        // quickly. After several outliers in a row (the clock or the path really changed) the
        // whole innovation is the change; after a lean, its mean over the run, as reached by a
        // frequency error acting over half the run. Once settled, the run is taken as at
        // least one poll interval: several sources polled in one round answer within seconds,
        // and a lean they share there is a phase they agree on (a frequency error builds up
        // between rounds); taken over the round's minute, one shared lean of 150 µs at 1024 s
        // polls widened the frequency by ppm and sent the clock 1 ms away before the next
        // round. Not before: a start-up burst's lean, seconds long, is the clock's frequency
        // error, and taking it over a poll interval slowed learning a 50 ppm clock's.
        let dt = now.secs_since(self.last_accepted).max(1.0);
        let mut widen = (0.0, 0.0);
        if self.held_outliers >= MAX_HELD_OUTLIERS {
            widen = (y * y, (y / dt).powi(2));
        }
        if let Some(lean) = lean {
            widen.0 = f64::max(widen.0, lean.mean * lean.mean);
            let settled = u64::from(self.updates) >= SETTLED_UPDATES;
            let span = lean
                .span
                .max(dt)
                .max(if settled { poll_interval } else { 0.0 });
            widen.1 = f64::max(widen.1, (2.0 * lean.mean / span).powi(2));
        }
        if widen != (0.0, 0.0) {
            for m in &mut self.models {
                m.p00 += widen.0;
                m.p11 += widen.1;
            }
        }
        self.held_outliers = 0;
        self.last_accepted = now;
        let normalized = (y * y / stated).min(OUTLIER_SIGMAS * OUTLIER_SIGMAS);
        self.noise_scale += (normalized - self.noise_scale) / NOISE_SCALE_MEMORY;
        let clip = if self.several_sources {
            SEVERAL_SOURCES_LIKELIHOOD_CLIP
        } else {
            LIKELIHOOD_CLIP
        };
        for m in &mut self.models {
            m.update(z, r, clip);
        }
        // No model falls further behind the best than MAX_LIKELIHOOD_DEFICIT: one that lost
        // at start-up can win back the clock within tens of updates once it fits better.
        let top = self
            .models
            .iter()
            .map(|m| m.loglik)
            .fold(f64::MIN, f64::max);
        for m in &mut self.models {
            m.loglik = m.loglik.max(top - MAX_LIKELIHOOD_DEFICIT);
        }
        self.best_model = self.most_likely() as u8;
        self.reweigh();
        self.interact(dt);
        self.sample_info = if self.sample_info == 0.0 {
            1.0 / r
        } else {
            self.sample_info + (1.0 / r - self.sample_info) / SAMPLE_INFO_MEMORY
        };
        self.updates = self.updates.saturating_add(1);
        self.last_offset = y;
        self.last_innovation_sd = s.sqrt();
        self.steer(now, poll_interval);
        // A badly predicted sample (beyond 3σ) asks for a shorter poll at once; the interval
        // may grow only after several well-predicted ones that also found the clock settled:
        // an offset within a few samples' deviations, not a start-up offset still being
        // slewed away (a longer interval would slow that down).
        let settled =
            self.last_estimate.abs() <= POLL_SETTLED_SIGMAS * self.typical_variance().sqrt();
        self.poll_trend = if ratio > 9.0 {
            -1
        } else if ratio < 4.0 && settled {
            self.poll_trend.max(0).saturating_add(1)
        } else {
            0
        };
    }

    /// Says whether the next samples come from several servers (more than one source
    /// survives the selection): a surprising sample then counts against a wander model up to
    /// two of its standard deviations instead of three, less against the slow models.
    /// Default: one server.
    pub fn set_several_sources(&mut self, several: bool) {
        self.several_sources = several;
    }

    /// How far, with two standard deviations, the clock may have wandered unknown from a
    /// straight line at its estimated frequency over the last `age` seconds (the driving
    /// model's wander), seconds: what a sample's band is widened by when carried to now.
    pub fn wander_bound(&self, age: f64) -> f64 {
        let q = WANDER_MODELS[self.best()];
        BAND_DRIFT_SIGMAS * (q * age * age * age / 3.0 + PHASE_NOISE * age).sqrt()
    }

    /// How far, with two standard deviations, the estimated frequency may be off (the driving
    /// model's uncertainty), s/s: the rate error the bands may share. Infinite before the
    /// first sample.
    pub fn frequency_bound(&self) -> f64 {
        self.models
            .get(self.best())
            .map_or(f64::INFINITY, |m| BAND_DRIFT_SIGMAS * m.p11.max(0.0).sqrt())
    }

    /// The same bound as [`frequency_bound`](Self::frequency_bound) on the frequency error
    /// the clock starts with, before any sample (the configured initial frequency's
    /// uncertainty, or that of a clock whose frequency is not known at all), s/s.
    pub fn prior_frequency_bound(&self) -> f64 {
        BAND_DRIFT_SIGMAS * self.prior_frequency_variance().sqrt()
    }

    /// The variance of the frequency error the first sample starts from (s/s)².
    fn prior_frequency_variance(&self) -> f64 {
        if self.config.initial_frequency_ppm.is_some() {
            1e-12
        } else {
            1e-8
        }
    }

    /// Blends the estimate at `now` with `mid`, an independent estimate of the offset of
    /// variance `variance` from where the sources' recent samples confine it (see
    /// [`band`](super::band)); with `within`, the estimate is first brought into that interval.
    /// Each model moves its phase by the share its own variance gives, and its frequency by
    /// what its covariance implies for that move; the covariances stay as they are, since the
    /// bands hold samples the models have already seen. Then steers anew (`poll_interval`, as
    /// for [`sample`](Self::sample)). Nothing before eight updates.
    ///
    /// The frequency moves by the whole share at every poll interval. While each band was
    /// widened by the whole frequency uncertainty over its age, the intervals at 1024 s polls
    /// were wide and moved with the frequency estimate itself, and the whole share raised the
    /// clock's RMS frequency error in chrony's Test 1 model with 10 ms of queueing from 0.79×
    /// chronyd's to 1.11×; since the bands share one frequency error instead, it lowers it
    /// (0.87× → 0.79×, docs/benchmarks.md).
    pub fn confine(
        &mut self,
        now: MonoTime,
        mid: f64,
        variance: f64,
        within: Option<(f64, f64)>,
        poll_interval: f64,
    ) {
        if !self.started || self.updates < 8 || self.config.mode == DisciplineMode::Naive {
            return;
        }
        self.advance(now);
        for m in &mut self.models {
            let inside = within.map_or(m.theta, |(lo, hi)| m.theta.clamp(lo, hi));
            let p00 = m.p00.max(1e-30);
            let blended = inside + p00 / (p00 + variance.max(0.0)) * (mid - inside);
            let moved = blended - m.theta;
            m.theta = blended;
            m.nu = (m.nu + moved * m.p01 / p00).clamp(-MAX_DRIFT, MAX_DRIFT);
        }
        self.steer(now, poll_interval);
    }

    /// The offset the discipline predicts for a sample taken at `now`, once it has settled
    /// (eight updates); what a sample differs from it by is its innovation.
    ///
    /// Its variance is the driving model's, plus the square of how far the mixture's
    /// prediction lies from that model's. Not the mixture's own: that also counts the far
    /// wider spread of the fast-wander models kept at a floor weight
    /// (`MAX_LIKELIHOOD_DEFICIT`), and taken from a squared innovation it would leave the
    /// sample less error than it has (on chrony's asymmetric-jitter path about 200 µs against
    /// the driving model's 60–130 µs, at 1024 s polls).
    pub fn predicted_offset(&mut self, now: MonoTime) -> Option<Prediction> {
        if !self.started || self.updates < 8 || self.config.mode == DisciplineMode::Naive {
            return None;
        }
        self.advance(now);
        let mix = self.mixture();
        let best = &self.models[self.best()];
        Some(Prediction {
            offset: mix.theta,
            variance: best.p00.max(0.0) + (best.theta - mix.theta).powi(2),
        })
    }

    /// Steps the clock at once by the whole offset estimated at `now`, ending any slew (an
    /// operator's request, as `chronyc makestep`; whatever the step and panic thresholds).
    /// Returns the step, or None before the first sample.
    pub fn step_now(&mut self, now: MonoTime) -> Option<f64> {
        if !self.started || self.config.mode == DisciplineMode::Naive {
            return None;
        }
        self.advance(now);
        let m = self.mixture();
        if m.theta != 0.0 {
            self.step(m.theta);
        }
        self.set_correction(now, -m.nu);
        self.exceeds_panic(0.0);
        Some(m.theta)
    }

    /// Next clock command to apply, in order.
    pub fn poll_command(&mut self) -> Option<ClockCommand> {
        self.commands.pop()
    }

    /// Next event to report, in order.
    pub fn poll_event(&mut self) -> Option<DisciplineEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// The state at `now` (offset predicted to `now`).
    pub fn state(&self, now: MonoTime) -> DisciplineState {
        let mut st = DisciplineState {
            frequency_ppm: self.config.initial_frequency_ppm.unwrap_or(0.0),
            last_offset: self.last_offset,
            last_innovation_sd: self.last_innovation_sd,
            updates: self.updates.into(),
            steps: self.steps.into(),
            ..Default::default()
        };
        // The correction in force at `now`, and the model predicted to `now` across the end
        // of a slew if there is one in between.
        let (mut from, mut correction) = (self.last_time, self.correction);
        let best = self.best();
        let mut model = self.models.get(best).map(|_| self.mixture());
        if let Some(end) = self.slew_end.filter(|&end| end <= now) {
            if let Some(m) = &mut model {
                let dt = self.true_secs(end.secs_since(from), correction);
                m.predict(WANDER_MODELS[best], dt, correction);
            }
            (from, correction) = (end, self.after_slew);
        }
        if let Some(mut m) = model {
            let q = WANDER_MODELS[best];
            m.predict(
                q,
                self.true_secs(now.secs_since(from), correction),
                correction,
            );
            st.offset = m.theta;
            st.frequency_ppm = m.nu * 1e6;
            st.offset_sd = m.p00.max(0.0).sqrt();
            st.frequency_sd_ppm = m.p11.max(0.0).sqrt() * 1e6;
            st.wander = q;
        }
        st.correction_ppm = correction * 1e6;
        st
    }

    /// When the slew in progress ends, if one is (the estimated offset changes at one rate
    /// until then and at another after).
    pub fn slew_end(&self) -> Option<MonoTime> {
        self.slew_end
    }

    /// True while the estimated offset is beyond the panic threshold and left uncorrected.
    pub fn is_refusing(&self) -> bool {
        self.refusing
    }

    /// How far the clock has moved against true time by `now` (seconds), as far as the
    /// discipline knows: every step, plus the clock's rate against true time — the commanded
    /// correction (a slew's, then the one after its end) and the estimated frequency error —
    /// integrated over time. Its change between two instants is how far the clock moved in
    /// between, so an offset (server − local) measured at `t` reads
    /// `offset − (phase_at(now) − phase_at(t))` against the clock as it is at `now`. (In steady
    /// state the correction cancels the frequency error and the phase stands still; during a
    /// slew it moves at the slew's rate.)
    pub fn phase_at(&self, now: MonoTime) -> f64 {
        let nu = self.estimated_frequency();
        let (mut phase, mut from, mut correction) = (self.phase, self.last_time, self.correction);
        if let Some(end) = self.slew_end.filter(|&end| end <= now) {
            phase += (correction + nu) * self.true_secs(end.secs_since(from).max(0.0), correction);
            (from, correction) = (end, self.after_slew);
        }
        phase + (correction + nu) * self.true_secs(now.secs_since(from).max(0.0), correction)
    }

    /// The frequency error (s/s) the phase is extrapolated with from the last update on: the
    /// driving model's estimate, or the configured initial one before the first sample. When an
    /// update revises it, offsets stored against the phase are off by the change times their
    /// age (see [`Source::reproject`](super::Source::reproject)).
    pub fn estimated_frequency(&self) -> f64 {
        match self.models.get(self.best()) {
            Some(_) => self.mixture().nu,
            None => self.config.initial_frequency_ppm.unwrap_or(0.0) * 1e-6,
        }
    }

    /// True once the first sample has been applied.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Suggests a poll exponent change for the sources: +1 after four well-predicted samples
    /// in a row that found the clock settled, once the clock's predicted drift over twice the
    /// current interval (wander plus frequency uncertainty) is within three typical samples'
    /// variances, the frequency uncertainty's part of it within one, and the estimate holds
    /// two samples' information; −1 after a badly predicted sample (one held back as an
    /// outlier included) or when the drift over one interval exceeds twelve samples' variances;
    /// else 0 (`POLL_UP_AFTER`, `POLL_UP_DRIFT`, `POLL_UP_FREQUENCY`, `POLL_TARGET`,
    /// `POLL_DOWN_DRIFT`). The interval
    /// is thus as long as the clock's wander allows against the samples' noise: noisy paths
    /// and stable clocks poll slowly, where more packets would buy little. Judged on the most
    /// likely model alone: the mixture's spread between models would keep the poll short.
    pub fn poll_adjustment(&mut self, poll_interval: f64) -> i8 {
        if !self.started || self.updates < 8 || self.sample_info <= 0.0 {
            return 0;
        }
        let best = self.best();
        let (m, q) = (&self.models[best], WANDER_MODELS[best]);
        let typical = self.typical_variance();
        let drift = |dt: f64| q * dt * dt * dt / 3.0 + m.p11 * dt * dt;
        let adjust = if self.poll_trend < 0 || drift(poll_interval) > POLL_DOWN_DRIFT * typical {
            -1
        } else if self.poll_trend >= POLL_UP_AFTER
            && drift(2.0 * poll_interval) < POLL_UP_DRIFT * typical
            && m.p00 * POLL_TARGET <= typical
            && m.p11 * (2.0 * poll_interval).powi(2) <= POLL_UP_FREQUENCY * typical
        {
            1
        } else {
            0
        };
        if adjust != 0 {
            self.poll_trend = 0;
        }
        adjust
    }

    /// A typical sample's variance (s²): the inverse of the samples' recent mean information.
    fn typical_variance(&self) -> f64 {
        1.0 / self.sample_info
    }

    /// The time (seconds) over which an estimated phase error `theta` known to within `sd` is
    /// slewed away: three poll intervals (`CORRECTION_TIME_RATIO`) for a correction within one
    /// standard deviation, one interval from three on; at least a second.
    pub fn slew_time(poll_interval: f64, theta: f64, sd: f64) -> f64 {
        let stretch = if theta == 0.0 {
            CORRECTION_TIME_RATIO
        } else {
            (CORRECTION_TIME_RATIO * sd / theta.abs()).clamp(1.0, CORRECTION_TIME_RATIO)
        };
        (poll_interval * stretch).max(1.0)
    }

    fn start(&mut self, z: f64, r: f64) {
        let nu0 = self.config.initial_frequency_ppm.map_or(0.0, |p| p * 1e-6);
        let nu_var = self.prior_frequency_variance();
        self.models = WANDER_MODELS
            .iter()
            .map(|_| Model {
                theta: z,
                nu: nu0,
                p00: r,
                p01: 0.0,
                p11: nu_var,
                loglik: 0.0,
            })
            .collect();
        self.best_model = self.most_likely() as u8;
        self.reweigh();
        self.started = true;
        self.updates = 1;
        self.last_offset = z;
        if self.exceeds_panic(z) {
            return;
        }
        if self.config.step_at_startup && z.abs() > self.config.step_threshold {
            self.step(z);
        }
    }

    /// Whether `offset` is beyond the panic threshold; reports a change of that state.
    fn exceeds_panic(&mut self, offset: f64) -> bool {
        let p = self.config.panic_threshold;
        let refusing = p > 0.0 && offset.abs() > p;
        if refusing != self.refusing {
            self.events.push(if refusing {
                DisciplineEvent::PanicRefused(offset)
            } else {
                DisciplineEvent::PanicCleared(offset)
            });
        }
        self.refusing = refusing;
        refusing
    }

    fn step(&mut self, offset: f64) {
        for m in &mut self.models {
            m.theta -= offset;
        }
        let offset_ns = (offset * 1e9).round() as i64;
        self.commands.push(ClockCommand::Step { offset_ns });
        self.phase += offset_ns as f64 * 1e-9;
        self.events.push(DisciplineEvent::Stepped(offset));
        self.steps = self.steps.saturating_add(1);
        self.bias.clear();
        self.over_threshold_since = None;
    }

    /// Decides the corrections after an update.
    fn steer(&mut self, now: MonoTime, poll_interval: f64) {
        let m = self.mixture();
        let theta = m.theta;
        self.last_estimate = theta;
        if theta.abs() > self.config.step_threshold {
            if self.exceeds_panic(theta) {
                // Refuse: keep only the frequency correction.
                self.set_correction(now, -m.nu);
                return;
            }
            let since = *self.over_threshold_since.get_or_insert(now);
            if now.secs_since(since) >= self.config.stepout {
                self.step(theta);
                self.set_correction(now, -m.nu);
                return;
            }
        } else {
            self.over_threshold_since = None;
            self.exceeds_panic(theta);
        }
        let max = self.config.max_slew_ppm * 1e-6;
        let base = (-m.nu).clamp(-max, max);
        let sd = m.p00.max(0.0).sqrt();
        let wanted_rate = theta / Self::slew_time(poll_interval, theta, sd);
        let rate = (base + wanted_rate).clamp(-max, max) - base;
        if rate == 0.0 || theta == 0.0 {
            self.set_correction(now, base);
            return;
        }
        // θ / rate true seconds, read on the slewed clock if that is the time base.
        let duration = if self.config.slewed_time_base {
            theta / rate * (1.0 + m.nu + base + rate)
        } else {
            theta / rate
        };
        let end = now.add_secs_f64(duration);
        self.advance(now);
        if end <= now {
            // Too short to express: nothing to slew.
            self.set_correction(now, base);
            return;
        }
        // The clock ends the slew by itself and goes on at −ν̂.
        self.correction = base + rate;
        self.slew_end = Some(end);
        self.after_slew = -m.nu;
        self.commands.push(ClockCommand::Slew {
            ppm: self.correction * 1e6,
            duration_ns: end.nanos_since(now),
            then_ppm: self.after_slew * 1e6,
        });
    }

    /// Sets the correction from `now` on, ending any slew in progress.
    fn set_correction(&mut self, now: MonoTime, correction: f64) {
        self.advance(now);
        let slewing = self.slew_end.take().is_some();
        if correction != self.correction || slewing {
            self.correction = correction;
            self.commands.push(ClockCommand::SetFrequency {
                ppm: correction * 1e6,
            });
        }
    }

    /// Propagates every model to `now` under the corrections in force since the last call:
    /// the slew's, then from its end the one that follows it.
    fn advance(&mut self, now: MonoTime) {
        if let Some(end) = self.slew_end.filter(|&end| end <= now) {
            self.predict_to(end);
            self.correction = self.after_slew;
            self.slew_end = None;
        }
        self.predict_to(now);
    }

    fn predict_to(&mut self, now: MonoTime) {
        let dt = now.secs_since(self.last_time);
        if dt > 0.0 {
            let dt = self.true_secs(dt, self.correction);
            self.phase += (self.correction + self.estimated_frequency()) * dt;
            for (m, &q) in self.models.iter_mut().zip(&WANDER_MODELS) {
                m.predict(q, dt, self.correction);
            }
            self.last_time = now;
        }
    }

    /// True seconds in `dt` seconds of the time base while `correction` is in force, at the
    /// driving model's frequency estimate (see [`DisciplineConfig::slewed_time_base`]).
    fn true_secs(&self, dt: f64, correction: f64) -> f64 {
        if self.config.slewed_time_base {
            dt / (1.0 + self.estimated_frequency() + correction)
        } else {
            dt
        }
    }

    /// The most likely model after the last update.
    fn best(&self) -> usize {
        usize::from(self.best_model)
    }

    /// Sets each model's share of the mixture from the likelihoods: `exp(loglik)`, normalized.
    fn reweigh(&mut self) {
        let top = self.models[self.best()].loglik;
        let mut total = 0.0;
        for (w, m) in self.weights.iter_mut().zip(self.models.iter()) {
            let x = (m.loglik - top).exp();
            *w = x as f32;
            total += x;
        }
        for w in &mut self.weights {
            *w = (f64::from(*w) / total) as f32;
        }
    }

    /// Lets the models interact over the `dt` seconds since the previous update (see
    /// [`MODEL_SWITCH_RATE`]): model `j` goes on from the blend of every model `i`'s state by
    /// `weight(i) × P(switch i → j)`. Each keeps its own likelihood.
    fn interact(&mut self, dt: f64) {
        let n = self.models.len;
        if n < 2 {
            return;
        }
        // Switches as a Poisson process: at least one within `dt`.
        let p = -(-MODEL_SWITCH_RATE * dt).exp_m1();
        let stay = 1.0 - p;
        let switch = p / (n - 1) as f64;
        let (before, weights) = (self.models, self.weights);
        for (j, m) in self.models.iter_mut().enumerate() {
            let share = |i: usize| f64::from(weights[i]) * if i == j { stay } else { switch };
            *m = Model {
                loglik: m.loglik,
                ..blend(&before, share)
            };
        }
    }

    /// The estimate that drives the clock: the models' states weighted by their shares, with
    /// a covariance that includes the models' spread around it (a model much less likely than
    /// another weighs nothing). Only once started.
    fn mixture(&self) -> Model {
        Model {
            loglik: self.models[self.best()].loglik,
            ..blend(&self.models, |i| f64::from(self.weights[i]))
        }
    }

    fn most_likely(&self) -> usize {
        self.models
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.loglik.total_cmp(&b.1.loglik))
            .map_or(0, |(i, _)| i)
    }
}

/// The models' states weighted by `share(i)` (normalized here), with a covariance that
/// includes their spread around the blend; no likelihood.
fn blend(models: &Models, share: impl Fn(usize) -> f64) -> Model {
    let shares = || models.iter().enumerate().map(|(i, m)| (m, share(i)));
    let total: f64 = shares().map(|(_, w)| w).sum();
    let mut mix = Model::default();
    for (m, w) in shares() {
        mix.theta += w * m.theta / total;
        mix.nu += w * m.nu / total;
    }
    for (m, w) in shares() {
        let (dt, dn) = (m.theta - mix.theta, m.nu - mix.nu);
        mix.p00 += w * (m.p00 + dt * dt) / total;
        mix.p01 += w * (m.p01 + dt * dn) / total;
        mix.p11 += w * (m.p11 + dn * dn) / total;
    }
    mix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SoftClock;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    const S: i64 = 1_000_000_000;

    /// A clock, a perfect server reached over a symmetric path with noise, and the discipline
    /// steering it; returns (true offsets after each sample, final discipline state).
    fn run(
        initial_offset: f64,
        freq_ppm: f64,
        noise: f64,
        interval: i64,
        samples: usize,
    ) -> (Vec<f64>, DisciplineState, Discipline) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut clock = SoftClock::new(0, (initial_offset * 1e9) as i64, freq_ppm);
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        let mut errors = Vec::new();
        let mut t = 0;
        for _ in 0..samples {
            let err = clock.offset_at(t) * 1e-9;
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let z = -err + noise * u * 3.46; // uniform with sd = noise
            d.sample(MonoTime(t), z, noise * noise, interval as f64);
            while let Some(c) = d.poll_command() {
                clock.apply(t, c);
            }
            errors.push(clock.offset_at(t + 1) * 1e-9);
            t += interval * S;
        }
        let st = d.state(MonoTime(t));
        (errors, st, d)
    }

    #[test]
    fn a_settled_model_explains_noise_sized_innovations() {
        let state = |updates, last_offset| DisciplineState {
            last_offset,
            last_innovation_sd: 10e-6,
            updates,
            ..Default::default()
        };
        // Young: the whole innovation, whatever the model expected.
        assert_eq!(
            state(SETTLED_UPDATES, -20e-6).unexplained_innovation(),
            20e-6
        );
        // Settled: within 3 σ is noise; beyond, only the excess is unexplained.
        let settled = SETTLED_UPDATES + 1;
        assert_eq!(state(settled, -20e-6).unexplained_innovation(), 0.0);
        let excess = state(settled, 50e-6).unexplained_innovation();
        assert!((excess - 20e-6).abs() < 1e-15, "{excess}");
    }

    #[test]
    fn every_update_records_the_innovation_and_its_expected_deviation() {
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        assert_eq!(d.state(MonoTime(0)).last_innovation_sd, 0.0);
        for k in 1..=5 {
            d.sample(MonoTime(k * 16_000_000_000), 1e-4, 1e-10, 16.0);
        }
        let st = d.state(MonoTime(80_000_000_000));
        // The sample's own variance alone is 10 µs²: the expected deviation is at least 10 µs.
        assert!(st.last_innovation_sd >= 1e-5, "{st:?}");
        assert!(st.last_innovation_sd.is_finite());
    }

    #[test]
    fn one_surprising_sample_does_not_hand_the_clock_to_one_model() {
        // Settled on a steady clock, then one sample 3σ off: the faster-wandering models
        // gain likelihood, but the clock follows every model's share of the estimate.
        let (_, _, mut d) = run(0.0, 10.0, 20e-6, 64, 60);
        let t = 60 * 64 * S;
        let predicted = d.predicted_offset(MonoTime(t)).unwrap().offset;
        d.sample(MonoTime(t), predicted + 3.0 * 20e-6, 20e-6f64.powi(2), 64.0);
        let total: f64 = d.weights.iter().map(|&w| f64::from(w)).sum();
        assert!((total - 1.0).abs() < 1e-6, "{:?}", d.weights);
        let (lo, hi) = d.models.iter().fold((f64::MAX, f64::MIN), |(lo, hi), m| {
            (lo.min(m.nu), hi.max(m.nu))
        });
        let weighted = |field: fn(&Model) -> f64| -> f64 {
            d.models
                .iter()
                .zip(&d.weights)
                .map(|(m, &w)| field(m) * f64::from(w))
                .sum()
        };
        let nu = d.estimated_frequency();
        assert!(lo < nu && nu < hi, "{lo} < {nu} < {hi}");
        let mixed = weighted(|m| m.nu);
        assert!((nu - mixed).abs() < 1e-12, "{nu} vs {mixed}");
        // No model holds the whole weight, and the spread between them counts as uncertainty.
        let top = d.weights.iter().copied().fold(0.0, f32::max);
        assert!(top < 0.99, "{:?}", d.weights);
        assert!(d.mixture().p11 > weighted(|m| m.p11));
    }

    #[test]
    fn samples_worse_than_stated_are_trusted_less() {
        // Settled on samples as good as stated (100 µs), the scale stays near 1; then they are
        // stated at 20 µs but still scattered by 100 µs, and within a few the scale grows so
        // that the filter trusts them for what they are.
        let (_, _, mut d) = run(0.0, 0.0, 100e-6, 64, 200);
        assert!(d.noise_scale < 2.0, "scale {}", d.noise_scale);
        let before = d.state(MonoTime(200 * 64 * S)).offset_sd;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        for k in 200..216i64 {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            d.sample(
                MonoTime(k * 64 * S),
                100e-6 * u * 3.46,
                20e-6f64.powi(2),
                64.0,
            );
        }
        assert!(d.noise_scale > 4.0, "scale {}", d.noise_scale);
        let after = d.state(MonoTime(216 * 64 * S)).offset_sd;
        assert!(after > before * 0.7, "{after} vs {before}");
    }

    #[test]
    fn a_frequency_change_the_model_does_not_expect_is_followed() {
        // Settled on a stable clock, the filters are sure of the frequency; then it changes by
        // 0.2 ppm at once (far beyond the wander they learned). Each innovation is within a
        // few deviations, so no outlier rule fires: the lean of the innovations must.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let mut clock = SoftClock::new(0, 0, 10.0);
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        let noise = 50e-6;
        let mut followed = None;
        for k in 0..600i64 {
            let t = k * 64 * S;
            if k == 300 {
                clock.set_intrinsic_ppm(t, 10.2);
            }
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let z = -clock.offset_at(t) * 1e-9 + noise * u * 3.46;
            d.sample(MonoTime(t), z, noise * noise, 64.0);
            while let Some(c) = d.poll_command() {
                clock.apply(t, c);
            }
            let freq = d.state(MonoTime(t)).frequency_ppm;
            if k > 300 && followed.is_none() && (freq - 10.2).abs() < 0.05 {
                followed = Some(k - 300);
            }
        }
        let after = followed.expect("the new frequency is learned");
        // Without the lean detector: 25 samples (the bank alone, slowly moving to a faster
        // wander model).
        assert!(after <= 18, "learned after {after} samples");
    }

    #[test]
    fn a_model_left_behind_goes_on_from_the_others_states() {
        // As a start-up transient left the slowest models: sure of a frequency 1 ppm off, and
        // at the likelihood floor. Alone, its own samples would take it hundreds of updates to
        // unlearn (it expects no wander); blended with the others it follows them at once,
        // and is ready should the clock's wander turn out to be its own.
        let (_, _, mut d) = run(0.0, 10.0, 20e-6, 64, 100);
        let stale = &mut d.models.bank[0];
        stale.nu += 1e-6;
        stale.p11 = 1e-18;
        stale.loglik -= MAX_LIKELIHOOD_DEFICIT;
        let mut t = 100 * 64;
        for _ in 0..5 {
            let predicted = d.predicted_offset(MonoTime(t * S)).unwrap().offset;
            d.sample(MonoTime(t * S), predicted, 20e-6f64.powi(2), 64.0);
            t += 64;
        }
        let apart = (d.models[0].nu - d.mixture().nu).abs();
        assert!(
            apart < 0.05e-6,
            "{apart:e} s/s from the mixture's frequency"
        );
    }

    /// Four sources polled together every 1024 s, answering 15 s apart, with 30 µs of noise,
    /// on a stable clock, for rounds 0 to `last` into `d`: in the last round `disturb` may
    /// replace each offset (given the discipline, the source, the time and the undisturbed
    /// offset), or leave the sample out with None. Returns the clock.
    fn four_sources(
        d: &mut Discipline,
        seed: u64,
        last: i64,
        disturb: impl Fn(&mut Discipline, i64, MonoTime, f64) -> Option<f64>,
    ) -> SoftClock {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut clock = SoftClock::new(0, 0, 10.0);
        let noise = 30e-6;
        for round in 0..=last {
            for source in 0..4i64 {
                let t = (round * 1024 + source * 15) * S;
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let mut z = -clock.offset_at(t) * 1e-9 + noise * u * 3.46;
                if round == last {
                    match disturb(d, source, MonoTime(t), z) {
                        Some(disturbed) => z = disturbed,
                        None => continue,
                    }
                }
                d.sample(MonoTime(t), z, noise * noise, 1024.0);
                while let Some(c) = d.poll_command() {
                    clock.apply(t, c);
                }
            }
        }
        clock
    }

    /// [`four_sources`] for 60 rounds, `disturb` replacing round 60's offsets. Returns the
    /// clock's worst true offset over the interval after that round.
    fn worst_after_a_disturbed_round(
        seed: u64,
        disturb: impl Fn(&mut Discipline, i64, MonoTime, f64) -> f64,
    ) -> f64 {
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        let clock = four_sources(&mut d, seed, 60, |d, source, now, z| {
            Some(disturb(d, source, now, z))
        });
        (0..=64i64)
            .map(|k| (clock.offset_at((60 * 1024 + 45 + k * 15) * S) * 1e-9).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn a_lean_within_one_round_of_sources_moves_the_phase_not_the_frequency() {
        // Once, all four sources lean the same way by 150 µs (their own upstreams moved): a
        // phase the samples agree on, not a frequency error, which one minute could not tell
        // apart from one. The clock must not be sent off at ppm for the next 1024 s.
        let worst = worst_after_a_disturbed_round(5, |_, _, _, z| z - 150e-6);
        // The lean's own 150 µs is partly taken (the samples agree on it); a frequency widened
        // as if 150 µs had built up within the minute of the round sent the clock 1 ms away.
        assert!(worst < 300e-6, "worst {worst}");
    }

    #[test]
    fn one_surprising_sample_does_not_hand_the_clock_to_fast_wander() {
        // Once, the round's last sample is 4.5 deviations off (within the outlier threshold:
        // taken). The fastest wander model follows every pair of samples 15 s apart, so its
        // frequency is far from the others'; were it handed a large share of the mixture by
        // that one sample, the clock would run off at its frequency until the next round.
        let worst = worst_after_a_disturbed_round(3, |d, source, now, z| {
            if source < 3 {
                return z;
            }
            let p = d.predicted_offset(now).expect("settled");
            p.offset - 4.5 * (p.variance + 30e-6f64.powi(2)).sqrt()
        });
        assert!(worst < 100e-6, "worst {worst}");
    }

    /// The share of the mixture the wander models faster than 1e-20 s⁻¹ hold after
    /// [`four_sources`] for 30 rounds, then one sample `surprise` deviations off (of the
    /// innovation its scaled variance and the prediction give), the discipline told `several`
    /// sources or not.
    fn fast_share_after_a_surprise(several: bool, surprise: f64) -> f64 {
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        d.set_several_sources(several);
        four_sources(&mut d, 5, 30, |d, source, now, _| {
            (source == 0).then(|| {
                let p = d.predicted_offset(now).expect("settled");
                let r = (30e-6f64).powi(2) * d.noise_scale.max(1.0);
                p.offset + surprise * (p.variance + r).sqrt()
            })
        });
        d.weights[2..].iter().map(|&w| f64::from(w)).sum()
    }

    #[test]
    fn with_several_sources_a_surprise_weighs_less_against_slow_wander() {
        // A sample 2.9 deviations off is as likely one server's own error as the clock's
        // wander: with several sources it hands the fast models less of the clock.
        let one = fast_share_after_a_surprise(false, 2.9);
        let several = fast_share_after_a_surprise(true, 2.9);
        assert!(several < 0.5 * one, "several {several:e}, one {one:e}");
        // A sample within two deviations weighs alike either way (the shares before it differ
        // by the few ordinary samples that fell beyond two).
        let (one, several) = (
            fast_share_after_a_surprise(false, 1.5),
            fast_share_after_a_surprise(true, 1.5),
        );
        assert!(
            (one - several).abs() < 0.05 * one,
            "several {several:e}, one {one:e}"
        );
    }

    #[test]
    fn the_sign_is_right_a_fast_clock_is_brought_back() {
        // The documents' client: 2.5 s fast. One exchange must bring it back, not double it.
        let (errors, _, _) = run(2.5, 0.0, 1e-4, 5, 1);
        assert!(
            errors[0].abs() < 0.01,
            "after one sample the error is {}",
            errors[0]
        );
        let (errors, _, _) = run(-1.8, 0.0, 1e-4, 5, 1);
        assert!(errors[0].abs() < 0.01, "{}", errors[0]);
    }

    /// A discipline settled on 40 samples of 100 µs noise at 64 s, at the time of its last
    /// sample, and its estimate there.
    fn settled_for_confining() -> (Discipline, MonoTime, Model) {
        let (_, _, mut d) = run(0.0, 20.0, 100e-6, 64, 40);
        let now = d.last_time;
        d.advance(now);
        let m = d.mixture();
        (d, now, m)
    }

    #[test]
    fn a_confinement_moves_the_estimate_by_the_share_its_variance_gives() {
        let (mut d, now, before) = settled_for_confining();
        // An independent estimate 1 ms away, as uncertain as the driving model's own.
        let variance = d.models[d.best()].p00;
        d.confine(now, before.theta + 1e-3, variance, None, 64.0);
        let after = d.mixture();
        let moved = after.theta - before.theta;
        assert!((0.3e-3..0.7e-3).contains(&moved), "moved {moved}");
        // The frequency follows as the covariance has it, and the clock is steered anew.
        let expected = moved * before.p01 / before.p00;
        assert!(
            (after.nu - before.nu - expected).abs() < 0.5 * expected.abs(),
            "{} vs {expected}",
            after.nu - before.nu
        );
        assert!(matches!(d.poll_command(), Some(ClockCommand::Slew { .. })));
    }

    #[test]
    fn one_sources_interval_bounds_the_estimate() {
        let (mut d, now, before) = settled_for_confining();
        let (lo, hi) = (before.theta + 2e-3, before.theta + 3e-3);
        // Its middle weighs nothing, but the estimate is brought within it.
        d.confine(now, 0.5 * (lo + hi), 1.0, Some((lo, hi)), 64.0);
        let theta = d.mixture().theta;
        assert!((lo - 1e-9..lo + 1e-6).contains(&theta), "{theta}");
    }

    #[test]
    fn a_confinement_moves_the_frequency_alike_at_any_poll_interval() {
        let (d, now, before) = settled_for_confining();
        let variance = d.models[d.best()].p00;
        let moved_nu = |poll: f64| {
            let mut d = d.clone();
            d.confine(now, before.theta + 1e-3, variance, None, poll);
            d.mixture().nu - before.nu
        };
        let (short, long) = (moved_nu(64.0), moved_nu(1024.0));
        assert!(short.abs() > 0.0);
        assert!((long / short - 1.0).abs() < 1e-9, "{short} {long}");
    }

    #[test]
    fn nothing_is_confined_before_eight_updates() {
        let (_, _, mut d) = run(0.0, 20.0, 100e-6, 64, 5);
        let now = d.last_time;
        d.advance(now);
        let before = d.mixture();
        d.confine(now, before.theta + 1e-3, 0.0, None, 64.0);
        assert_eq!(d.mixture().theta, before.theta);
    }

    #[test]
    fn the_bounds_grow_with_age_and_shrink_with_samples() {
        let d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        assert_eq!(d.frequency_bound(), f64::INFINITY);
        let (mut d, mut now, _) = settled_for_confining();
        let (a, b, c) = (
            d.wander_bound(0.0),
            d.wander_bound(64.0),
            d.wander_bound(640.0),
        );
        // Wander grows as age^1.5 once the phase noise is outgrown.
        assert!(a == 0.0 && b > 0.0 && c > 10.0 * b, "{a} {b} {c}");
        let settled = d.frequency_bound();
        assert!(settled > 0.0 && settled < 1e-6, "{settled}");
        // Sixteen samples more, and the frequency is known better.
        for _ in 0..16 {
            now = now.add_secs_f64(64.0);
            let z = d.predicted_offset(now).map_or(0.0, |p| p.offset);
            d.sample(now, z, 1e-10, 64.0);
        }
        assert!(
            d.frequency_bound() < settled,
            "{} {settled}",
            d.frequency_bound()
        );
    }

    #[test]
    fn naive_mode_applies_each_raw_offset() {
        let cfg = DisciplineConfig {
            mode: DisciplineMode::Naive,
            ..Default::default()
        };
        let mut d = Discipline::new(cfg, MonoTime(0));
        d.sample(MonoTime(0), -2.5, 1e-6, 5.0);
        assert_eq!(
            d.poll_command(),
            Some(ClockCommand::Step {
                offset_ns: -2_500_000_000
            })
        );
        d.sample(MonoTime(5 * S), 0.001, 1e-6, 5.0);
        assert_eq!(
            d.poll_command(),
            Some(ClockCommand::Step {
                offset_ns: 1_000_000
            })
        );
    }

    /// A clock 0.1 s off (the frequency known) whose discipline is timed by the clock it
    /// corrects, told so or not; as with the `system` backend, the slew's end is timed on the
    /// clock too. Returns how far the clock is off (seconds) when the first slew has ended, and
    /// the largest innovation of the next updates.
    fn slewed_on_its_own_time_base(told: bool) -> (f64, f64) {
        let config = DisciplineConfig {
            initial_frequency_ppm: Some(0.0),
            slewed_time_base: told,
            ..DisciplineConfig::default()
        };
        let mut clock = SoftClock::new(0, 100_000_000, 0.0);
        let mono = |c: &SoftClock, t: i64| MonoTime(c.read(t).0);
        let mut d = Discipline::new(config, mono(&clock, 0));
        let mut slew_end: Option<(i64, f64)> = None;
        let (mut landed, mut largest) = (None, 0.0f64);
        for k in 0..12 {
            let t = k * 16 * S;
            if let Some((end, then_ppm)) = slew_end.take_if(|(end, _)| *end <= t) {
                clock.apply(end, ClockCommand::SetFrequency { ppm: then_ppm });
                landed.get_or_insert(clock.offset_at(end) * 1e-9);
            }
            let updates = d.state(mono(&clock, t)).updates;
            d.sample(mono(&clock, t), -clock.offset_at(t) * 1e-9, 1e-12, 16.0);
            let st = d.state(mono(&clock, t));
            if k > 0 && st.updates > updates {
                largest = largest.max(st.last_offset.abs());
            }
            while let Some(c) = d.poll_command() {
                if let ClockCommand::Slew {
                    ppm,
                    duration_ns,
                    then_ppm,
                } = c
                {
                    clock.apply(t, ClockCommand::SetFrequency { ppm });
                    let rate = 1.0 + clock.rate_ppm_at(t) * 1e-6;
                    slew_end = Some((t + (duration_ns as f64 / rate) as i64, then_ppm));
                } else {
                    clock.apply(t, c);
                }
            }
        }
        (landed.expect("the start-up slew ended"), largest)
    }

    #[test]
    fn a_time_base_on_the_slewed_clock_is_read_at_the_clock_rate() {
        // The start-up slew runs at thousands of ppm, and so does a time base on the clock:
        // every interval reads that much longer than it is. Told, the discipline lands the
        // slew on true time and predicts the next samples exactly; not told, it misses by the
        // slew rate times the offset (0.6 %, hundreds of µs) and is surprised as much.
        let (landed, largest) = slewed_on_its_own_time_base(true);
        assert!(landed.abs() < 1e-8 && largest < 1e-8, "{landed} {largest}");
        let (landed, largest) = slewed_on_its_own_time_base(false);
        assert!(landed.abs() > 1e-4 && largest > 1e-4, "{landed} {largest}");
    }

    #[test]
    fn small_offsets_are_slewed_not_stepped() {
        let (errors, st, _) = run(0.05, 0.0, 1e-5, 16, 20);
        assert_eq!(st.steps, 0);
        assert!(errors.last().unwrap().abs() < 1e-4, "{errors:?}");
    }

    #[test]
    fn learns_frequency_and_phase() {
        let (errors, st, _) = run(0.5, 50.0, 2e-5, 16, 60);
        assert_eq!(st.steps, 1);
        assert!(
            (st.frequency_ppm - 50.0).abs() < 0.5,
            "frequency estimate {}",
            st.frequency_ppm
        );
        let tail = &errors[errors.len() - 20..];
        let worst = tail.iter().fold(0.0f64, |a, e| a.max(e.abs()));
        assert!(worst < 1e-4, "tail error {worst}");
    }

    #[test]
    fn negative_frequency_error_too() {
        let (_, st, _) = run(-0.3, -30.0, 2e-5, 16, 60);
        assert!(
            (st.frequency_ppm + 30.0).abs() < 0.5,
            "{}",
            st.frequency_ppm
        );
    }

    #[test]
    fn corrections_take_one_to_three_poll_intervals() {
        let t = Discipline::slew_time;
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9 * b;
        // A correction of 3 sd or more: one interval, so the rate changes only at updates.
        assert!(near(t(64.0, 30e-6, 10e-6), 64.0));
        assert!(near(t(64.0, -1e-3, 10e-6), 64.0));
        // Within one sd, mostly noise: three intervals.
        assert!(near(t(64.0, 5e-6, 10e-6), 192.0));
        assert!(near(t(64.0, 0.0, 10e-6), 192.0));
        // In between, inversely proportional to the correction.
        assert!(near(t(64.0, 15e-6, 10e-6), 128.0));
        // Never under a second.
        assert!(near(t(0.25, 1.0, 1e-6), 1.0));
    }

    #[test]
    fn poll_grows_only_once_the_estimate_outweighs_its_samples() {
        // Perfectly predicted samples, each with 1 ms of noise: the interval may double only
        // once the most likely model's offset variance is below a sample's / POLL_TARGET.
        let r = 1e-6;
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        let mut first_up = None;
        for i in 0..200 {
            let now = MonoTime(i * 64 * S);
            d.sample(now, 0.0, r, 64.0);
            while d.poll_command().is_some() {}
            if d.poll_adjustment(64.0) > 0 {
                first_up = Some((i + 1, d.models[d.best()].p00));
                break;
            }
        }
        let (n, var) = first_up.expect("the poll grows eventually");
        assert!(var * POLL_TARGET <= r * 1.0001, "after {n} samples: {var}");
        // A phase-and-frequency estimate holds about n / 4 samples' phase information.
        assert!(n >= 4 * POLL_TARGET as i64, "grew after {n} samples");
    }

    #[test]
    fn poll_grows_only_once_the_frequency_is_known_over_the_doubled_interval() {
        // Well-predicted samples of 30 µs noise until the interval may grow at 64 s.
        let r = 9e-10;
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        for i in 0.. {
            d.sample(MonoTime(i * 64 * S), 0.0, r, 64.0);
            while d.poll_command().is_some() {}
            if d.clone().poll_adjustment(64.0) > 0 {
                break;
            }
            assert!(i < 200, "the poll never grows");
        }
        // A frequency known only to within 1.5 samples' deviations over the doubled interval
        // (within the drift allowed, which is two): the interval stays.
        let mut uncertain = d.clone();
        for m in &mut uncertain.models {
            m.p11 = 1.5 * r / (128.0f64).powi(2);
        }
        assert_eq!(uncertain.poll_adjustment(64.0), 0);
        assert_eq!(d.poll_adjustment(64.0), 1);
    }

    #[test]
    fn a_poll_interval_halves_only_once_the_drift_over_it_reaches_twelve_samples() {
        // Settled on well-predicted samples of 30 µs noise; then the frequency's uncertainty
        // alone makes the drift over one 128 s interval 6 or 13 typical samples' variances.
        let r = 9e-10;
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        for i in 0..200 {
            d.sample(MonoTime(i * 64 * S), 0.0, r, 64.0);
            while d.poll_command().is_some() {}
        }
        let typical = d.typical_variance();
        let with_drift = |samples: f64| {
            let mut c = d.clone();
            for m in &mut c.models {
                m.p11 = samples * typical / 128f64.powi(2);
            }
            c.poll_trend = 0;
            c.poll_adjustment(128.0)
        };
        // Within twelve (four used to halve it): the interval stays, and does not grow either.
        assert_eq!(with_drift(6.0), 0);
        assert_eq!(with_drift(13.0), -1);
    }

    #[test]
    fn a_sample_held_back_as_an_outlier_shortens_the_poll() {
        // Settled at 1024 s on samples of 10 µs noise; then one sample 1 ms off.
        let r = 1e-10;
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        let mut t = 0;
        for _ in 0..40 {
            d.sample(MonoTime(t), 0.0, r, 1024.0);
            while d.poll_command().is_some() {}
            assert!(d.poll_adjustment(1024.0) >= 0);
            t += 1024 * S;
        }
        d.sample(MonoTime(t), 1e-3, r, 1024.0);
        assert!(
            matches!(d.poll_event(), Some(DisciplineEvent::OutlierHeld(_))),
            "the sample is held back"
        );
        assert_eq!(
            d.state(MonoTime(t)).updates,
            40,
            "and does not update the estimate"
        );
        assert_eq!(d.poll_adjustment(1024.0), -1);
        // One well-predicted sample later, the request is not repeated.
        d.sample(MonoTime(t + 512 * S), 0.0, r, 512.0);
        assert_eq!(d.poll_adjustment(512.0), 0);
    }

    /// Samples of a clock 50 ms and 30 ppm off at start whose frequency then random-walks
    /// with intensity `wander` (s⁻¹), each with uniform noise of standard deviation `noise`;
    /// the poll exponent follows the discipline's suggestions within 6–10, as the daemon's
    /// does. Returns the exponents from the 40th sample on and the true offsets at which the
    /// interval grew.
    fn adaptive_polls(
        config: DisciplineConfig,
        noise: f64,
        wander: f64,
        samples: usize,
    ) -> (Vec<i8>, Vec<f64>) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let mut uniform =
            move || ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 3.46;
        let mut clock = SoftClock::new(0, 50_000_000, 30.0);
        let mut d = Discipline::new(config, MonoTime(0));
        let (mut t, mut poll, mut ppm) = (0i64, 6i8, 30.0);
        let (mut polls, mut grew_at) = (Vec::new(), Vec::new());
        for k in 0..samples {
            let interval = 1i64 << poll;
            let offset = clock.offset_at(t) * 1e-9;
            d.sample(
                MonoTime(t),
                -offset + noise * uniform(),
                noise * noise,
                interval as f64,
            );
            while let Some(c) = d.poll_command() {
                clock.apply(t, c);
            }
            let adjust = d.poll_adjustment(interval as f64);
            if adjust > 0 && poll < 10 {
                grew_at.push(offset);
            }
            poll = (poll + adjust).clamp(6, 10);
            if k >= 40 {
                polls.push(poll);
            }
            t += interval * S;
            ppm += (wander * interval as f64).sqrt() * uniform() * 1e6;
            clock.set_intrinsic_ppm(t, ppm);
        }
        (polls, grew_at)
    }

    fn median(mut v: Vec<i8>) -> i8 {
        v.sort_unstable();
        v[v.len() / 2]
    }

    #[test]
    fn poll_interval_follows_the_samples_noise_against_the_clock_wander() {
        // A clock of chrony's test models (wander 1e-18/s): precise samples are worth taking
        // often, noisy ones only once the clock has drifted by about their noise.
        let wander = 1e-18;
        let precise = median(adaptive_polls(DisciplineConfig::default(), 1e-6, wander, 300).0);
        let middling = median(adaptive_polls(DisciplineConfig::default(), 10e-6, wander, 300).0);
        let noisy = median(adaptive_polls(DisciplineConfig::default(), 300e-6, wander, 300).0);
        assert!(precise <= 7, "1 µs samples: 2^{precise} s");
        assert!((8..=9).contains(&middling), "10 µs samples: 2^{middling} s");
        assert_eq!(noisy, 10, "300 µs samples");
        // The same noise on a clock that wanders 100 times faster asks for shorter intervals.
        let wandering =
            median(adaptive_polls(DisciplineConfig::default(), 10e-6, wander * 100.0, 300).0);
        assert!(
            wandering < middling,
            "2^{wandering} s against 2^{middling} s"
        );
    }

    #[test]
    fn poll_interval_grows_only_once_the_start_up_offset_is_slewed_away() {
        // Slews limited to 60 ppm (30 of them cancel the frequency error) take about 1,700 s to
        // remove the 50 ms start-up offset. The samples are well predicted all along, but the
        // interval stays short until the offset is within a few samples' deviations (without
        // that rule, it grew 37 ms off).
        let config = DisciplineConfig {
            max_slew_ppm: 60.0,
            ..Default::default()
        };
        let noise = 30e-6;
        let (_, grew_at) = adaptive_polls(config, noise, 1e-18, 100);
        assert!(!grew_at.is_empty());
        for offset in grew_at {
            assert!(
                offset.abs() <= (POLL_SETTLED_SIGMAS + 1.0) * noise,
                "grew at {offset} s off"
            );
        }
    }

    #[test]
    fn panic_threshold_refuses_hours() {
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        d.sample(MonoTime(0), 7200.0, 1e-6, 64.0);
        assert!(matches!(d.poll_event(), Some(DisciplineEvent::PanicRefused(o)) if o == 7200.0));
        assert!(d
            .poll_command()
            .is_none_or(|c| !matches!(c, ClockCommand::Step { .. })));
    }

    #[test]
    fn initial_frequency_applied_at_once() {
        let cfg = DisciplineConfig {
            initial_frequency_ppm: Some(12.5),
            ..Default::default()
        };
        let mut d = Discipline::new(cfg, MonoTime(0));
        match d.poll_command() {
            Some(ClockCommand::SetFrequency { ppm }) => assert!((ppm + 12.5).abs() < 1e-9, "{ppm}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_offset_after_startup_waits_for_stepout() {
        let mut d = Discipline::new(DisciplineConfig::default(), MonoTime(0));
        d.sample(MonoTime(0), 0.0, 1e-8, 16.0);
        while d.poll_command().is_some() {}
        // A 1 s jump: first held as outliers, then accepted, then stepped only after stepout.
        let mut stepped_at = None;
        for i in 1..40 {
            let now = MonoTime(i * 16 * S);
            d.sample(now, 1.0, 1e-8, 16.0);
            while let Some(c) = d.poll_command() {
                if matches!(c, ClockCommand::Step { .. }) && stepped_at.is_none() {
                    stepped_at = Some(i * 16);
                }
            }
            if stepped_at.is_some() {
                break;
            }
        }
        let at = stepped_at.expect("stepped eventually");
        assert!(at >= 300, "stepped after {at} s, before the 300 s stepout");
    }
}
