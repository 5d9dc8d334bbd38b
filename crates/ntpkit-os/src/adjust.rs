//! Adjusting the OS clock with `clock_adjtime`: the `system` clock backend, and nothing else.
//!
//! Never called by tests or CI: they run every daemon without CAP_SYS_TIME and use the
//! `observe` or `virtual` backends. [`probe_adjust`] lets the daemon refuse the `system`
//! backend with a clear message at start instead of failing on the first adjustment; it asks
//! the clock call itself (as chronyd does), so it gives the right answer wherever the call is
//! provided by something else than the kernel (a simulator that preloads it, say).

use std::io;

/// Bit of CAP_SYS_TIME in the capability sets (linux/capability.h).
const CAP_SYS_TIME: u32 = 25;

/// Checks that this process may adjust CLOCK_REALTIME without changing it: writes the kernel's
/// maximum-error estimate back unchanged (`ADJ_MAXERROR`), which needs the same privilege as any
/// adjustment (CAP_SYS_TIME) and moves neither the time nor its frequency. Fails with
/// `PermissionDenied` without the privilege.
pub fn probe_adjust() -> io::Result<()> {
    // SAFETY: an all-zero timex is a valid value for every field; modes = 0 only reads.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    adjtime(&mut tx)?;
    tx.modes = libc::ADJ_MAXERROR;
    adjtime(&mut tx)
}

/// True if this process's effective capabilities include CAP_SYS_TIME (read from
/// /proc/self/status). For tests that must not even try an adjustment when they could succeed;
/// the daemon asks the clock call instead ([`probe_adjust`]).
pub fn has_cap_sys_time() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_TIME) != 0)
}

/// Steps CLOCK_REALTIME by `offset_ns` (ADJ_SETOFFSET). Needs CAP_SYS_TIME.
pub fn step_realtime(offset_ns: i64) -> io::Result<()> {
    // SAFETY: an all-zero timex is a valid value for every field.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
    let secs = offset_ns.div_euclid(1_000_000_000);
    let nanos = offset_ns.rem_euclid(1_000_000_000);
    tx.time.tv_sec = secs as libc::time_t;
    tx.time.tv_usec = nanos as libc::suseconds_t;
    adjtime(&mut tx)
}

/// Nominal length of a clock tick, µs (USER_HZ = 100); each µs of tick adjustment is 100 ppm.
const NOMINAL_TICK_US: i64 = 10_000;
const PPM_PER_TICK_US: f64 = 100.0;

/// Sets the frequency correction of CLOCK_REALTIME to `ppm`: the coarse part through the tick
/// length (ADJ_TICK, ±10 %), the rest through ADJ_FREQUENCY (±500 ppm), as chrony does for
/// rates beyond the kernel's frequency limit. Needs CAP_SYS_TIME.
pub fn set_realtime_frequency(ppm: f64) -> io::Result<()> {
    let ppm = ppm.clamp(-99_000.0, 99_000.0);
    let tick_delta = (ppm / PPM_PER_TICK_US).round() as i64;
    let fine = ppm - tick_delta as f64 * PPM_PER_TICK_US;
    // SAFETY: an all-zero timex is a valid value for every field.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_FREQUENCY | libc::ADJ_TICK;
    tx.tick = (NOMINAL_TICK_US + tick_delta) as libc::c_long;
    tx.freq = (fine.clamp(-500.0, 500.0) * 65536.0).round() as libc::c_long;
    adjtime(&mut tx)
}

/// The kernel's largest error estimate, µs (16 s, `NTP_PHASE_LIMIT << 5` in the kernel's units):
/// at it, the kernel takes the clock for unsynchronized.
pub const MAX_KERNEL_ERROR_US: i64 = 16_000_000;

/// Sets the kernel's error estimates of CLOCK_REALTIME (`ADJ_MAXERROR`, `ADJ_ESTERROR`, µs,
/// capped at [`MAX_KERNEL_ERROR_US`]) for programs that read them with `adjtimex`/`ntp_gettime`.
/// The kernel itself adds 500 µs to the maximum error every second. Moves neither the time nor
/// its frequency; needs CAP_SYS_TIME. Returns the kernel's values after the call, read back.
pub fn set_error_estimates(max_error_us: i64, est_error_us: i64) -> io::Result<(i64, i64)> {
    // SAFETY: an all-zero timex is a valid value for every field.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
    tx.maxerror = max_error_us.clamp(0, MAX_KERNEL_ERROR_US) as libc::c_long;
    tx.esterror = est_error_us.clamp(0, MAX_KERNEL_ERROR_US) as libc::c_long;
    adjtime(&mut tx)?;
    Ok((tx.maxerror as i64, tx.esterror as i64))
}

fn adjtime(tx: &mut libc::timex) -> io::Result<()> {
    // SAFETY: `tx` is a valid, initialized timex for the duration of the call.
    let r = unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, tx) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn capability_read_does_not_fail() {
        // Only reads /proc; whatever the answer, it must not panic.
        let _ = super::has_cap_sys_time();
    }
}
