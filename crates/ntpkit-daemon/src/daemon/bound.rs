//! Publishing the clock's error bound outside the daemon, besides `ntpkit now`:
//!
//! * a shared-memory page in AWS ClockBound's layout (`clockbound-shm`), which ClockBound's
//!   clients and the `ntpkit-clock` crate read without asking the daemon: refreshed after
//!   every clock update and at least once a second, so that readers never take it for the
//!   page of a daemon that stopped (they do after 5 s);
//! * with the `system` backend, the kernel's `maxerror` and `esterror` (what `adjtimex` and
//!   `ntp_gettime` report), after every clock update, as chronyd sets them.
//!
//! The page's bound is about CLOCK_REALTIME, the clock its readers read. With the `system`
//! backend that is the clock the core disciplines; with `observe` and `virtual` it is not, so
//! the page adds how far CLOCK_REALTIME is from the disciplined clock, and the rate at which
//! that distance changes to the growth, and the interval readers compute stays right.

use super::clock::ClockBackend;
use ntpkit_clock::page::{self, Body, PageWriter, Status, Timespec};
use ntpkit_core::sync::{BoundForecast, BoundStatus, ErrorBound, SyncSystem, BOUND_SIGMAS};
use ntpkit_core::MonoTime;
use std::path::Path;

/// Longest the page refreshes itself without a clock update.
const REFRESH_INTERVAL: f64 = 1.0;
/// How far ahead a page's growth rate is computed; its void-after time is at most this far,
/// earlier if the holdover runs out first.
const PAGE_HORIZON: f64 = 1024.0;
/// Time by which a reader's coarse monotonic clock may lag the instant the bound was computed
/// for (one kernel tick at 100 Hz): the bound is widened by its growth over this time.
const COARSE_CLOCK_LAG: f64 = 0.01;

/// The page and the kernel's estimates.
#[derive(Debug)]
pub struct BoundPublisher {
    page: Option<PageWriter>,
    /// Set the kernel's estimates (the `system` backend).
    kernel: bool,
    /// The kernel refused once: logged, not retried.
    kernel_refused: bool,
    /// The first bounded estimates were logged.
    kernel_announced: bool,
    next_refresh: MonoTime,
}

impl BoundPublisher {
    /// Opens (or creates) the page at `path`, if any; `kernel` for the `system` backend.
    pub fn new(path: Option<&Path>, kernel: bool, now: MonoTime) -> Result<Self, String> {
        let page = match path {
            Some(p) => Some(PageWriter::create(p).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    "; start the daemon as root (it creates the page before it drops its \
                     privileges), or choose a path its user may write"
                } else {
                    ""
                };
                format!(
                    "clockbound-shm = {:?}: cannot create the page: {e}{hint}",
                    p.display().to_string()
                )
            })?),
            None => None,
        };
        if let Some(p) = &page {
            tracing::info!("error bound published in {}", p.path().display());
        }
        Ok(BoundPublisher {
            page,
            kernel,
            kernel_refused: false,
            kernel_announced: false,
            next_refresh: now,
        })
    }

    /// When the page must be refreshed next (None without a page).
    pub fn deadline(&self) -> Option<MonoTime> {
        self.page.as_ref().map(|_| self.next_refresh)
    }

    /// Publishes the bound at `now`, read just before the call (the page's as-of is read
    /// here, and readers grow the bound from it): the page always, the kernel's estimates if
    /// `updated` (a clock update or command since the last call).
    pub fn publish(
        &mut self,
        system: &SyncSystem,
        clock: &ClockBackend,
        now: MonoTime,
        updated: bool,
    ) {
        if updated && self.kernel && !self.kernel_refused {
            let (max, est) = kernel_error_estimates(&system.error_bound(now));
            match ntpkit_os::adjust::set_error_estimates(max, est) {
                Ok(read_back) => {
                    let text = format!(
                        "kernel clock error estimates: maxerror {} µs, esterror {} µs",
                        read_back.0, read_back.1
                    );
                    // Said once at info, when the kernel holds a bound (read back as set).
                    if !self.kernel_announced
                        && read_back == (max, est)
                        && max < ntpkit_os::adjust::MAX_KERNEL_ERROR_US
                    {
                        self.kernel_announced = true;
                        tracing::info!("{text} (set again at every clock update)");
                    } else {
                        tracing::debug!("{text}");
                    }
                }
                Err(e) => {
                    tracing::warn!("the kernel refused the clock's error estimates: {e}");
                    self.kernel_refused = true;
                }
            }
        }
        let Some(page) = &mut self.page else { return };
        let as_of = page::monotonic_coarse();
        let os = ntpkit_os::realtime_nanos();
        let (offset, rate) = clock.divergence_from_os(os);
        page.write(&page_body(
            system.bound_forecast(now, PAGE_HORIZON),
            offset,
            rate,
            as_of,
        ));
        self.next_refresh = now.add_secs_f64(REFRESH_INTERVAL);
    }

    /// Says there is no bound (the daemon is stopping, or the clock is about to be stepped).
    pub fn withdraw(&mut self) {
        if let Some(page) = &mut self.page {
            page.write(&page_body(None, 0.0, 0.0, page::monotonic_coarse()));
        }
    }
}

