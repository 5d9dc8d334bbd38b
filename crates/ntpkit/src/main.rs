//! `ntpkit`: one command line for the whole toolkit. A thin layer over the library crates:
//! parse arguments, call the driver, print, choose the exit status.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ntpkit_daemon::query::{self, QueryConfig, SampleOutcome};
use ntpkit_daemon::serve::{self, ServeConfig, DEFAULT_STRATUM};
use ntpkit_daemon::tcp::TcpLimits;
use ntpkit_wire::RefId;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// Network time toolkit: NTP server, client, synchronization daemon and simulator.
#[derive(Parser, Debug)]
#[command(name = "ntpkit", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve this host's clock to NTP clients (UDP, and optionally ntpkit's TCP framing).
    Serve(ServeArgs),
    /// Ask an NTP server for the time and show offset and delay.
    Query(QueryArgs),
    /// Load an NTP server with requests and measure replies/s, loss and latency (loopback only,
    /// unless --allow-remote).
    Bench(BenchArgs),
    /// Synchronize a clock to upstream servers and serve it downstream (config file, TOML).
    Daemon(DaemonArgs),
    /// Show a running daemon's sources and tracking, like `chronyc sources` + `tracking`.
    Status(StatusArgs),
    /// Run a scenario in the deterministic simulator (the real core, simulated clocks and links).
    Simulate(ntpkit_sim::cli::SimulateArgs),
}

const SERVE_AFTER_HELP: &str = "\
Stratum and reference ID: by default ntpkit serves the local clock as stratum 10 with reference \
ID LOCL, like chrony's `local` directive (stratum 10) and ntpd's undisciplined local clock \
(.LOCL.). The local clock is not a primary reference, and a low stratum would make clients prefer \
it over real time sources. Use --stratum 1 --refid GPS (say) only when the host's clock really is \
disciplined by a reference clock, or --stratum N+1 --refid UPSTREAM-IP when it is synchronized \
to a stratum-N server.

The reference time is refreshed to the current time about once per second; the precision is \
measured from the system clock at start. Counters are printed on exit (SIGINT, SIGTERM) and on \
SIGUSR1, first line `served: answered=N ignored=N malformed=N`.

Port 123 needs root or CAP_NET_BIND_SERVICE; unprivileged example:
  ntpkit serve --listen 127.0.0.1:1123 --listen [::1]:1123 --tcp 127.0.0.1:1123";

#[derive(Args, Debug)]
#[command(after_help = SERVE_AFTER_HELP)]
struct ServeArgs {
    /// UDP address to listen on (repeatable). Port 0 picks a free port, printed at start.
    /// [default: 0.0.0.0:123 and [::]:123]
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// TCP address for ntpkit's length-prefixed NTP-over-TCP framing (repeatable).
    #[arg(long = "tcp", value_name = "ADDR:PORT")]
    tcp: Vec<SocketAddr>,
    /// Stratum to advertise, 1–15. The default 10 marks an undisciplined local clock.
    #[arg(long, default_value_t = DEFAULT_STRATUM, value_parser = clap::value_parser!(u8).range(1..=15))]
    stratum: u8,
    /// Reference ID: 1–4 ASCII characters (GPS, PPS, LOCL) or an IPv4 address.
    #[arg(long, default_value = "LOCL", value_parser = parse_refid)]
    refid: RefId,
    /// Precision to advertise, log2 seconds (e.g. -20); measured from the clock by default.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i8).range(-32..=0))]
    precision: Option<i8>,
    /// Threads (sockets sharing the address with SO_REUSEPORT) per UDP address.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    udp_threads: u16,
    /// Close TCP connections without a request for this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    tcp_idle_timeout: f64,
    /// Close a TCP connection whose request frame is not whole this many seconds after its
    /// first byte (slow or trickling clients).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    tcp_frame_timeout: f64,
    /// Close a TCP connection whose replies wait this many seconds unread.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    tcp_write_timeout: f64,
    /// Most TCP connections open at once; when full, a new one replaces the connection that
    /// has gone longest without a request.
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..))]
    tcp_max_connections: u32,
    /// Most TCP connections open at once from one IP address.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    tcp_per_address: u32,
    /// Log every request and response (and dropped packets) to stderr.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Each request carries 64 random bits as its transmit timestamp; a reply counts only if its \
