//! The per-source clock filter.
//!
//! Offsets are held on the caller's reference: a source stores each sample's offset plus the
//! phase its clock's own corrections had reached when it was taken, and subtracts the phase of
//! "now" when it reads them (see [`Source`](super::Source)), so that samples taken before a
//! step or a slew are judged against the clock as it is now. The filter itself only compares
//! offsets with each other, which that shift leaves unchanged; when the caller revises the rate
//! its reference was extrapolated at, [`ClockFilter::reproject`] moves each offset by that
//! revision times its age.
//!
//! Two jobs, one sample stream:
//!
//! * RFC 5905's minimum-delay filter (§10) over the last [`FILTER_STAGES`] samples: the sample
//!   with the least delay is the source's current estimate (offset, delay, dispersion), and the
//!   RMS spread of the others around it is the source's jitter. Selection works on these.
//! * A weight for every raw sample, for the discipline: a sample's error from delay asymmetry
//!   is at most half its delay in excess of the path's minimum; spread uniformly, that is a
//!   variance of `excess² / 12`. The minimum is tracked over a longer window (the last
//!   [`MIN_DELAY_WINDOW`] samples, up to eight times as many where queueing dominates their
//!   spread), so queueing spikes weigh almost nothing instead of being either used whole or
//!   thrown away.

use crate::served::PHI;
use crate::time::MonoTime;
use serde::Serialize;

/// Samples in the minimum-delay filter (RFC 5905 NSTAGE).
pub const FILTER_STAGES: usize = 8;
/// Samples whose delays are held, for their median and range. Where queueing dominates the
/// delays' spread (their median lies at least [`LONG_SPAN_MIN_SPREAD`] above their minimum),
/// the path's minimum delay is tracked over more:
/// the last `MIN_DELAY_WINDOW` to `(LONG_SPAN_BLOCKS + 1) × MIN_DELAY_WINDOW` samples, through
/// the minima of the [`LONG_SPAN_BLOCKS`] blocks of `MIN_DELAY_WINDOW` arrivals before the
/// current one (4 bytes a block instead of as many delays again). The smallest of `n` delays
/// lies about `1/√n` of the queueing's scale above the path's minimum, so the longer span makes
/// every sample's weight truer; a route that got longer is followed within one window (see
/// `ROUTE_CHANGE_SPREAD`). (In clknetsim over 60 seeds, reaching back over 64 delays instead
/// of 32 took chrony's Test 1 with 10 ms of jitter at 64 s polls from 0.71× to 0.66× chronyd's
/// RMS, Test 2 from 1.02× to 0.98×; docs/benchmarks.md has the step to 256.)
pub const MIN_DELAY_WINDOW: usize = 32;
/// Completed blocks of [`MIN_DELAY_WINDOW`] arrivals whose minima the long span holds: the
/// path's minimum delay is taken over up to 256 delays.
pub const LONG_SPAN_BLOCKS: usize = 7;
/// The older blocks' minimum stops counting once the held delays' minimum lies above it by
/// more than this many times the held minimum's own uncertainty (`MIN_DELAY_SPREAD` times the
/// median excess over `√n`): the route got longer. By chance, with queueing each way, the
/// smallest of 32 delays lies that far above a path's minimum about once in 10⁵ windows.
const ROUTE_CHANGE_SPREAD: f64 = 2.0;
/// Delays needed before the window's minimum is trusted to weigh samples as the path's.
pub const TRUSTED_WINDOW: usize = 8;
/// Delays from which a window shorter than [`TRUSTED_WINDOW`] already weighs samples, with
/// its minimum's uncertainty taken from the whole range of its delays rather than their median
/// (`SHORT_WINDOW_SPREAD`), and never beyond the half-delay bound. Before that, the
/// bound alone: a start-up burst's few delays can lie close together by chance. (Trusting
/// the burst itself made the first frequency estimate overconfident; waiting for eight delays
/// left several sources' first minutes weighed by the bound, ten times the paths' real noise
/// in chrony's falseticker models, and their frequency errors 2.5× chronyd's.)
pub const SHORT_WINDOW: usize = 6;
/// In a short window of `n` delays, the minimum may lie this times their range over `√n`
/// above the path's (0.82 of the range for 6 delays).
const SHORT_WINDOW_SPREAD: f64 = 2.0;
/// The least spread of the held delays (their median's excess over their minimum, seconds)
/// for which the path's minimum is taken over the longer span of [`MIN_DELAY_WINDOW`]: 20 µs,
/// several times the scheduling noise of timestamps taken in user space. Below it, a delay
/// smaller than every one held is as likely a timestamping outlier as the path's minimum, and
/// it would make every later sample's excess look larger than it is: in clknetsim, with 10 µs
/// of queueing each way (a median excess of 17 µs), the longer span cost 15 % of the RMS error
/// over 60 seeds.
pub const LONG_SPAN_MIN_SPREAD: f64 = 20e-6;
/// How far the minimum of `n` delays may lie above the path's, in units of the window's
/// median excess over its minimum: this over `√n` (0.71 for 8 delays, 0.35 for 32, 0.25 for
/// 64, 0.125 for the 256 that the minimum spans at most). When each direction
/// queues independently, the excess delay is a sum of two queueing times whose density rises
/// from zero, and the smallest of `n` lies about `1/√n` of their scale above the true minimum.
const MIN_DELAY_SPREAD: f64 = 2.0;

