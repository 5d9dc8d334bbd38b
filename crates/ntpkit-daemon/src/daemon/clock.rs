//! The clock backends of `ntpkit daemon`: what the core disciplines, and what is served.
//!
//! * `system`: the OS clock, adjusted through `clock_adjtime`. Needs CAP_SYS_TIME; refused
//!   with a clear message without it, as the clock call itself answers at start (so that the
//!   answer is right wherever the call is provided, by the kernel or by a simulator). Never
//!   used by tests with the capability.
//! * `observe`: the OS clock, never adjusted. The core's commands go to a shadow software clock
//!   on top of the OS clock, so that the discipline loop stays closed and its estimates stay
//!   right; the shadow's accumulated correction is what the daemon *would* have done, and
//!   status reports it. Served time is the OS clock.
//! * `virtual`: a software clock = OS clock + its own offset and frequency error (and optional
//!   random-walk wander), which the core disciplines and the daemon serves. Its true error is
//!   measurable: virtual − OS clock.

use super::config::{ClockBackendKind, ClockSection};
use ntpkit_core::{ClockCommand, ClockTime, SoftClock};
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Changes of a software clock remembered for readings of earlier instants (see
/// [`ClockBackend::read_at`]).
const REMEMBERED_CHANGES: usize = 64;

/// How to turn an OS clock reading into the served clock's reading. Copy, so server threads
/// take a snapshot and never lock per packet.
#[derive(Clone, Copy, Debug)]
pub enum ClockView {
    /// The OS clock itself.
    Os,
    /// A software clock on top of the OS clock.
    Soft(SoftClock),
}

impl ClockView {
    /// The served clock's reading when the OS clock reads `os_ns`.
    #[inline]
    pub fn read_at(&self, os_ns: i64) -> ClockTime {
        match self {
            ClockView::Os => ClockTime(os_ns),
            ClockView::Soft(c) => c.read(os_ns),
        }
    }
}

/// A disciplined clock.
#[derive(Debug)]
pub struct ClockBackend {
    kind: ClockBackendKind,
    /// The clock the core disciplines, on top of the OS clock (virtual clock, or observe's
    /// shadow); None for `system`.
    soft: Option<SoftClock>,
    /// The software clock as it was before each of its latest changes, with the OS time of
    /// the change, oldest first.
    before_changes: VecDeque<(i64, SoftClock)>,
    wander_ppm: f64,
    rng: Xoshiro256PlusPlus,
    /// Last time wander was applied (OS ns).
    wander_at: i64,
    /// `system` backend: when to end a slew in progress. Software clocks end their slews by
    /// themselves.
    slew: SlewTimer,
}

/// The end of a slew the `system` backend must time itself (the kernel's frequency has no
/// end time): what frequency to set when. Kept apart from the OS calls so that it is tested
/// without touching the clock.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SlewTimer {
    /// OS time (ns) at which to set the frequency, and the correction (ppm) to set.
    end: Option<(i64, f64)>,
}

impl SlewTimer {
    /// A frequency command at `os_now`: returns the correction (ppm) to set now, and
    /// remembers when and what to set next for a slew.
    fn command(&mut self, os_now: i64, command: ClockCommand) -> Option<f64> {
        match command {
            ClockCommand::Step { .. } => None,
            ClockCommand::SetFrequency { ppm } => {
                self.end = None;
                Some(ppm)
            }
            ClockCommand::Slew {
                ppm,
                duration_ns,
                then_ppm,
            } => {
                self.end = Some((os_now.saturating_add(duration_ns.max(0)), then_ppm));
                Some(ppm)
            }
        }
    }

    /// The correction to set at `os_now`, once, if the slew has ended by then.
    fn due(&mut self, os_now: i64) -> Option<f64> {
        match self.end {
            Some((at, ppm)) if os_now >= at => {
                self.end = None;
                Some(ppm)
            }
            _ => None,
        }
    }
}

/// Why a clock backend cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The system backend without the capability.
    #[error(
        "clock.backend = \"system\" needs CAP_SYS_TIME to adjust the OS clock: run as root with that \
         capability, or use clock.backend = \"observe\" (never adjusts) or \"virtual\""
    )]
    NoCapability,
    /// The kernel refused an adjustment.
    #[error("adjusting the system clock failed: {0}")]
    Adjust(std::io::Error),
}

/// Backend state for status output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClockReport {
    /// Backend name.
    pub backend: String,
    /// Virtual clock: its reading minus the OS clock, seconds (its true error when the OS clock
    /// is the reference). Observe: the correction the daemon would have applied so far, negated.
    pub offset_from_os: Option<f64>,
    /// Remaining frequency error (intrinsic + correction) of the software clock, ppm.
    pub frequency_error_ppm: Option<f64>,
    /// Configured intrinsic frequency error of the virtual clock, ppm.
    pub intrinsic_ppm: Option<f64>,
}