origin timestamp echoes them. Offset = ((T2-T1)+(T3-T4))/2, delay = (T4-T1)-(T3-T2), computed \
in 32.32 fixed point; T4 is the kernel's receive timestamp. The summary reports the sample \
with the smallest delay. Exit status: 0 if at least one valid reply came, 1 otherwise (timeout, \
bad replies, kiss-o'-death).

The default interval of 2 s respects public servers' rate limits (ntpd's `discard minimum`); \
use --interval 0.1 against your own server.")]
struct QueryArgs {
    /// Server: HOST, HOST:PORT, IPv4:PORT, [IPv6]:PORT (port 123 by default).
    #[arg(value_name = "HOST[:PORT]")]
    server: String,
    /// Number of requests.
    #[arg(short = 'n', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    samples: u32,
    /// Seconds between requests (the first goes at once).
    #[arg(short, long, default_value_t = 2.0, value_name = "SECS")]
    interval: f64,
    /// Seconds to wait for each reply.
    #[arg(short, long, default_value_t = 2.0, value_name = "SECS")]
    timeout: f64,
    /// Use ntpkit's TCP framing (one connection for all samples).
    #[arg(long)]
    tcp: bool,
    /// Accept replies from an unsynchronized server (leap 3 or stratum 16).
    #[arg(long)]
    allow_unsynced: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const BENCH_AFTER_HELP: &str = "\
Loads: the default closed loop keeps --window requests in flight on each socket and sends a new \
one as each reply comes back (a server's capacity); --rate R sends R requests/s in all whatever \
the replies do, a millisecond's worth at a time (latency at a given load); --flood sends as fast \
as the sockets take requests (overload). Requests go out with sendmmsg on --sockets connected \
UDP sockets (one source port each), replies come in with recvmmsg.

Each request carries a unique 64-bit cookie as its transmit timestamp. A reply is valid if its \
origin timestamp is the cookie of a request not answered yet, it is in server mode and its \
stratum is 1-15; kiss-o'-death replies are counted by code (RATE, DENY, RSTR, other), anything \
else as invalid (unknown origin, duplicate, bad mode, bad stratum, malformed). Latency runs from \
just before the send to just after the receive, on CLOCK_MONOTONIC. Rates count the measured \
window (after --warmup, for --duration); loss is the share of the window's requests still \
unanswered --grace seconds after it. The run stops by itself. Exit status: 0 if at least one \
valid reply came, 1 otherwise.

A load generator sends as much as the server takes: only loopback targets (127.0.0.0/8, ::1) \
are accepted unless --allow-remote is given, which is for servers you run yourself, e.g. in a \
network namespace of your own.

Example: ntpkit bench 127.0.0.1:1123 --sockets 4 --window 32 --duration 5";

#[derive(Args, Debug)]
#[command(after_help = BENCH_AFTER_HELP)]
struct BenchArgs {
    /// Server: HOST, HOST:PORT, IPv4:PORT, [IPv6]:PORT (port 123 by default).
    #[arg(value_name = "HOST[:PORT]")]
    server: String,
    /// Seconds measured (after the warm-up).
    #[arg(short, long, default_value_t = 5.0, value_name = "SECS")]
    duration: f64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 0.5, value_name = "SECS")]
    warmup: f64,
    /// Connected UDP sockets (source ports).
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    sockets: u16,
    /// Closed loop: requests in flight per socket.
    #[arg(short, long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    window: u32,
    /// Open loop at this many requests per second in all.
    #[arg(short, long, value_name = "REQ/S", conflicts_with_all = ["flood", "window"])]
    rate: Option<f64>,
    /// Open loop as fast as possible.
    #[arg(long, conflicts_with = "window")]
    flood: bool,
    /// Most requests per sendmmsg.
    #[arg(short, long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Threads, each with its share of the sockets (and of --rate).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Closed loop: a request unanswered this long frees its place in the window (a late
    /// reply still counts).
    #[arg(long, default_value_t = 0.1, value_name = "SECS")]
    timeout: f64,
    /// Seconds to wait for late replies after the window; requests still unanswered then are
    /// lost.
    #[arg(long, default_value_t = 0.5, value_name = "SECS")]
    grace: f64,
    /// Stop sending after this many requests in all (warm-up included).
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Accept a target outside loopback (only a server you run yourself).
    #[arg(long)]
    allow_remote: bool,
}