/// One measurement of a source: the four-timestamp exchange reduced to offset and delay.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct Sample {
    /// Offset of the source's clock relative to ours (server − local), seconds.
    pub offset: f64,
    /// Round-trip delay, seconds (never negative).
    pub delay: f64,
    /// Dispersion of this measurement (precisions plus PHI × delay), seconds.
    pub dispersion: f64,
    /// Monotonic time of the measurement (arrival of the reply).
    pub time: MonoTime,
}

/// The filter's current estimate of a source.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct FilterEstimate {
    /// Offset of the minimum-delay sample, seconds.
    pub offset: f64,
    /// Its delay, seconds.
    pub delay: f64,
    /// Filter dispersion at the estimate's time, seconds.
    pub dispersion: f64,
    /// RMS of the other samples' offsets around this one, seconds.
    pub jitter: f64,
    /// When the chosen sample was taken.
    pub time: MonoTime,
}

/// Minimum-delay clock filter with per-sample weights. Fixed-size rings: adding a sample
/// never allocates and the whole filter sits in its source's memory.
#[derive(Clone, Debug)]
pub struct ClockFilter {
    /// Ring of the last samples; `stages[head]` is the most recent.
    stages: [Stage; FILTER_STAGES],
    /// The path's recent delays, for its minimum and median on every sample.
    delays: DelayWindow,
    /// Slots of `stages` by increasing delay, most recent first among equal delays.
    by_delay: [u8; FILTER_STAGES],
    head: u8,
    len: u8,
    estimate: Option<FilterEstimate>,
}

/// A sample as the filter holds it: delay and dispersion (seconds, at most a few, needed to
/// a fraction of a nanosecond) as `f32`, which makes a stage 24 bytes instead of 32.
#[derive(Clone, Copy, Debug)]
struct Stage {
    offset: f64,
    time: MonoTime,
    delay: f32,
    dispersion: f32,
}

impl From<Sample> for Stage {
    fn from(s: Sample) -> Self {
        Stage {
            offset: s.offset,
            time: s.time,
            delay: s.delay as f32,
            dispersion: s.dispersion as f32,
        }
    }
}

impl Stage {
    fn sample(&self) -> Sample {
        Sample {
            offset: self.offset,
            delay: f64::from(self.delay),
            dispersion: f64::from(self.dispersion),
            time: self.time,
        }
    }
}

/// The last [`MIN_DELAY_WINDOW`] delays, kept sorted so that the minimum and the median are
/// read directly on every sample, and the minimum over a longer span (see [`Self::min`]).
/// Each entry carries its arrival number (mod 256) so that the oldest is the one dropped when
/// the window is full. Delays are held as `f32` (a relative resolution of 6e-8, a fraction of
/// a nanosecond at milliseconds): the window is most of a source's memory, and a simulation
/// holds one per client.
#[derive(Clone, Debug)]
struct DelayWindow {
    sorted: [f32; MIN_DELAY_WINDOW],
    arrival: [u8; MIN_DELAY_WINDOW],
    len: u8,
    /// Arrival number of the next delay.
    next: u8,
    /// Minimum of the delays that arrived since the last multiple of [`MIN_DELAY_WINDOW`]
    /// arrivals (infinite when none has).
    block_min: f32,
    /// Minima of the [`LONG_SPAN_BLOCKS`] blocks of [`MIN_DELAY_WINDOW`] arrivals before that,
    /// the latest first (infinite until completed).
    block_mins: [f32; LONG_SPAN_BLOCKS],
}

