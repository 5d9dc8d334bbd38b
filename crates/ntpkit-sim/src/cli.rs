//! `ntpkit simulate`: the arguments and what they do. The binary only forwards to [`run`].

use crate::plot::{plot, PlotInput};
use crate::report::{Report, RunsReport};
use crate::scenario::Scenario;
use crate::sim::{parallel_map, simulate_sharded, Outcome, Trace};
use crate::units::Duration;
use anyhow::Context;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `ntpkit simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Scenario file (TOML; see docs/scenarios.md).
    pub scenario: PathBuf,
    /// Only validate the scenario and exit (0 if valid).
    #[arg(long)]
    pub check: bool,
    /// Seed of the random streams (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Simulated time to run, e.g. "1d", "3600s", "500ms" (default: the scenario's).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the time series (time, node, true offset, frequency error, measured offset,
    /// delay) to this CSV file (the first run only with --runs).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Plot true offset versus time, one line per node, to FILE.svg or FILE.png (the first run
    /// only with --runs).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Plot |offset| on a logarithmic axis.
    #[arg(long)]
    pub log_scale: bool,
    /// Plot at most this many nodes (references are never plotted).
    #[arg(long, default_value_t = 12)]
    pub plot_nodes: usize,
    /// Repeat with seeds N..N+K−1 and report mean ± sd of every statistic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// List at most this many nodes in the table.
    #[arg(long, default_value_t = 40)]
    pub rows: usize,
    /// Threads to simulate on (default: one per core). The output does not depend on it:
    /// runs of `--runs` go to separate threads, and a run whose clients are independent is
    /// split into shards (see `simulate_sharded`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

/// Runs `sc` once per seed without traces on up to `threads` threads, and returns the outcomes
/// in seed order: one run is sharded over the threads, several runs share them out.
fn untraced_runs(sc: &Scenario, seeds: &[u64], duration: i64, threads: usize) -> Vec<Outcome> {
    if let [seed] = seeds {
        return vec![simulate_sharded(sc, *seed, duration, threads)];
    }
    parallel_map(seeds.len(), threads, |k| {
        simulate_sharded(sc, seeds[k], duration, 1)
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = Duration::parse(s)?;
    if d.0 <= 0 {
        return Err("the duration must be positive".into());
    }
    Ok(d)
}

/// Runs `ntpkit simulate` and returns the process exit code.
pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let sc = Scenario::load(&args.scenario)
        .with_context(|| format!("scenario {}", args.scenario.display()))?;
    if args.check {
        println!(
            "{}: ok ({} nodes, {} links, {} s)",
            args.scenario.display(),
            sc.nodes.len(),
            sc.link_count(),
            sc.duration as f64 * 1e-9
        );
        return Ok(ExitCode::SUCCESS);
    }
    let seed = args.seed.unwrap_or(sc.seed);
    let duration = args.duration.map_or(sc.duration, |d| d.0);
    if sc.stats_start >= duration {
        anyhow::bail!(
            "the run ({} s) ends before the statistics start ({} s)",
            duration as f64 * 1e-9,
            sc.stats_start as f64 * 1e-9
        );
    }
    let plot_nodes: Vec<usize> = if args.plot.is_some() {
        sc.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.reference.is_none())
            .map(|(i, _)| i)
            .take(args.plot_nodes)
            .collect()
    } else {
        Vec::new()
    };

    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let seeds: Vec<u64> = (0..args.runs)
        .map(|k| seed.wrapping_add(k as u64))
        .collect();
    let traced = args.csv.is_some() || args.plot.is_some();
    // The first run carries the CSV and plot traces (on one thread, in event order); every
    // other run only needs its statistics.
    let mut first = None;
    if traced {
        let mut csv = match &args.csv {
            Some(p) => Some(BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => None,
        };
        let trace = Trace {
            csv: csv.as_mut().map(|w| w as &mut dyn Write),
            plot_nodes: plot_nodes.clone(),
        };
        let out = crate::simulate(&sc, seeds[0], duration, trace);
        if let (Some(mut w), Some(p)) = (csv, &args.csv) {
            w.flush()
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if let Some(path) = &args.plot {
            let title = format!("{}: true offset (seed {})", sc.name, seeds[0]);
            let input = PlotInput {
                title: &title,
                lines: plot_nodes
                    .iter()
                    .zip(&out.series)
                    .map(|(&i, s)| (sc.nodes[i].name.as_str(), s.as_slice()))
                    .collect(),
                log_scale: args.log_scale,
            };
            plot(path, &input)?;
        }
        first = Some(out);
    }
    let rest = &seeds[usize::from(first.is_some())..];
    let outcomes = first
        .into_iter()
        .chain(untraced_runs(&sc, rest, duration, threads));
    let reports: Vec<Report> = seeds
        .iter()
        .zip(outcomes)
        .map(|(&seed, out)| Report::new(&sc, seed, duration, &out))
        .collect();

    let mut stdout = std::io::stdout().lock();
    if args.runs == 1 {
        let r = &reports[0];
        if args.json {
            serde_json::to_writer_pretty(&mut stdout, r)?;
            writeln!(stdout)?;
        } else {
            write!(stdout, "{}", r.table(args.rows))?;
            if r.nodes.len() <= 12 {
                write!(stdout, "\n{}", r.documents_statistics())?;
            }
        }
    } else {
        let runs = RunsReport::new(&reports);
        if args.json {
            serde_json::to_writer_pretty(&mut stdout, &runs)?;
            writeln!(stdout)?;
        } else {
            write!(stdout, "{}", runs.table(args.rows))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
