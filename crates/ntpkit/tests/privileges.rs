//! Least privilege: started as root to bind port 123, the daemon and `ntpkit serve` run as
//! their user with no capability left and under the system-call filter, and keep doing all
//! they do (synchronizing, resolving names, serving UDP from the loop and from threads, TCP,
//! rate limiting, the control socket, signals, the drift file). Verified from
//! `/proc/PID/status`. Every process runs as root in the test's own network namespace, without
//! CAP_SYS_TIME (see `support`).

mod support;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::daemon::{daemon, status, tracking, virtual_clock, wait_until, SECS};
use support::{ntp, Lab, Proc, NTPKIT};

/// User and group the tests run the servers as.
const NOBODY: &str = "65534";

/// Asserts that `p` runs as nobody, with no capability in any set, `no_new_privs` and the
/// seccomp filter (mode 2).
fn assert_confined(p: &Proc) {
    let st: HashMap<String, String> = p.proc_status();
    let ids = |k: &str| -> Vec<String> { st[k].split_whitespace().map(str::to_string).collect() };
    assert_eq!(
        ids("Uid"),
        vec![NOBODY; 4],
        "{}: real, effective, saved, fs uid",
        p.name
    );
    assert_eq!(ids("Gid"), vec![NOBODY; 4], "{}: gids", p.name);
    assert_eq!(
        ids("Groups"),
        vec![NOBODY],
        "{}: supplementary groups",
        p.name
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&st[set], 16).unwrap(),
            0,
            "{}: {set} = {}",
            p.name,
            st[set]
        );
    }
    assert_eq!(st["NoNewPrivs"], "1", "{}", p.name);
    assert_eq!(st["Seccomp"], "2", "{}: filter mode", p.name);
}

/// [`assert_confined`] once `p` has taken its last step: a process changes its user (and logs
/// it) before it installs the seccomp filter, so wait up to 5 s for the filter first.
fn assert_confined_once_filtered(p: &Proc) {
    support::wait(SECS(5), || {
        p.proc_status()
            .get("Seccomp")
            .is_some_and(|mode| mode == "2")
    });
    assert_confined(p);
}

/// A directory the user nobody owns, for the drift file.
fn nobody_dir(lab: &Lab) -> std::path::PathBuf {
    let dir = lab.public_dir().join("state");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Sends 200 requests at once from one address and counts replies and RATE kisses.
fn burst(lab: &Lab, to: &'static str) -> (u64, u64) {
    let s = lab.in_netns(move || {
        let s = UdpSocket::bind("127.0.0.9:0").unwrap();
        s.connect(to).unwrap();
        s
    });
    for k in 0..200u64 {
        let _ = s.send(&ntp::request(k << 8 | 1));
    }
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut answers, mut rate) = (0, 0);
    let mut buf = [0u8; 512];
    while let Ok(n) = s.recv(&mut buf) {
        match ntp::parse_reply(&buf[..n]) {
            Some(r) if r.stratum == 0 && &r.refid == b"RATE" => rate += 1,
            Some(_) => answers += 1,
            None => {}
        }
    }
    (answers, rate)
}

