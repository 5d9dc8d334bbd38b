//! `ntpkit bench --nts-ke`: complete NTS-KE exchanges per second.
//!
//! Each of `connections` threads runs whole key exchanges back to back with
//! [`crate::nts_ke::key_exchange`], as `ntpkit query --nts` does: TCP connect, a full TLS 1.3
//! handshake (session resumption off, as for a client that comes for the first time), the
//! request and response records, close. One exchange runs first, outside the measurement, so
//! that a server that refuses or an untrusted certificate stops the run with the error
//! `ntpkit query --nts` gives. The run is bounded by its duration and by an optional count.
//!
//! An exchange counts in the window when it ends there; a failure is counted and the thread
//! pauses a millisecond before the next try, so that a server refusing at once is not spun on.

use super::{BenchError, Histogram, LatencyReport, NANOS_PER_SEC};
use crate::nts_ke;
use rustls::client::Resumption;
use rustls::ClientConfig;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct KeBenchConfig {
    /// Host of the NTS-KE server (also the TLS server name).
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// The TLS configuration (trusted certificates); resumption is switched off for the run.
    pub tls: Arc<ClientConfig>,
    /// Exchanges run at once, one thread each.
    pub connections: usize,
    /// Time before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Time allowed for one exchange.
    pub timeout: Duration,
    /// Stop after this many exchanges in all (warm-up included).
    pub max_exchanges: Option<u64>,
    /// Accept a server outside loopback.
    pub allow_remote: bool,
}

/// What the threads counted.
#[derive(Clone, Debug, Default)]
pub struct KeTally {
    /// Exchanges that ended with keys and cookies in the window.
    pub completed: u64,
    /// Exchanges that failed in the window.
    pub failed: u64,
    /// Exchanges completed in the whole run.
    pub completed_total: u64,
    /// Exchanges that failed in the whole run.
    pub failed_total: u64,
    /// The first failure's message.
    pub first_failure: Option<String>,
    /// Duration of the window's completed exchanges, ns.
    pub latency: Histogram,
    /// Length of the measured window, ns.
    pub window_ns: i64,
}

impl KeTally {
    fn merge(&mut self, o: &KeTally) {
        self.completed += o.completed;
        self.failed += o.failed;
        self.completed_total += o.completed_total;
        self.failed_total += o.failed_total;
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&o.first_failure);
        }
        self.latency.merge(&o.latency);
        self.window_ns = self.window_ns.max(o.window_ns);
    }
}

/// Checks `cfg`'s numbers.
fn validate(cfg: &KeBenchConfig) -> Result<(), BenchError> {
    let err = |m: &str| Err(BenchError::Config(m.to_string()));
    if cfg.connections == 0 || cfg.connections > 256 {
        return err("--connections must be 1–256");
    }
    if cfg.duration.is_zero() {
        return err("--duration must be more than 0 seconds");
    }
    if cfg.timeout.is_zero() {
        return err("--timeout must be more than 0 seconds");
    }
    Ok(())
}

/// Runs the key exchanges and returns what every thread counted, merged.
pub fn run(cfg: &KeBenchConfig) -> Result<KeTally, BenchError> {
    validate(cfg)?;
    super::nts::check_ke_target(&cfg.host, cfg.port, cfg.allow_remote)?;
    let mut tls = (*cfg.tls).clone();
    tls.resumption = Resumption::disabled();
    let tls = Arc::new(tls);
    nts_ke::key_exchange(&cfg.host, cfg.port, tls.clone(), cfg.timeout).map_err(BenchError::Nts)?;
    let nanos = |d: Duration| d.as_nanos().min(i64::MAX as u128 / 4) as i64;
    let start_ns = ntpkit_os::monotonic_nanos();
    let measure_ns = start_ns + nanos(cfg.warmup);
    let end_ns = measure_ns + nanos(cfg.duration);
    let started = AtomicU64::new(0);
    let limit = cfg.max_exchanges.unwrap_or(u64::MAX);
    let one = |tls: Arc<ClientConfig>| {
        let mut t = KeTally::default();
        let mut window_end = end_ns;
        loop {
            let t0 = ntpkit_os::monotonic_nanos();
            if t0 >= end_ns || started.fetch_add(1, Ordering::Relaxed) >= limit {
                window_end = window_end.min(t0);
                break;
            }
            let result = nts_ke::key_exchange(&cfg.host, cfg.port, tls.clone(), cfg.timeout);
            let t1 = ntpkit_os::monotonic_nanos();
            let in_window = t1 >= measure_ns && t1 < end_ns;
            match result {
                Ok(_) => {
                    t.completed_total += 1;
                    if in_window {
                        t.completed += 1;
                        t.latency.record((t1 - t0).max(0) as u64);
                    }
                }
                Err(e) => {
                    t.failed_total += 1;
                    if in_window {
                        t.failed += 1;
                    }
                    t.first_failure.get_or_insert_with(|| e.to_string());
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        t.window_ns = (window_end - measure_ns).max(0);
        t
    };
    let tallies: Vec<KeTally> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cfg.connections)
            .map(|_| {
                let tls = tls.clone();
                scope.spawn(|| one(tls))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("key-exchange thread panicked"))
            .collect()
    });
    let mut total = KeTally::default();
    for t in &tallies {
        total.merge(t);
    }
    Ok(total)
}

/// The result of a run, as printed (text or JSON).
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct KeReport {
    /// The NTS-KE server, `HOST:PORT`.
    pub target: String,
    /// Always `nts-ke`.
    pub mode: &'static str,
    /// Exchanges run at once.
    pub connections: usize,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// The measured window, seconds.
    pub duration_s: f64,
    /// Exchanges completed in the window.
    pub completed: u64,
    /// Exchanges completed per second in the window.
    pub completed_per_s: f64,
    /// Exchanges failed in the window.
    pub failed: u64,
    /// The first failure's message.
    pub first_failure: Option<String>,
    /// Duration of the window's exchanges (connect to response); None without any.
    pub latency_us: Option<LatencyReport>,
    /// Whole-run totals: completed and failed exchanges.
    pub total: KeTotals,
}

/// Whole-run totals of a key-exchange run (warm-up included).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct KeTotals {
    /// Exchanges completed.
    pub completed: u64,
    /// Exchanges failed.
    pub failed: u64,
}

