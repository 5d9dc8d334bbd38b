//! Reports: per-node statistics of one run, their mean ± sd over several runs, and how both are
//! printed (a table, or JSON).

use crate::coverage::BoundReport;
use crate::nts::NtsCounters;
use crate::scenario::Scenario;
use crate::sim::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// RMS, max |x| and mean of a quantity over the samples after the statistics start.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Root mean square.
    pub rms: f64,
    /// Largest absolute value.
    pub max: f64,
    /// Mean (signed).
    pub mean: f64,
}

/// One node's results.
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    /// Name.
    pub name: String,
    /// "reference", "server" (it has clients) or "client".
    pub role: &'static str,
    /// Stratum served at the end (16: unsynchronized).
    pub stratum: u8,
    /// Requests sent.
    pub packets_sent: u64,
    /// Replies received.
    pub packets_received: u64,
    /// Requests answered.
    pub requests_served: u64,
    /// Discipline updates (the documents' "syncs performed").
    pub syncs: u64,
    /// Clock steps the core commanded.
    pub steps: u64,
    /// First instant (s) after which |true error| stayed below the threshold; None if it did
    /// not end below it.
    pub sync_time_s: Option<f64>,
    /// True error at the end, seconds.
    pub final_offset_s: f64,
    /// Mean |measured offset| of the replies (the documents' "average correction"), seconds.
    pub average_correction_s: Option<f64>,
    /// True error (clock − true time), seconds.
    pub offset_s: Summary,
    /// Remaining frequency error (intrinsic + commanded correction), ppm.
    pub frequency_ppm: Summary,
    /// NTS over the node's NTS sources; absent for a node without any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nts: Option<NtsCounters>,
    /// Coverage of the error bound; absent for a node that never synchronized (and references).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_bound: Option<BoundReport>,
}

/// One run's results.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated duration, seconds.
    pub duration_s: f64,
    /// Statistics start, seconds.
    pub stats_start_s: f64,
    /// Sync threshold, seconds.
    pub sync_threshold_s: f64,
    /// NTP exchanges completed.
    pub exchanges: u64,
    /// Packets lost to loss or outages.
    pub packets_lost: u64,
    /// Events processed.
    pub events: u64,
    /// Per node.
    pub nodes: Vec<NodeReport>,
}

fn summary(n: u64, (sum, sumsq, max): (f64, f64, f64)) -> Summary {
    if n == 0 {
        return Summary::default();
    }
    let n = n as f64;
    Summary {
        rms: (sumsq / n).sqrt(),
        max,
        mean: sum / n,
    }
}