impl ClockBackend {
    /// Creates the backend at OS time `os_now`.
    pub fn new(section: &ClockSection, os_now: i64) -> Result<ClockBackend, ClockError> {
        let soft = match section.backend {
            ClockBackendKind::System => {
                match ntpkit_os::adjust::probe_adjust() {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        return Err(ClockError::NoCapability)
                    }
                    Err(e) => return Err(ClockError::Adjust(e)),
                }
                None
            }
            ClockBackendKind::Observe => Some(SoftClock::new(os_now, 0, 0.0)),
            ClockBackendKind::Virtual => Some(SoftClock::new(
                os_now,
                (section.offset * 1e9).round() as i64,
                section.frequency_ppm,
            )),
        };
        let seed = section.seed.unwrap_or_else(super::os_seed);
        Ok(ClockBackend {
            kind: section.backend,
            soft,
            before_changes: VecDeque::new(),
            wander_ppm: section.wander_ppm,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            wander_at: os_now,
            slew: SlewTimer::default(),
        })
    }

    /// True if the clock wanders and [`wander`](Self::wander) must run about once a second.
    pub fn wanders(&self) -> bool {
        self.soft.is_some() && self.wander_ppm != 0.0
    }

    /// The disciplined clock's reading when the OS clock reads `os_ns`. An earlier instant is
    /// read on the software clock as it was then: a reply's kernel receive timestamp may
    /// predate the commands applied while the replies received with it were handled, and
    /// read at the latest rate a slew of thousands of ppm would move it by up to a millisecond.
    pub fn read_at(&self, os_ns: i64) -> ClockTime {
        match &self.soft {
            Some(c) => self
                .before_changes
                .iter()
                .find(|&&(changed_at, _)| os_ns < changed_at)
                .map_or(c, |(_, before)| before)
                .read(os_ns),
            None => ClockTime(os_ns),
        }
    }

    /// Records the software clock as it is before a change at OS time `os_now`.
    fn remember(&mut self, os_now: i64) {
        if let Some(c) = self.soft {
            if self.before_changes.len() == REMEMBERED_CHANGES {
                self.before_changes.pop_front();
            }
            self.before_changes.push_back((os_now, c));
        }
    }

    /// How far the disciplined clock reads ahead of the OS clock at OS time `os_ns`
    /// (seconds), and the rate at which it gains on it (s/s): zero for `system`, which
    /// disciplines the OS clock itself.
    pub fn divergence_from_os(&self, os_ns: i64) -> (f64, f64) {
        match &self.soft {
            Some(c) => (c.offset_at(os_ns) * 1e-9, c.rate_ppm_at(os_ns) * 1e-6),
            None => (0.0, 0.0),
        }
    }

    /// What server threads should serve.
    pub fn served_view(&self) -> ClockView {
        match (self.kind, self.soft) {
            (ClockBackendKind::Virtual, Some(c)) => ClockView::Soft(c),
            _ => ClockView::Os,
        }
    }

    /// Applies a command of the core at OS time `os_now`.
    pub fn apply(&mut self, os_now: i64, command: ClockCommand) -> Result<(), ClockError> {
        self.remember(os_now);
        if let Some(c) = &mut self.soft {
            c.apply(os_now, command);
            return Ok(());
        }
        match (command, self.slew.command(os_now, command)) {
            (ClockCommand::Step { offset_ns }, _) => ntpkit_os::adjust::step_realtime(offset_ns),
            (_, Some(ppm)) => ntpkit_os::adjust::set_realtime_frequency(ppm),
            (_, None) => Ok(()),
        }
        .map_err(ClockError::Adjust)
    }

    /// When (OS ns) [`handle_timeout`](Self::handle_timeout) must run next: the end of a slew
    /// the `system` backend is timing.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.slew.end.map(|(at, _)| at)
    }

    /// Ends a slew that is due at OS time `os_now` (a no-op otherwise).
    pub fn handle_timeout(&mut self, os_now: i64) -> Result<(), ClockError> {
        match self.slew.due(os_now) {
            Some(ppm) => ntpkit_os::adjust::set_realtime_frequency(ppm).map_err(ClockError::Adjust),
            None => Ok(()),
        }
    }

    /// Advances the virtual clock's wander to `os_now` (call about once per second).
    pub fn wander(&mut self, os_now: i64) {
        if self.soft.is_none() || self.wander_ppm == 0.0 {
            return;
        }
        let dt = (os_now - self.wander_at) as f64 * 1e-9;
        self.wander_at = os_now;
        if dt <= 0.0 {
            return;
        }
        let step = self.wander_ppm * dt.sqrt() * standard_normal(&mut self.rng);
        self.remember(os_now);
        if let Some(c) = &mut self.soft {
            c.set_intrinsic_ppm(os_now, c.intrinsic_ppm() + step);
        }
    }

    /// State for status output at OS time `os_now`.
    pub fn report(&self, os_now: i64) -> ClockReport {
        let name = match self.kind {
            ClockBackendKind::System => "system",
            ClockBackendKind::Observe => "observe",
            ClockBackendKind::Virtual => "virtual",
        };
        ClockReport {
            backend: name.to_string(),
            offset_from_os: self.soft.map(|c| c.offset_at(os_now) * 1e-9),
            frequency_error_ppm: self.soft.map(|c| c.rate_ppm_at(os_now)),
            intrinsic_ppm: self
                .soft
                .filter(|_| self.kind == ClockBackendKind::Virtual)
                .map(|c| c.intrinsic_ppm()),
        }
    }
}

