//! Seeded scenario tests: convergence and statistic bounds of the shipped scenarios, the sign of
//! the correction, determinism, and validation of every file in `scenarios/`.

use ntpkit_sim::sim::Trace;
use ntpkit_sim::{simulate, Report, Scenario};
use std::path::PathBuf;

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
}

fn load(name: &str) -> Scenario {
    Scenario::load(&scenarios_dir().join(format!("{name}.toml"))).expect("shipped scenario")
}

fn report(sc: &Scenario, seed: u64) -> Report {
    let out = simulate(sc, seed, sc.duration, Trace::default());
    Report::new(sc, seed, sc.duration, &out)
}

/// Runs with a CSV trace; returns the report and the CSV text.
fn report_csv(sc: &Scenario, seed: u64) -> (Report, String) {
    let mut csv = Vec::new();
    let out = simulate(
        sc,
        seed,
        sc.duration,
        Trace {
            csv: Some(&mut csv),
            plot_nodes: Vec::new(),
        },
    );
    (
        Report::new(sc, seed, sc.duration, &out),
        String::from_utf8(csv).unwrap(),
    )
}

#[test]
fn every_shipped_scenario_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 19, "only {n} scenarios found");
}

#[test]
fn seed_clients_converge_with_the_documents_statistics() {
    let sc = load("seed-clients");
    let r = report(&sc, 1);
    let server = &r.nodes[0];
    assert_eq!(server.name, "time.example.com");
    assert!(server.requests_served >= 12, "{}", server.requests_served);
    for n in &r.nodes[1..] {
        assert!(n.syncs >= 3, "{}: {} syncs", n.name, n.syncs);
        assert!(
            n.final_offset_s.abs() < 1e-3,
            "{}: {}",
            n.name,
            n.final_offset_s
        );
        assert!(n.sync_time_s.is_some_and(|t| t < 10.0), "{n:?}");
        assert_eq!(n.stratum, 2);
    }
    // The average correction is the initial offset's one big correction spread over the
    // syncs (later ones correct almost nothing): e.g. client1, 2.5 s over 7 syncs.
    for (n, initial) in r.nodes[1..].iter().zip([2.5, 1.8, 0.5]) {
        let avg = n.average_correction_s.expect("corrections measured");
        let want = initial / n.syncs as f64;
        assert!(
            (avg - want).abs() < 0.01,
            "{}: {avg} s, want ≈ {want} s",
            n.name
        );
    }
    let text = r.documents_statistics();
    for needle in [
        "requests served",
        "Syncs performed",
        "Final clock offset",
        "Average correction",
    ] {
        assert!(text.contains(needle), "{text}");
    }
}

#[test]
fn seed_hierarchy_converges_down_the_strata() {
    let sc = load("seed-hierarchy");
    let r = report(&sc, 1);
    let strata: Vec<u8> = r.nodes.iter().map(|n| n.stratum).collect();
    assert_eq!(strata, [1, 2, 2, 3, 3]);
    for n in &r.nodes[1..] {
        assert!(
            n.final_offset_s.abs() < 1e-3,
            "{}: {}",
            n.name,
            n.final_offset_s
        );
        assert!(n.sync_time_s.is_some(), "{}", n.name);
    }
    assert!(r.nodes[1].requests_served > 0 && r.nodes[2].requests_served > 0);
}

