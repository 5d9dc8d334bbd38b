//! Where a source's recent samples confine the clock.
//!
//! An exchange's offset error is half the difference of the two directions' delays, so it is
//! at most half the round trip's excess over the path's minimum: every sample holds the true
//! offset within a band of that half-width around its own offset. The discipline's Kalman
//! filters use a sample's band only through its variance (`excess²/12`); where queueing
//! reaches milliseconds, the few samples that met empty queues both ways have narrow bands,
//! and the intersection of the recent bands is narrower than the weighted mean's deviation.
//! While a source is the only one selected, the system blends the discipline's estimate with
//! the intersection's middle ([`Discipline::confine`](super::Discipline::confine)).
//!
//! A band stays a bound only while its sample can be carried to "now": the caller widens each
//! by what the clock may have wandered since from a straight line, unknown, and by what the
//! server's own clock may have been off when the sample was taken (its root distance then).
//! The frequency the samples were carried at is only known within a bound, but one error of
//! it moves every sample by its own age: the bands confine the offset and that error together
//! (a polygon in the two), which holds the offset closer than bands each widened by the whole
//! frequency uncertainty over its age. Bands that leave no room at all mean the path or a
//! clock changed, and then nothing is confined.
//!
//! Offsets are held as the filter holds them: on the caller's reference (the sample's offset
//! plus the phase of the clock's own corrections when it was taken), read at `now` by
//! subtracting the phase of `now`, and moved when the frequency the phase was extrapolated
//! with is revised ([`Bands::reproject`]).

use crate::time::MonoTime;

/// Samples whose bands are held. With exponential queueing of scale `J` each way, an excess
/// delay below `J/4` (a band a quarter as wide as a typical one) comes once in about 40
/// samples (`1 − e^{−¼}·(1 + ¼)`), so a window much shorter than that rarely holds one.
pub const BAND_SAMPLES: usize = 32;

/// The last [`BAND_SAMPLES`] samples of one source, oldest overwritten; held as four arrays
/// (768 bytes) rather than padded records.
#[derive(Clone, Debug)]
pub struct Bands {
    times: [MonoTime; BAND_SAMPLES],
    offsets: [f64; BAND_SAMPLES],
    delays: [f32; BAND_SAMPLES],
    /// How far the server's clock may have been off when each sample was taken (its root
    /// distance then), seconds.
    server_errors: [f32; BAND_SAMPLES],
    /// Slot the next sample takes.
    next: u8,
    len: u8,
}

impl Default for Bands {
    fn default() -> Self {
        Bands {
            times: [MonoTime(0); BAND_SAMPLES],
            offsets: [0.0; BAND_SAMPLES],
            delays: [0.0; BAND_SAMPLES],
            server_errors: [0.0; BAND_SAMPLES],
            next: 0,
            len: 0,
        }
    }
}

impl Bands {
    /// Holds a sample taken at `time`: its `offset` on the caller's reference, its round-trip
    /// `delay` and how far the server's clock may have been off then, `server_error` (its root
    /// distance; seconds). A band is widened by the latter: a server that follows others moves
    /// within it, and a sample taken while its clock was still far off stays as far off.
    pub fn push(&mut self, time: MonoTime, offset: f64, delay: f64, server_error: f64) {
        let slot = usize::from(self.next);
        self.times[slot] = time;
        self.offsets[slot] = offset;
        self.delays[slot] = delay as f32;
        self.server_errors[slot] = server_error as f32;
        self.next = ((slot + 1) % BAND_SAMPLES) as u8;
        self.len = (usize::from(self.len) + 1).min(BAND_SAMPLES) as u8;
    }

