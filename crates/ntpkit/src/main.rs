//! `ntpkit`: one command line for the whole toolkit. A thin layer over the library crates:
//! parse arguments, call the driver, print, choose the exit status.
#![forbid(unsafe_code)]
// The argument structs' doc comments are clap's help texts: their brackets (`[IPv6]:PORT`,
// `[default: …]`) are text, not links.
#![allow(rustdoc::broken_intra_doc_links)]

mod control_cli;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ntpkit_daemon::query::{self, QueryConfig, SampleOutcome};
use ntpkit_daemon::serve::{self, ServeConfig, DEFAULT_STRATUM};
use ntpkit_daemon::tcp::TcpLimits;
use ntpkit_wire::RefId;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const CLI_AFTER_HELP: &str = "\
Logging goes to standard error. NTPKIT_LOG sets the filter (a level such as debug, or \
tracing-subscriber directives); without it `ntpkit daemon` uses its config's log-level, \
`ntpkit serve -v` logs every request, and the rest logs warnings and errors. --log-format (or \
NTPKIT_LOG_FORMAT) chooses text or JSON lines. Under systemd, when standard error is the journal \
(JOURNAL_STREAM names it), lines carry no timestamp and start with a syslog priority (<3> error, \
<4> warning, <6> info, <7> debug) instead of the level, which the journal keeps as the entry's \
priority.

Manual pages: `ntpkit man --dir DIR` writes one per command (ntpkit.1, ntpkit-daemon.1, …). \
Shell completions: `ntpkit completions SHELL`.";

/// Network time toolkit: NTP server, client, synchronization daemon and simulator.
#[derive(Parser, Debug)]
#[command(
    name = "ntpkit",
    version,
    about,
    propagate_version = true,
    after_help = CLI_AFTER_HELP
)]
struct Cli {
    /// Log format on standard error: `text` (one line per message) or `json` (one JSON object
    /// per line: timestamp, level, message and fields). Without the flag, the environment
    /// variable NTPKIT_LOG_FORMAT chooses. [default: text]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// Formats of the log on standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One line per message: time, level, message.
    Text,
    /// One JSON object per line.
    Json,
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
    Status(control_cli::ControlArgs),
    /// Show a running daemon's sources, like `chronyc sources`.
    Sources(control_cli::ControlArgs),
    /// Show a running daemon's time with its error bound: true time is within the earliest and
    /// latest shown. Exit status 0 with a bound (synchronized, holdover), 1 when the status is
    /// unknown. Programs read the same bound without asking the daemon from its shared-memory
    /// page (`clockbound-shm` in the daemon's configuration; AWS ClockBound's layout).
    Now(control_cli::ControlArgs),
    /// Add, remove or burst sources of a running daemon (root or the daemon's user).
    #[command(subcommand)]
    Source(control_cli::SourceCommand),
    /// Step a running daemon's clock by its whole estimated offset now, like `chronyc
    /// makestep` (root or the daemon's user).
    Makestep(control_cli::ControlArgs),
    /// Run a scenario in the deterministic simulator (the real core, simulated clocks and links).
    Simulate(ntpkit_sim::cli::SimulateArgs),
    /// Write manual pages (roff): ntpkit.1 to standard output, or one page per command to a
    /// directory.
    Man(ManArgs),
    /// Print a shell completion script to standard output.
    Completions(CompletionsArgs),
}

/// Arguments of `ntpkit man`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  ntpkit man | man -l -
  ntpkit man --dir /usr/local/share/man/man1")]
