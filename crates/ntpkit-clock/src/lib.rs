//! The time, with an interval that contains true time: a reader of the shared-memory page
//! `ntpkit daemon` publishes (`clockbound-shm` in its configuration).
//!
//! The page has AWS ClockBound's layout (version 2, [`page`]), so ClockBound's own clients
//! read it too; this crate reads it with no runtime and no dependency but `libc`.
//!
//! ```no_run
//! let clock = ntpkit_clock::Clock::open_default()?;
//! let now = clock.now()?;
//! println!("true time is between {:?} and {:?} ({:?})", now.earliest, now.latest, now.status);
//! # Ok::<(), ntpkit_clock::Error>(())
//! ```
//!
//! # The contract of [`Clock::now`]
//!
//! It reads `CLOCK_REALTIME` and widens it by the page's bound, grown at the page's maximum
//! drift for the time since the daemon computed it:
//!
//! * `Ok` with [`Status::Synchronized`]: the daemon follows its sources and refreshed the
//!   page within the last 5 s. True time is within `[earliest, latest]`, as long as what the
//!   bound assumes holds: the selected server is itself within its advertised root distance
//!   of true time, and the local oscillator's rate error stays within the daemon's configured
//!   maximum clock error (`[sync] max-clock-error-ppm`) between updates.
//! * `Ok` with [`Status::FreeRunning`]: the clock is not being corrected — the daemon lost
//!   its sources and holds over, or it has not refreshed the page for 5 s (it stopped or
//!   hangs). The interval still holds under the same assumptions and keeps widening at the
//!   maximum drift; it is only as good as that assumption.
//! * `Err(Error::Unsynchronized)`: there is no bound — not synchronized yet, the sources
//!   disagree, the holdover ran out, the daemon stopped, or the page's void-after time has
//!   passed. Do not use the clock for anything that needs a bound.
//!
//! The bound is about `CLOCK_REALTIME`: with the daemon's `system` clock backend that is the
//! clock it disciplines; with `observe` or `virtual`, the page's bound also counts how far
//! that clock is from the one ntpkit keeps, so the interval is right either way.

pub mod page;

use page::{Body, Header, HEADER_LEN, MAGIC, PAGE_LEN, VERSION};
pub use page::{Status, Timespec, DEFAULT_PATH};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after as-of a synchronized page stays synchronized without a refresh; after it,
/// readers take the clock as free running (ClockBound's grace period).
pub const REFRESH_GRACE: Duration = Duration::from_secs(5);

/// How far a reader's monotonic clock may lag the page's as-of (other CPUs' coarse clock
/// ticks) before the page is taken for one from the future.
const CAUSALITY_BLUR_NS: i128 = 1_000;

/// An interval that contains true time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// True time is no earlier than this.
    pub earliest: SystemTime,
    /// True time is no later than this.
    pub latest: SystemTime,
    /// [`Status::Synchronized`] or [`Status::FreeRunning`] (see the crate's contract).
    pub status: Status,
}

impl Interval {
    /// True if true time at this interval's instant was certainly before `other`'s: the two
    /// intervals do not overlap and this one is earlier. Neither `a.certainly_before(b)` nor
    /// `b.certainly_before(a)` means the order of the two events is unknown.
    pub fn certainly_before(&self, other: &Interval) -> bool {
        self.latest < other.earliest
    }

    /// True if `t` is certainly in the past at this interval's instant.
    pub fn certainly_after(&self, t: SystemTime) -> bool {
        t < self.earliest
    }

    /// Half the width: the bound on the clock's error.
    pub fn bound(&self) -> Duration {
        self.latest
            .duration_since(self.earliest)
            .unwrap_or_default()
            / 2
    }
}

/// Why there is no interval.
#[derive(Debug)]
pub enum Error {
    /// The page cannot be opened or mapped.
    Open(PathBuf, io::Error),
    /// The file is not a page: wrong signature, size or version.
    NotAPage(PathBuf, String),
    /// The page holds no bound: its status (unknown or disrupted), or its void-after time has
    /// passed.
    Unsynchronized(Status),
    /// The page's as-of lies in this machine's future (it was written on another boot).
    CausalityBreach,
    /// The writer kept updating while every read was under way.
    Busy,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Open(p, e) => write!(
                f,
                "cannot read the clock page {}: {e} (is `clockbound-shm` set in ntpkit's \
                 configuration, and the daemon running?)",
                p.display()
            ),
            Error::NotAPage(p, why) => write!(f, "{} is not a clock page: {why}", p.display()),
            Error::Unsynchronized(s) => {
                write!(f, "the clock has no error bound (status {s:?})")
            }
            Error::CausalityBreach => {
                f.write_str("the clock page was written after now: it is from another boot")
            }
            Error::Busy => f.write_str("the clock page changed during every read"),
        }
    }
}

