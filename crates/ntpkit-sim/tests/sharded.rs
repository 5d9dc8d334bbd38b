//! Splitting independent clients over threads changes nothing: `simulate_sharded` reports
//! byte-identical statistics to the single-threaded run.

use ntpkit_sim::sim::Trace;
use ntpkit_sim::{simulate, simulate_sharded, Report, Scenario};
use std::path::PathBuf;

fn load(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).expect("shipped scenario")
}

fn json(sc: &Scenario, seed: u64, duration: i64, shards: Option<usize>) -> String {
    let out = match shards {
        None => simulate(sc, seed, duration, Trace::default()),
        Some(k) => simulate_sharded(sc, seed, duration, k),
    };
    serde_json::to_string(&Report::new(sc, seed, duration, &out)).expect("report serializes")
}

#[test]
fn sharded_runs_match_the_single_threaded_run() {
    for (name, secs) in [
        ("clients-10000", 1800),
        ("seed-clients", 25),
        ("loss-30", 3600),
    ] {
        let sc = load(name);
        let d = secs * 1_000_000_000;
        let one = json(&sc, 5, d, None);
        for k in [2, 3] {
            assert_eq!(one, json(&sc, 5, d, Some(k)), "{name} in {k} shards");
        }
    }
}

#[test]
fn a_hierarchy_is_not_split() {
    // Stratum-2 servers are clients and servers at once: one thread, same result.
    let sc = load("seed-hierarchy");
    assert_eq!(
        json(&sc, 1, sc.duration, None),
        json(&sc, 1, sc.duration, Some(2))
    );
}

#[test]
fn progress_adds_up_to_one_run_and_changes_nothing() {
    use ntpkit_sim::sim::{Sim, PROGRESS_CHUNKS, PROGRESS_PER_RUN};
    use ntpkit_sim::simulate_sharded_with_progress;
    use std::sync::atomic::{AtomicU64, Ordering};
    for (name, secs, threads) in [
        ("clients-10000", 600, 3),
        ("loss-30", 3600, 2),
        ("seed-hierarchy", 35, 2),
    ] {
        let sc = load(name);
        let d = secs * 1_000_000_000;
        let (units, calls) = (AtomicU64::new(0), AtomicU64::new(0));
        let out = simulate_sharded_with_progress(&sc, 5, d, threads, &|u| {
            units.fetch_add(u, Ordering::Relaxed);
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(units.into_inner(), PROGRESS_PER_RUN, "{name}");
        let calls = calls.into_inner();
        assert!(calls >= PROGRESS_CHUNKS, "{name}: {calls} reports");
        assert!(calls <= 64 * PROGRESS_CHUNKS, "{name}: {calls} reports");
        let report = serde_json::to_string(&Report::new(&sc, 5, d, &out)).unwrap();
        assert_eq!(report, json(&sc, 5, d, None), "{name}");
    }

    // A traced run in steps writes the very same CSV and series.
    let sc = load("falsetickers");
    let traced = |stepped: bool| {
        let mut csv = Vec::new();
        let trace = Trace {
            csv: Some(&mut csv),
            plot_nodes: vec![5, 6, 7],
        };
        let sim = Sim::new(&sc, 3, sc.duration, trace);
        let out = if stepped {
            sim.run_with_progress(PROGRESS_PER_RUN, &|_| {})
        } else {
            sim.run()
        };
        (csv, out.series)
    };
    let (csv, series) = traced(false);
    assert!(csv.len() > 100_000);
    assert!(traced(true) == (csv, series));
}