fn parse_refid(s: &str) -> Result<RefId, String> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(RefId(ip.octets()));
    }
    RefId::from_ascii(s).ok_or_else(|| {
        format!("{s:?} is neither 1–4 printable ASCII characters nor an IPv4 address")
    })
}

fn positive_secs(value: f64, what: &str) -> anyhow::Result<Duration> {
    let d = secs(value, what)?;
    anyhow::ensure!(!d.is_zero(), "{what} must be more than 0 seconds");
    Ok(d)
}

fn secs(value: f64, what: &str) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && (0.0..=86_400.0).contains(&value),
        "{what} must be between 0 and 86400 seconds"
    );
    Ok(Duration::from_secs_f64(value))
}

/// Arguments of `ntpkit daemon`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example configs: examples/*.toml. Clock backends: system (adjusts the OS \
clock; needs CAP_SYS_TIME), observe (never adjusts it; reports what it would do), virtual (a \
software clock on top of the OS clock, disciplined and served)."
)]
struct DaemonArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: std::path::PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// Arguments of `ntpkit status`.
#[derive(Args, Debug)]
struct StatusArgs {
    /// The daemon's control socket (its config's control-socket).
    #[arg(
        long,
        short = 's',
        value_name = "PATH",
        default_value = "/run/ntpkit.sock"
    )]
    socket: std::path::PathBuf,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon's config chooses its own log level; a config error is reported below.
    let daemon_config = match &cli.command {
        Command::Daemon(a) => Some(ntpkit_daemon::daemon::config::DaemonConfig::load(&a.config)),
        _ => None,
    };
    let level = match (&cli.command, &daemon_config) {
        (Command::Serve(a), _) if a.verbose => "info".to_string(),
        (Command::Daemon(_), Some(Ok(c))) => c.log_level.clone(),
        _ => "warn".to_string(),
    };
    init_logging(&level);
    let result = match cli.command {
        Command::Serve(args) => serve_cmd(args),
        Command::Query(args) => query_cmd(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Daemon(args) => daemon_cmd(args, daemon_config.expect("loaded above")),
        Command::Status(args) => status_cmd(args),
        Command::Simulate(args) => ntpkit_sim::cli::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NTPKIT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn daemon_cmd(
    a: DaemonArgs,
    config: Result<
        ntpkit_daemon::daemon::config::DaemonConfig,
        ntpkit_daemon::daemon::config::ConfigError,
    >,
) -> anyhow::Result<ExitCode> {
    let config = config?;
    if a.check {
        println!("{}: configuration OK", a.config.display());
        return Ok(ExitCode::SUCCESS);
    }
    ntpkit_daemon::daemon::run(config)?;
    Ok(ExitCode::SUCCESS)
}

fn status_cmd(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let timeout = secs(a.timeout, "--timeout")?;
    let status = ntpkit_daemon::daemon::control::query(&a.socket, timeout)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_cmd(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let defaults = ServeConfig::default();
    let udp_is_default = a.listen.is_empty();
    let cfg = ServeConfig {
        udp: if udp_is_default {
            defaults.udp.clone()
        } else {
            a.listen
        },
        udp_is_default,
        tcp: a.tcp,
        stratum: a.stratum,
        refid: a.refid,
        precision: a.precision,
        udp_threads: a.udp_threads as usize,
        tcp_limits: TcpLimits {
            max_connections: a.tcp_max_connections as usize,
            per_address: a.tcp_per_address as usize,
            idle_timeout: positive_secs(a.tcp_idle_timeout, "--tcp-idle-timeout")?,
            frame_timeout: positive_secs(a.tcp_frame_timeout, "--tcp-frame-timeout")?,
            write_timeout: positive_secs(a.tcp_write_timeout, "--tcp-write-timeout")?,
            ..defaults.tcp_limits
        },
        verbose: a.verbose,
        ..defaults
    };
    serve::run(cfg)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_cmd(a: BenchArgs) -> anyhow::Result<ExitCode> {
    use ntpkit_daemon::bench::{self, BenchConfig, BenchReport, Load};
    let load = match (a.rate, a.flood) {
        (Some(rate), _) => {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0 && rate <= 1e9,
                "--rate must be more than 0 and at most 1e9 requests/s"
            );
            Load::Open { rate }
        }
        (None, true) => Load::Flood,
        (None, false) => Load::Closed { window: a.window },
    };
    anyhow::ensure!(
        a.threads <= a.sockets,
        "--threads ({}) must not exceed --sockets ({})",
        a.threads,
        a.sockets
    );
    let duration = positive_secs(a.duration, "--duration")?;
    anyhow::ensure!(
        duration <= Duration::from_secs(3600),
        "--duration must be at most 3600 seconds"
    );
    let warmup = secs(a.warmup, "--warmup")?;
    let grace = secs(a.grace, "--grace")?;
    anyhow::ensure!(
        warmup <= Duration::from_secs(600) && grace <= Duration::from_secs(600),
        "--warmup and --grace must be at most 600 seconds"
    );
    let target = query::resolve(&a.server)?;
    bench::check_target(target, a.allow_remote)?;
    let cfg = BenchConfig {
        target,
        load,
        sockets: a.sockets as usize,
        threads: a.threads as usize,
        batch: a.batch as usize,
        warmup,
        duration,
        grace,
        timeout: positive_secs(a.timeout, "--timeout")?,
        max_requests: a.requests,
    };
    let tally = bench::run(&cfg)?;
    let report = BenchReport::new(&cfg, &tally);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", report.render_text())?;
    }
    if tally.valid_total > 0 {
        return Ok(ExitCode::SUCCESS);
    }
    if tally.refused > 0 {
        eprintln!(
            "error: no valid reply from {target}: connection refused (no server on that port)"
        );
    } else {
        eprintln!("error: no valid reply from {target}");
    }
    Ok(ExitCode::FAILURE)
}

fn query_cmd(a: QueryArgs) -> anyhow::Result<ExitCode> {
    let cfg = QueryConfig {
        server: a.server,
        samples: a.samples,
        interval: secs(a.interval, "--interval")?,
        timeout: secs(a.timeout, "--timeout")?,
        tcp: a.tcp,
        allow_unsynced: a.allow_unsynced,
    };
    let transport = if cfg.tcp { "tcp" } else { "udp" };
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "Querying NTP server at {} ({transport}, {} sample{})...\n",
            cfg.server,
            cfg.samples,
            if cfg.samples == 1 { "" } else { "s" }
        )?;
        out.flush()?;
    }
    let result = query::run(&cfg, |addr, outcome| {
        if !a.json {
            let text = query::render_outcome(addr, cfg.samples, outcome, cfg.timeout);
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    });
    let (addr, outcomes) = match result {
        Ok(r) => r,
        Err(e) => {
            if a.json {
                let v = serde_json::json!({ "server": cfg.server, "error": e.to_string() });
                writeln!(out, "{v}")?;
            }
            return Err(e).context("query failed");
        }
    };
    let error =
        query::kiss_code(&outcomes).map(|code| format!("server {addr} sent kiss-o'-death {code}"));
    let ok = query::best(&outcomes).is_some() && error.is_none();
    if a.json {
        let v = query::render_json(addr, transport, &outcomes, error.as_deref());
        writeln!(out, "{v}")?;
    } else if let Some(summary) = query::render_summary(addr, &outcomes) {
        write!(out, "{summary}")?;
    }
    if let Some(msg) = error {
        eprintln!("error: {msg}");
    } else if !ok {
        let timeouts = outcomes
            .iter()
            .all(|o| matches!(o, SampleOutcome::Timeout { .. }));
        if timeouts {
            eprintln!(
                "error: no reply from {addr} within {}",
                query::format_duration(cfg.timeout)
            );
        } else {
            eprintln!("error: no valid reply from {addr}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