impl std::error::Error for Error {}

/// A mapped page.
#[derive(Debug)]
pub struct Clock {
    map: *const u8,
    _file: File,
}

// SAFETY: the mapping is read-only and only read through volatile reads and atomics.
unsafe impl Send for Clock {}
// SAFETY: as above; readers never write.
unsafe impl Sync for Clock {}

impl Clock {
    /// Maps the page at [`DEFAULT_PATH`], where ntpkit (and ClockBound) publish by default.
    pub fn open_default() -> Result<Clock, Error> {
        Clock::open(Path::new(DEFAULT_PATH))
    }

    /// Maps the page at `path` and checks its header.
    pub fn open(path: &Path) -> Result<Clock, Error> {
        let open_err = |e| Error::Open(path.to_path_buf(), e);
        let file = File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        if len < PAGE_LEN as u64 {
            return Err(Error::NotAPage(
                path.to_path_buf(),
                format!("{len} bytes, a page has {PAGE_LEN}"),
            ));
        }
        // SAFETY: a fresh read-only mapping of a file we hold open; checked for failure.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(open_err(io::Error::last_os_error()));
        }
        let clock = Clock {
            map: map.cast(),
            _file: file,
        };
        // SAFETY: the mapping is PAGE_LEN bytes, page-aligned.
        let Header {
            magic,
            size,
            version,
        } = unsafe { Header::read(clock.map) };
        let not_a_page = |why: String| Err(Error::NotAPage(path.to_path_buf(), why));
        if magic != MAGIC {
            return not_a_page("no ClockBound signature".into());
        }
        if version != VERSION {
            return not_a_page(format!(
                "layout version {version}, this reader knows {VERSION}"
            ));
        }
        if (size as usize) < PAGE_LEN {
            return not_a_page(format!("segment size {size}, less than {PAGE_LEN}"));
        }
        Ok(clock)
    }

    /// The page's body as last written whole.
    pub fn snapshot(&self) -> Result<Body, Error> {
        // SAFETY: offset 14 is 2-aligned within the mapping, which lives as long as self.
        let generation = unsafe { &*self.map.add(14).cast::<AtomicU16>() };
        for _ in 0..100_000 {
            let first = generation.load(Ordering::Acquire);
            if first == 0 {
                return Err(Error::Unsynchronized(Status::Unknown));
            }
            if first & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: the body lies within the mapping, 8-aligned at offset 16.
            let body = unsafe { self.map.add(HEADER_LEN).cast::<Body>().read_volatile() };
            fence(Ordering::Acquire);
            if generation.load(Ordering::Relaxed) == first {
                return Ok(body);
            }
        }
        Err(Error::Busy)
    }

    /// The interval that contains true time now (see the crate's contract).
    pub fn now(&self) -> Result<Interval, Error> {
        let body = self.snapshot()?;
        let real = page::realtime();
        let mono = page::monotonic_coarse();
        interval_at(&body, real, mono)
    }

    /// Waits until `t` is certainly in the past (commit-wait), and returns how long that
    /// took. Fails at once, or during the wait, if the clock has no bound.
    pub fn wait_until_past(&self, t: SystemTime) -> Result<Duration, Error> {
        let start = std::time::Instant::now();
        loop {
            let now = self.now()?;
            if now.certainly_after(t) {
                return Ok(start.elapsed());
            }
            // Until the earliest edge passes t; the bound grows meanwhile, so check again.
            let left = t.duration_since(now.earliest).unwrap_or_default();
            std::thread::sleep(left + Duration::from_micros(1));
        }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        // SAFETY: mapped in open with PAGE_LEN bytes.
        unsafe { libc::munmap(self.map as *mut libc::c_void, PAGE_LEN) };
    }
}

