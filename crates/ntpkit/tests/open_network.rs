//! Serving on an open network: rate limits with kisses-o'-death, access rules, and what real
//! clients (ours, chronyd, ntpdig) make of them. Every process runs in the test's own network
//! namespace without CAP_SYS_TIME (see `support`).

mod support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use support::daemon::{daemon, SECS};
use support::{chrony, ntp, Lab, Need, CHRONYC, CHRONYD, NTPKIT};

/// A UDP socket on `local` (port chosen by the kernel) connected to `to`, in the lab.
fn socket_from(lab: &Lab, local: Ipv4Addr, to: SocketAddr) -> UdpSocket {
    lab.in_netns(move || {
        let s = UdpSocket::bind((local, 0)).expect("bind");
        s.connect(to).expect("connect");
        s
    })
}

/// What came back to a socket: normal replies and kisses-o'-death by code.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Replies {
    answers: u64,
    rate: u64,
    deny: u64,
    rstr: u64,
}

/// Reads every datagram waiting on `s` (non-blocking) into `r`.
fn drain(s: &UdpSocket, r: &mut Replies) {
    let mut buf = [0u8; 512];
    while let Ok(n) = s.recv(&mut buf) {
        let Some(p) = ntp::parse_reply(&buf[..n]) else {
            continue;
        };
        match (p.stratum, &p.refid) {
            (0, b"RATE") => r.rate += 1,
            (0, b"DENY") => r.deny += 1,
            (0, b"RSTR") => r.rstr += 1,
            _ => r.answers += 1,
        }
    }
}

/// One address floods 10,000 requests a second for 3 s while 100 clients on other addresses
/// ask once a second: the flood gets its burst and average and a kiss-o'-death to one in 16
/// of the rest, nothing else; every honest request is answered.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn a_flood_is_limited_and_honest_clients_keep_every_reply() {
    support::require(
        "a_flood_is_limited_and_honest_clients_keep_every_reply",
        &[],
    );
    let _load = support::loading();
    let lab = Lab::new("ratelimit");
    // The limiter is under test, not load shedding: a receive buffer deep enough that the
    // kernel keeps every request while a loaded test machine deschedules the server for tens
    // of milliseconds (the default 64 KiB holds about 15 ms of this flood).
    let server = ntp::serve(
        &lab,
        &[
            "--listen",
            "127.0.0.1:123",
            "--stratum",
            "2",
            "--udp-recv-buffer",
            "4194304",
        ],
    );
    let to: SocketAddr = "127.0.0.1:123".parse().unwrap();
    let flood = socket_from(&lab, Ipv4Addr::new(127, 0, 0, 1), to);
    flood.set_nonblocking(true).unwrap();
    let honest: Vec<UdpSocket> = (1..=100)
        .map(|k| socket_from(&lab, Ipv4Addr::new(127, 3, 0, k), to))
        .collect();
    for s in &honest {
        s.set_nonblocking(true).unwrap();
    }
    let (mut fr, mut hr) = (Replies::default(), vec![Replies::default(); honest.len()]);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut honest_sent = 0u64;
    // 3 s at 10,000/s: 100 requests every 10 ms; the honest clients once a second each.
    for tick in 0..300u64 {
        for k in 0..100u64 {
            if flood.send(&ntp::request(tick << 16 | k | 1)).is_ok() {
                sent += 1;
            }
        }
        if tick % 100 == 0 {
            for s in &honest {
                s.send(&ntp::request(ntp::now_ntp())).unwrap();
                honest_sent += 1;
            }
        }
        drain(&flood, &mut fr);
        for (s, r) in honest.iter().zip(&mut hr) {
            drain(s, r);
        }
        let due = start + Duration::from_millis(10 * (tick + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        assert!(start.elapsed() < SECS(30), "flood loop ran over");
    }
    std::thread::sleep(Duration::from_millis(300));
    drain(&flood, &mut fr);
    for (s, r) in honest.iter().zip(&mut hr) {
        drain(s, r);
    }
    let honest_answers: u64 = hr.iter().map(|r| r.answers).sum();
    support::say(&format!(
        "rate limit: flood sent {sent}, got {} answers and {} RATE kisses; {} honest clients \
         got {honest_answers} of {honest_sent} answers",
        fr.answers,
        fr.rate,
        honest.len()
    ));
    assert_eq!(honest_answers, honest_sent, "every honest request answered");
    assert!(hr.iter().all(|r| r.rate + r.deny + r.rstr == 0));
    assert!(
        (16..=16 + 4 + 2).contains(&fr.answers),
        "the flood got its burst and average: {fr:?}"
    );
    let over = sent - fr.answers;
    assert!(
        fr.rate.abs_diff(over / 16) <= over / 100 + 2,
        "one in 16 over the limit kissed: {fr:?} of {over} over"
    );
    let served = server.stop();
    assert!(served.answered >= honest_sent + fr.answers, "{served:?}");
}

/// Kisses-o'-death are heeded: ntpkit's query stops on RATE, ntpdig drops the packet and
/// stops, chronyd logs it and polls less often.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn clients_back_off_on_rate_kisses() {
    support::require(
        "clients_back_off_on_rate_kisses",
        &[
            Need::Tool("ntpdig"),
            Need::Tool(CHRONYD),
            Need::Tool(CHRONYC),
        ],
    );
    let lab = Lab::new("ratekod");
    // One request per 8 s, bursts of 2, every request over the limit kissed.
    let strict = [
        "--stratum",
        "2",
        "--rate-limit-interval",
        "3",
        "--rate-limit-burst",
        "2",
        "--rate-limit-kod",
        "0",
    ];
    let mut args = vec!["--listen", "127.0.0.1:123", "--listen", "127.0.0.2:1123"];
    args.extend_from_slice(&strict);
    let server = ntp::serve(&lab, &args);
    let q = lab.run(
        &[
            NTPKIT,
            "query",
            "127.0.0.1",
            "--samples",
            "5",
            "--interval",
            "0.1",
        ],
        SECS(20),
    );
    assert!(!q.status.success(), "{q}");
    assert!(q.stderr.contains("kiss-o'-death RATE"), "{q}");
    // ntpdig (port 123): the first answer is good, the third is a kiss it refuses.
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let r = lab.run(&["ntpdig", "127.0.0.1"], SECS(20));
        outputs.push(format!("{}{}", r.stdout, r.stderr));
    }
    assert!(
        outputs[2].contains("probable KOD"),
        "ntpdig took a kiss for an answer: {outputs:?}"
    );
    // chronyd polling every second (allowed to go to 64 s) slows down.
    let conf = lab.write(
        "chronyc.conf",
        &format!(
            "server 127.0.0.2 port 1123 iburst minpoll 0 maxpoll 6\nport 0\ncmdport 0\n\
             bindcmdaddress {}\npidfile {}\n",
            lab.path("chronyc.sock").display(),
            lab.path("chronyc.pid").display()
        ),
    );
    let mut c = chrony::start(&lab, &lab.ns, "chronyc", &conf);
    std::thread::sleep(SECS(30));
    let log = c.output();
    c.stop_with(libc::SIGTERM);
    let served = server.stop();
    support::say(&format!("chronyd against strict rate limits: {served:?}"));
    assert!(log.contains("Received KoD RATE"), "{log}");
    // At one request a second chronyd would have sent 30 here (plus ours before it).
    assert!(
        served.answered + served.limited < 5 + 3 + 20,
        "chronyd did not slow down: {served:?}"
    );
}