impl Report {
    /// Builds the report of a finished run.
    pub fn new(sc: &Scenario, seed: u64, duration: i64, out: &Outcome) -> Report {
        let nodes = sc
            .nodes
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let c = &out.counters[i];
                let role = if spec.reference.is_some() {
                    "reference"
                } else if c.served > 0 {
                    "server"
                } else {
                    "client"
                };
                NodeReport {
                    name: spec.name.clone(),
                    role,
                    stratum: out.stratum[i],
                    packets_sent: c.sent.into(),
                    packets_received: c.received.into(),
                    requests_served: c.served,
                    syncs: out.updates[i],
                    steps: c.steps.into(),
                    sync_time_s: c
                        .synced_since
                        .map(|t| (t - spec.start).max(0) as f64 * 1e-9),
                    final_offset_s: c.last.0,
                    average_correction_s: (c.corrections > 0)
                        .then(|| c.correction_sum / c.corrections as f64),
                    offset_s: summary(c.n.into(), c.err),
                    frequency_ppm: summary(c.n.into(), c.freq),
                    nts: spec.sources.iter().any(|s| s.nts).then_some(c.nts),
                    error_bound: c.bound.as_deref().map(BoundReport::new),
                }
            })
            .collect();
        Report {
            scenario: sc.name.clone(),
            seed,
            duration_s: duration as f64 * 1e-9,
            stats_start_s: sc.stats_start as f64 * 1e-9,
            sync_threshold_s: sc.sync_threshold as f64 * 1e-9,
            exchanges: out.exchanges,
            packets_lost: out.lost,
            events: out.events,
            nodes,
        }
    }

    /// The table printed by default. At most `max_rows` nodes are listed one per line.
    pub fn table(&self, max_rows: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {}  seed {}  duration {} s  statistics from {} s  sync threshold {}",
            self.scenario,
            self.seed,
            self.duration_s,
            self.stats_start_s,
            fmt_secs(self.sync_threshold_s)
        );
        let _ = writeln!(
            s,
            "{} exchanges, {} packets lost, {} events\n",
            self.exchanges, self.packets_lost, self.events
        );
        let _ = writeln!(
            s,
            "{:<20} {:>2} {:>7} {:>7} {:>8} {:>6} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>10}",
            "node",
            "st",
            "sent",
            "recv",
            "served",
            "syncs",
            "sync at",
            "final off",
            "avg corr",
            "RMS err",
            "max err",
            "mean err",
            "RMS freq"
        );
        for n in self.nodes.iter().take(max_rows) {
            let _ = writeln!(
                s,
                "{:<20} {:>2} {:>7} {:>7} {:>8} {:>6} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>10}",
                truncate(&n.name, 20),
                n.stratum,
                n.packets_sent,
                n.packets_received,
                n.requests_served,
                n.syncs,
                n.sync_time_s.map_or("never".into(), fmt_time),
                fmt_secs(n.final_offset_s),
                n.average_correction_s.map_or("-".into(), fmt_secs),
                fmt_secs(n.offset_s.rms),
                fmt_secs(n.offset_s.max),
                fmt_secs(n.offset_s.mean),
                format!("{:.3}ppm", n.frequency_ppm.rms),
            );
        }
        if self.nodes.len() > max_rows {
            let _ = writeln!(
                s,
                "… {} more nodes (--json lists every node)",
                self.nodes.len() - max_rows
            );
        }
        s.push_str(&bound_table(
            self.nodes.iter().filter_map(|n| {
                n.error_bound
                    .as_ref()
                    .map(|b| (n.name.as_str(), b, n.offset_s.rms))
            }),
            max_rows,
        ));
        let nts: Vec<(&str, &NtsCounters)> = self
            .nodes
            .iter()
            .filter_map(|n| n.nts.as_ref().map(|c| (n.name.as_str(), c)))
            .collect();
        if !nts.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<20} {:>8} {:>9} {:>8} {:>6} {:>7} {:>9} {:>7}",
                "NTS",
                "requests",
                "authentic",
                "dropped",
                "NAKs",
                "KE done",
                "KE failed",
                "starved"
            );
            for (name, c) in nts.iter().take(max_rows) {
                let _ = writeln!(
                    s,
                    "{:<20} {:>8} {:>9} {:>8} {:>6} {:>7} {:>9} {:>7}",
                    truncate(name, 20),
                    c.requests,
                    c.authentic,
                    c.not_authentic,
                    c.naks,
                    c.key_exchanges,
                    c.key_exchanges_failed,
                    c.starved_polls
                );
            }
            let _ = writeln!(
                s,
                "(dropped: replies that did not authenticate; starved: polls not sent for lack of a cookie)"
            );
        }
        let clients: Vec<&NodeReport> = self
            .nodes
            .iter()
            .filter(|n| n.role != "reference")
            .collect();
        if clients.len() > 1 {
            let synced = clients.iter().filter(|n| n.sync_time_s.is_some()).count();
            let mut rms: Vec<f64> = clients.iter().map(|n| n.offset_s.rms).collect();
            rms.sort_by(f64::total_cmp);
            let worst = clients.iter().map(|n| n.offset_s.max).fold(0.0, f64::max);
            let last_sync = clients
                .iter()
                .filter_map(|n| n.sync_time_s)
                .fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "\n{} disciplined nodes: {} synchronized (the last at {}); RMS error median {}, worst {}; max error {}",
                clients.len(),
                synced,
                fmt_time(last_sync),
                fmt_secs(rms[rms.len() / 2]),
                fmt_secs(rms[rms.len() - 1]),
                fmt_secs(worst)
            );
        }
        s
    }

    /// The statistics the project's source documents print, in their words.
    pub fn documents_statistics(&self) -> String {
        let mut s = String::from("=== NTP Synchronization Statistics ===\n");
        for n in self.nodes.iter().filter(|n| n.requests_served > 0) {
            let _ = writeln!(s, "{} requests served: {}", n.name, n.requests_served);
        }
        for n in self.nodes.iter().filter(|n| n.role != "reference") {
            let _ = writeln!(s, "\n{}:", n.name);
            let _ = writeln!(s, "  Syncs performed: {}", n.syncs);
            let _ = writeln!(s, "  Final clock offset: {:.6}s", n.final_offset_s);
            if let Some(a) = n.average_correction_s {
                let _ = writeln!(s, "  Average correction: {a:.6}s");
            }
        }
        s
    }
}