/// The interval `body` gives when `CLOCK_REALTIME` reads `real` and
/// `CLOCK_MONOTONIC_COARSE` reads `mono`.
pub fn interval_at(body: &Body, real: Timespec, mono: Timespec) -> Result<Interval, Error> {
    let status = Status::from_code(body.clock_status).unwrap_or(Status::Unknown);
    let (as_of, mono_ns) = (body.as_of.as_nanos(), mono.as_nanos());
    let status = match status {
        Status::Unknown | Status::Disrupted => return Err(Error::Unsynchronized(status)),
        _ if mono_ns >= body.void_after.as_nanos() => {
            return Err(Error::Unsynchronized(Status::Unknown))
        }
        _ if mono_ns >= as_of + REFRESH_GRACE.as_nanos() as i128 => Status::FreeRunning,
        s => s,
    };
    if mono_ns < as_of - CAUSALITY_BLUR_NS {
        return Err(Error::CausalityBreach);
    }
    if body.bound_nsec < 0 || body.max_drift_ppb >= 1_000_000_000 {
        return Err(Error::Unsynchronized(Status::Unknown));
    }
    let elapsed = (mono_ns - as_of).max(0);
    // Rounded up: the bound never shrinks in the arithmetic.
    let growth = (elapsed * body.max_drift_ppb as i128 + 999_999_999) / 1_000_000_000;
    let bound = body.bound_nsec as i128 + growth;
    let real = real.as_nanos();
    Ok(Interval {
        earliest: system_time(real - bound),
        latest: system_time(real + bound),
        status,
    })
}

fn system_time(unix_nanos: i128) -> SystemTime {
    let magnitude = Duration::new(
        (unix_nanos.unsigned_abs() / 1_000_000_000).min(u64::MAX as u128) as u64,
        (unix_nanos.unsigned_abs() % 1_000_000_000) as u32,
    );
    if unix_nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(sec: i64, nsec: i64) -> Timespec {
        Timespec { sec, nsec }
    }

    fn body(status: Status) -> Body {
        Body {
            as_of: ts(100, 0),
            void_after: ts(1100, 0),
            bound_nsec: 50_000,
            max_drift_ppb: 1_000,
            clock_status: status.code(),
            ..Body::default()
        }
    }

    fn nanos(t: SystemTime) -> i128 {
        t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
    }

    #[test]
    fn the_bound_grows_at_the_maximum_drift() {
        let real = ts(1_700_000_000, 0);
        let i = interval_at(&body(Status::Synchronized), real, ts(102, 0)).unwrap();
        assert_eq!(i.status, Status::Synchronized);
        // 50 µs + 2 s × 1 ppm = 52 µs either side.
        assert_eq!(nanos(i.latest) - real.as_nanos(), 52_000);
        assert_eq!(real.as_nanos() - nanos(i.earliest), 52_000);
        assert_eq!(i.bound(), Duration::from_micros(52));
    }

    #[test]
    fn each_status_has_its_contract() {
        let real = ts(1_700_000_000, 0);
        let sync = body(Status::Synchronized);
        assert_eq!(
            interval_at(&sync, real, ts(104, 999_999_999))
                .unwrap()
                .status,
            Status::Synchronized
        );
        assert_eq!(
            interval_at(&sync, real, ts(105, 0)).unwrap().status,
            Status::FreeRunning,
            "no refresh for 5 s: the writer may be gone"
        );
        assert!(matches!(
            interval_at(&sync, real, ts(1100, 0)),
            Err(Error::Unsynchronized(Status::Unknown))
        ));
        assert_eq!(
            interval_at(&body(Status::FreeRunning), real, ts(101, 0))
                .unwrap()
                .status,
            Status::FreeRunning
        );
        for s in [Status::Unknown, Status::Disrupted] {
            assert!(matches!(
                interval_at(&body(s), real, ts(101, 0)),
                Err(Error::Unsynchronized(x)) if x == s
            ));
        }
        assert!(matches!(
            interval_at(&sync, real, ts(99, 0)),
            Err(Error::CausalityBreach)
        ));
        // Within the coarse clock's blur of as-of: no growth, no error.
        let i = interval_at(&sync, real, ts(99, 999_999_500)).unwrap();
        assert_eq!(i.bound(), Duration::from_micros(50));
    }

    #[test]
    fn ordering_needs_disjoint_intervals() {
        let at = |ns: u64, b: u64| Interval {
            earliest: UNIX_EPOCH + Duration::from_nanos(ns - b),
            latest: UNIX_EPOCH + Duration::from_nanos(ns + b),
            status: Status::Synchronized,
        };
        let (a, b) = (at(1_000_000, 100), at(1_000_300, 100));
        assert!(a.certainly_before(&b));
        assert!(!b.certainly_before(&a));
        let c = at(1_000_150, 100);
        assert!(
            !a.certainly_before(&c) && !c.certainly_before(&a),
            "overlap: unknown order"
        );
        assert!(b.certainly_after(UNIX_EPOCH + Duration::from_nanos(1_000_199)));
        assert!(!b.certainly_after(UNIX_EPOCH + Duration::from_nanos(1_000_200)));
    }
}