/// The documents' clients, but applying each raw offset with the right sign: one exchange
/// brings each client within a millisecond (theirs went 2.5 → 5 → 10 → 20 → 40 s).
#[test]
fn naive_discipline_converges_in_one_exchange() {
    let text = std::fs::read_to_string(scenarios_dir().join("seed-clients.toml"))
        .unwrap()
        .replace("offset = ", "discipline = \"naive\"\noffset = ");
    let sc = Scenario::parse(&text, "naive").unwrap();
    assert!(sc.nodes[1..]
        .iter()
        .all(|n| n.discipline == ntpkit_core::sync::DisciplineMode::Naive));
    let (r, csv) = report_csv(&sc, 1);
    for (i, initial) in [(1, 2.5), (2, -1.8), (3, 0.5)] {
        let name = &r.nodes[i].name;
        // Exchange rows: time,node,true offset,freq,measured offset,delay.
        let measured: Vec<f64> = csv
            .lines()
            .filter(|l| l.split(',').nth(1) == Some(name.as_str()))
            .filter_map(|l| l.split(',').nth(4).and_then(|m| m.parse().ok()))
            .collect();
        assert!(measured.len() >= 3, "{name}: {measured:?}");
        // The first exchange measures server − client = −(initial offset).
        assert!((measured[0] + initial).abs() < 1e-3, "{name}: {measured:?}");
        // Every later exchange finds the clock already right.
        for m in &measured[1..] {
            assert!(m.abs() < 1e-3, "{name}: {measured:?}");
        }
        // A step per exchange that measured a non-zero offset (this path is symmetric, so after
        // the first one the measured offset is exactly zero and nothing is stepped).
        assert!(r.nodes[i].steps >= 1 && r.nodes[i].steps <= measured.len() as u64);
        assert!(r.nodes[i].final_offset_s.abs() < 1e-3);
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_run() {
    let sc = load("large-jitter");
    let (a, csv_a) = report_csv(&sc, 7);
    let (b, csv_b) = report_csv(&sc, 7);
    let json = |r: &Report| serde_json::to_string(r).unwrap();
    assert_eq!(json(&a), json(&b));
    assert_eq!(a.table(100), b.table(100));
    assert_eq!(csv_a, csv_b);
    let (c, csv_c) = report_csv(&sc, 8);
    assert_ne!(csv_a, csv_c);
    assert_ne!(json(&a), json(&c));
    // Recording a CSV does not change the run.
    assert_eq!(json(&report(&sc, 7)), json(&a));
}

#[test]
fn falsetickers_are_outvoted() {
    let r = report(&load("falsetickers"), 1);
    for n in r.nodes.iter().filter(|n| n.role != "reference") {
        assert!(n.offset_s.max < 1e-3, "{}: max {}", n.name, n.offset_s.max);
        assert!(n.sync_time_s.is_some_and(|t| t < 600.0), "{n:?}");
    }
}

#[test]
fn hundred_seconds_off_is_stepped_and_held() {
    let r = report(&load("offset-100s"), 1);
    let c = &r.nodes[1];
    assert!(c.steps >= 1);
    // Stepped at once; the 50 ppm frequency error is learned from the polls after the burst,
    // so the error stays below 1 ms from the second 64 s poll at the latest.
    assert!(c.sync_time_s.is_some_and(|t| t < 2.0 * 64.0), "{c:?}");
    assert!(c.offset_s.max < 1e-3, "{c:?}");
}

#[test]
fn lossy_and_intermittent_paths_still_sync() {
    for name in ["loss-30", "intermittent"] {
        let r = report(&load(name), 1);
        assert!(r.packets_lost > 0, "{name}");
        for n in r.nodes.iter().filter(|n| n.role != "reference") {
            assert!(
                n.offset_s.rms < 2e-3,
                "{name} {}: rms {}",
                n.name,
                n.offset_s.rms
            );
            assert!(
                n.offset_s.max < 10e-3,
                "{name} {}: max {}",
                n.name,
                n.offset_s.max
            );
        }
    }
}

#[test]
fn large_network_never_runs_away() {
    // With seed 3, a stratum-3 server once followed an upstream's fast start-up slew into a
    // frequency estimate of −81,000 ppm, lost every source and ran away by 1,700 s: the
    // frequency estimate is now bounded by what an oscillator can be off.
    let sc = load("large-network");
    let r = report(&sc, 3);
    for n in r.nodes.iter().filter(|n| n.role != "reference") {
        assert!(n.sync_time_s.is_some(), "{} never synchronized", n.name);
        assert!(n.offset_s.rms < 1e-3, "{}: RMS {}", n.name, n.offset_s.rms);
        assert!(
            n.frequency_ppm.max.abs() < 600.0,
            "{}: {} ppm",
            n.name,
            n.frequency_ppm.max
        );
    }
}

#[test]
fn large_network_reaches_every_client() {
    let sc = load("large-network");
    let r = report(&sc, 1);
    let clients: Vec<_> = r
        .nodes
        .iter()
        .filter(|n| n.name.starts_with("client"))
        .collect();
    assert_eq!(clients.len(), 100);
    for n in &clients {
        assert_eq!(n.stratum, 4, "{}", n.name);
        assert!(
            n.final_offset_s.abs() < 2e-3,
            "{}: {}",
            n.name,
            n.final_offset_s
        );
    }
    // Every client stays within a millisecond (RMS) from the first hour on.
    let good = clients.iter().filter(|n| n.offset_s.rms < 1e-3).count();
    assert_eq!(
        good,
        clients.len(),
        "only {good} of {} clients below 1 ms RMS",
        clients.len()
    );
}

/// chrony's simulation-test defaults: over 20 seeds the client
/// synchronizes within 210 s, with RMS error ≤ 300 µs and max ≤ 1 ms from 210 s on.
#[test]
fn chrony_defaults_accuracy() {
    let sc = load("chrony-defaults");
    for seed in 1..=20 {
        let c = &report(&sc, seed).nodes[1];
        assert!(
            c.sync_time_s.is_some_and(|t| t <= 210.0),
            "seed {seed}: sync at {:?}",
            c.sync_time_s
        );
        assert!(
            c.offset_s.rms <= 300e-6,
            "seed {seed}: rms {}",
            c.offset_s.rms
        );
        assert!(
            c.offset_s.max <= 1e-3,
            "seed {seed}: max {}",
            c.offset_s.max
        );
    }
}

#[test]
fn a_node_that_starts_late_sends_nothing_before_and_syncs_from_its_start() {
    let sc = load("chrony-hierarchy");
    let (r, csv) = report_csv(&sc, 1);
    let clients: Vec<_> = r
        .nodes
        .iter()
        .filter(|n| n.name.starts_with("client-"))
        .collect();
    assert_eq!(clients.len(), 5);
    // Exchange rows (with a measured offset) of a client appear only from its start on.
    let first_exchange = csv
        .lines()
        .filter(|l| l.contains(",client-") && !l.ends_with(",,"))
        .filter_map(|l| l.split(',').next()?.parse::<f64>().ok())
        .fold(f64::INFINITY, f64::min);
    assert!(
        first_exchange >= 2000.0,
        "a client exchanged at {first_exchange} s"
    );
    for c in clients {
        assert!(c.packets_sent > 0, "{} never ran", c.name);
        let sync = c.sync_time_s.expect("synchronized");
        // Counted from its start, not from the start of the run.
        assert!(sync < 600.0, "{}: sync time {sync} s", c.name);
        // The clients can be no closer to true time than the stratum-3 servers they follow,
        // which in this seed are off by 29-80 µs on average: their RMS is 45-108 µs.
        assert!(c.offset_s.rms < 1.5e-4, "{}: {:?}", c.name, c.offset_s);
    }
}

/// chrony's 011 model: one direction queues 30 times more than the other, so every sample is
/// off in the same direction by about half its excess delay. The measured asymmetry takes that
/// bias out, and the samples it explains are weighted by what is measured to be left of their
/// error: every seed synchronizes within 2,000 s and the mean error stays near zero (without
/// the correction, seed 4 stays more than 1 ms off until 92,288 s).
#[test]
fn asymmetric_queueing_is_corrected() {
    let sc = load("chrony-011-asymmetric");
    let (mut rms, mut mean) = (0.0, 0.0);
    let seeds = 1..=6;
    for seed in seeds.clone() {
        let c = &report(&sc, seed).nodes[1];
        assert!(
            c.sync_time_s.is_some_and(|t| t <= 2000.0),
            "seed {seed}: sync at {:?}",
            c.sync_time_s
        );
        rms += c.offset_s.rms;
        mean += c.offset_s.mean;
    }
    let n = seeds.count() as f64;
    let (rms, mean) = (rms / n, mean / n);
    // The poll policy spends chronyd's packets or fewer, as the samples' noise against the
    // clock's wander earns them. With the corrected errors' spread measured (30–70 µs) it
    // polls at 256–1024 s (about 190 packets a day, chronyd 193): 69 µs over these seeds.
    // Until the spread is measured, the share model's weights (90–300 µs) hold the poll at
    // 1024 s, where the clock's wander costs most: measured only after some 40 samples, it
    // gave 91 µs; weighted by the share model alone, 122 µs. The correction's own work is
    // the mean and the sync time checked here.
    assert!(rms < 85e-6, "RMS {rms}");
    assert!(mean.abs() < 20e-6, "mean {mean}");
}