/// The page for `forecast` made at `as_of`, when the disciplined clock reads `offset`
/// seconds ahead of CLOCK_REALTIME and gains on it at `rate` (s/s).
pub fn page_body(forecast: Option<BoundForecast>, offset: f64, rate: f64, as_of: Timespec) -> Body {
    let unknown = Body {
        as_of,
        void_after: as_of,
        clock_status: Status::Unknown.code(),
        ..Body::default()
    };
    let Some(f) = forecast else { return unknown };
    let growth = f.growth_rate + rate.abs();
    let bound = f.bound + offset.abs() + growth * COARSE_CLOCK_LAG;
    let (bound_ns, drift_ppb) = ((bound * 1e9).ceil(), (growth * 1e9).ceil());
    if !(bound_ns < i64::MAX as f64 && drift_ppb < 1e9) {
        // Beyond what the layout can say: no bound rather than a wrong one.
        return unknown;
    }
    let void_after = as_of.as_nanos() + (f.valid_for * 1e9).floor() as i128;
    Body {
        as_of,
        void_after: Timespec::from_nanos(void_after),
        bound_nsec: bound_ns as i64,
        max_drift_ppb: drift_ppb as u32,
        clock_status: match f.status {
            BoundStatus::Synchronized => Status::Synchronized,
            BoundStatus::Holdover => Status::FreeRunning,
            BoundStatus::Unknown => Status::Unknown,
        }
        .code(),
        ..Body::default()
    }
}

/// The kernel's `maxerror` and `esterror` (µs, rounded up) for `bound`: its half-width, and
/// the offset estimate's standard deviation; the kernel's "unsynchronized" maximum without
/// a bound.
pub fn kernel_error_estimates(bound: &ErrorBound) -> (i64, i64) {
    let max = ntpkit_os::adjust::MAX_KERNEL_ERROR_US;
    match (bound.bound(), bound.terms) {
        (Some(b), Some(t)) => {
            let us = |s: f64| ((s * 1e6).ceil() as i64).clamp(0, max);
            (us(b), us(t.offset_uncertainty / BOUND_SIGMAS))
        }
        _ => (max, max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_core::sync::BoundTerms;

    fn forecast(status: BoundStatus) -> BoundForecast {
        BoundForecast {
            status,
            bound: 100e-6,
            growth_rate: 2e-6,
            valid_for: 600.0,
        }
    }

    const AS_OF: Timespec = Timespec {
        sec: 5000,
        nsec: 500_000_000,
    };

    #[test]
    fn the_page_carries_the_forecast() {
        let b = page_body(Some(forecast(BoundStatus::Synchronized)), 0.0, 0.0, AS_OF);
        assert_eq!(b.clock_status, Status::Synchronized.code());
        // 100 µs, plus 10 ms of the coarse clock's lag at 2 ppm: 20 ns (rounded up, so
        // one more where the binary fractions land just above).
        assert!((100_020..=100_021).contains(&b.bound_nsec), "{b:?}");
        assert!((2_000..=2_001).contains(&b.max_drift_ppb), "{b:?}");
        assert_eq!(b.as_of, AS_OF);
        assert_eq!(
            b.void_after,
            Timespec {
                sec: 5600,
                nsec: 500_000_000
            }
        );
        let h = page_body(Some(forecast(BoundStatus::Holdover)), 0.0, 0.0, AS_OF);
        assert_eq!(h.clock_status, Status::FreeRunning.code(), "holdover");
    }

    #[test]
    fn a_clock_apart_from_realtime_widens_the_page() {
        // A virtual clock 3 ms ahead of CLOCK_REALTIME, gaining 5 ppm on it: readers of
        // CLOCK_REALTIME are off by the bound plus those 3 ms, growing 5 ppm faster.
        for offset in [3e-3, -3e-3] {
            let b = page_body(
                Some(forecast(BoundStatus::Synchronized)),
                offset,
                -5e-6,
                AS_OF,
            );
            assert!((7_000..=7_001).contains(&b.max_drift_ppb), "{b:?}");
            assert!((3_100_070..=3_100_071).contains(&b.bound_nsec), "{b:?}");
        }
    }

    #[test]
    fn no_bound_is_said_as_unknown() {
        for b in [
            page_body(None, 0.0, 0.0, AS_OF),
            // A growth the layout cannot hold (1 s/s or more).
            page_body(
                Some(BoundForecast {
                    growth_rate: 1.5,
                    ..forecast(BoundStatus::Synchronized)
                }),
                0.0,
                0.0,
                AS_OF,
            ),
        ] {
            assert_eq!(b.clock_status, Status::Unknown.code());
            assert_eq!(b.void_after, AS_OF, "void at once");
        }
    }

    #[test]
    fn a_page_path_that_holds_another_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("ntpkit-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notes.txt");
        std::fs::write(&path, "keep me").unwrap();
        let e = BoundPublisher::new(Some(&path), false, MonoTime(0)).unwrap_err();
        assert!(e.starts_with("clockbound-shm = "), "{e}");
        assert!(
            e.contains("not a clock page; remove it or choose another path"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kernel_estimates_follow_the_bound() {
        let terms = BoundTerms {
            offset_uncertainty: 25e-6,
            path_asymmetry: 100.2e-6,
            ..BoundTerms::default()
        };
        let bound = ErrorBound {
            status: BoundStatus::Synchronized,
            terms: Some(terms),
        };
        // 125.2 µs rounds up to 126; 25 µs is 5 σ of a 5 µs estimate.
        assert_eq!(kernel_error_estimates(&bound), (126, 5));
        let max = ntpkit_os::adjust::MAX_KERNEL_ERROR_US;
        assert_eq!(kernel_error_estimates(&ErrorBound::UNKNOWN), (max, max));
        let huge = ErrorBound {
            status: BoundStatus::Holdover,
            terms: Some(BoundTerms {
                clock_error_growth: 40.0,
                ..BoundTerms::default()
            }),
        };
        assert_eq!(kernel_error_estimates(&huge).0, max, "capped at 16 s");
    }
}
