//! End-to-end tests of `ntpkit daemon`: real processes on real sockets, clocks virtual.
//!
//! Every daemon runs without CAP_SYS_TIME in the test's own network namespace (see `support`),
//! with the `observe` or `virtual` clock backend; the OS clock is the truth, and a virtual
//! clock's true error is what `ntpkit status` reports as its offset from the OS clock. Loopback
//! addresses 127.0.0.x tell the daemons apart, so reference IDs are checkable.

mod support;

use serde_json::Value;
use std::time::Instant;
use support::daemon::{
    daemon, fast_server, server, states, status, tracking, true_error, virtual_clock, wait_until,
    MAX_ERROR, SECS,
};
use support::{chrony, Lab, Need, Proc, CHRONYD, NTPKIT};

/// The documents' hierarchy, for real: stratum 1 serving the OS clock; two stratum-2 daemons
/// +0.5 s / −0.3 s and +50 / −30 ppm off; two stratum-3 daemons +3 s and −2 s off.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn stratum_hierarchy_converges() {
    support::require("stratum_hierarchy_converges", &[]);
    let lab = Lab::new("hier");
    let _s1 = daemon(
        &lab,
        "s1",
        "listen = [\"127.0.0.1:1123\"]\n[sync]\nlocal-stratum = 1\n",
    );
    let drift = lab.own_dir("state").join("s2a.drift");
    let mut s2a = daemon(
        &lab,
        "s2a",
        &format!(
            "listen = [\"127.0.0.2:1123\"]\ndrift-file = \"{}\"\n{}{}",
            drift.display(),
            fast_server("127.0.0.1:1123"),
            virtual_clock(0.5, 50.0)
        ),
    );
    let _s2b = daemon(
        &lab,
        "s2b",
        &format!(
            "listen = [\"127.0.0.3:1123\"]\n{}{}",
            fast_server("127.0.0.1:1123"),
            virtual_clock(-0.3, -30.0)
        ),
    );
    let _s3a = daemon(
        &lab,
        "s3a",
        &format!(
            "{}{}",
            fast_server("127.0.0.2:1123"),
            virtual_clock(3.0, 20.0)
        ),
    );
    let _s3b = daemon(
        &lab,
        "s3b",
        &format!(
            "{}{}",
            fast_server("127.0.0.3:1123"),
            virtual_clock(-2.0, -10.0)
        ),
    );

    let want = |n: &str| match n {
        "s2a" => (2, "127.0.0.1", Some(50.0)),
        "s2b" => (2, "127.0.0.1", Some(-30.0)),
        "s3a" => (3, "127.0.0.2", None),
        _ => (3, "127.0.0.3", None),
    };
    let within = |n: &str, st: &Value| {
        let t = tracking(st);
        let (stratum, refid, freq) = want(n);
        true_error(st).abs() < MAX_ERROR
            && t["synchronized"] == true
            && t["stratum"] == stratum
            && t["reference_id"] == refid
            && freq.is_none_or(|f| (t["frequency_ppm"].as_f64().unwrap() - f).abs() < 1.0)
    };
    // Converged = every bound holds at every check (each second) for 20 s in a row, from an
    // instant within the first 2 minutes: not a lucky crossing.
    let names = ["s2a", "s2b", "s3a", "s3b"];
    let started = Instant::now();
    let mut good_since: Option<Instant> = None;
    let all = loop {
        let all: Vec<Value> = names.iter().map(|n| status(&lab, n)).collect();
        if names.iter().zip(&all).all(|(n, st)| within(n, st)) {
            let since = *good_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SECS(20) {
                break all;
            }
        } else {
            good_since = None;
            let shown: Vec<String> = names
                .iter()
                .zip(&all)
                .map(|(n, st)| format!("{n}: {st:#}"))
                .collect();
            assert!(
                started.elapsed() < SECS(120),
                "not converged within 2 minutes:\n{}",
                shown.join("\n")
            );
        }
        std::thread::sleep(SECS(1));
    };
    let reached = good_since.expect("converged").duration_since(started);
    support::say(&format!(
        "hierarchy converged after {:.0} s",
        reached.as_secs_f64()
    ));
    for (n, st) in ["s2a", "s2b", "s3a", "s3b"].iter().zip(&all) {
        support::say(&format!(
            "  {n}: true error {:+.6} s, frequency {:+.3} ppm",
            true_error(st),
            tracking(st)["frequency_ppm"].as_f64().unwrap()
        ));
    }
    // Stratum 1 serves the OS clock as LOCL.
    let s1 = status(&lab, "s1");
    assert_eq!(tracking(&s1)["stratum"], 1);
    assert_eq!(tracking(&s1)["reference_id"], "LOCL");
    // On the wire too: a client of s2a sees stratum 2 and refid 127.0.0.1.
    let q = lab.run(
        &[
            NTPKIT,
            "query",
            "127.0.0.2:1123",
            "--samples",
            "1",
            "--json",
        ],
        SECS(10),
    );
    q.assert_ok();
    let v: Value = serde_json::from_str(&q.stdout).unwrap();
    assert_eq!(v["stratum"], 2, "{v}");
    assert_eq!(v["refid"], "127.0.0.1", "{v}");
    // The drift file is written at shutdown, atomically, with the frequency estimate.
    s2a.stop_with(15);
    let ppm: f64 = std::fs::read_to_string(&drift)
        .expect("drift file written")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (ppm - 50.0).abs() < 1.0,
        "drift file holds {ppm} ppm, the clock's error is 50 ppm"
    );
}