struct ManArgs {
    /// Write ntpkit.1 and one page per command (ntpkit-serve.1, ntpkit-daemon.1, …) into DIR,
    /// created if missing, instead of ntpkit.1 to standard output.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Arguments of `ntpkit completions`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  ntpkit completions bash > /usr/share/bash-completion/completions/ntpkit
  ntpkit completions zsh > /usr/local/share/zsh/site-functions/_ntpkit
  ntpkit completions fish > ~/.config/fish/completions/ntpkit.fish")]
struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
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
SIGUSR1, first line `served: answered=N ignored=N malformed=N denied=N limited=N kissed=N`.

Abuse: every client address (IPv6: each /64) may send on average one request per second, with \
bursts of 16 (far above what honest clients send); beyond, one request in 16 gets a RATE \
kiss-o'-death and the rest nothing. Each serving thread keeps its own table of clients. \
--access rules choose who is served at all (e.g. --access 'allow 192.0.2.0/24' --access 'deny \
all kod').

Privileges: once its sockets are bound, serve drops every capability (with --user NAME it \
also switches to that user) and installs a seccomp filter that kills the process on any system \
call a server does not make.

Under systemd (Type=notify, NOTIFY_SOCKET set) it sends READY=1 once every socket is bound, \
STOPPING=1 when stopping, and WATCHDOG=1 pings when WatchdogSec= is set.

Metrics: --metrics 127.0.0.1:9975 serves the counters to Prometheus over HTTP at \
http://127.0.0.1:9975/metrics: \
ntpkit_server_{answered,ignored,malformed,denied,rate_limited,kisses}_total{transport=\"udp\"|\"tcp\"}, \
ntpkit_server_tcp_connections_total and ntpkit_server_tcp_open_connections. A thread of its own \
answers one scrape at a time, apart from the NTP threads. There is no authentication: keep it \
on loopback or a monitoring network.

NTS (RFC 8915): --nts-ke ADDR:PORT with --cert, --key and --nts-master runs an NTS-KE server \
(TLS 1.3, ALPN ntske/1) and answers NTS requests on the UDP addresses with authenticated \
replies. The master secret file is created with 32 random bytes (mode 0600) if missing; servers \
sharing it open each other's cookies. The key exchange announces the port of the first --listen \
address when it is not 123. The --access rules and the rate limit apply to key-exchange \
connections too (a connection counts as one request, in a table of its own). SIGHUP, or a \
change of the --cert or --key file (checked every 2 s), loads the certificate and key again \
for new connections; if that fails the previous ones stay. The counters gain a line `served \
nts: ke_served=N ke_failed=N replies=N naks=N dropped=N ke_denied=N ke_limited=N`.

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
    /// An access rule (repeatable, in order; the first that matches a client wins):
    /// `allow NET` or `deny NET [drop|kod|rstr]`, NET an address, ADDR/PREFIX or `all`.
    /// With rules, a client no rule matches is not served. [default: everybody is served]
    #[arg(long = "access", value_name = "RULE", value_parser = parse_rule)]
    access: Vec<ntpkit_core::Rule>,
    /// Turn per-client rate limiting off.
    #[arg(long)]
    no_rate_limit: bool,
    /// Rate limit: a client may send on average one request per 2^N seconds.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i8).range(-20..=12))]
    rate_limit_interval: i8,
    /// Rate limit: requests a client may send at once above the average.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    rate_limit_burst: u16,
    /// Rate limit: over the limit, one request in 2^N gets a RATE kiss-o'-death, the rest
    /// nothing.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u8).range(0..=16))]
    rate_limit_kod: u8,
    /// Rate limit: an IPv6 client is its address's first N bits (its /N network).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    rate_limit_ipv6_prefix: u8,
    /// Receive buffer of each UDP socket, bytes (SO_RCVBUF; the kernel doubles it and caps it
    /// at net.core.rmem_max). Small keeps replies prompt under overload: what does not fit is
    /// dropped rather than answered late.
    #[arg(long, value_name = "BYTES", default_value_t = serve::DEFAULT_UDP_RECV_BUFFER,
          value_parser = clap::value_parser!(u32).range(4096..=(64 << 20)))]
    udp_recv_buffer: u32,
    /// Once the sockets are bound, run as this user (and its group) with no capability left.
    /// Needs to be started as root (or with CAP_SETUID and CAP_SETGID).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Do not install the system-call filter (seccomp) that confines the running server to the
    /// calls it makes.
    #[arg(long)]
    no_seccomp: bool,
    /// Serve Prometheus metrics (the counters) over HTTP at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Serve NTS (RFC 8915): NTS-KE over TLS 1.3 on this TCP address (port 4460 is the
    /// standard one), and authenticated replies to NTS requests on the UDP addresses.
    #[arg(long, value_name = "ADDR:PORT", requires_all = ["cert", "key", "nts_master"])]
    nts_ke: Option<SocketAddr>,
    /// PEM file of the NTS-KE server's certificate chain, leaf first.
    #[arg(long, value_name = "PEM", requires = "nts_ke")]
    cert: Option<PathBuf>,
    /// PEM file of the certificate's private key.
    #[arg(long, value_name = "PEM", requires = "nts_ke")]
    key: Option<PathBuf>,
    /// File of the NTS cookie master secret (at least 32 bytes); created with 32 random bytes
    /// (mode 0600) if missing. Servers sharing it open each other's cookies.
    #[arg(long, value_name = "FILE", requires = "nts_ke")]
    nts_master: Option<PathBuf>,
    /// Period after which NTS cookies are sealed with a new key derived from the master
    /// secret, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    nts_rotation: u64,
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
    #[arg(value_name = "HOST[:PORT]", required_unless_present = "nts")]
    server: Option<String>,
    /// Authenticate with NTS (RFC 8915): key exchange with this NTS-KE server (TCP port 4460
    /// by default), then NTP over UDP to the server it names; replies that do not
    /// authenticate are dropped.
    #[arg(long, value_name = "HOST[:KEPORT]", conflicts_with_all = ["server", "tcp"])]
    nts: Option<String>,
    /// PEM file of the certificates to trust for NTS-KE instead of the system's CA bundle.
    #[arg(long, value_name = "PEM", requires = "nts")]
    ca_file: Option<std::path::PathBuf>,
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