impl DelayWindow {
    fn new() -> Self {
        DelayWindow {
            sorted: [0.0; MIN_DELAY_WINDOW],
            arrival: [0; MIN_DELAY_WINDOW],
            len: 0,
            next: 0,
            block_min: f32::INFINITY,
            block_mins: [f32::INFINITY; LONG_SPAN_BLOCKS],
        }
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn push(&mut self, delay: f64) {
        let delay = delay as f32;
        let n = self.len();
        // A hole where the oldest delay was (full window) or at the end; then the hole moves
        // to where the new delay belongs, shifting the entries in between by one.
        let (mut hole, n) = if n == MIN_DELAY_WINDOW {
            let oldest = self.next.wrapping_sub(MIN_DELAY_WINDOW as u8);
            let at = self
                .arrival
                .iter()
                .position(|&a| a == oldest)
                .expect("the oldest arrival is in a full window");
            (at, n)
        } else {
            (n, n + 1)
        };
        while hole > 0 && self.sorted[hole - 1] > delay {
            self.sorted[hole] = self.sorted[hole - 1];
            self.arrival[hole] = self.arrival[hole - 1];
            hole -= 1;
        }
        while hole + 1 < n && self.sorted[hole + 1] < delay {
            self.sorted[hole] = self.sorted[hole + 1];
            self.arrival[hole] = self.arrival[hole + 1];
            hole += 1;
        }
        self.sorted[hole] = delay;
        self.arrival[hole] = self.next;
        self.next = self.next.wrapping_add(1);
        self.len = n as u8;
        // 256 arrival numbers hold a whole number of blocks.
        self.block_min = self.block_min.min(delay);
        if usize::from(self.next) % MIN_DELAY_WINDOW == 0 {
            self.block_mins.copy_within(..LONG_SPAN_BLOCKS - 1, 1);
            self.block_mins[0] = self.block_min;
            self.block_min = f32::INFINITY;
        }
    }

    /// The minimum of the last [`Self::spanned`] delays: the held ones and, over a long span
    /// (see [`Self::long_span`]), the completed blocks of [`MIN_DELAY_WINDOW`] arrivals before
    /// the current one (the current block's arrivals are all held).
    fn min(&self) -> Option<f64> {
        (self.len > 0).then(|| {
            if self.long_span() {
                f64::from(self.sorted[0].min(self.blocks_min()))
            } else {
                f64::from(self.sorted[0])
            }
        })
    }

    /// The smallest delay of the completed blocks held (infinite before the first completes).
    fn blocks_min(&self) -> f32 {
        self.block_mins
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min)
    }

    /// Whether [`Self::min`] reaches into the blocks before the current one: once one has
    /// completed, while the held delays' median lies at least [`LONG_SPAN_MIN_SPREAD`] above
    /// their minimum, and unless that minimum lies so far above the blocks' that the route got
    /// longer ([`ROUTE_CHANGE_SPREAD`]).
    fn long_span(&self) -> bool {
        let (held_min, median) = (self.sorted[0], self.sorted[self.len() / 2]);
        let spread = f64::from(median - held_min);
        let older = self.blocks_min();
        older.is_finite()
            && spread >= LONG_SPAN_MIN_SPREAD
            && f64::from(held_min - older)
                <= ROUTE_CHANGE_SPREAD * MIN_DELAY_SPREAD * spread / (self.len() as f64).sqrt()
    }

    /// How many of the latest delays [`Self::min`] is the minimum of: over a long span,
    /// [`MIN_DELAY_WINDOW`] for each completed block held plus the arrivals since the last block
    /// ended (up to `LONG_SPAN_BLOCKS + 1` windows), else the held ones.
    fn spanned(&self) -> usize {
        if self.long_span() {
            let blocks = self.block_mins.iter().filter(|m| m.is_finite()).count();
            MIN_DELAY_WINDOW * blocks + usize::from(self.next) % MIN_DELAY_WINDOW
        } else {
            self.len()
        }
    }

    fn max(&self) -> Option<f64> {
        (self.len > 0).then(|| f64::from(self.sorted[self.len() - 1]))
    }

    /// The upper median (element `len / 2` in sorted order).
    fn median(&self) -> Option<f64> {
        (self.len > 0).then(|| f64::from(self.sorted[self.len() / 2]))
    }
}

impl Default for ClockFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl ClockFilter {
    /// An empty filter.
    pub fn new() -> Self {
        const EMPTY: Stage = Stage {
            offset: 0.0,
            delay: 0.0,
            dispersion: 0.0,
            time: MonoTime(0),
        };
        ClockFilter {
            stages: [EMPTY; FILTER_STAGES],
            delays: DelayWindow::new(),
            by_delay: [0; FILTER_STAGES],
            head: 0,
            len: 0,
            estimate: None,
        }
    }

    /// The `k`-th most recent sample (0 = the latest); `k` below the number held.
    fn stage(&self, k: usize) -> &Stage {
        &self.stages[(usize::from(self.head) + k) % FILTER_STAGES]
    }