/// A server whose clock is `offset` seconds off (a virtual clock serving as stratum 1).
fn fake_server(offset: f64) -> String {
    let clock = if offset == 0.0 {
        String::new()
    } else {
        virtual_clock(offset, 0.0)
    };
    format!("[sync]\nlocal-stratum = 1\n{clock}")
}

fn five_servers<'l>(lab: &'l Lab, offsets: [f64; 5]) -> Vec<Proc<'l>> {
    (0..5)
        .map(|i| {
            daemon(
                lab,
                &format!("srv{i}"),
                &format!(
                    "listen = [\"127.0.1.{}:1123\"]\n{}",
                    i + 1,
                    fake_server(offsets[i])
                ),
            )
        })
        .collect()
}

fn client_of_five(lab: &Lab) -> Proc<'_> {
    let servers: String = (1..=5)
        .map(|i| server(&format!("127.0.1.{i}:1123")))
        .collect();
    daemon(
        lab,
        "client",
        &format!("{servers}{}", virtual_clock(0.2, 10.0)),
    )
}

#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn two_falsetickers_of_five_are_rejected() {
    support::require("two_falsetickers_of_five_are_rejected", &[]);
    let lab = Lab::new("false2");
    let _servers = five_servers(&lab, [0.0, 1.0, 0.0, 2.0, 0.0]);
    let _client = client_of_five(&lab);
    let st = wait_until(&lab, &["client"], SECS(60), |_, st| {
        let s = states(st);
        true_error(st).abs() < MAX_ERROR
            && s.iter().filter(|(_, x)| x == "falseticker").count() == 2
            && s.iter().any(|(_, x)| x == "selected")
    })
    .remove(0);
    for (addr, state) in states(&st) {
        let off = addr.starts_with("127.0.1.2") || addr.starts_with("127.0.1.4");
        if off {
            assert_eq!(state, "falseticker", "{addr}");
        } else {
            assert!(
                ["selected", "candidate"].contains(&state.as_str()),
                "{addr} is {state}"
            );
        }
    }
    // It stays within 1 ms for a while.
    for _ in 0..5 {
        std::thread::sleep(SECS(2));
        let e = true_error(&status(&lab, "client"));
        assert!(e.abs() < MAX_ERROR, "true error {e}");
    }
}

#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn three_wrong_of_five_means_no_majority() {
    support::require("three_wrong_of_five_means_no_majority", &[]);
    let lab = Lab::new("false3");
    let _servers = five_servers(&lab, [0.0, 1.0, 0.0, 2.0, 3.0]);
    let _client = client_of_five(&lab);
    std::thread::sleep(SECS(12));
    let st = status(&lab, "client");
    let t = tracking(&st);
    assert_eq!(t["synchronized"], false, "{t}");
    let reason = t["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no majority"), "reason: {reason}");
    assert_eq!(t["stratum"], 16);
    assert!(
        states(&st).iter().all(|(_, s)| s != "selected"),
        "{:?}",
        states(&st)
    );
    // It followed none of them: the clock kept its initial 0.2 s error (plus 10 ppm drift).
    let e = true_error(&st);
    assert!((e - 0.2).abs() < 0.01, "true error {e}");
    // The text form says it too.
    let sock = lab.path("client.sock").to_string_lossy().to_string();
    let text = lab.run(&[NTPKIT, "status", "--socket", &sock], SECS(10));
    assert!(text.stdout.contains("no majority"), "{}", text.stdout);
}