/// An instant in seconds: "0.7 s", "212 s".
fn fmt_time(t: f64) -> String {
    if t < 100.0 {
        format!("{t:.1} s")
    } else {
        format!("{t:.0} s")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// Seconds in a readable unit: "12.3µs", "-1.500ms", "2.500s".
pub fn fmt_secs(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 1e-6 {
        format!("{:.1}ns", x * 1e9)
    } else if a < 1e-3 {
        format!("{:.1}µs", x * 1e6)
    } else if a < 1.0 {
        format!("{:.3}ms", x * 1e3)
    } else {
        format!("{x:.3}s")
    }
}

/// Mean ± sample standard deviation of one statistic over runs.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct MeanSd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one run).
    pub sd: f64,
    /// Runs in which the statistic was defined (e.g. sync time: runs in which the node synced).
    pub runs: usize,
}

impl MeanSd {
    /// Of the given values.
    pub fn of(values: &[f64]) -> MeanSd {
        let n = values.len();
        if n == 0 {
            return MeanSd {
                mean: f64::NAN,
                sd: f64::NAN,
                runs: 0,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        MeanSd { mean, sd, runs: n }
    }
}

/// Every numeric statistic of a node, by name.
pub fn node_metrics(n: &NodeReport) -> Vec<(&'static str, Option<f64>)> {
    let mut m = vec![
        ("packets_sent", Some(n.packets_sent as f64)),
        ("packets_received", Some(n.packets_received as f64)),
        ("requests_served", Some(n.requests_served as f64)),
        ("syncs", Some(n.syncs as f64)),
        ("steps", Some(n.steps as f64)),
        ("sync_time_s", n.sync_time_s),
        ("final_offset_s", Some(n.final_offset_s)),
        ("average_correction_s", n.average_correction_s),
        ("offset_rms_s", Some(n.offset_s.rms)),
        ("offset_max_s", Some(n.offset_s.max)),
        ("offset_mean_s", Some(n.offset_s.mean)),
        ("frequency_rms_ppm", Some(n.frequency_ppm.rms)),
        ("frequency_max_ppm", Some(n.frequency_ppm.max)),
        ("frequency_mean_ppm", Some(n.frequency_ppm.mean)),
    ];
    if let Some(c) = &n.nts {
        m.extend([
            ("nts_requests", Some(f64::from(c.requests))),
            ("nts_authentic", Some(f64::from(c.authentic))),
            ("nts_not_authentic", Some(f64::from(c.not_authentic))),
            ("nts_naks", Some(f64::from(c.naks))),
            ("nts_key_exchanges", Some(f64::from(c.key_exchanges))),
            (
                "nts_key_exchanges_failed",
                Some(f64::from(c.key_exchanges_failed)),
            ),
            ("nts_starved_polls", Some(f64::from(c.starved_polls))),
        ]);
    }
    m
}

/// One node over several runs.
#[derive(Clone, Debug, Serialize)]
pub struct NodeRuns {
    /// Name.
    pub name: String,
    /// Role.
    pub role: &'static str,
    /// Runs in which the node ended synchronized.
    pub synced_runs: usize,
    /// Each statistic's mean ± sd.
    pub stats: BTreeMap<&'static str, MeanSd>,
    /// Coverage of the error bound, every run's samples pooled; absent if the node never
    /// synchronized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_bound: Option<BoundReport>,
}

/// Several runs with seeds N..N+K−1.
#[derive(Clone, Debug, Serialize)]
pub struct RunsReport {
    /// Scenario name.
    pub scenario: String,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// Exchanges per run.
    pub exchanges: MeanSd,
    /// Per node.
    pub nodes: Vec<NodeRuns>,
}

impl RunsReport {
    /// Aggregates reports of the same scenario.
    pub fn new(reports: &[Report]) -> RunsReport {
        let first = &reports[0];
        let nodes = first
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n0)| {
                let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
                for r in reports {
                    for (k, v) in node_metrics(&r.nodes[i]) {
                        let e = values.entry(k).or_default();
                        if let Some(v) = v {
                            e.push(v);
                        }
                    }
                }
                NodeRuns {
                    name: n0.name.clone(),
                    role: n0.role,
                    synced_runs: reports
                        .iter()
                        .filter(|r| r.nodes[i].sync_time_s.is_some())
                        .count(),
                    stats: values
                        .into_iter()
                        .map(|(k, v)| (k, MeanSd::of(&v)))
                        .collect(),
                    error_bound: BoundReport::pool(
                        reports
                            .iter()
                            .filter_map(|r| r.nodes[i].error_bound.as_ref()),
                    ),
                }
            })
            .collect();
        let ex: Vec<f64> = reports.iter().map(|r| r.exchanges as f64).collect();
        RunsReport {
            scenario: first.scenario.clone(),
            seeds: reports.iter().map(|r| r.seed).collect(),
            exchanges: MeanSd::of(&ex),
            nodes,
        }
    }

    /// The mean ± sd table.
    pub fn table(&self, max_rows: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {}  {} runs, seeds {}..{}  exchanges {:.0} ± {:.0}\n",
            self.scenario,
            self.seeds.len(),
            self.seeds[0],
            self.seeds[self.seeds.len() - 1],
            self.exchanges.mean,
            self.exchanges.sd
        );
        let _ = writeln!(
            s,
            "{:<20} {:>7} {:>19} {:>23} {:>23} {:>23} {:>19}",
            "node", "synced", "sync at", "RMS err", "max err", "final off", "RMS freq (ppm)"
        );
        let ms = |m: Option<&MeanSd>| match m {
            Some(m) if m.runs > 0 => format!("{} ± {}", fmt_secs(m.mean), fmt_secs(m.sd)),
            _ => "-".into(),
        };
        for n in self.nodes.iter().take(max_rows) {
            let sync = match n.stats.get("sync_time_s") {
                Some(m) if m.runs > 0 => format!("{:.0} ± {:.0} s", m.mean, m.sd),
                _ => "never".into(),
            };
            let f = n.stats["frequency_rms_ppm"];
            let _ = writeln!(
                s,
                "{:<20} {:>3}/{:<3} {:>19} {:>23} {:>23} {:>23} {:>19}",
                truncate(&n.name, 20),
                n.synced_runs,
                self.seeds.len(),
                sync,
                ms(n.stats.get("offset_rms_s")),
                ms(n.stats.get("offset_max_s")),
                ms(n.stats.get("final_offset_s")),
                format!("{:.4} ± {:.4}", f.mean, f.sd),
            );
        }
        if self.nodes.len() > max_rows {
            let _ = writeln!(
                s,
                "… {} more nodes (--json lists every node)",
                self.nodes.len() - max_rows
            );
        }
        s.push_str(&bound_table(
            self.nodes.iter().filter_map(|n| {
                let rms = n.stats.get("offset_rms_s").map_or(f64::NAN, |m| m.mean);
                n.error_bound.as_ref().map(|b| (n.name.as_str(), b, rms))
            }),
            max_rows,
        ));
        s
    }
}

