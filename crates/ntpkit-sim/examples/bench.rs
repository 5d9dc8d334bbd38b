//! Speed and memory of the simulator (docs/benchmarks.md).
//!
//! `cargo run --release -p ntpkit-sim --example bench -- speed [SCENARIO.toml] [THREADS]` runs a
//! scenario (default scenarios/clients-10000.toml) and prints NTP exchanges per second of wall
//! time and per CPU-second. Independent clients are split into cache-sized shards run on
//! THREADS threads (default 1; `ntpkit_sim::simulate_sharded`: same statistics as one whole run).
//! `cargo run --release -p ntpkit-sim --example bench -- memory [N]` builds N clients (default
//! 100,000) of 4 reference servers, runs 20 simulated minutes so that every filter and
//! discipline holds its steady-state allocations, and prints the resident memory per node.
//! Wall time is read here, in the example, never in the library (the simulator has no clock).
use ntpkit_sim::sim::{Sim, Trace};
use ntpkit_sim::simulate_sharded;
use ntpkit_sim::Scenario;
use std::path::PathBuf;
use std::time::Instant;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line")
}

/// CPU time of the whole process so far (all threads, user + system), seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in USER_HZ (100 per second on Linux).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

fn speed(path: PathBuf, threads: usize) {
    let sc = Scenario::load(&path).expect("scenario");
    let (start, cpu0) = (Instant::now(), cpu_secs());
    let out = simulate_sharded(&sc, sc.seed, sc.duration, threads);
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_secs() - cpu0);
    println!(
        "{}: {} nodes, {} simulated s, {} thread(s), {} exchanges, {} events in {:.2} s wall, \
         {:.2} s CPU: {:.0} exchanges/s wall, {:.0} exchanges per CPU-second, {:.0} events/s wall",
        sc.name,
        sc.nodes.len(),
        sc.duration / 1_000_000_000,
        threads,
        out.exchanges,
        out.events,
        secs,
        cpu,
        out.exchanges as f64 / secs,
        out.exchanges as f64 / cpu,
        out.events as f64 / secs
    );
}

fn memory(n: usize) {
    let text = format!(
        "[simulation]\nduration = \"1d\"\nsample-interval = \"1h\"\n\
         [links.default]\ndelay = \"1ms\"\njitter = {{ distribution = \"exponential\", scale = \"200us\" }}\n\
         [[node]]\nname = \"server\"\ncount = 4\nreference = true\n\
         [[node]]\nname = \"client\"\ncount = {n}\noffset-spread = \"500ms\"\nfrequency-spread-ppm = 50\nwander = 1e-9\n\
         sources = [{{ server = \"server-{s}\", poll = 6 }}]\n",
        s = 1
    );
    let sc = Scenario::parse(&text, "memory").expect("scenario");
    let before = rss_kib();
    let mut sim = Sim::new(&sc, 1, sc.duration, Trace::default());
    let built = rss_kib();
    sim.run_until(1200 * 1_000_000_000);
    let after = rss_kib();
    let per = |kib: u64| kib as f64 * 1024.0 / (n + 4) as f64;
    println!(
        "{} nodes: RSS {} KiB before, {} KiB built (+{:.0} B/node), {} KiB after 1200 simulated s \
         ({} exchanges): {:.0} bytes per node",
        n + 4,
        before,
        built,
        per(built - before),
        after,
        sim.exchanges(),
        per(after - before)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("memory") => memory(args.next().map_or(100_000, |a| a.parse().expect("N"))),
        Some("speed") | None => speed(
            args.next()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("scenarios/clients-10000.toml")),
            args.next().map_or(1, |a| a.parse().expect("THREADS")),
        ),
        Some(other) => {
            panic!("unknown mode {other}: use `speed [SCENARIO] [THREADS]` or `memory [N]`")
        }
    }
}