NTS (RFC 8915): --nts HOST[:KEPORT] runs one NTS-KE first, then sends authenticated requests \
to the NTP server it names, with the same loads. To keep the generator cheap, each thread builds \
16,384 requests before the run (each with its own unique identifier, transmit timestamp and \
authenticator, the key exchange's cookies used in turn) and sends them again and again: \
stateless servers such as chronyd and ntpkit serve a request sent again like a new one, but a \
real client never sends a cookie twice. A reply counts as authenticated when it echoes its \
request's unique identifier and its authenticator verifies under the server-to-client key; \
--verify-one-in N verifies one reply in N in full and checks the others for the unique \
identifier and an authenticator only. NTS NAKs and replies that fail verification are counted \
apart.

--nts-ke HOST[:PORT] measures NTS-KE instead: --connections threads run complete key exchanges \
(TCP connect, full TLS 1.3 handshake without resumption, request and response records) back to \
back for --duration seconds (and at most --requests exchanges), and report exchanges/s and \
failures. Both NTS modes trust --ca-file (default: the system's CA bundle) and fail at once with \
the key exchange's error, as `ntpkit query --nts` does.

A load generator sends as much as the server takes: only loopback targets (127.0.0.0/8, ::1) \
are accepted unless --allow-remote is given, which is for servers you run yourself, e.g. in a \
network namespace of your own.

Examples: ntpkit bench 127.0.0.1:1123 --sockets 4 --window 32 --duration 5
          ntpkit bench --nts localhost:4460 --ca-file server.crt --duration 5
          ntpkit bench --nts-ke localhost:4460 --ca-file server.crt --connections 2";

#[derive(Args, Debug)]
#[command(after_help = BENCH_AFTER_HELP)]
struct BenchArgs {
    /// Server: HOST, HOST:PORT, IPv4:PORT, [IPv6]:PORT (port 123 by default).
    #[arg(value_name = "HOST[:PORT]", required_unless_present_any = ["nts", "nts_ke"])]
    server: Option<String>,
    /// Send NTS-authenticated requests: key exchange with this NTS-KE server (TCP port 4460 by
    /// default), then load the NTP server it names.
    #[arg(long, value_name = "HOST[:KEPORT]", conflicts_with_all = ["server", "nts_ke"])]
    nts: Option<String>,
    /// Measure complete NTS-KE exchanges per second with this server instead of NTP.
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with_all = ["server", "rate", "flood"])]
    nts_ke: Option<String>,
    /// PEM file of the certificates to trust for NTS-KE instead of the system's CA bundle.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
    /// With --nts: verify one reply in N in full (the others: unique identifier and
    /// authenticator present).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    verify_one_in: u64,
    /// With --nts-ke: key exchanges run at once, one thread each.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    connections: u16,
    /// Seconds allowed for one NTS key exchange.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    ke_timeout: f64,
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

fn parse_rule(s: &str) -> Result<ntpkit_core::Rule, String> {
    s.parse()
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

const DAEMON_AFTER_HELP: &str = "\
Example configs: examples/*.toml, and dist/ntpkit.toml for the systemd unit; docs/config.md \
describes every key. Clock backends: system (adjusts the OS clock; needs CAP_SYS_TIME), observe \
(never adjusts it; reports what it would do), virtual (a software clock on top of the OS clock, \
disciplined and served).

Signals: SIGTERM and SIGINT stop the daemon (the drift file is saved); SIGHUP saves the drift \
file, resolves source names again and reloads the NTS certificate and key; SIGUSR1 prints the \
server counters.

Under systemd (dist/ntpkit.service, Type=notify), when NOTIFY_SOCKET is set: READY=1 once every \
socket is bound and the drift file is read, STATUS= lines with the selected source, WATCHDOG=1 \
every half period of WatchdogSec= (WATCHDOG_USEC), STOPPING=1 when stopping. Without \
NOTIFY_SOCKET nothing is sent.

Files of the installed configuration: /etc/ntpkit/ntpkit.toml (config), /var/lib/ntpkit/drift \
(drift file), /run/ntpkit/ntpkit.sock (control socket, read by `ntpkit status`).";

/// Arguments of `ntpkit daemon`.
#[derive(Args, Debug)]
#[command(after_help = DAEMON_AFTER_HELP)]
struct DaemonArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// The log format: `--log-format`, else `NTPKIT_LOG_FORMAT`, else text.
fn log_format(flag: Option<LogFormat>) -> Result<LogFormat, String> {
    if let Some(f) = flag {
        return Ok(f);
    }
    match std::env::var("NTPKIT_LOG_FORMAT") {
        Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
        Ok(v) if v.is_empty() => Ok(LogFormat::Text),
        Ok(v) => LogFormat::from_str(&v, true).map_err(|_| {
            format!(
                "NTPKIT_LOG_FORMAT={v:?} is not a log format; set it to `text` or `json`, or \
                 unset it"
            )
        }),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!(
            "NTPKIT_LOG_FORMAT={v:?} is not a log format; set it to `text` or `json`, or unset it"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match log_format(cli.log_format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
    init_logging(&level, format);
    let result = match cli.command {
        Command::Serve(args) => serve_cmd(args),
        Command::Query(args) => query_cmd(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Daemon(args) => daemon_cmd(args, daemon_config.expect("loaded above")),
        Command::Status(args) => control_cli::status(&args),
        Command::Sources(args) => control_cli::sources(&args),
        Command::Now(args) => control_cli::now(&args),
        Command::Source(c) => control_cli::source(c),
        Command::Makestep(args) => control_cli::makestep(&args),
        Command::Simulate(args) => ntpkit_sim::cli::run(args),
        Command::Man(args) => man_cmd(args),
        Command::Completions(args) => completions_cmd(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging to standard error at the `NTPKIT_LOG` filter (else `default`), as text or JSON;
/// in the journal's form when standard error is the journal.
fn init_logging(default: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NTPKIT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let journal = journal::stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match (format, journal) {
        (LogFormat::Text, false) => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        // The priority prefix is the level; the journal adds its own timestamps.
        (LogFormat::Text, true) => builder
            .with_writer(journal::PriorityWriter)
            .with_ansi(false)
            .with_level(false)
            .without_time()
            .init(),
        (LogFormat::Json, false) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Json, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(journal::PriorityWriter)
            .init(),
    }
}

/// Writing log lines to the systemd journal through standard error.
mod journal {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use tracing::Level;

    /// True when standard error is the stream systemd connected to the journal: the
    /// `JOURNAL_STREAM` variable (`DEVICE:INODE`) names exactly standard error's file (a
    /// redirected standard error of a child, or a shell's, is another file).
    pub fn stderr_is_journal() -> bool {
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
            return false;
        };
        let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
            return false;
        };
        let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
            return false;
        };
        std::fs::File::from(fd)
            .metadata()
            .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    }

    /// syslog priority prefix of a level, which the journal takes as the entry's priority.
    pub fn prefix(level: &Level) -> &'static str {
        match *level {
            Level::ERROR => "<3>",
            Level::WARN => "<4>",
            Level::INFO => "<6>",
            Level::DEBUG | Level::TRACE => "<7>",
        }
    }

    /// Makes, for each message, a writer that starts every line with the message's priority.
    #[derive(Debug, Clone, Copy)]
    pub struct PriorityWriter;

    /// One message's lines, prefixed, written to standard error at once when dropped.
    #[derive(Debug)]
    pub struct PriorityLines {
        prefix: &'static str,
        buf: Vec<u8>,
        at_line_start: bool,
    }

    impl Write for PriorityLines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                if self.at_line_start {
                    self.buf.extend_from_slice(self.prefix.as_bytes());
                }
                self.buf.extend_from_slice(line);
                self.at_line_start = line.ends_with(b"\n");
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Drop for PriorityLines {
        fn drop(&mut self) {
            let _ = std::io::stderr().lock().write_all(&self.buf);
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for PriorityWriter {
        type Writer = PriorityLines;

        fn make_writer(&'a self) -> PriorityLines {
            PriorityLines {
                prefix: prefix(&Level::INFO),
                buf: Vec::new(),
                at_line_start: true,
            }
        }

        fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> PriorityLines {
            PriorityLines {
                prefix: prefix(meta.level()),
                buf: Vec::new(),
                at_line_start: true,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_line_of_a_message_carries_its_priority() {
            let mut w = PriorityLines {
                prefix: prefix(&Level::WARN),
                buf: Vec::new(),
                at_line_start: true,
            };
            w.write_all(b"first ").unwrap();
            w.write_all(b"line\nsecond line\n").unwrap();
            assert_eq!(
                String::from_utf8(std::mem::take(&mut w.buf)).unwrap(),
                "<4>first line\n<4>second line\n"
            );
            assert_eq!(prefix(&Level::ERROR), "<3>");
            assert_eq!(prefix(&Level::INFO), "<6>");
            assert_eq!(prefix(&Level::TRACE), "<7>");
        }
    }
}

/// `ntpkit man`: the manual pages, made from the command line's own definition.
fn man_cmd(a: ManArgs) -> anyhow::Result<ExitCode> {
    // `help` is no page of its own: every page has --help.
    let cmd = Cli::command().disable_help_subcommand(true);
    match a.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "cannot create {}; choose a directory you can write to, e.g. --dir ./man",
                    dir.display()
                )
            })?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| {
                format!(
                    "cannot write the manual pages into {}; choose a directory you can write \
                     to, e.g. --dir ./man",
                    dir.display()
                )
            })?;
            let mut cmd = Cli::command().disable_help_subcommand(true);
            cmd.build();
            let mut pages = Vec::new();
            man_pages(&cmd, &mut pages);
            for page in &pages {
                anyhow::ensure!(
                    dir.join(page).is_file(),
                    "{} was not written into {}",
                    page,
                    dir.display()
                );
            }
            println!("wrote {} in {}", pages.join(" "), dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The file names of the pages `clap_mangen::generate_to` writes for `cmd` (built).
fn man_pages(cmd: &clap::Command, pages: &mut Vec<String>) {
    pages.push(format!(
        "{}.1",
        cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
    ));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, pages);
    }
}

/// `ntpkit completions SHELL`.
fn completions_cmd(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "ntpkit", &mut out);
    out.flush()?;
    Ok(ExitCode::SUCCESS)
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

fn serve_cmd(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let defaults = ServeConfig::default();
    let udp_is_default = a.listen.is_empty();
    let nts = match (a.nts_ke, a.cert, a.key, a.nts_master) {
        (Some(ke), Some(cert), Some(key), Some(master)) => {
            Some(ntpkit_daemon::nts_serve::NtsServeConfig {
                ke: vec![ke],
                cert,
                key,
                master,
                rotation_secs: a.nts_rotation,
                ntp_server: None,
                ntp_port: None,
                names: ntpkit_daemon::nts_serve::NtsOptionNames::SERVE,
            })
        }
        _ => None,
    };
    let cfg = ServeConfig {
        nts,
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
        access: ntpkit_core::AccessList::new(a.access),
        rate_limit: (!a.no_rate_limit).then_some(ntpkit_core::RateLimit {
            interval: a.rate_limit_interval,
            burst: a.rate_limit_burst,
            kod_leak: a.rate_limit_kod,
            ipv6_prefix: a.rate_limit_ipv6_prefix,
            ..ntpkit_core::RateLimit::default()
        }),
        metrics: a.metrics,
        verbose: a.verbose,
        user: a.user,
        seccomp: !a.no_seccomp,
        recv_buffer: a.udp_recv_buffer as usize,
        ..defaults
    };
    serve::run(cfg)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_cmd(a: BenchArgs) -> anyhow::Result<ExitCode> {
    use ntpkit_daemon::bench::{self, BenchConfig, BenchReport, Load};
    anyhow::ensure!(
        a.ca_file.is_none() || a.nts.is_some() || a.nts_ke.is_some(),
        "--ca-file is for NTS: give it with --nts or --nts-ke"
    );
    if a.nts_ke.is_some() {
        return bench_ke_cmd(a);
    }
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
    let nts = match &a.nts {
        Some(ke) => Some(nts_bench_config(ke, &a)?),
        None => None,
    };
    let target = match (&nts, &a.server) {
        (None, Some(server)) => {
            let target = query::resolve(server)?;
            bench::check_target(target, a.allow_remote)?;
            target
        }
        // The NTS-KE server names the NTP server.
        _ => BenchConfig::default().target,
    };
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
    let (tally, report) = match &nts {
        Some(n) => bench::nts::run(&cfg, n)?,
        None => {
            let tally = bench::run(&cfg)?;
            let report = BenchReport::new(&cfg, &tally);
            (tally, report)
        }
    };
    let target = report.target.clone();
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", report.render_text())?;
    }
    if tally.valid_total > 0 {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(f) = tally.nts.first_failure {
        eprintln!("error: no authenticated reply from {target}: {f}");
    } else if tally.nts.naks > 0 {
        eprintln!(
            "error: no authenticated reply from {target}: NTS NAK (the server could not open \
             the cookies)"
        );
    } else if tally.refused > 0 {
        eprintln!(
            "error: no valid reply from {target}: connection refused (no server on that port)"
        );
    } else {
        eprintln!("error: no valid reply from {target}");
    }
    Ok(ExitCode::FAILURE)
}

/// The NTS part of `ntpkit bench --nts`: the key-exchange server and the TLS configuration.
fn nts_bench_config(
    ke: &str,
    a: &BenchArgs,
) -> anyhow::Result<ntpkit_daemon::bench::nts::NtsBenchConfig> {
    use ntpkit_daemon::nts_ke;
    let (ke_host, ke_port) = nts_ke::split_host_port(ke, nts_ke::DEFAULT_KE_PORT)?;
    ntpkit_daemon::bench::nts::check_ke_target(&ke_host, ke_port, a.allow_remote)?;
    let tls = nts_ke::ke_config(nts_ke::load_roots(a.ca_file.as_deref())?)?;
    Ok(ntpkit_daemon::bench::nts::NtsBenchConfig {
        ke_host,
        ke_port,
        tls,
        ke_timeout: positive_secs(a.ke_timeout, "--ke-timeout")?,
        verify_one_in: a.verify_one_in,
        allow_remote: a.allow_remote,
    })
}

/// `ntpkit bench --nts-ke`: key exchanges per second.
fn bench_ke_cmd(a: BenchArgs) -> anyhow::Result<ExitCode> {
    use ntpkit_daemon::bench::ke::{self, KeBenchConfig, KeReport};
    let ke = a.nts_ke.as_deref().unwrap_or_default();
    let n = nts_bench_config(ke, &a)?;
    let duration = positive_secs(a.duration, "--duration")?;
    let warmup = secs(a.warmup, "--warmup")?;
    anyhow::ensure!(
        duration <= Duration::from_secs(3600) && warmup <= Duration::from_secs(600),
        "--duration must be at most 3600 seconds and --warmup at most 600"
    );
    let cfg = KeBenchConfig {
        host: n.ke_host,
        port: n.ke_port,
        tls: n.tls,
        connections: a.connections as usize,
        warmup,
        duration,
        timeout: n.ke_timeout,
        max_exchanges: a.requests,
        allow_remote: a.allow_remote,
    };
    let tally = ke::run(&cfg)?;
    let report = KeReport::new(&cfg, &tally);
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", report.render_text())?;
    }
    if tally.completed_total > 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: no key exchange with {} completed: {}",
        report.target,
        tally.first_failure.as_deref().unwrap_or("none was started")
    );
    Ok(ExitCode::FAILURE)
}

fn query_cmd(a: QueryArgs) -> anyhow::Result<ExitCode> {
    let cfg = QueryConfig {
        server: a
            .server
            .clone()
            .or_else(|| a.nts.clone())
            .unwrap_or_default(),
        samples: a.samples,
        interval: secs(a.interval, "--interval")?,
        timeout: secs(a.timeout, "--timeout")?,
        tcp: a.tcp,
        allow_unsynced: a.allow_unsynced,
        nts: a.nts.clone().map(|ke_server| query::NtsConfig {
            ke_server,
            ca_file: a.ca_file.clone(),
        }),
    };
    let transport = match (cfg.tcp, cfg.nts.is_some()) {
        (true, _) => "tcp",
        (false, true) => "udp+nts",
        (false, false) => "udp",
    };
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "Querying NTP server{} at {} ({transport}, {} sample{})...\n",
            if cfg.nts.is_some() { " via NTS-KE" } else { "" },
            cfg.server,
            cfg.samples,
            if cfg.samples == 1 { "" } else { "s" }
        )?;
        out.flush()?;
    }
    let result = query::run_with_nts(&cfg, |addr, outcome| {
        if !a.json {
            let text = query::render_outcome(addr, cfg.samples, outcome, cfg.timeout);
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    });
    let (addr, outcomes, nts) = match result {
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
        let mut v = query::render_json(addr, transport, &outcomes, error.as_deref());
        if let (Some(n), Some(o)) = (&nts, v.as_object_mut()) {
            o.insert("nts".into(), query::render_nts_json(n));
        }
        writeln!(out, "{v}")?;
    } else {
        if let Some(summary) = query::render_summary(addr, &outcomes) {
            write!(out, "{summary}")?;
        }
        if let Some(n) = &nts {
            write!(out, "{}", query::render_nts(n))?;
        }
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