impl KeReport {
    /// The report of `tally` for a run of `cfg`.
    pub fn new(cfg: &KeBenchConfig, tally: &KeTally) -> KeReport {
        let secs = tally.window_ns.max(0) as f64 / NANOS_PER_SEC;
        let target = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        KeReport {
            target,
            mode: "nts-ke",
            connections: cfg.connections,
            warmup_s: cfg.warmup.as_secs_f64(),
            duration_s: secs,
            completed: tally.completed,
            completed_per_s: if secs > 0.0 {
                tally.completed as f64 / secs
            } else {
                0.0
            },
            failed: tally.failed,
            first_failure: tally.first_failure.clone(),
            latency_us: LatencyReport::of(&tally.latency),
            total: KeTotals {
                completed: tally.completed_total,
                failed: tally.failed_total,
            },
        }
    }

    /// The human-readable report, several lines.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "NTS-KE server {}: {} connection{} back to back, full TLS 1.3 handshakes; measured \
             {:.3} s after {:.1} s warm-up",
            self.target,
            self.connections,
            super::plural(self.connections),
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(
            s,
            "key exchanges: {:>8}/s  ({} completed, {} failed)",
            super::group(self.completed_per_s.round() as u64),
            super::group(self.completed),
            super::group(self.failed)
        );
        match &self.latency_us {
            Some(l) => {
                let _ = writeln!(s, "duration: {}", l.render());
            }
            None => s.push_str("duration: no exchange completed in the window\n"),
        }
        if let Some(f) = &self.first_failure {
            let _ = writeln!(s, "first failure: {f}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_and_refused_server_is_named() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = KeBenchConfig {
            host: "127.0.0.1".into(),
            port,
            tls: nts_ke::ke_config(rustls::RootCertStore::empty()).unwrap(),
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            max_exchanges: None,
            allow_remote: false,
        };
        let e = run(&cfg).unwrap_err().to_string();
        assert!(e.contains("refused the connection"), "{e}");
        for bad in [
            KeBenchConfig {
                connections: 0,
                ..cfg.clone()
            },
            KeBenchConfig {
                duration: Duration::ZERO,
                ..cfg.clone()
            },
        ] {
            assert!(matches!(run(&bad), Err(BenchError::Config(_))), "{bad:?}");
        }
        let remote = KeBenchConfig {
            host: "192.0.2.1".into(),
            ..cfg.clone()
        };
        assert!(matches!(run(&remote), Err(BenchError::NotLoopback(_))));
    }

    #[test]
    fn report_text() {
        let cfg = KeBenchConfig {
            host: "localhost".into(),
            port: 4460,
            tls: nts_ke::ke_config(rustls::RootCertStore::empty()).unwrap(),
            connections: 2,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            max_exchanges: None,
            allow_remote: false,
        };
        let mut t = KeTally {
            completed: 3000,
            completed_total: 3700,
            failed: 1,
            failed_total: 1,
            first_failure: Some("boom".into()),
            window_ns: 2_000_000_000,
            ..KeTally::default()
        };
        t.latency.record(600_000);
        let r = KeReport::new(&cfg, &t);
        assert_eq!(r.completed_per_s, 1500.0);
        let text = r.render_text();
        for needle in [
            "NTS-KE server localhost:4460: 2 connections",
            "key exchanges:    1,500/s  (3,000 completed, 1 failed)",
            "duration: p50 600.0 µs",
            "first failure: boom",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mode"], "nts-ke");
        assert_eq!(json["total"]["completed"], 3700);
    }
}
