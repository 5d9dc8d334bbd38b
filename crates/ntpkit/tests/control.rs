//! Runtime control over the control socket: `ntpkit sources`, `source add|remove|burst`,
//! `makestep`, who may use them, and the client's source ports. Every process runs as root in
//! the test's own network namespace without CAP_SYS_TIME (see `support`), on virtual clocks.

mod support;

use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use support::daemon::{daemon, daemon_at, states, status, true_error, wait_until, SECS};
use support::{ntp, Lab, Run, NTPKIT};

/// `ntpkit ARGS --socket` of daemon `name`, as `user` ("root" runs it directly).
fn ctl(lab: &Lab, name: &str, user: &str, args: &[&str]) -> Run {
    let sock = public_socket(lab, name).to_string_lossy().to_string();
    let mut cmd: Vec<String> = Vec::new();
    if user != "root" {
        cmd.extend(
            [
                "setpriv",
                &format!("--reuid={user}"),
                "--regid=65534",
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    cmd.push(NTPKIT.into());
    cmd.extend(args.iter().map(|s| s.to_string()));
    cmd.extend(["--socket".into(), sock]);
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    lab.run(&refs, SECS(10))
}

/// Where daemon `name` has its control socket: a directory every user may enter (the lab's is
/// closed), linked from the lab's usual place for the status helpers.
fn public_socket(lab: &Lab, name: &str) -> std::path::PathBuf {
    lab.public_dir().join(format!("{name}.sock"))
}

fn addresses(st: &Value) -> Vec<String> {
    states(st).into_iter().map(|(a, _)| a).collect()
}

/// Adding, bursting, stepping and removing sources of a running daemon, each checked in the
/// daemon's state; unprivileged users may read but not change.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn sources_are_added_bursted_stepped_and_removed_at_run_time() {
    support::require(
        "sources_are_added_bursted_stepped_and_removed_at_run_time",
        &[],
    );
    let lab = Lab::new("control");
    lab.set_hosts("127.0.0.1 localhost\n127.0.0.4 pool.test\n127.0.0.5 pool.test\n");
    let _servers: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
        .iter()
        .map(|a| ntp::serve(&lab, &["--listen", &format!("{a}:123"), "--stratum", "2"]))
        .collect();
    // 50 ms off, no step at start, slewing at most 500 ppm: 100 s to correct by slewing.
    let sock = public_socket(&lab, "d");
    std::os::unix::fs::symlink(&sock, lab.path("d.sock")).unwrap();
    let mut d = daemon_at(
        &lab,
        "d",
        "control-users = [\"daemon\"]\n\
         [[server]]\naddress = \"127.0.0.2\"\nminpoll = 0\nmaxpoll = 1\n\
         [sync]\nstep-at-startup = false\nmax-slew-ppm = 500\n\
         [clock]\nbackend = \"virtual\"\noffset = 0.05\n",
        &sock,
    );
    wait_until(&lab, &["d"], SECS(30), |_, st| {
        st["system"]["tracking"]["synchronized"] == true
    });

    // Reading is for everyone, text and JSON.
    let r = ctl(&lab, "d", "nobody", &["sources"]);
    r.assert_ok();
    assert!(
        r.stdout.contains("127.0.0.2:123") && r.stdout.starts_with("S Name"),
        "{r}"
    );
    let r = ctl(&lab, "d", "nobody", &["sources", "--json"]);
    r.assert_ok();
    let list: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // Changing is not, unless root, the daemon's user or a control user.
    let r = ctl(&lab, "d", "nobody", &["makestep"]);
    assert!(
        !r.status.success() && r.stderr.contains("permission denied"),
        "{r}"
    );
    let r = ctl(&lab, "d", "nobody", &["source", "add", "127.0.0.3"]);
    assert!(
        !r.status.success() && r.stderr.contains("permission denied"),
        "{r}"
    );

    // makestep (by a control user): the slew still had most of 50 ms to go; now it is gone.
    let before = true_error(&status(&lab, "d"));
    assert!(before.abs() > 0.01, "still slewing: {before}");
    let r = ctl(&lab, "d", "daemon", &["makestep", "--json"]);
    r.assert_ok();
    let answer: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    let after = true_error(&status(&lab, "d"));
    assert!(
        after.abs() < 2e-3,
        "after makestep: {after} (before {before})"
    );
    d.wait_for("stepping the clock by", SECS(5));

    // Add a server: it is polled and becomes a candidate; adding it twice is refused.
    ctl(
        &lab,
        "d",
        "root",
        &[
            "source",
            "add",
            "127.0.0.3",
            "--minpoll",
            "0",
            "--maxpoll",
            "1",
        ],
    )
    .assert_ok();
    let r = ctl(&lab, "d", "root", &["source", "add", "127.0.0.3:123"]);
    assert!(!r.status.success() && r.stderr.contains("already"), "{r}");
    let r = ctl(
        &lab,
        "d",
        "root",
        &[
            "source",
            "add",
            "127.0.0.9",
            "--minpoll",
            "9",
            "--maxpoll",
            "3",
        ],
    );
    assert!(!r.status.success() && r.stderr.contains("minpoll"), "{r}");
    wait_until(&lab, &["d"], SECS(20), |_, st| {
        st["system"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["address"] == "127.0.0.3:123" && s["reach"].as_u64().unwrap_or(0) >= 3)
    });

    // A burst: four requests within about 6 s even at a long poll interval.
    let sent = |st: &Value, addr: &str| -> u64 {
        st["system"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["address"] == addr)
            .and_then(|s| s["counters"]["sent"].as_u64())
            .unwrap_or_else(|| panic!("no counters for {addr}: {st}"))
    };
    let s0 = sent(&status(&lab, "d"), "127.0.0.3:123");
    let r = ctl(&lab, "d", "root", &["source", "burst", "127.0.0.3"]);
    r.assert_ok();
    assert!(r.stdout.contains("1 source"), "{r}");
    std::thread::sleep(SECS(7));
    let s1 = sent(&status(&lab, "d"), "127.0.0.3:123");
    assert!(s1 >= s0 + 4, "burst sent {} requests", s1 - s0);
    let r = ctl(&lab, "d", "root", &["source", "burst", "127.0.0.99"]);
    assert!(!r.status.success() && r.stderr.contains("no source"), "{r}");

    // Remove the selected server: the other one takes over.
    let r = ctl(&lab, "d", "root", &["source", "remove", "127.0.0.2"]);
    r.assert_ok();
    let st = wait_until(&lab, &["d"], SECS(20), |_, st| {
        addresses(st) == ["127.0.0.3:123"] && states(st)[0].1 == "selected"
    });
    assert_eq!(st[0]["system"]["tracking"]["reference_id"], "127.0.0.3");
    let r = ctl(&lab, "d", "root", &["source", "remove", "127.0.0.2"]);
    assert!(!r.status.success() && r.stderr.contains("no source"), "{r}");

    // A pool by name: both addresses join; one member removed stays out, the pool keeps the
    // other.
    ctl(
        &lab,
        "d",
        "root",
        &[
            "source",
            "add",
            "pool.test",
            "--pool",
            "--max-sources",
            "2",
            "--minpoll",
            "0",
            "--maxpoll",
            "1",
        ],
    )
    .assert_ok();
    wait_until(&lab, &["d"], SECS(20), |_, st| addresses(st).len() == 3);
    let r = ctl(&lab, "d", "root", &["source", "remove", "127.0.0.5"]);
    r.assert_ok();
    assert!(r.stdout.contains("from pool pool.test"), "{r}");
    std::thread::sleep(SECS(10));
    let st = status(&lab, "d");
    let now: HashSet<String> = addresses(&st).into_iter().collect();
    assert_eq!(
        now,
        HashSet::from(["127.0.0.3:123".to_string(), "127.0.0.4:123".to_string()]),
        "the removed member stays out"
    );
    // The whole pool by its name.
    let r = ctl(&lab, "d", "root", &["source", "remove", "pool.test"]);
    r.assert_ok();
    assert!(
        r.stdout.contains("removed pool pool.test (1 source)"),
        "{r}"
    );
    let exit = d.stop_with(libc::SIGTERM);
    assert!(exit.success(), "{exit}\n{}", d.output());
}

/// By default every request leaves from a new port the kernel picked; with
/// `port-per-request = false` one port serves a source for its life.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn each_request_leaves_from_a_new_port_by_default() {
    support::require("each_request_leaves_from_a_new_port_by_default", &[]);
    let lab = Lab::new("ports");
    let mut server = ntp::serve(&lab, &["--listen", "127.0.0.2:123", "--verbose"]);
    let _fixed = ntp::serve(&lab, &["--listen", "127.0.0.3:123"]);
    let conf = |addr: &str, extra: &str| {
        format!("{extra}[[server]]\naddress = \"{addr}\"\nminpoll = 0\nmaxpoll = 0\n[clock]\nbackend = \"virtual\"\n")
    };
    let _random = daemon(&lab, "random", &conf("127.0.0.2", ""));
    std::thread::sleep(SECS(8));
    let ports: HashSet<String> = server
        .proc
        .stderr()
        .lines()
        .filter_map(|l| l.split("request from 127.0.0.1:").nth(1))
        .map(str::to_string)
        .collect();
    let requests = server.proc.stderr().matches("request from").count();
    assert!(requests >= 6, "{requests} requests");
    assert_eq!(
        ports.len(),
        requests,
        "a new port for every request: {ports:?}"
    );

    // One socket for the source's life: the same port, as the kernel shows.
    let mut fixed = daemon(
        &lab,
        "fixed",
        &conf("127.0.0.3", "port-per-request = false\n"),
    );
    std::thread::sleep(SECS(4));
    let pid = fixed.command_pid().unwrap().to_string();
    let before = lab.run(&["ss", "-uanp"], SECS(5));
    std::thread::sleep(SECS(3));
    let after = lab.run(&["ss", "-uanp"], SECS(5));
    let own = |r: &Run| -> Vec<String> {
        r.stdout
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(own(&before).len(), 1, "{}", before.stdout);
    assert_eq!(own(&before), own(&after), "the source kept its port");
    let _ = server.proc.wait_timeout(Duration::from_millis(1));
    let _ = fixed.stop_with(libc::SIGTERM);
}
