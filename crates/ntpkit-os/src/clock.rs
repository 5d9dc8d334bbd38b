//! Reading the OS clocks. Read only: nothing here changes any clock.

use std::io;

/// Nanoseconds per second.
const NANOS_PER_SEC: i64 = 1_000_000_000;

fn clock_nanos(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used here always exist on Linux,
    // so the call cannot fail (and if it did, `ts` stays zeroed).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as i64)
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(ts.tv_nsec as i64)
}

/// The system clock (`CLOCK_REALTIME`) in nanoseconds since the Unix epoch. Call for the
/// timestamps that go into NTP packets.
pub fn realtime_nanos() -> i64 {
    clock_nanos(libc::CLOCK_REALTIME)
}

/// `CLOCK_MONOTONIC` in nanoseconds from an arbitrary origin (vDSO, no system call). Call for
/// deadlines and intervals; it never steps.
pub fn monotonic_nanos() -> i64 {
    clock_nanos(libc::CLOCK_MONOTONIC)
}

/// The precision of `CLOCK_REALTIME` as log2 seconds (the NTP header's precision field).
///
/// Measured the way a reader sees it: the larger of the clock's resolution (`clock_getres`) and
/// the smallest step between two consecutive readings, rounded up to a power of two. Takes a
/// few microseconds; call once at start.
pub fn clock_precision_log2() -> i8 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    let res_ns = if unsafe { libc::clock_getres(libc::CLOCK_REALTIME, &mut res) } == 0 {
        (res.tv_sec as i64 * NANOS_PER_SEC + res.tv_nsec as i64).max(1)
    } else {
        1
    };
    let mut min_step = i64::MAX;
    for _ in 0..64 {
        let a = realtime_nanos();
        let mut b = realtime_nanos();
        // Spin until the clock moves, bounded so that a stuck clock cannot hang us.
        let mut spins = 0;
        while b == a && spins < 10_000 {
            b = realtime_nanos();
            spins += 1;
        }
        if b > a {
            min_step = min_step.min(b - a);
        }
    }
    let ns = res_ns.max(if min_step == i64::MAX { 1 } else { min_step });
    precision_log2_of_nanos(ns)
}

/// log2 seconds of `ns` nanoseconds, rounded up (1 ns → −29, 1 µs → −19, 1 s → 0).
fn precision_log2_of_nanos(ns: i64) -> i8 {
    let mut exp: i32 = 0;
    // Smallest power of two seconds that is ≥ ns: 2^exp s ≥ ns·10⁻⁹ s.
    let target = ns as f64 / NANOS_PER_SEC as f64;
    while exp > -32 && 2f64.powi(exp - 1) >= target {
        exp -= 1;
    }
    exp as i8
}

/// The kernel's view of the system clock's synchronization, as `adjtimex` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KernelClockStatus {
    /// False when the kernel's `STA_UNSYNC` flag is set (nobody disciplines the clock).
    pub synchronized: bool,
    /// Maximum error bound, microseconds (the kernel grows it by 500 ppm when undisciplined).
    pub max_error_us: i64,
    /// Estimated error, microseconds.
    pub est_error_us: i64,
    /// Frequency offset in the kernel's units of 2⁻¹⁶ ppm.
    pub frequency_scaled_ppm: i64,
    /// The raw `status` bits (`STA_*`).
    pub status: i32,
    /// The clock state returned by the call (`TIME_OK` = 0 … `TIME_ERROR` = 5).
    pub state: i32,
}

/// Reads the kernel clock status with `adjtimex(modes = 0)`: a pure read that needs no privilege
/// and changes nothing.
pub fn kernel_clock_status() -> io::Result<KernelClockStatus> {
    // SAFETY: timex is plain data; all-zero is a valid value and means modes = 0 (read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    // SAFETY: `tx` is a valid, writable timex with modes = 0, so the kernel only reads out.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(KernelClockStatus {
        synchronized: tx.status & libc::STA_UNSYNC == 0,
        max_error_us: tx.maxerror as i64,
        est_error_us: tx.esterror as i64,
        frequency_scaled_ppm: tx.freq as i64,
        status: tx.status,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_nanos();
        let b = monotonic_nanos();
        assert!(b >= a);
        // After 2020 and before 2100.
        let now = realtime_nanos();
        assert!(now > 1_577_836_800 * NANOS_PER_SEC && now < 4_102_444_800 * NANOS_PER_SEC);
    }

    #[test]
    fn precision_rounding() {
        assert_eq!(precision_log2_of_nanos(1), -29);
        assert_eq!(precision_log2_of_nanos(1_000), -19);
        assert_eq!(precision_log2_of_nanos(NANOS_PER_SEC), 0);
        let p = clock_precision_log2();
        assert!((-30..=-6).contains(&p), "{p}");
    }

    #[test]
    fn kernel_status_reads() {
        let s = kernel_clock_status().unwrap();
        assert!(s.max_error_us >= 0);
    }
}
