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