    /// Moves every held offset by `rate × (now − its time)`: the caller's reference was
    /// extrapolated at a rate now known to be off by `rate` (s/s) (as
    /// [`ClockFilter::reproject`](super::ClockFilter::reproject)).
    pub fn reproject(&mut self, now: MonoTime, rate: f64) {
        let n = self.len();
        for (offset, time) in self.offsets[..n].iter_mut().zip(&self.times[..n]) {
            *offset += rate * now.secs_since(*time);
        }
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True if no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The interval `[lo, hi]` the held bands leave for the offset at `now` (server − local,
    /// seconds), the phase at `now` being `phase_now` and the rate the offsets were carried
    /// at being off by an unknown error within `±rate_bound` (s/s). `half_width(delay)` gives a
    /// sample of that delay its band's half-width around its offset; the server's error then
    /// and `widening(age)` (what the clock may have wandered from a straight line over `age`
    /// seconds) add to it for a sample `age` seconds old. None if nothing is held or the bands
    /// leave no room.
    ///
    /// Every sample holds the pair (offset now, rate error) within a slab: the rate error
    /// moves a sample `age` seconds old by `age` times itself. All the slabs and the rate's
    /// bound hold it within a convex polygon, and the interval is that polygon's extent in the
    /// offset. One rate serves every sample, so samples far apart in time that agree on it
    /// confine the offset more than bands each widened by the whole `rate_bound × age` would.
    pub fn interval(
        &self,
        now: MonoTime,
        phase_now: f64,
        half_width: impl Fn(f64) -> f64,
        widening: impl Fn(f64) -> f64,
        rate_bound: f64,
    ) -> Option<(f64, f64)> {
        let n = self.len();
        if n == 0 || !(rate_bound.is_finite() && rate_bound >= 0.0) {
            return None;
        }
        // The rate error is held times the oldest sample's age, so that both coordinates are
        // offsets (seconds) of like size.
        let span = self.times[..n]
            .iter()
            .map(|&t| now.secs_since(t))
            .fold(1.0, f64::max);
        let mut slabs = [(0.0, 0.0, 0.0); BAND_SAMPLES];
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (k, slab) in slabs[..n].iter_mut().enumerate() {
            let age = now.secs_since(self.times[k]).max(0.0);
            let half = half_width(f64::from(self.delays[k]))
                + f64::from(self.server_errors[k])
                + widening(age);
            let center = self.offsets[k] - phase_now;
            *slab = (age / span, center, half);
            // Whatever the slabs leave lies within any one of them.
            lo = lo.min(center - half - rate_bound * age);
            hi = hi.max(center + half + rate_bound * age);
        }
        // (x, y) = (offset now, rate error × span): each sample holds
        // |x − (age / span)·y − center| ≤ half.
        let y = rate_bound * span;
        let mut region = Polygon::rectangle((lo, hi), (-y, y));
        let mut spare = Polygon::default();
        for &(scaled_age, center, half) in &slabs[..n] {
            for (a, b, c) in [
                (1.0, -scaled_age, center + half),
                (-1.0, scaled_age, half - center),
            ] {
                region.clip(a, b, c, &mut spare);
                if region.len == 0 {
                    return None;
                }
            }
        }
        Some(region.x_extent())
    }
}

/// Vertices a region of [`Bands::interval`] can have: a rectangle cut by two sides of every
/// band, each cut adding at most one.
const MAX_VERTICES: usize = 4 + 2 * BAND_SAMPLES;

/// A convex polygon (vertices in order), on the stack.
struct Polygon {
    vertices: [(f64, f64); MAX_VERTICES],
    len: usize,
}

impl Default for Polygon {
    fn default() -> Self {
        Polygon {
            vertices: [(0.0, 0.0); MAX_VERTICES],
            len: 0,
        }
    }
}

impl Polygon {
    /// `x.0 ≤ x ≤ x.1`, `y.0 ≤ y ≤ y.1` (a segment or a point if either is one value).
    fn rectangle(x: (f64, f64), y: (f64, f64)) -> Self {
        let mut p = Polygon::default();
        p.vertices[..4].copy_from_slice(&[(x.0, y.0), (x.1, y.0), (x.1, y.1), (x.0, y.1)]);
        p.len = 4;
        p
    }

    /// Cuts the polygon to the part where `a·x + b·y ≤ c`, with `spare` as working storage:
    /// each vertex inside is kept, and each edge that crosses the line adds the point where it
    /// does. Most of a window's bands do not cut what the others left: the polygon is then
    /// left as it is, with one pass over its vertices.
    fn clip(&mut self, a: f64, b: f64, c: f64, spare: &mut Polygon) {
        let n = self.len;
        let side = |v: (f64, f64)| a * v.0 + b * v.1 - c;
        if self.vertices[..n].iter().all(|&v| side(v) <= 0.0) {
            return;
        }
        spare.len = 0;
        let mut push = |v: (f64, f64)| {
            if spare.len < MAX_VERTICES {
                spare.vertices[spare.len] = v;
                spare.len += 1;
            }
        };
        let Some(&last) = self.vertices[..n].last() else {
            return;
        };
        let (mut p, mut fp) = (last, side(last));
        for &q in &self.vertices[..n] {
            let fq = side(q);
            if fp <= 0.0 {
                push(p);
            }
            if (fp < 0.0 && fq > 0.0) || (fp > 0.0 && fq < 0.0) {
                let t = fp / (fp - fq);
                push((p.0 + t * (q.0 - p.0), p.1 + t * (q.1 - p.1)));
            }
            (p, fp) = (q, fq);
        }
        self.vertices[..spare.len].copy_from_slice(&spare.vertices[..spare.len]);
        self.len = spare.len;
    }

    /// The lowest and highest `x`.
    fn x_extent(&self) -> (f64, f64) {
        self.vertices[..self.len]
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v.0), hi.max(v.0))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> MonoTime {
        MonoTime(secs * 1_000_000_000)
    }

    /// Half-width of half the delay, centred on the offset; no widening.
    fn plain(b: &Bands, now: MonoTime, phase: f64) -> Option<(f64, f64)> {
        b.interval(now, phase, |d| d / 2.0, |_| 0.0, 0.0)
    }

    #[test]
    fn the_interval_is_where_every_band_overlaps() {
        let mut b = Bands::default();
        assert_eq!(plain(&b, at(0), 0.0), None);
        b.push(at(0), 1e-3, 4e-3, 0.0); // [-1, 3] ms
        b.push(at(64), -0.5e-3, 2e-3, 0.0); // [-1.5, 0.5] ms
        b.push(at(128), 0.2e-3, 10e-3, 0.0); // [-4.8, 5.2] ms
        let (lo, hi) = plain(&b, at(128), 0.0).unwrap();
        assert!(
            (lo + 1e-3).abs() < 1e-9 && (hi - 0.5e-3).abs() < 1e-9,
            "{lo} {hi}"
        );
        // The phase of now is taken off every offset.
        let (lo, hi) = plain(&b, at(128), 1e-3).unwrap();
        assert!(
            (lo + 2e-3).abs() < 1e-9 && (hi + 0.5e-3).abs() < 1e-9,
            "{lo} {hi}"
        );
    }

    #[test]
    fn bands_that_leave_no_room_confine_nothing() {
        let mut b = Bands::default();
        b.push(at(0), 0.0, 1e-3, 0.0); // [-0.5, 0.5] ms
        b.push(at(64), 2e-3, 1e-3, 0.0); // [1.5, 2.5] ms
        assert_eq!(plain(&b, at(64), 0.0), None);
        // Widened by what the clock may have drifted in 64 s, they overlap again.
        let widened = b.interval(at(64), 0.0, |d| d / 2.0, |age| age * 20e-6, 0.0);
        let (lo, hi) = widened.unwrap();
        assert!(
            (lo - 1.5e-3).abs() < 1e-9 && (hi - 1.78e-3).abs() < 1e-9,
            "{lo} {hi}"
        );
        // As they do if the rate they were carried at may be off by 20 ppm.
        let rate = b.interval(at(64), 0.0, |d| d / 2.0, |_| 0.0, 20e-6);
        let (lo, hi) = rate.unwrap();
        assert!(
            (lo - 1.5e-3).abs() < 1e-9 && (hi - 1.78e-3).abs() < 1e-9,
            "{lo} {hi}"
        );
    }

    #[test]
    fn samples_that_agree_on_a_rate_confine_more_than_each_alone() {
        let mut b = Bands::default();
        // Two narrow bands 1000 s apart, 0.5 ms apart: a rate error of 0.5 ± 0.2 ppm.
        b.push(at(0), 0.0, 0.2e-3, 0.0);
        b.push(at(1000), 0.5e-3, 0.2e-3, 0.0);
        b.push(at(2000), 1e-3, 2e-3, 0.0);
        let band = |d: f64| d / 2.0;
        // Each band widened by the whole 1 ppm over its age leaves [0, 1.6] ms; one rate for
        // all of them leaves 1 ms ± 0.3 ms.
        let (lo, hi) = b.interval(at(2000), 0.0, band, |_| 0.0, 1e-6).unwrap();
        assert!(
            (lo - 0.7e-3).abs() < 1e-9 && (hi - 1.3e-3).abs() < 1e-9,
            "{lo} {hi}"
        );
        // A rate beyond the bound is no rate at all.
        assert_eq!(b.interval(at(2000), 0.0, band, |_| 0.0, 0.2e-6), None);
        // What the clock may have wandered widens each band by its age.
        let (lo, hi) = b
            .interval(at(2000), 0.0, band, |age| age * 0.05e-6, 1e-6)
            .unwrap();
        assert!(lo < 0.7e-3 - 1e-6 && hi > 1.3e-3 + 1e-6, "{lo} {hi}");
    }

    #[test]
    fn the_oldest_sample_gives_way_after_the_ring_is_full() {
        let mut b = Bands::default();
        // A narrow band far off, then enough wide ones to push it out.
        b.push(at(0), 5e-3, 0.0, 0.0);
        for k in 1..BAND_SAMPLES as i64 {
            b.push(at(k), 0.0, 0.015625, 0.0);
        }
        assert_eq!(b.len(), BAND_SAMPLES);
        let (lo, hi) = plain(&b, at(40), 0.0).unwrap();
        assert!(
            (lo - 5e-3).abs() < 1e-12 && (hi - 5e-3).abs() < 1e-12,
            "{lo} {hi}"
        );
        b.push(at(BAND_SAMPLES as i64), 0.0, 0.015625, 0.0);
        assert_eq!(b.len(), BAND_SAMPLES);
        let (lo, hi) = plain(&b, at(40), 0.0).unwrap();
        assert!(
            (lo + 0.0078125).abs() < 1e-12 && (hi - 0.0078125).abs() < 1e-12,
            "{lo} {hi}"
        );
    }

    #[test]
    fn reprojecting_moves_each_offset_by_its_age() {
        let mut b = Bands::default();
        b.push(at(0), 0.0, 0.0, 0.0);
        b.push(at(100), 0.0, 2e-3, 0.0);
        b.reproject(at(100), 1e-6); // the first sample moves by 100 µs, the second not at all
        let (lo, hi) = plain(&b, at(100), 0.0).unwrap();
        assert!(
            (lo - 100e-6).abs() < 1e-12 && (hi - 100e-6).abs() < 1e-12,
            "{lo} {hi}"
        );
    }
}