#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_syncs_to_chronyd() {
    support::require("daemon_syncs_to_chronyd", &[Need::Tool(CHRONYD)]);
    let lab = Lab::new("tochrony");
    let conf = chrony::server_conf(&lab, "chrony", &["127.0.0.1"], 11123, 1);
    let _chronyd = chrony::start(&lab, &lab.ns, "chrony", &conf);
    let _d = daemon(
        &lab,
        "d",
        &format!("{}{}", server("127.0.0.1:11123"), virtual_clock(0.7, -25.0)),
    );
    let st = wait_until(&lab, &["d"], SECS(90), |_, st| {
        true_error(st).abs() < MAX_ERROR && tracking(st)["synchronized"] == true
    })
    .remove(0);
    assert_eq!(tracking(&st)["stratum"], 2);
    assert_eq!(
        st["system"]["sources"][0]["reference_id"], "127.127.1.1",
        "chronyd's local refid"
    );
}

#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn chronyd_syncs_to_daemon() {
    support::require("chronyd_syncs_to_daemon", &[Need::Tool(CHRONYD)]);
    let lab = Lab::new("fromchrony");
    let _s1 = daemon(
        &lab,
        "s1",
        "listen = [\"127.0.0.1:1123\"]\n[sync]\nlocal-stratum = 1\n",
    );
    let _s2 = daemon(
        &lab,
        "s2",
        &format!(
            "listen = [\"127.0.0.2:1123\"]\n{}{}",
            server("127.0.0.1:1123"),
            virtual_clock(0.2, 5.0)
        ),
    );
    wait_until(&lab, &["s2"], SECS(60), |_, st| {
        true_error(st).abs() < MAX_ERROR && tracking(st)["stratum"] == 2
    });
    let conf = chrony::client_conf(&lab, "chronyc", "127.0.0.2", 1123);
    let _c = chrony::start(&lab, &lab.ns, "chronyc", &conf);
    let deadline = Instant::now() + SECS(60);
    loop {
        let t = chrony::tracking(&lab, "chronyc");
        let sources = chrony::sources(&lab, "chronyc");
        if t.stratum == 3 && sources.iter().any(|s| s.state == "*") {
            assert_eq!(t.refid, "7F000002", "chronyd follows our stratum-2 daemon");
            assert!(
                t.system_time.abs() < MAX_ERROR,
                "chronyd sees {} s",
                t.system_time
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chronyd did not select the daemon: {t:?} {sources:?}"
        );
        std::thread::sleep(SECS(1));
    }
}

#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn check_rejects_a_bad_config_with_the_fix() {
    support::require("check_rejects_a_bad_config_with_the_fix", &[]);
    let lab = Lab::new("badconf");
    let path = lab.write(
        "bad.toml",
        "[[server]]\naddress = \"127.0.0.1\"\nminpoll = 9\nmaxpoll = 3\n",
    );
    let r = lab.run(
        &[NTPKIT, "daemon", "--check", "-c", &path.to_string_lossy()],
        SECS(10),
    );
    assert!(!r.status.success());
    assert!(
        r.stderr.contains("minpoll 9 is above maxpoll 3; swap them"),
        "{}",
        r.stderr
    );
    let path = lab.write(
        "sys.toml",
        "[sync]\nlocal-stratum = 1\n[clock]\nbackend = \"system\"\n",
    );
    let mut p = lab.spawn(
        "sys",
        &[NTPKIT, "daemon", "-c", &path.to_string_lossy()],
        SECS(10),
    );
    let st = p.wait_timeout(SECS(10)).expect("exits at once");
    assert!(!st.success());
    assert!(p.output().contains("needs CAP_SYS_TIME"), "{}", p.output());
}
