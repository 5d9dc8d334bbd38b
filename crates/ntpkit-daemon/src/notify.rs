//! Readiness, status and watchdog notifications to a service manager (systemd's `sd_notify`
//! protocol: `KEY=VALUE` lines in one datagram to the Unix socket named by `NOTIFY_SOCKET`).
//!
//! `ntpkit daemon` and `ntpkit serve` send `READY=1` once every socket is bound (and, for the
//! daemon, the drift file read), `STATUS=…` lines that `systemctl status` shows, `STOPPING=1`
//! when they stop, and `WATCHDOG=1` at half the interval the manager asks for
//! (`WATCHDOG_USEC`, for this process when `WATCHDOG_PID` is unset or names it).
//!
//! Without `NOTIFY_SOCKET` in the environment nothing is sent, no socket is opened and no
//! deadline is added, so the event loops make no extra system call (clknetsim, which replaces
//! the socket calls of the process, sees none of these). Nothing removes the variables from
//! the environment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Whether a notification failed already (the first failure is a warning, the rest debug).
static FAILED: AtomicBool = AtomicBool::new(false);

/// True when a service manager listens for notifications.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

fn send(states: &[sd_notify::NotifyState<'_>]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        let socket = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
        let what: Vec<String> = states.iter().map(ToString::to_string).collect();
        if FAILED.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                "cannot notify the service manager ({}) at {}: {e}",
                what.join(" "),
                socket.to_string_lossy()
            );
        } else {
            tracing::warn!(
                "cannot notify the service manager ({}) at NOTIFY_SOCKET={}: {e}; the service \
                 manager may consider the service not started (check that it runs as \
                 Type=notify and that the socket exists)",
                what.join(" "),
                socket.to_string_lossy()
            );
        }
    }
}

/// The service is up: every socket is bound. `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    let status = one_line(status);
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
}

/// A new status line (state changes worth seeing in `systemctl status`).
pub fn status(status: &str) {
    let status = one_line(status);
    send(&[sd_notify::NotifyState::Status(&status)]);
}

/// The service is stopping.
pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
}

/// A status value fits on one line of the protocol.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Keep-alive pings for a service manager's watchdog, as deadlines of an event loop.
#[derive(Debug, Clone)]
pub struct Watchdog {
    interval: Duration,
    /// Monotonic nanoseconds of the next ping.
    next: i64,
}

impl Watchdog {
    /// The watchdog the environment asks for (`WATCHDOG_USEC`, and `WATCHDOG_PID` unset or
    /// this process), if notifications can be sent; pings go at half its period, the first
    /// half a period after `now` (monotonic nanoseconds).
    pub fn from_env(now: i64) -> Option<Watchdog> {
        if !enabled() {
            return None;
        }
        let period = sd_notify::watchdog_enabled().filter(|p| !p.is_zero())?;
        let interval = period / 2;
        tracing::info!(
            "service manager watchdog: {:.1} s, pinging every {:.1} s",
            period.as_secs_f64(),
            interval.as_secs_f64()
        );
        Some(Watchdog {
            interval,
            next: now + interval.as_nanos() as i64,
        })
    }

    /// When the next ping is due (monotonic nanoseconds).
    pub fn deadline(&self) -> i64 {
        self.next
    }

    /// Pings if due at `now` (monotonic nanoseconds) and schedules the next ping.
    pub fn handle_timeout(&mut self, now: i64) {
        if now < self.next {
            return;
        }
        send(&[sd_notify::NotifyState::Watchdog]);
        self.next = now + self.interval.as_nanos() as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }

    #[test]
    fn watchdog_pings_once_per_interval() {
        let mut w = Watchdog {
            interval: Duration::from_secs(1),
            next: 5_000_000_000,
        };
        w.handle_timeout(4_999_999_999);
        assert_eq!(w.deadline(), 5_000_000_000, "not due yet: unchanged");
        w.handle_timeout(5_200_000_000);
        assert_eq!(
            w.deadline(),
            6_200_000_000,
            "next one interval after the ping"
        );
    }
}
