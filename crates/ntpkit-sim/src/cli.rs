//! `ntpkit simulate`: the arguments and what they do. The binary only forwards to [`run`].

use crate::plot::{check_font, render, PlotFormat, PlotInput};
use crate::report::{Report, RunsReport};
use crate::scenario::{Scenario, ScenarioError};
use crate::sim::{
    parallel_map, simulate_sharded_with_progress, Outcome, Sim, Trace, PROGRESS_PER_RUN,
};
use crate::units::Duration;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

const AFTER_HELP: &str = "\
Output: the report (a table, or JSON with --json) goes to standard output. With --csv - the CSV \
goes to standard output instead and the report to standard error, so that the CSV can be piped \
on unmixed.

The --csv and --plot files are created before the run starts: a path that cannot be written, or \
a plot name ending in neither .svg nor .png, fails at once. If the command fails after that, \
the files it created are removed again rather than left empty or incomplete.

When standard error is a terminal and the runs take more than a second, a progress bar is shown \
there (per simulated time, over all --runs) and cleared at the end; it never changes the output, \
which depends only on the scenario, the seed and the duration.";

/// Arguments of `ntpkit simulate`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
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
    /// delay) to this CSV file, or to standard output if FILE is `-` (the report then goes to
    /// standard error). The first run only with --runs.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Plot true offset versus time, one line per node, to FILE.svg or FILE.png (the first run
    /// only with --runs). The offset axis fits the samples from the scenario's stats-start on;
    /// the start-up before it is shaded.
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
fn untraced_runs(
    sc: &Scenario,
    seeds: &[u64],
    duration: i64,
    threads: usize,
    progress: &Progress,
) -> Vec<Outcome> {
    let advance = |units| progress.advance(units);
    if let [seed] = seeds {
        return vec![simulate_sharded_with_progress(
            sc, *seed, duration, threads, &advance,
        )];
    }
    parallel_map(seeds.len(), threads, |k| {
        simulate_sharded_with_progress(sc, seeds[k], duration, 1, &advance)
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = Duration::parse(s)?;
    if d.0 <= 0 {
        return Err("the duration must be positive".into());
    }
    Ok(d)
}

/// An output file, created before the run so that a path that cannot be written fails at
/// once. Dropped without [`OutputFile::keep`] (the command failed), it is removed again if it
/// is a regular file, rather than left empty or incomplete.
#[derive(Debug)]
struct OutputFile {
    path: PathBuf,
    file: File,
    remove: bool,
}

impl OutputFile {
    /// Creates (or truncates) `path`; `what` names it in the error ("plot file").
    fn create(path: &Path, what: &str) -> anyhow::Result<OutputFile> {
        let file = File::create(path)
            .with_context(|| format!("cannot create {what} {}", path.display()))?;
        // Devices and pipes (/dev/null, /dev/stdout) are written to, never removed.
        let remove = file.metadata().is_ok_and(|m| m.is_file());
        Ok(OutputFile {
            path: path.to_path_buf(),
            file,
            remove,
        })
    }

    fn keep(mut self) {
        self.remove = false;
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The CSV's destination. The simulator does not check its writes, so the first error is kept
/// here (and later writes are dropped) to be reported after the run.
struct CsvOut<'a> {
    out: BufWriter<Box<dyn Write + 'a>>,
    /// "CSV file NAME" or "CSV to standard output", for the error.
    name: String,
    /// Standard output: a pipe's reader may stop early (`| head`), which is no error.
    pipe: bool,
    error: Option<std::io::Error>,
}

impl<'a> CsvOut<'a> {
    fn new(out: Box<dyn Write + 'a>, name: String, pipe: bool) -> Self {
        CsvOut {
            out: BufWriter::with_capacity(1 << 16, out),
            name,
            pipe,
            error: None,
        }
    }

    /// Flushes, and returns the first error of any write.
    fn finish(mut self) -> anyhow::Result<()> {
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
        match self.error {
            None => Ok(()),
            Some(e) if self.pipe && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Some(e) => Err(e).with_context(|| format!("cannot write {}", self.name)),
        }
    }
}

impl Write for CsvOut<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(buf) {
                self.error = Some(e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Seconds of running after which the progress bar appears: shorter runs never show it.
const PROGRESS_AFTER_SECS: u64 = 1;

/// A progress bar on standard error, only if that is a terminal, and only once the runs have
/// taken [`PROGRESS_AFTER_SECS`]. The simulation reports to it through a callback that does
/// not feed back: the output never depends on it. indicatif keeps the time.
struct Progress {
    bar: Option<ProgressBar>,
    shown: AtomicBool,
}

impl Progress {
    /// `units` in all ([`PROGRESS_PER_RUN`] per run); drawn only if `terminal`.
    fn new(units: u64, terminal: bool, what: String) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(units), ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {percent:>3}% ({elapsed}, about {eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what);
            bar
        });
        Progress {
            bar,
            shown: AtomicBool::new(false),
        }
    }

    fn advance(&self, units: u64) {
        let Some(bar) = &self.bar else { return };
        bar.inc(units);
        if !self.shown.load(Ordering::Relaxed)
            && bar.elapsed().as_secs() >= PROGRESS_AFTER_SECS
            && !self.shown.swap(true, Ordering::Relaxed)
        {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
    }

    /// Removes the bar from the terminal.
    fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Reads the scenario; the error names the file once, with its cause.
fn load(path: &Path) -> anyhow::Result<Scenario> {
    Scenario::load(path).map_err(|e| match e {
        // Its message names the file already.
        ScenarioError::Read { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("scenario {}", path.display())),
    })
}

/// Runs `ntpkit simulate` and returns the process exit code.
pub fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let sc = load(&args.scenario)?;
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

    // Every output is checked and created before the run: a mistake in a path costs nothing.
    let plot_out = match &args.plot {
        Some(p) => {
            let format = PlotFormat::of(p)?;
            check_font()?;
            Some((format, OutputFile::create(p, "plot file")?))
        }
        None => None,
    };
    let csv_to_stdout = args.csv.as_deref() == Some(Path::new("-"));
    let csv_file = match &args.csv {
        Some(p) if !csv_to_stdout => Some(OutputFile::create(p, "CSV file")?),
        _ => None,
    };
    let mut csv = if csv_to_stdout {
        Some(CsvOut::new(
            Box::new(std::io::stdout().lock()),
            "CSV to standard output".into(),
            true,
        ))
    } else {
        csv_file.as_ref().map(|f| {
            CsvOut::new(
                Box::new(&f.file),
                format!("CSV file {}", f.path.display()),
                false,
            )
        })
    };

    let plot_nodes: Vec<usize> = if plot_out.is_some() {
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
    let what = if args.runs == 1 {
        format!("simulating {}", sc.name)
    } else {
        format!("simulating {} ({} runs)", sc.name, args.runs)
    };
    // Not over a CSV printed on the same terminal.
    let terminal =
        std::io::stderr().is_terminal() && !(csv_to_stdout && std::io::stdout().is_terminal());
    let progress = Progress::new(u64::from(args.runs) * PROGRESS_PER_RUN, terminal, what);
    let traced = csv.is_some() || plot_out.is_some();
    // The first run carries the CSV and plot traces (on one thread, in event order); every
    // other run only needs its statistics.
    let mut first = None;
    if traced {
        let trace = Trace {
            csv: csv.as_mut().map(|w| w as &mut dyn Write),
            plot_nodes: plot_nodes.clone(),
        };
        let out = Sim::new(&sc, seeds[0], duration, trace)
            .run_with_progress(PROGRESS_PER_RUN, &|units| progress.advance(units));
        if let Some(csv) = csv.take() {
            csv.finish()?;
        }
        if let Some((format, file)) = plot_out {
            let title = format!("{}: true offset (seed {})", sc.name, seeds[0]);
            let input = PlotInput {
                title: &title,
                lines: plot_nodes
                    .iter()
                    .zip(&out.series)
                    .map(|(&i, s)| (sc.nodes[i].name.as_str(), s.as_slice()))
                    .collect(),
                log_scale: args.log_scale,
                stats_start: sc.stats_start as f64 * 1e-9,
            };
            let bytes = render(format, &input)?;
            (&file.file)
                .write_all(&bytes)
                .with_context(|| format!("cannot write plot file {}", file.path.display()))?;
            file.keep();
        }
        first = Some(out);
    }
    drop(csv);
    let rest = &seeds[usize::from(first.is_some())..];
    let outcomes = first
        .into_iter()
        .chain(untraced_runs(&sc, rest, duration, threads, &progress));
    let reports: Vec<Report> = seeds
        .iter()
        .zip(outcomes)
        .map(|(&seed, out)| Report::new(&sc, seed, duration, &out))
        .collect();
    progress.clear();
    if let Some(f) = csv_file {
        f.keep();
    }

    // With the CSV on standard output, the report goes to standard error.
    let mut out: Box<dyn Write> = if csv_to_stdout {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    if args.runs == 1 {
        let r = &reports[0];
        if args.json {
            serde_json::to_writer_pretty(&mut out, r)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", r.table(args.rows))?;
            if r.nodes.len() <= 12 {
                write!(out, "\n{}", r.documents_statistics())?;
            }
        }
    } else {
        let runs = RunsReport::new(&reports);
        if args.json {
            serde_json::to_writer_pretty(&mut out, &runs)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", runs.table(args.rows))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_are_removed_unless_kept() {
        let dir = std::env::temp_dir().join(format!("ntpkit-sim-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (dropped, kept) = (dir.join("dropped.csv"), dir.join("kept.csv"));
        drop(OutputFile::create(&dropped, "CSV file").unwrap());
        assert!(!dropped.exists());
        OutputFile::create(&kept, "CSV file").unwrap().keep();
        assert!(kept.exists());
        // A device is written to, never removed.
        drop(OutputFile::create(Path::new("/dev/null"), "CSV file").unwrap());
        assert!(Path::new("/dev/null").exists());
        let e = OutputFile::create(&dir.join("no/such/dir.csv"), "CSV file").unwrap_err();
        let text = format!("{e:#}");
        assert!(text.starts_with("cannot create CSV file "), "{text}");
        assert!(text.ends_with("no/such/dir.csv: No such file or directory (os error 2)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_csv_write_is_reported_once_after_the_run() {
        let file = OutputFile::create(Path::new("/dev/full"), "CSV file").unwrap();
        let mut csv = CsvOut::new(Box::new(&file.file), "CSV file /dev/full".into(), false);
        for _ in 0..10_000 {
            csv.write_all(b"0.000000000,node,0,0,,\n").unwrap();
        }
        let text = format!("{:#}", csv.finish().unwrap_err());
        assert_eq!(
            text,
            "cannot write CSV file /dev/full: No space left on device (os error 28)"
        );
    }

    #[test]
    fn no_progress_bar_off_a_terminal() {
        let p = Progress::new(PROGRESS_PER_RUN, false, "x".into());
        assert!(p.bar.is_none());
        p.advance(PROGRESS_PER_RUN);
        let p = Progress::new(PROGRESS_PER_RUN, true, "x".into());
        assert!(
            p.bar.as_ref().is_some_and(|b| b.is_hidden()),
            "hidden at first"
        );
    }
}