/// The error bound's coverage, one node per line (name, report, RMS true error), then a
/// summary over all of them; empty without any.
fn bound_table<'a>(
    rows: impl Iterator<Item = (&'a str, &'a BoundReport, f64)>,
    max_rows: usize,
) -> String {
    let rows: Vec<_> = rows.collect();
    let mut s = String::new();
    if rows.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "\n{:<20} {:>9} {:>9} {:>7} {:>12} {:>5} {:>22} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "error bound",
        "from",
        "samples",
        "unknown",
        "coverage",
        "miss",
        "worst miss (at)",
        "median B",
        "p99 B",
        "ClockBound",
        "B/RMS",
        "B/CB"
    );
    for (name, b, rms) in rows.iter().take(max_rows) {
        let worst = b.worst_violation.map_or("-".into(), |w| {
            format!("{} ({})", fmt_secs(w.excess_s), fmt_time(w.at_s))
        });
        let median = b.median_bound_s.unwrap_or(f64::NAN);
        let cb = b.median_clockbound_s.unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "{:<20} {:>9} {:>9} {:>7} {:>11.5}% {:>5} {:>22} {:>10} {:>10} {:>10} {:>7.1} {:>7.2}",
            truncate(name, 20),
            fmt_time(b.synchronized_at_s),
            b.samples,
            b.unknown_samples,
            b.coverage * 100.0,
            b.violations,
            worst,
            b.median_bound_s.map_or("-".into(), fmt_secs),
            b.p99_bound_s.map_or("-".into(), fmt_secs),
            b.median_clockbound_s.map_or("-".into(), fmt_secs),
            median / rms,
            median / cb,
        );
    }
    if rows.len() > max_rows {
        let _ = writeln!(s, "… {} more nodes", rows.len() - max_rows);
    }
    let samples: u64 = rows.iter().map(|(_, b, _)| b.samples).sum();
    let misses: u64 = rows.iter().map(|(_, b, _)| b.violations).sum();
    let bounded: u64 = rows
        .iter()
        .map(|(_, b, _)| b.samples - b.unknown_samples)
        .sum();
    let _ = writeln!(
        s,
        "(B: half-width of the bound, true time within clock ± B; coverage: samples with a bound \
         whose |true error| ≤ B; {misses} misses in {bounded} bounded samples of {samples}; \
         ClockBound: median of |offset| + root dispersion + root delay/2; B/RMS: median B over \
         the RMS true error; B/CB: median B over ClockBound's)"
    );
    s
}