    /// Adds a sample at `now`. Returns the new estimate if the minimum-delay sample changed to
    /// one newer than the previous estimate (RFC 5905 never reuses an older sample).
    pub fn add(&mut self, sample: Sample, now: MonoTime) -> Option<FilterEstimate> {
        // The ring runs backwards so that stage k is k places after the head; the new sample
        // takes the slot of the oldest once the ring is full.
        let held = usize::from(self.len);
        self.head = ((usize::from(self.head) + FILTER_STAGES - 1) % FILTER_STAGES) as u8;
        let slot = self.head;
        self.stages[usize::from(slot)] = Stage::from(sample);
        self.delays.push(sample.delay);

        // Keep the slots ordered by delay, most recent first among equal delays: take the
        // reused slot out, put it back before the first stage whose delay is not smaller.
        // Aged dispersion breaks nothing here because all samples are compared at the same
        // `now`.
        let mut n = held;
        if held == FILTER_STAGES {
            let at = self.by_delay[..n]
                .iter()
                .position(|&s| s == slot)
                .expect("a full ring orders every slot");
            for i in at..n - 1 {
                self.by_delay[i] = self.by_delay[i + 1];
            }
            n -= 1;
        }
        let delay = self.stages[usize::from(slot)].delay;
        let mut at = n;
        while at > 0 && self.stages[usize::from(self.by_delay[at - 1])].delay >= delay {
            self.by_delay[at] = self.by_delay[at - 1];
            at -= 1;
        }
        self.by_delay[at] = slot;
        n += 1;
        self.len = n as u8;

        let order = &self.by_delay[..n];
        let best = self.stages[usize::from(order[0])];
        let mut dispersion = 0.0;
        let mut weight = 0.5;
        for &k in order {
            let s = &self.stages[usize::from(k)];
            let aged = f64::from(s.dispersion) + PHI * now.secs_since(s.time).max(0.0);
            dispersion += aged * weight;
            weight *= 0.5;
        }
        let jitter = if n > 1 {
            let ss: f64 = order[1..]
                .iter()
                .map(|&k| {
                    let d = self.stages[usize::from(k)].offset - best.offset;
                    d * d
                })
                .sum();
            (ss / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let newer = self.estimate.is_none_or(|e| best.time > e.time);
        let estimate = FilterEstimate {
            offset: best.offset,
            delay: f64::from(best.delay),
            dispersion,
            jitter,
            time: best.time,
        };
        if newer {
            self.estimate = Some(estimate);
            return Some(estimate);
        }
        // Jitter and dispersion stay current even when the chosen sample is not new.
        if let Some(e) = &mut self.estimate {
            e.jitter = jitter;
            e.dispersion = dispersion;
        }
        None
    }

    /// The rate at which the held samples' offsets move (s/s), fitted by least squares over
    /// their times, and its standard error; None with fewer than three samples or all at one
    /// time. On a clock no update has corrected yet, every source's samples move at the
    /// clock's own frequency error, whatever each server's offset.
    pub fn offset_trend(&self) -> Option<(f64, f64)> {
        let n = usize::from(self.len);
        if n < 3 {
            return None;
        }
        let t0 = self.stage(0).time;
        let points = || (0..n).map(|k| (self.stage(k).time.secs_since(t0), self.stage(k).offset));
        let (mean_t, mean_o) = points().fold((0.0, 0.0), |(st, so), (t, o)| (st + t, so + o));
        let (mean_t, mean_o) = (mean_t / n as f64, mean_o / n as f64);
        let (stt, sto) = points().fold((0.0, 0.0), |(stt, sto), (t, o)| {
            (
                stt + (t - mean_t).powi(2),
                sto + (t - mean_t) * (o - mean_o),
            )
        });
        if stt <= 0.0 {
            return None;
        }
        let slope = sto / stt;
        let residuals: f64 = points()
            .map(|(t, o)| (o - mean_o - slope * (t - mean_t)).powi(2))
            .sum();
        Some((slope, (residuals / (n - 2) as f64 / stt).sqrt()))
    }

    /// The current estimate, if any sample has been added.
    pub fn estimate(&self) -> Option<FilterEstimate> {
        self.estimate
    }

    /// The path's minimum delay as tracked, seconds: the smallest of the held delays, or of up
    /// to twice as many where queueing dominates their spread (see [`MIN_DELAY_WINDOW`]).
    pub fn min_delay(&self) -> Option<f64> {
        self.delays.min()
    }

    /// Variance (s²) of a sample's offset error due to path asymmetry. The excess delay over
    /// the path's minimum is split unknown between the two directions (uniform: `excess²/12`);
    /// the minimum itself is only known to within the spread of the delays, so a share of the
    /// window's median excess is added to every excess, larger while the window is short (see
    /// `MIN_DELAY_SPREAD`): no sample is trusted beyond what the delays can vouch for.
    ///
    /// Until [`SHORT_WINDOW`] delays are known the minimum is not, and a sample is only
    /// trusted to the hard bound every exchange has: its error is at most half its delay; until
    /// [`TRUSTED_WINDOW`], to the lesser of that bound and the excess over a minimum known only
    /// to within the delays' range.
    pub fn asymmetry_variance(&self, sample: &Sample) -> f64 {
        self.residual_asymmetry_variance(sample, 1.0)
    }

    /// [`asymmetry_variance`](Self::asymmetry_variance) once a correction for the path's
    /// asymmetry explains all but `unexplained` (a share in [0, 1]) of the excess delay's
    /// variance ([`AsymmetryFit::unexplained`](super::asymmetry::AsymmetryFit::unexplained)).
    /// The minimum delay's own uncertainty is not explained by it and stays whole.
    pub fn residual_asymmetry_variance(&self, sample: &Sample, unexplained: f64) -> f64 {
        let bound = sample.delay * sample.delay / 12.0;
        let n = self.delays.len();
        if n < SHORT_WINDOW {
            return bound;
        }
        let min = self.min_delay().unwrap_or(sample.delay);
        if n < TRUSTED_WINDOW {
            let range = self.delays.max().unwrap_or(min) - min;
            let excess =
                (sample.delay - min).max(0.0) + range * SHORT_WINDOW_SPREAD / (n as f64).sqrt();
            return (excess * excess / 12.0).min(bound);
        }
        let excess = (sample.delay - min).max(0.0) * unexplained.clamp(0.0, 1.0).sqrt()
            + self.min_delay_uncertainty();
        excess * excess / 12.0
    }

    /// How far `sample`'s delay is above the path's minimum, once enough delays are known
    /// ([`TRUSTED_WINDOW`]) for that minimum to mean something.
    pub fn excess_delay(&self, sample: &Sample) -> Option<f64> {
        if !self.is_trusted() {
            return None;
        }
        Some((sample.delay - self.min_delay()?).max(0.0))
    }

    /// True once the window holds enough delays ([`TRUSTED_WINDOW`]) for its minimum to stand
    /// for the path's.
    pub fn is_trusted(&self) -> bool {
        self.delays.len() >= TRUSTED_WINDOW
    }

    /// How well the tracked minimum delay stands for the path's true minimum: the window's
    /// median excess over it times twice `1 / √n`, for the `n` delays the minimum spans,
    /// seconds.
    pub fn min_delay_uncertainty(&self) -> f64 {
        match (self.delays.min(), self.delays.median()) {
            (Some(min), Some(median)) if self.delays.len() >= 2 => {
                let n = self.delays.spanned() as f64;
                (median - min) * MIN_DELAY_SPREAD / n.sqrt()
            }
            _ => 0.0,
        }
    }

    /// Moves every held offset by `rate × (now − its time)`: the caller's reference was
    /// extrapolated at a rate now known to be off by `rate` (s/s), so a sample `a` seconds old
    /// is off by `rate × a`.
    pub fn reproject(&mut self, now: MonoTime, rate: f64) {
        let n = usize::from(self.len);
        for k in 0..n {
            let slot = (usize::from(self.head) + k) % FILTER_STAGES;
            let s = &mut self.stages[slot];
            s.offset += rate * now.secs_since(s.time);
        }
        if let Some(e) = &mut self.estimate {
            e.offset += rate * now.secs_since(e.time);
        }
    }

    /// Forgets all samples (e.g. after the source's address changed).
    pub fn clear(&mut self) {
        *self = ClockFilter::new();
    }

    /// Samples held (at most [`FILTER_STAGES`]).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True if no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most recent sample (its delay and dispersion to `f32` precision).
    pub fn last(&self) -> Option<Sample> {
        (self.len > 0).then(|| self.stage(0).sample())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(offset: f64, delay: f64, t: i64) -> Sample {
        Sample {
            offset,
            delay,
            dispersion: 1e-6,
            time: MonoTime(t * 1_000_000_000),
        }
    }

    #[test]
    fn the_offsets_trend_is_the_rate_they_move_at() {
        let mut f = ClockFilter::new();
        assert!(f.offset_trend().is_none());
        // A clock 100 ppm slow against the server, sampled every 64 s; the delays differ.
        for (k, delay) in [0.002, 0.001, 0.003, 0.0015, 0.001].iter().enumerate() {
            let t = 64 * k as i64;
            let offset = 0.5 + 100e-6 * t as f64 + if k % 2 == 0 { 1e-5 } else { -1e-5 };
            f.add(s(offset, *delay, t), MonoTime(t * 1_000_000_000));
        }
        let (rate, se) = f.offset_trend().unwrap();
        assert!((rate - 100e-6).abs() < 3.0 * se + 1e-9, "{rate} ± {se}");
        assert!(se > 0.0 && se < 1e-6, "{se}");
    }

    #[test]
    fn reprojection_moves_each_offset_by_its_age() {
        let mut f = ClockFilter::new();
        f.add(s(0.001, 0.002, 10), MonoTime(10_000_000_000));
        f.add(s(0.002, 0.004, 20), MonoTime(20_000_000_000));
        f.reproject(MonoTime(30_000_000_000), 1e-6);
        // The estimate (the least delay, 20 s old) and the last sample (10 s old).
        assert!((f.estimate().unwrap().offset - 0.001_020).abs() < 1e-15);
        assert!((f.last().unwrap().offset - 0.002_010).abs() < 1e-15);
        // The samples themselves moved too: the jitter is computed from them.
        f.add(s(0.003, 0.008, 30), MonoTime(30_000_000_000));
        let held: Vec<f64> = (0..3).map(|k| f.stage(k).offset).collect();
        assert!((held[1] - 0.002_010).abs() < 1e-15, "{held:?}");
        assert!((held[2] - 0.001_020).abs() < 1e-15, "{held:?}");
    }

    #[test]
    fn picks_minimum_delay_and_never_reuses_older() {
        let mut f = ClockFilter::new();
        let e = f.add(s(0.010, 0.020, 1), MonoTime(1_000_000_000)).unwrap();
        assert_eq!(e.offset, 0.010);
        // A noisier sample with larger delay does not replace it.
        assert!(f.add(s(0.050, 0.100, 2), MonoTime(2_000_000_000)).is_none());
        assert_eq!(f.estimate().unwrap().offset, 0.010);
        assert!((f.estimate().unwrap().jitter - 0.040).abs() < 1e-12);
        // A lower-delay sample replaces it.
        let e = f.add(s(0.001, 0.005, 3), MonoTime(3_000_000_000)).unwrap();
        assert_eq!((e.offset, e.delay as f32), (0.001, 0.005));
    }

    #[test]
    fn old_minimum_ages_out_after_eight_samples() {
        let mut f = ClockFilter::new();
        f.add(s(0.0, 0.001, 0), MonoTime(0));
        for t in 1..=8 {
            f.add(
                s(0.002, 0.010 + t as f64 * 1e-4, t),
                MonoTime(t * 1_000_000_000),
            );
        }
        assert!(f.estimate().unwrap().delay > 0.001);
    }

    #[test]
    fn weights_follow_excess_delay() {
        let mut f = ClockFilter::new();
        let first = s(0.0, 0.002, 0);
        f.add(first, MonoTime(0));
        // Too few delays to know the path's minimum: only the half-delay bound holds.
        assert_eq!(f.asymmetry_variance(&first), 0.002f64.powi(2) / 12.0);
        for i in 1..7 {
            f.add(s(0.0, 0.002 + i as f64 * 1e-4, i), MonoTime(i));
        }
        let spike = s(0.0, 0.014, 7);
        f.add(spike, MonoTime(7));
        // Median excess of {0, 0.1, …, 0.6, 12} ms is 0.4 ms: 2/√8 of it widens every sample.
        // (Delays are held to f32 precision: compare to a relative 1e-6.)
        let widen = 0.0004 * MIN_DELAY_SPREAD / 8f64.sqrt();
        let want = (0.012f64 + widen).powi(2) / 12.0;
        assert!(
            (f.asymmetry_variance(&spike) / want - 1.0).abs() < 1e-6,
            "{}",
            f.asymmetry_variance(&spike)
        );
        let best = f.asymmetry_variance(&s(0.0, 0.002, 4));
        assert!((best / (widen * widen / 12.0) - 1.0).abs() < 1e-5, "{best}");
        assert!(f.asymmetry_variance(&spike) > 1000.0 * best);
    }

    #[test]
    fn an_explained_asymmetry_shrinks_the_excess_but_not_the_minimums_uncertainty() {
        let mut f = ClockFilter::new();
        let first = s(0.0, 0.002, 0);
        f.add(first, MonoTime(0));
        // Before the minimum is known, only the half-delay bound: nothing is explained.
        assert_eq!(
            f.residual_asymmetry_variance(&first, 0.1),
            f.asymmetry_variance(&first)
        );
        for i in 1..8 {
            f.add(s(0.0, 0.002 + i as f64 * 1e-4, i), MonoTime(i));
        }
        let late = s(0.0, 0.006, 8);
        f.add(late, MonoTime(8));
        assert_eq!(
            f.residual_asymmetry_variance(&late, 1.0),
            f.asymmetry_variance(&late)
        );
        // Fully explained: the minimum's uncertainty is all that is left, as for a sample at
        // the minimum delay.
        let at_min = f.asymmetry_variance(&s(0.0, 0.002, 9));
        let none_left = f.residual_asymmetry_variance(&late, 0.0);
        assert!(
            (none_left / at_min - 1.0).abs() < 1e-6,
            "{none_left} vs {at_min}"
        );
        // A quarter of the variance unexplained: half the excess (in amplitude) counts.
        let widen = (at_min * 12.0).sqrt();
        let want = (0.002 + widen).powi(2) / 12.0;
        let quarter = f.residual_asymmetry_variance(&late, 0.25);
        assert!((quarter / want - 1.0).abs() < 1e-5, "{quarter} vs {want}");
    }

    #[test]
    fn a_short_window_weighs_samples_by_the_range_of_its_delays() {
        let mut f = ClockFilter::new();
        // A start-up burst's worth of delays: the half-delay bound only, however close.
        for i in 0..5 {
            f.add(s(0.0, 0.002 + i as f64 * 1e-5, i), MonoTime(i));
        }
        let at_min = s(0.0, 0.002, 5);
        assert_eq!(f.asymmetry_variance(&at_min), 0.002f64.powi(2) / 12.0);
        // The sixth: the minimum is known to within 2/√6 of the range (0.05 ms here).
        f.add(s(0.0, 0.00205, 5), MonoTime(5));
        let widen = 0.00005 * SHORT_WINDOW_SPREAD / 6f64.sqrt();
        let v = f.asymmetry_variance(&at_min);
        assert!((v / (widen * widen / 12.0) - 1.0).abs() < 1e-4, "{v}");
        let slow = s(0.0, 0.0021, 6);
        let want = (0.0001 + widen).powi(2) / 12.0;
        assert!((f.asymmetry_variance(&slow) / want - 1.0).abs() < 1e-4);
        // A wide range is never trusted less than the bound.
        let mut g = ClockFilter::new();
        for i in 0..7 {
            g.add(s(0.0, 0.002 + i as f64 * 1e-3, i), MonoTime(i));
        }
        let late = s(0.0, 0.004, 7);
        assert_eq!(g.asymmetry_variance(&late), 0.004f64.powi(2) / 12.0);
    }

    #[test]
    fn a_short_window_trusts_its_minimum_delay_less() {
        // The same spread of delays, seen 8 times and 32 times: the more delays, the closer
        // their minimum is to the path's, and the more a sample at that minimum is trusted.
        let at_minimum = |n: i64| {
            let mut f = ClockFilter::new();
            for i in 0..n {
                f.add(s(0.0, 0.002 + (i % 8) as f64 * 1e-4, i), MonoTime(i));
            }
            f.asymmetry_variance(&s(0.0, 0.002, n)).sqrt()
        };
        let (short, full) = (at_minimum(8), at_minimum(32));
        assert!(full < short, "{full} vs {short}");
        // Median excess 0.4 ms (of 0–0.7 ms); uniform over the uncertainty: sd = u / √12.
        let expected = |n: f64| 0.0004 * MIN_DELAY_SPREAD / n.sqrt() / 12f64.sqrt();
        assert!((short / expected(8.0) - 1.0).abs() < 1e-5, "{short}");
        assert!((full / expected(32.0) - 1.0).abs() < 1e-5, "{full}");
    }

    #[test]
    fn the_minimum_delay_spans_up_to_eight_windows() {
        // The same spread of delays seen 63 and 255 times: the minimum spans all of them (the
        // window of 32 and the blocks before it), and a sample at it is trusted as that many
        // delays vouch for (median excess 0.4 ms, as above). At 256 a new block begins and the
        // oldest is dropped: the span is seven blocks.
        let mut f = ClockFilter::new();
        let sd_after = |f: &mut ClockFilter, from: i64, to: i64| {
            for i in from..to {
                f.add(s(0.0, 0.002 + (i % 8) as f64 * 1e-4, i), MonoTime(i));
            }
            f.asymmetry_variance(&s(0.0, 0.002, to)).sqrt()
        };
        let expected = |n: f64| 0.0004 * MIN_DELAY_SPREAD / n.sqrt() / 12f64.sqrt();
        for (from, to, n) in [(0, 63, 63.0), (63, 255, 255.0), (255, 256, 224.0)] {
            let sd = sd_after(&mut f, from, to);
            assert!((sd / expected(n) - 1.0).abs() < 1e-5, "{to}: {sd}");
        }
    }

    #[test]
    fn a_narrow_spread_of_delays_keeps_to_the_held_minimum() {
        // Delays within 10 µs of each other, where timestamps' noise is much of the spread:
        // one 8 µs below the rest in the block before is not taken for the path's minimum.
        let mut f = ClockFilter::new();
        f.add(s(0.0, 0.001992, 0), MonoTime(0));
        for i in 1..40 {
            f.add(s(0.0, 0.002 + (i % 5) as f64 * 2e-6, i), MonoTime(i));
        }
        assert_eq!(f.min_delay(), Some(f64::from(0.002f32)));
        // With queueing of hundreds of µs the same outlier-sized gap is the path's minimum.
        let mut g = ClockFilter::new();
        g.add(s(0.0, 0.001992, 0), MonoTime(0));
        for i in 1..40 {
            g.add(s(0.0, 0.002 + (i % 5) as f64 * 1e-4, i), MonoTime(i));
        }
        assert_eq!(g.min_delay(), Some(f64::from(0.001992f32)));
    }

    #[test]
    fn a_route_that_got_longer_is_followed_within_one_window() {
        // 2 ms paths, then a route 3 ms longer: the old minimum is kept while the held delays
        // include it, and dropped, though older blocks still hold it, once they no longer do.
        let mut f = ClockFilter::new();
        let mut t = 0;
        let add = |f: &mut ClockFilter, t: &mut i64, base: f64| {
            f.add(s(0.0, base + (*t % 5) as f64 * 1e-4, *t), MonoTime(*t));
            *t += 1;
        };
        for _ in 0..300 {
            add(&mut f, &mut t, 0.002);
        }
        let mut followed_after = None;
        for k in 1..=MIN_DELAY_WINDOW {
            add(&mut f, &mut t, 0.005);
            if followed_after.is_none() && f.min_delay().unwrap() >= 0.005 - 1e-9 {
                followed_after = Some(k);
            }
        }
        assert_eq!(followed_after, Some(MIN_DELAY_WINDOW));
        // Samples on the new route weigh as its own spread says, not by 3 ms of old excess.
        let sd = f.asymmetry_variance(&s(0.0, 0.005, 0)).sqrt();
        assert!(sd < 1e-4, "{sd}");
        // Once the old route's blocks are gone, the minimum spans the new route's blocks.
        for _ in 0..(LONG_SPAN_BLOCKS + 1) * MIN_DELAY_WINDOW {
            add(&mut f, &mut t, 0.005);
        }
        assert_eq!(
            f.delays.spanned(),
            LONG_SPAN_BLOCKS * MIN_DELAY_WINDOW + t as usize % MIN_DELAY_WINDOW
        );
        // A route that got shorter is taken at once.
        add(&mut f, &mut t, 0.0015);
        assert!(f.min_delay().unwrap() < 0.002, "{:?}", f.min_delay());
    }

    #[test]
    fn estimate_matches_a_full_sort_of_the_last_eight() {
        let mut f = ClockFilter::new();
        let mut all: Vec<Sample> = Vec::new();
        let mut x: u64 = 3;
        for i in 0..300i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Few distinct delays: many ties, which the most recent sample wins.
            let delay = [0.001, 0.002, 0.0015, 0.004][(x >> 60) as usize % 4];
            let sample = s((x >> 40) as f64 * 1e-12, delay, i);
            let now = MonoTime(i * 1_000_000_000);
            f.add(sample, now);
            all.push(sample);
            // Reference: the last eight, most recent first, stably sorted by (f32) delay.
            let mut last: Vec<Sample> = all.iter().rev().take(FILTER_STAGES).copied().collect();
            last.sort_by(|a, b| (a.delay as f32).total_cmp(&(b.delay as f32)));
            let e = f.estimate().unwrap();
            let best = last[0];
            let mut dispersion = 0.0;
            for (rank, t) in last.iter().enumerate() {
                let aged = f64::from(t.dispersion as f32) + PHI * now.secs_since(t.time);
                dispersion += aged / f64::from(1u32 << (rank + 1));
            }
            assert_eq!(e.dispersion, dispersion, "sample {i}");
            if e.time == best.time {
                assert_eq!(e.offset, best.offset, "sample {i}");
            }
            if last.len() > 1 {
                let ss: f64 = last[1..]
                    .iter()
                    .map(|t| (t.offset - best.offset).powi(2))
                    .sum();
                assert_eq!(
                    e.jitter,
                    (ss / (last.len() - 1) as f64).sqrt(),
                    "sample {i}"
                );
            }
        }
    }

    #[test]
    fn delay_window_tracks_the_median_of_the_last_32_and_the_minimum_of_32_to_256() {
        let mut w = DelayWindow::new();
        let mut all: Vec<f32> = Vec::new();
        let mut x: u64 = 1;
        for i in 0..500 {
            // A few repeated values, so that ties are exercised.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let d = if i % 7 == 0 {
                0.003
            } else {
                (x >> 40) as f64 * 1e-9
            };
            w.push(d);
            all.push(d as f32);
            let mut last: Vec<f32> = all.iter().rev().take(MIN_DELAY_WINDOW).copied().collect();
            last.sort_by(f32::total_cmp);
            assert_eq!(w.len(), last.len());
            assert_eq!(w.median(), Some(f64::from(last[last.len() / 2])));
            // Blocks of 32 arrivals: the current one and up to seven before it, while the
            // held delays spread widely enough and their minimum lies near the blocks'.
            let spread = f64::from(last[last.len() / 2] - last[0]);
            let blocks = (all.len() / MIN_DELAY_WINDOW).min(LONG_SPAN_BLOCKS);
            let current = all.len() % MIN_DELAY_WINDOW;
            let blocks_min = all
                [all.len() - current - blocks * MIN_DELAY_WINDOW..all.len() - current]
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            let near = f64::from(last[0] - blocks_min)
                <= ROUTE_CHANGE_SPREAD * MIN_DELAY_SPREAD * spread / (last.len() as f64).sqrt();
            let spanned = if blocks == 0 || spread < LONG_SPAN_MIN_SPREAD || !near {
                last.len()
            } else {
                blocks * MIN_DELAY_WINDOW + current
            };
            assert_eq!(w.spanned(), spanned, "delay {i}");
            let min = all[all.len() - spanned..]
                .iter()
                .copied()
                .fold(f32::INFINITY, f32::min);
            assert_eq!(w.min(), Some(f64::from(min)), "delay {i}");
        }
    }
}
