//! The control socket: a Unix socket where `ntpkit status` reads the daemon's state.
//!
//! Protocol (ntpkit's own): the client writes one line, `status`, and reads one JSON document
//! ([`DaemonStatus`]) until the daemon closes the connection.

use super::clock::ClockReport;
use ntpkit_core::sync::SystemStatus;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Everything the daemon reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Sources and tracking, from the core.
    pub system: SystemStatus,
    /// The clock backend.
    pub clock: ClockReport,
    /// Server counters per transport: answered, ignored, malformed.
    pub server: serde_json::Value,
}

impl DaemonStatus {
    /// Assembles a status document.
    pub fn new(system: SystemStatus, clock: ClockReport, server: serde_json::Value) -> Self {
        DaemonStatus {
            system,
            clock,
            server,
        }
    }

    /// Renders like `chronyc tracking` followed by `chronyc sources`.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let t = &self.system.tracking;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "Reference ID    : {}", t.reference_id);
        let _ = writeln!(w, "Stratum         : {}", t.stratum);
        let _ = writeln!(w, "Leap status     : {}", t.leap);
        let sync = if t.synchronized {
            "yes".to_string()
        } else {
            format!("no ({})", t.reason.as_deref().unwrap_or("unknown"))
        };
        let _ = writeln!(w, "Synchronized    : {sync}");
        let _ = writeln!(
            w,
            "System time     : {:+.9} seconds (estimated offset of true time from this clock)",
            t.offset
        );
        let _ = writeln!(w, "Last offset     : {:+.9} seconds", t.last_offset);
        let _ = writeln!(w, "Offset sd       : {:.9} seconds", t.offset_sd);
        let fast = if t.frequency_ppm >= 0.0 {
            "fast"
        } else {
            "slow"
        };
        let _ = writeln!(
            w,
            "Frequency       : {:.3} ppm {fast} (sd {:.3} ppm)",
            t.frequency_ppm.abs(),
            t.frequency_sd_ppm
        );
        let _ = writeln!(w, "Correction      : {:+.3} ppm", t.correction_ppm);
        let _ = writeln!(w, "Root delay      : {:.9} seconds", t.root_delay);
        let _ = writeln!(w, "Root dispersion : {:.9} seconds", t.root_dispersion);
        let _ = writeln!(
            w,
            "Poll            : {} ({} s)",
            t.poll,
            2f64.powi(t.poll as i32)
        );
        let _ = writeln!(w, "Updates / steps : {} / {}", t.updates, t.steps);
        let c = &self.clock;
        let _ = write!(w, "Clock           : {}", c.backend);
        if let Some(o) = c.offset_from_os {
            let _ = write!(w, ", {o:+.9} s from the OS clock");
        }
        if let Some(f) = c.frequency_error_ppm {
            let _ = write!(w, ", residual frequency error {f:+.3} ppm");
        }
        let _ = writeln!(w);
        let _ = writeln!(w);
        let _ = writeln!(w, "S Address                                 Stratum Poll Reach  LastRx      Offset       Delay      Jitter  State");
        let _ = writeln!(w, "{}", "=".repeat(113));
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:+.6}"));
        let plain = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.6}"));
        for s in &self.system.sources {
            let _ = writeln!(
                w,
                "{} {:<40} {:>7} {:>4} {:>5o} {:>7} {:>11} {:>11} {:>11}  {:?}{}",
                s.state.symbol(),
                s.address,
                s.stratum.map_or("-".to_string(), |x| x.to_string()),
                s.poll,
                s.reach,
                s.last_sample_age
                    .map_or("-".to_string(), |a| format!("{a:.0}s")),
                secs(s.offset),
                plain(s.delay),
                plain(s.jitter),
                s.state,
                s.last_rejection
                    .as_deref()
                    .map_or(String::new(), |r| format!(" ({r})")),
            );
        }
        out
    }
}

/// Asks the daemon at `socket` for its status (blocking, with a timeout).
pub fn query(socket: &Path, timeout: Duration) -> std::io::Result<DaemonStatus> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the daemon's control socket {}: {e} (is `ntpkit daemon` running \
                 with control-socket set to this path? use --socket PATH)",
                socket.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"status\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad status from daemon: {e}"),
        )
    })
}
