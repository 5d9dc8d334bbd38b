//! NTS in the simulator: accuracy is unchanged where no packet is lost, lost cookies and lost
//! masters lead to new key exchanges, and replies that do not authenticate never reach the core.

use ntpkit_sim::nts::NtsCounters;
use ntpkit_sim::report::NodeReport;
use ntpkit_sim::sim::Trace;
use ntpkit_sim::{simulate, simulate_sharded, Report, Scenario};
use std::path::PathBuf;

fn report(sc: &Scenario, seed: u64) -> Report {
    let out = simulate(sc, seed, sc.duration, Trace::default());
    Report::new(sc, seed, sc.duration, &out)
}

fn parse(text: &str) -> Scenario {
    Scenario::parse(text, "nts-test").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn node<'a>(r: &'a Report, name: &str) -> &'a NodeReport {
    r.nodes.iter().find(|n| n.name == name).expect("node")
}

fn nts(r: &Report, name: &str) -> NtsCounters {
    node(r, name).nts.expect("an NTS client")
}

/// A reference, a stratum-2 server (answered in events, 1 ms processing) and two clients, one
/// of each (polling every 64 s, so that 6 h hold enough exchanges to use up cookie jars);
/// `source` is appended to every source entry.
fn hierarchy(link: &str, source: &str, server_extra: &str) -> String {
    format!(
        r#"
[simulation]
duration = "6h"
stats-start = "1h"
sample-interval = "10s"

[links.default]
delay = "2ms"
jitter = {{ distribution = "exponential", scale = "300us" }}
{link}

[links.slow]
delay = "10ms"
processing = "1ms"
jitter = {{ distribution = "normal", scale = "1ms" }}
{link}

[[node]]
name = "gps"
reference = true
{server_extra}

[[node]]
name = "s2"
offset = "20ms"
frequency-ppm = -15
wander = 1e-9
sources = [{{ server = "gps", poll = 5{source} }}]

[[node]]
name = "a"
offset = "-300ms"
frequency-ppm = 30
wander = 2e-9
sources = [{{ server = "gps", maxpoll = 6{source} }}, {{ server = "s2", link = "slow", maxpoll = 6{source} }}]

[[node]]
name = "b"
offset = "50ms"
sources = [{{ server = "s2", link = "slow", poll = 4{source} }}]
"#
    )
}

#[test]
fn without_loss_nts_changes_no_result() {
    let plain = parse(&hierarchy("", "", ""));
    let secured = parse(&hierarchy("", ", nts = true", ""));
    for seed in [1, 7] {
        let p = report(&plain, seed);
        let mut s = report(&secured, seed);
        for name in ["s2", "a", "b"] {
            let c = nts(&s, name);
            let n = node(&s, name);
            assert!(c.requests > 100, "{name}: {c:?}");
            assert_eq!(c.requests as u64, n.packets_sent, "{name}");
            assert_eq!(c.authentic as u64, n.packets_received, "{name}");
            assert_eq!(c.requests, c.authentic, "{name}: {c:?}");
            assert_eq!(
                (
                    c.not_authentic,
                    c.naks,
                    c.key_exchanges_failed,
                    c.starved_polls
                ),
                (0, 0, 0, 0),
                "{name}: {c:?}"
            );
            // One key exchange per NTS source: the first.
            let sources = if name == "a" { 2 } else { 1 };
            assert_eq!(c.key_exchanges, sources, "{name}");
        }
        assert!(node(&p, "a").offset_s.rms < 1e-3, "{:?}", node(&p, "a"));
        // Every statistic, to the last bit: the same packets, clocks and draws.
        for n in &mut s.nodes {
            n.nts = None;
        }
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&s).unwrap(),
            "seed {seed}"
        );
    }
}

#[test]
fn heavy_loss_empties_the_jar_and_new_key_exchanges_refill_it() {
    let sc = parse(&hierarchy("loss = 0.4", ", nts = true", ""));
    let r = report(&sc, 3);
    let mut starved = 0;
    for name in ["s2", "a", "b"] {
        let c = nts(&r, name);
        starved += c.starved_polls;
        assert!(c.key_exchanges > 2, "{name}: {c:?}");
        assert!(c.key_exchanges_failed > 0, "{name}: {c:?}");
        assert!(c.authentic > 0, "{name}: {c:?}");
        assert_eq!((c.not_authentic, c.naks), (0, 0), "{name}: {c:?}");
        // Starved polls are not sent; lost requests and replies never come back.
        let n = node(&r, name);
        assert_eq!(c.requests as u64, n.packets_sent, "{name}");
        assert_eq!(c.authentic as u64, n.packets_received, "{name}");
    }
    // Eight requests in a row lost start a key exchange; when it fails too, the jar runs dry
    // and polls are skipped until one succeeds.
    assert!(starved > 0);
    // Still synchronized, through the losses.
    let a = node(&r, "a");
    assert!(a.sync_time_s.is_some() && a.offset_s.rms < 5e-3, "{a:?}");
}