/// A standard normal deviate (Box–Muller).
fn standard_normal(rng: &mut impl RngCore) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_backend_times_the_end_of_a_slew() {
        let mut t = SlewTimer::default();
        let slew = ClockCommand::Slew {
            ppm: 500.0,
            duration_ns: 10_000,
            then_ppm: -3.0,
        };
        assert_eq!(t.command(1_000, slew), Some(500.0));
        assert_eq!(t.end, Some((11_000, -3.0)));
        assert_eq!(t.due(10_999), None);
        assert_eq!(t.due(11_000), Some(-3.0));
        assert_eq!(t.due(20_000), None, "set once");
        // A step leaves a slew running; a frequency command ends it.
        t.command(0, slew);
        assert_eq!(t.command(5, ClockCommand::Step { offset_ns: 1 }), None);
        assert_eq!(t.end, Some((10_000, -3.0)));
        assert_eq!(
            t.command(6, ClockCommand::SetFrequency { ppm: 1.0 }),
            Some(1.0)
        );
        assert_eq!(t.due(i64::MAX), None);
    }

    #[test]
    fn virtual_clock_offset_and_commands() {
        let section = ClockSection {
            backend: ClockBackendKind::Virtual,
            offset: 0.5,
            frequency_ppm: 50.0,
            wander_ppm: 0.0,
            seed: Some(1),
        };
        let mut b = ClockBackend::new(&section, 0).unwrap();
        assert_eq!(b.read_at(0), ClockTime(500_000_000));
        b.apply(
            0,
            ClockCommand::Step {
                offset_ns: -500_000_000,
            },
        )
        .unwrap();
        b.apply(0, ClockCommand::SetFrequency { ppm: -50.0 })
            .unwrap();
        assert_eq!(b.read_at(1_000_000_000_000), ClockTime(1_000_000_000_000));
        let r = b.report(0);
        assert_eq!(r.backend, "virtual");
        assert_eq!(r.frequency_error_ppm, Some(0.0));
        assert!(matches!(b.served_view(), ClockView::Soft(_)));
    }

    #[test]
    fn an_earlier_instant_is_read_on_the_clock_as_it_was_then() {
        let section = ClockSection {
            backend: ClockBackendKind::Virtual,
            offset: 0.05,
            frequency_ppm: 0.0,
            wander_ppm: 0.0,
            seed: Some(1),
        };
        let mut b = ClockBackend::new(&section, 0).unwrap();
        const S: i64 = 1_000_000_000;
        b.apply(0, ClockCommand::SetFrequency { ppm: -10_000.0 })
            .unwrap();
        // A reply received at 1 s, read after a command applied at 1.1 s.
        let then = b.read_at(S);
        b.apply(S + S / 10, ClockCommand::SetFrequency { ppm: -500.0 })
            .unwrap();
        assert_eq!(b.read_at(S), then);
        assert_eq!(then, ClockTime(S + 50_000_000 - 10_000_000));
        // From the change on, the new rate.
        assert_eq!(
            b.read_at(2 * S + S / 10).0 - b.read_at(S + S / 10).0,
            S - 500_000
        );
    }

    #[test]
    fn observe_serves_the_os_clock_and_tracks_a_shadow() {
        let mut b = ClockBackend::new(&ClockSection::default(), 0).unwrap();
        b.apply(0, ClockCommand::Step { offset_ns: 1000 }).unwrap();
        assert_eq!(
            b.read_at(0),
            ClockTime(1000),
            "the discipline sees its correction"
        );
        assert_eq!(
            b.served_view().read_at(0),
            ClockTime(0),
            "the OS clock is served untouched"
        );
    }

    #[test]
    fn system_backend_refused_without_capability() {
        if ntpkit_os::adjust::has_cap_sys_time() {
            // Running with the capability (as root outside setpriv): constructing the backend
            // would be allowed, and nothing here may risk adjusting the clock. Check only the
            // message text.
            assert!(ClockError::NoCapability.to_string().contains("observe"));
            return;
        }
        let section = ClockSection {
            backend: ClockBackendKind::System,
            ..ClockSection::default()
        };
        let e = ClockBackend::new(&section, 0).unwrap_err();
        assert!(e.to_string().contains("CAP_SYS_TIME"));
    }
}