/// Two daemons started as root, one serving UDP from threads, one from its event loop, both
/// switching to nobody: they synchronize through names and a pool, serve UDP and TCP, limit a
/// flood, answer the control socket, save the drift file on SIGHUP, print counters on SIGUSR1
/// and stop cleanly on SIGTERM, all under the filter and with no capability.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemons_started_as_root_run_as_their_user_with_nothing_left() {
    support::require(
        "daemons_started_as_root_run_as_their_user_with_nothing_left",
        &[],
    );
    let lab = Lab::new("privileges");
    lab.set_hosts("127.0.0.1 localhost\n127.0.0.2 upstream.test\n127.0.0.3 pool.test\n");
    let up1 = ntp::serve(&lab, &["--listen", "127.0.0.2:123", "--stratum", "2"]);
    let up2 = ntp::serve(&lab, &["--listen", "127.0.0.3:123", "--stratum", "2"]);
    let state = nobody_dir(&lab);
    let drift_a = state.join("a.drift");
    let mut a = daemon(
        &lab,
        "a",
        &format!(
            "user = \"nobody\"\nlisten = [\"127.0.0.10:123\"]\ntcp = [\"127.0.0.10:123\"]\n\
             serve-threads = 2\ndrift-file = \"{}\"\n\
             [[server]]\naddress = \"upstream.test\"\nminpoll = 0\nmaxpoll = 1\n\
             [[pool]]\nname = \"pool.test\"\nminpoll = 0\nmaxpoll = 1\n{}",
            drift_a.display(),
            virtual_clock(0.05, 20.0)
        ),
    );
    let mut b = daemon(
        &lab,
        "b",
        &format!(
            "user = \"nobody\"\nlisten = [\"127.0.0.11:123\"]\ndrift-file = \"{}\"\n\
             [[server]]\naddress = \"127.0.0.10\"\nminpoll = 0\nmaxpoll = 1\n{}",
            state.join("b.drift").display(),
            virtual_clock(-0.03, -10.0)
        ),
    );
    a.wait_for("running as user nobody", SECS(10));
    b.wait_for("running as user nobody", SECS(10));
    assert_confined_once_filtered(&a);
    assert_confined_once_filtered(&b);

    wait_until(&lab, &["a", "b"], SECS(60), |_, st| {
        tracking(st)["synchronized"].as_bool() == Some(true)
    });
    let st = status(&lab, "b");
    assert_eq!(tracking(&st)["stratum"], 4, "b follows a at stratum 3");

    // Served over UDP (threads of a, loop of b) and TCP (a), to ntpkit query.
    for (args, what) in [
        (vec!["127.0.0.10:123"], "a udp"),
        (vec!["--tcp", "127.0.0.10:123"], "a tcp"),
        (vec!["127.0.0.11:123"], "b udp"),
    ] {
        let mut q = vec![NTPKIT, "query"];
        q.extend(args);
        let r = lab.run(&q, SECS(10));
        assert!(r.status.success(), "{what}: {}", r.stdout_and_stderr());
        assert!(r.stdout.contains("Stratum"), "{what}: {}", r.stdout);
    }
    // A flood from one address gets its burst and RATE kisses, from threads and from the loop.
    for to in ["127.0.0.10:123", "127.0.0.11:123"] {
        let (answers, rate) = burst(&lab, to);
        assert!(
            (10..=40).contains(&answers),
            "{to}: {answers} answers to a burst of 200"
        );
        assert!(rate > 0, "{to}: no RATE kiss");
    }

    // SIGHUP: drift file saved by nobody, names resolved again; SIGUSR1: counters.
    a.signal_command(libc::SIGHUP);
    a.wait_for("resolving source names again", SECS(5));
    support::wait(SECS(5), || drift_a.exists());
    let meta = std::fs::metadata(&drift_a).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "drift file written by nobody"
    );
    a.signal_command(libc::SIGUSR1);
    a.wait_for("served udp:", SECS(5));
    // Still synchronized, still confined after all of that.
    let st = status(&lab, "a");
    assert_eq!(tracking(&st)["synchronized"], true);
    assert_confined(&a);

    for p in [&mut a, &mut b] {
        let exit = p.stop_with(libc::SIGTERM);
        assert!(
            exit.success(),
            "{} exited with {exit}\n{}",
            p.name,
            p.output()
        );
    }
    drop((up1, up2));
}

/// `ntpkit serve --user nobody` on port 123: confined, and serving UDP and TCP.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn serve_started_as_root_runs_as_its_user_with_nothing_left() {
    support::require(
        "serve_started_as_root_runs_as_their_user_with_nothing_left",
        &[],
    );
    let lab = Lab::new("serve-privileges");
    let server = ntp::serve(
        &lab,
        &[
            "--listen",
            "127.0.0.1:123",
            "--tcp",
            "127.0.0.1:123",
            "--user",
            "nobody",
            "--udp-threads",
            "2",
        ],
    );
    // The server listens before it confines itself.
    assert_confined_once_filtered(&server.proc);
    for args in [vec!["127.0.0.1:123"], vec!["--tcp", "127.0.0.1:123"]] {
        let mut q = vec![NTPKIT, "query"];
        q.extend(args);
        lab.run(&q, SECS(10)).assert_ok();
    }
    assert_confined(&server.proc);
    let served = server.stop();
    // ntpkit query asks four times.
    assert_eq!(served.answered, 8, "{served:?}");
}

/// Asking for a user the process cannot become, or one that does not exist, stops the start
/// with a message naming the fix; so does a drift file the user could not write.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn a_user_that_cannot_be_used_is_refused_with_the_fix() {
    support::require("a_user_that_cannot_be_used_is_refused_with_the_fix", &[]);
    let lab = Lab::new("user-errors");
    let public = lab.public_dir();
    let conf = |extra: &str| {
        let p = public.join(format!("c{}.toml", extra.len()));
        std::fs::write(
            &p,
            format!("{extra}\n[sync]\nlocal-stratum = 10\n[clock]\nbackend = \"virtual\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p.to_string_lossy().to_string()
    };

    // Not root: cannot switch.
    let c = conf("user = \"daemon\"");
    let r = lab.run(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            NTPKIT,
            "daemon",
            "-c",
            &c,
        ],
        SECS(10),
    );
    assert!(!r.status.success());
    let text = r.stdout_and_stderr();
    assert!(
        text.contains("cannot switch to user \"daemon\"") && text.contains("start as root"),
        "{text}"
    );

    // No such user: found by --check already.
    let c = conf("user = \"no-such-user-for-ntpkit\"");
    let r = lab.run(&[NTPKIT, "daemon", "--check", "-c", &c], SECS(10));
    assert!(!r.status.success());
    assert!(
        r.stdout_and_stderr().contains("useradd"),
        "{}",
        r.stdout_and_stderr()
    );

    // A drift file in a directory nobody cannot write.
    let c = conf(&format!(
        "user = \"nobody\"\ndrift-file = \"{}\"",
        lab.path("x.drift").display()
    ));
    let r = lab.run(&[NTPKIT, "daemon", "-c", &c], SECS(10));
    assert!(!r.status.success());
    assert!(
        r.stdout_and_stderr().contains("cannot write")
            && r.stdout_and_stderr().contains("chown nobody"),
        "{}",
        r.stdout_and_stderr()
    );
}