#[test]
fn a_server_that_loses_its_master_gets_naks_then_a_new_key_exchange() {
    let sc = parse(&hierarchy(
        "",
        ", nts = true",
        "nts-master-changes = [\"2h\", \"4h\"]",
    ));
    let r = report(&sc, 1);
    // s2 and a use gps with NTS: two NAKs each (one per change), then a new key exchange.
    for name in ["s2", "a"] {
        let c = nts(&r, name);
        assert_eq!(c.naks, 2, "{name}: {c:?}");
        let gps_sources = 1;
        let others = if name == "a" { 1 } else { 0 };
        assert_eq!(c.key_exchanges, gps_sources + others + 2, "{name}: {c:?}");
        assert_eq!(c.key_exchanges_failed, 0, "{name}: {c:?}");
        assert_eq!(c.not_authentic, 0, "{name}: {c:?}");
    }
    // b's server kept its master.
    let b = nts(&r, "b");
    assert_eq!((b.naks, b.key_exchanges), (0, 1), "{b:?}");
    let s2 = node(&r, "s2");
    assert!(s2.offset_s.rms < 1e-3, "{s2:?}");
}

#[test]
fn tampered_replies_are_dropped_and_never_reach_the_core() {
    let sc = parse(&hierarchy("", ", nts = true, nts-tamper = 0.3", ""));
    let r = report(&sc, 2);
    for name in ["s2", "a", "b"] {
        let c = nts(&r, name);
        let n = node(&r, name);
        assert!(c.not_authentic > 10, "{name}: {c:?}");
        assert_eq!(c.requests, c.authentic + c.not_authentic, "{name}: {c:?}");
        assert_eq!(n.packets_received, c.authentic as u64, "{name}");
        assert_eq!(c.naks, 0, "{name}: {c:?}");
    }
    // The flipped bits never moved a clock: still synchronized as without tampering.
    assert!(node(&r, "a").offset_s.rms < 1e-3, "{:?}", node(&r, "a"));

    // Every reply tampered with: nothing reaches the core, nothing synchronizes.
    let sc = parse(&hierarchy("", ", nts = true, nts-tamper = 1.0", ""));
    let r = report(&sc, 2);
    let a = node(&r, "a");
    let c = nts(&r, "a");
    assert_eq!(
        (a.packets_received, a.syncs, c.authentic),
        (0, 0, 0),
        "{c:?}"
    );
    assert!(c.not_authentic > 0 && c.key_exchanges > 2, "{c:?}");
}

#[test]
fn the_shipped_scenario_loses_cookies_and_exchanges_keys_again() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/nts-loss-outage.toml");
    let sc = Scenario::load(&path).expect("shipped scenario");
    let r = report(&sc, sc.seed);
    let c = nts(&r, "client");
    assert!(c.starved_polls > 0, "{c:?}");
    assert!(c.key_exchanges_failed > 0, "{c:?}");
    assert!(c.key_exchanges >= 3, "{c:?}");
    assert!(c.naks >= 1, "{c:?}");
    let n = node(&r, "client");
    assert!(n.sync_time_s.is_some(), "{n:?}");
    // The report shows the NTS table and the JSON its counters.
    assert!(r.table(10).contains("KE failed"));
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"starved_polls\""), "{json}");
    // Same seed, same bytes.
    assert_eq!(json, serde_json::to_string(&report(&sc, sc.seed)).unwrap());
}

#[test]
fn sharded_nts_runs_match_the_single_threaded_run() {
    let sc = parse(
        r#"
[simulation]
duration = "2h"
[links.default]
delay = "3ms"
loss = 0.4
jitter = { distribution = "uniform", scale = "1ms" }
[[node]]
name = "s"
reference = true
count = 2
nts-master-changes = ["1h"]
[[node]]
name = "c"
count = 6
offset-spread = "100ms"
sources = [{ server = "s", nts = true, poll = 4 }]
"#,
    );
    let d = sc.duration;
    let one = serde_json::to_string(&Report::new(
        &sc,
        4,
        d,
        &simulate(&sc, 4, d, Trace::default()),
    ))
    .unwrap();
    for k in [2, 3] {
        let split = serde_json::to_string(&Report::new(&sc, 4, d, &simulate_sharded(&sc, 4, d, k)))
            .unwrap();
        assert_eq!(one, split, "{k} shards");
    }
}