/// Access rules, first match wins: allowed, kissed with DENY or RSTR, or ignored; and a daemon
/// with no rule serves nobody (and says so).
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn access_rules_decide_who_is_served() {
    support::require("access_rules_decide_who_is_served", &[]);
    let lab = Lab::new("access");
    let server = ntp::serve(
        &lab,
        &[
            "--listen",
            "127.0.0.1:123",
            "--access",
            "deny 127.0.0.2 kod",
            "--access",
            "deny 127.0.0.3 rstr",
            "--access",
            "allow 127.0.0.0/24",
            "--access",
            "deny all",
        ],
    );
    let to: SocketAddr = "127.0.0.1:123".parse().unwrap();
    let ask = |from: Ipv4Addr| {
        let s = socket_from(&lab, from, to);
        s.send(&ntp::request(ntp::now_ntp())).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.set_nonblocking(true).unwrap();
        let mut r = Replies::default();
        drain(&s, &mut r);
        r
    };
    let one = |answers, deny, rstr| Replies {
        answers,
        deny,
        rstr,
        rate: 0,
    };
    assert_eq!(ask(Ipv4Addr::new(127, 0, 0, 9)), one(1, 0, 0), "allowed");
    assert_eq!(ask(Ipv4Addr::new(127, 0, 0, 2)), one(0, 1, 0), "deny kod");
    assert_eq!(ask(Ipv4Addr::new(127, 0, 0, 3)), one(0, 0, 1), "deny rstr");
    assert_eq!(
        ask(Ipv4Addr::new(127, 1, 0, 1)),
        one(0, 0, 0),
        "no rule: ignored"
    );
    let served = server.stop();
    assert_eq!((served.answered, served.denied), (1, 3), "{served:?}");

    // A daemon listening without access rules serves nobody, and warns.
    let d = daemon(
        &lab,
        "closed",
        "access = []\nlisten = [\"127.0.0.5:1123\"]\n[sync]\nlocal-stratum = 10\n",
    );
    let q = lab.run(
        &[
            NTPKIT,
            "query",
            "127.0.0.5:1123",
            "--samples",
            "1",
            "--timeout",
            "1",
        ],
        SECS(10),
    );
    assert!(!q.status.success(), "{q}");
    assert!(d.stderr().contains("nobody is served"), "{}", d.stderr());
}
