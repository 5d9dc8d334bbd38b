//! The commands that talk to a running daemon over its control socket: `status`, `sources`,
//! `now`, `source add|remove|burst`, `makestep`.

use clap::{Args, Subcommand};
use ntpkit_daemon::daemon::control::{self, ControlCommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the daemon's control socket is unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ntpkit/ntpkit.sock";

/// How to reach the daemon, and how to print its answer.
#[derive(Args, Debug)]
pub struct ControlArgs {
    /// The daemon's control socket (its config's control-socket).
    #[arg(long, short = 's', value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub timeout: f64,
}

impl ControlArgs {
    fn timeout(&self) -> anyhow::Result<Duration> {
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            anyhow::bail!(
                "--timeout {}: give a number of seconds above 0 and at most 3600",
                self.timeout
            );
        }
        Ok(Duration::from_secs_f64(self.timeout))
    }
}

/// `ntpkit source …`.
#[derive(Subcommand, Debug)]
pub enum SourceCommand {
    /// Add a server (or, with --pool, a pool) to the running daemon.
    Add(SourceAddArgs),
    /// Remove a server or pool as configured, or one source by its address.
    Remove(SourceRemoveArgs),
    /// Send a burst of four requests, two seconds apart, to one source or to all.
    Burst(SourceBurstArgs),
}

#[derive(Args, Debug)]
pub struct SourceAddArgs {
    /// `host[:port]`, `IPv4[:port]`, `IPv6` or `[IPv6]:port`, as in the configuration.
    pub address: String,
    /// A pool: every address the name resolves to becomes a source (up to --max-sources).
    #[arg(long)]
    pub pool: bool,
    /// Shortest poll interval, log2 seconds [default: 6]
    #[arg(long, allow_negative_numbers = true)]
    pub minpoll: Option<i8>,
    /// Longest poll interval, log2 seconds [default: 10]
    #[arg(long, allow_negative_numbers = true)]
    pub maxpoll: Option<i8>,
    /// No burst of requests at start.
    #[arg(long)]
    pub no_iburst: bool,
    /// A pool's most members [default: 4]
    #[arg(long)]
    pub max_sources: Option<usize>,
    /// Network Time Security: ADDRESS is the NTS-KE server (port 4460 unless given); only
    /// authenticated replies are used.
    #[arg(long)]
    pub nts: bool,
    /// PEM file of the certificates trusted for NTS-KE [default: the system's CA bundle]
    #[arg(long, value_name = "FILE", requires = "nts")]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct SourceRemoveArgs {
    /// The server or pool as configured (`pool.example`), or a source's address
    /// (`192.0.2.1`, `192.0.2.1:123`).
    pub address: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct SourceBurstArgs {
    /// A source's address or a configured name [default: every source]
    pub address: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `ntpkit status`: tracking and sources.
pub fn status(a: &ControlArgs) -> anyhow::Result<ExitCode> {
    let status = control::query(&a.socket, a.timeout()?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `ntpkit sources`: the sources table (JSON: the array of sources).
pub fn sources(a: &ControlArgs) -> anyhow::Result<ExitCode> {
    let status = control::query(&a.socket, a.timeout()?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status.system.sources)?);
    } else if status.system.sources.is_empty() {
        println!("no sources");
    } else {
        print!("{}", status.render_sources());
    }
    Ok(ExitCode::SUCCESS)
}

/// `ntpkit now`: the daemon's time, the interval true time is in, the bound and its status.
/// Exit status 1 when the status is unknown (no bound).
pub fn now(a: &ControlArgs) -> anyhow::Result<ExitCode> {
    let now = control::query_now(&a.socket, a.timeout()?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&now)?);
    } else {
        print!("{}", now.render());
    }
    Ok(if now.bound.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ntpkit source …`.
pub fn source(c: SourceCommand) -> anyhow::Result<ExitCode> {
    match c {
        SourceCommand::Add(a) => send(
            &a.control,
            ControlCommand::SourceAdd {
                address: a.address,
                pool: a.pool,
                minpoll: a.minpoll,
                maxpoll: a.maxpoll,
                iburst: a.no_iburst.then_some(false),
                max_sources: a.max_sources,
                nts: a.nts,
                ca_file: match a.ca_file {
                    // The daemon runs elsewhere: give it an absolute path.
                    Some(p) => Some(
                        std::path::absolute(&p)
                            .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", p.display()))?,
                    ),
                    None => None,
                },
            },
        ),
        SourceCommand::Remove(a) => send(
            &a.control,
            ControlCommand::SourceRemove { address: a.address },
        ),
        SourceCommand::Burst(a) => send(&a.control, ControlCommand::Burst { address: a.address }),
    }
}

/// `ntpkit makestep`.
pub fn makestep(a: &ControlArgs) -> anyhow::Result<ExitCode> {
    send(a, ControlCommand::MakeStep)
}

/// Sends a command that changes the daemon and prints its answer.
fn send(a: &ControlArgs, command: ControlCommand) -> anyhow::Result<ExitCode> {
    let answer = control::request(&a.socket, &command, a.timeout()?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "{}",
            answer
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("done")
        );
    }
    Ok(ExitCode::SUCCESS)
}
