//! The Prometheus endpoint of `ntpkit daemon` (`metrics` key) and `ntpkit serve --metrics`,
//! scraped over plain HTTP as Prometheus does and read with a small parser of the text format.
//! Real processes on real sockets in the test's own network namespace, clocks virtual, as in
//! tests/faults.rs.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::daemon::{daemon, server, tracking, virtual_clock, wait_until, SECS};
use support::{ntp, Lab, Proc, NTPKIT};

/// One sample of the text format.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn bad<T>(line: &str) -> T {
    panic!("cannot parse {line:?}")
}

/// A scraped document.
#[derive(Debug)]
struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format (Prometheus 0.0.4 or OpenMetrics): comments skipped, label values
    /// unescaped.
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad(line));
            let name = line[..name_end].to_string();
            let mut rest = &line[name_end..];
            let mut labels = BTreeMap::new();
            if let Some(mut r) = rest.strip_prefix('{') {
                loop {
                    if let Some(after) = r.strip_prefix('}') {
                        rest = after;
                        break;
                    }
                    let (key, after) = r.split_once("=\"").unwrap_or_else(|| bad(line));
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().unwrap_or_else(|| bad(line)) {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().unwrap_or_else(|| bad(line)).1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            (_, c) => value.push(c),
                        }
                    };
                    labels.insert(key.to_string(), value);
                    r = &after[end + 1..];
                    r = r.strip_prefix(',').unwrap_or(r);
                }
            }
            let value = rest.split_whitespace().next().unwrap_or_else(|| bad(line));
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| bad(line)),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The samples of `name` whose labels include `labels`.
    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.matching(name, labels).as_slice() {
            [s] => s.value,
            found => panic!(
                "{} samples of {name}{labels:?}, want 1:\n{}",
                found.len(),
                self.text
            ),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// An HTTP response: status code, head (status line and fields), body.
#[derive(Debug)]
struct Http {
    status: u16,
    head: String,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` to `addr` from inside the lab and reads the whole answer.
fn exchange(lab: &Lab, addr: &str, request: &[u8]) -> Http {
    let addr: SocketAddr = addr.parse().expect("address");
    let head_only = request.starts_with(b"HEAD ");
    let request = request.to_vec();
    let raw = lab.in_netns(move || {
        let mut s = TcpStream::connect_timeout(&addr, SECS(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_read_timeout(Some(SECS(10))).unwrap();
        // The server may answer (and stop reading) before it has it all: an oversize head.
        let _ = s.write_all(&request);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
        raw
    });
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let http = Http {
        status,
        head: head.to_string(),
        body: body.to_string(),
    };
    if let (Some(len), false) = (http.header("content-length"), head_only) {
        assert_eq!(len, http.body.len().to_string(), "{http:?}");
    }
    http
}

fn get(path: &str, accept: Option<&str>) -> Vec<u8> {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: scraper\r\nUser-Agent: test\r\n{accept}\r\n").into_bytes()
}

/// `GET /metrics` as curl sends it: the Prometheus text format comes back.
fn scrape(lab: &Lab, addr: &str) -> Metrics {
    let r = exchange(lab, addr, &get("/metrics", None));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{r:?}"
    );
    Metrics::parse(&r.body)
}

/// `ntpkit serve ARGS` named `name`, once it is serving.
fn upstream<'l>(lab: &'l Lab, name: &str, args: &[&str]) -> Proc<'l> {
    let mut a = vec![NTPKIT, "serve"];
    a.extend_from_slice(args);
    let mut p = lab.spawn(name, &a, SECS(240));
    p.wait_for("Waiting for NTP requests", SECS(15));
    p
}

/// `ntpkit query` of `addr`, `n` samples (`--tcp` too if `tcp`); must succeed.
fn query(lab: &Lab, addr: &str, n: u32, tcp: bool) {
    let n = n.to_string();
    let mut args = vec![
        NTPKIT,
        "query",
        addr,
        "-n",
        &n,
        "-i",
        "0.1",
        "--allow-unsynced",
    ];
    if tcp {
        args.push("--tcp");
    }
    lab.run(&args, SECS(20)).assert_ok();
}

fn udp_answered(m: &Metrics) -> f64 {
    m.value("ntpkit_server_answered_total", &[("transport", "udp")])
}

fn tcp_answered(m: &Metrics) -> f64 {
    m.value("ntpkit_server_answered_total", &[("transport", "tcp")])
}

/// A daemon following two local `ntpkit serve` (one by name, one by address): its scrape shows
/// the synchronization, each source, and the server counters growing with the queries it
/// answers; the endpoint survives bad clients, and the upstream's own endpoint agrees with
/// the daemon about how many requests it answered.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_metrics_show_tracking_sources_and_serving() {
    support::require("daemon_metrics_show_tracking_sources_and_serving", &[]);
    let lab = Lab::new("metrics");
    lab.set_hosts("127.0.0.1 localhost\n127.0.1.1 up1.ntpkit.invalid\n");
    let _up1 = upstream(
        &lab,
        "up1",
        &[
            "--listen",
            "127.0.1.1:1123",
            "--stratum",
            "1",
            "--refid",
            "GPS",
            "--metrics",
            "127.0.1.1:9975",
        ],
    );
    let _up2 = upstream(
        &lab,
        "up2",
        &[
            "--listen",
            "127.0.1.2:1123",
            "--stratum",
            "1",
            "--refid",
            "PPS",
        ],
    );
    let client = daemon(
        &lab,
        "client",
        &format!(
            "listen = [\"127.0.0.2:1123\"]\ntcp = [\"127.0.0.2:1124\"]\n\
             metrics = \"127.0.0.2:9975\"\n{}{}{}",
            server("up1.ntpkit.invalid:1123"),
            server("127.0.1.2:1123"),
            virtual_clock(0.01, 5.0)
        ),
    );
    let metrics = "127.0.0.2:9975";
    wait_until(&lab, &["client"], SECS(60), |_, st| {
        let sources = st["system"]["sources"].as_array().unwrap();
        tracking(st)["state"] == "synchronized"
            && sources.len() == 2
            && sources.iter().all(|s| s["offset"].is_number())
    });
    let m = scrape(&lab, metrics);

    // Tracking.
    assert_eq!(m.value("ntpkit_tracking_synchronized", &[]), 1.0);
    assert_eq!(
        m.value("ntpkit_tracking_state", &[("state", "synchronized")]),
        1.0
    );
    let states = m.matching("ntpkit_tracking_state", &[]);
    assert_eq!(states.len(), 5, "{}", m.text);
    assert_eq!(states.iter().filter(|s| s.value == 1.0).count(), 1);
    assert_eq!(m.value("ntpkit_tracking_stratum", &[]), 2.0, "upstream + 1");
    assert_eq!(m.value("ntpkit_tracking_leap_indicator", &[]), 0.0);
    let refid = m.matching("ntpkit_tracking_reference_info", &[]);
    assert_eq!(refid.len(), 1, "{}", m.text);
    assert!(
        ["127.0.1.1", "127.0.1.2"].contains(&refid[0].labels["reference_id"].as_str()),
        "{refid:?}"
    );
    let offset = m.value("ntpkit_tracking_offset_seconds", &[]);
    assert!(offset.abs() < 0.05, "{offset}");
    let delay = m.value("ntpkit_tracking_root_delay_seconds", &[]);
    let dispersion = m.value("ntpkit_tracking_root_dispersion_seconds", &[]);
    let distance = m.value("ntpkit_tracking_root_distance_seconds", &[]);
    assert!((0.0..0.05).contains(&delay), "{delay}");
    assert!((distance - (delay / 2.0 + dispersion)).abs() < 1e-12);
    // A ratio, not ppm: the virtual clock is 5 ppm (5e-6) fast.
    let freq = m.value("ntpkit_tracking_frequency_error_ratio", &[]);
    assert!(freq.abs() < 1e-4, "{freq}");
    assert!(m.value("ntpkit_tracking_updates_total", &[]) >= 1.0);
    assert!(m.has("ntpkit_tracking_poll_interval_seconds"), "{}", m.text);
    assert_eq!(m.value("ntpkit_clock_info", &[("backend", "virtual")]), 1.0);
    assert!(m.value("ntpkit_clock_offset_from_os_seconds", &[]).abs() < 0.05);
    // The error bound, from the same snapshot: it holds the virtual clock's true error.
    let synced = [("status", "synchronized")];
    assert_eq!(m.value("ntpkit_clock_error_bound_status", &synced), 1.0);
    let bound = m.value("ntpkit_clock_error_bound_seconds", &[]);
    let error = m.value("ntpkit_clock_offset_from_os_seconds", &[]);
    assert!(
        error.abs() <= bound && bound < 0.05,
        "{error} within ±{bound}?"
    );
    assert_eq!(m.value("ntpkit_sources_unresolved", &[]), 0.0);

    // Each source, by address and configured name.
    let up1 = [
        ("address", "127.0.1.1:1123"),
        ("name", "up1.ntpkit.invalid"),
    ];
    let up2 = [("address", "127.0.1.2:1123"), ("name", "")];
    let mut selected = 0;
    for labels in [&up1[..], &up2[..]] {
        let v = |name: &str| m.value(name, labels);
        assert!(v("ntpkit_source_offset_seconds").abs() < 0.05, "{labels:?}");
        assert!(
            (0.0..0.05).contains(&v("ntpkit_source_delay_seconds")),
            "{labels:?}"
        );
        assert!(v("ntpkit_source_jitter_seconds") >= 0.0);
        let reach = v("ntpkit_source_reach");
        assert!(
            (1.0..=255.0).contains(&reach) && reach.fract() == 0.0,
            "{reach}"
        );
        assert_eq!(v("ntpkit_source_stratum"), 1.0);
        let poll = v("ntpkit_source_poll_interval_seconds");
        assert!([1.0, 2.0, 4.0].contains(&poll), "{poll}");
        let states = m.matching("ntpkit_source_state", labels);
        assert_eq!(states.len(), 7, "{}", m.text);
        let on: Vec<&str> = states
            .iter()
            .filter(|s| s.value == 1.0)
            .map(|s| s.labels["state"].as_str())
            .collect();
        assert!(matches!(on[..], ["selected"] | ["candidate"]), "{on:?}");
        selected += usize::from(on == ["selected"]);
        let sent = v("ntpkit_source_requests_sent_total");
        let received = v("ntpkit_source_replies_received_total");
        let accepted = v("ntpkit_source_samples_accepted_total");
        assert!(
            sent >= received && received >= accepted && accepted >= 1.0,
            "{sent} {received} {accepted}"
        );
    }
    assert_eq!(selected, 1, "{}", m.text);

    // The upstream's endpoint: it answered every reply the daemon counted, and no request the
    // daemon had not sent yet.
    let received = m.value("ntpkit_source_replies_received_total", &up1);
    std::thread::sleep(Duration::from_millis(200));
    let answered = udp_answered(&scrape(&lab, "127.0.1.1:9975"));
    let sent = scrape(&lab, metrics).value("ntpkit_source_requests_sent_total", &up1);
    assert!(
        received <= answered && answered <= sent,
        "daemon received {received}, up1 answered {answered}, daemon sent {sent}"
    );

    // Serving: every transport's counters, growing by what is asked.
    for t in ["udp", "tcp"] {
        for c in [
            "answered",
            "ignored",
            "malformed",
            "denied",
            "rate_limited",
            "kisses",
        ] {
            let name = format!("ntpkit_server_{c}_total");
            assert!(m.matching(&name, &[("transport", t)]).len() == 1, "{name}");
        }
    }
    let before = scrape(&lab, metrics);
    query(&lab, "127.0.0.2:1123", 4, false);
    query(&lab, "127.0.0.2:1124", 3, true);
    let after = scrape(&lab, metrics);
    assert_eq!(udp_answered(&after), udp_answered(&before) + 4.0);
    assert_eq!(tcp_answered(&after), tcp_answered(&before) + 3.0);
    assert_eq!(
        after.value("ntpkit_server_tcp_connections_total", &[]),
        before.value("ntpkit_server_tcp_connections_total", &[]) + 1.0
    );

    // Other paths, methods and formats.
    let r = exchange(&lab, metrics, &get("/", None));
    assert_eq!(r.status, 404, "{r:?}");
    let r = exchange(&lab, metrics, &get("/metrics/", None));
    assert_eq!(r.status, 404, "{r:?}");
    let r = exchange(&lab, metrics, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    let r = exchange(&lab, metrics, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    let om = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let r = exchange(&lab, metrics, &get("/metrics", Some(om)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert!(r
        .body
        .contains("# UNIT ntpkit_tracking_offset_seconds seconds"));
    assert_eq!(
        Metrics::parse(&r.body).value("ntpkit_tracking_stratum", &[]),
        2.0
    );

    // Bad clients get an answer or are dropped, and the next scrape is served.
    let r = exchange(&lab, metrics, b"\x16\x03\x01\x02\x00 not http\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        scrape(&lab, metrics).value("ntpkit_tracking_stratum", &[]),
        2.0
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(20_000, b'x');
    let r = exchange(&lab, metrics, &huge);
    assert_eq!(r.status, 431, "{r:?}");
    scrape(&lab, metrics);
    // A client that connects and says nothing: NTP is served meanwhile, and the endpoint is
    // back within its 2 s timeout.
    let addr: SocketAddr = metrics.parse().unwrap();
    let silent = lab.in_netns(move || TcpStream::connect(addr).unwrap());
    let start = Instant::now();
    query(&lab, "127.0.0.2:1123", 1, false);
    let m = scrape(&lab, metrics);
    assert!(start.elapsed() < SECS(5), "{:?}", start.elapsed());
    assert_eq!(udp_answered(&m), udp_answered(&after) + 1.0);
    drop(silent);
    assert!(
        client
            .stderr()
            .contains("metrics on http://127.0.0.2:9975/metrics"),
        "{}",
        client.output()
    );
}

/// `ntpkit serve --metrics`: the counters per transport are what was sent, and the same as
/// the counters it prints when it stops; open TCP connections are a gauge.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn serve_metrics_count_what_was_served() {
    support::require("serve_metrics_count_what_was_served", &[]);
    let lab = Lab::new("servemetrics");
    let mut server = ntp::serve(
        &lab,
        &[
            "--listen",
            "127.0.0.3:1123",
            "--tcp",
            "127.0.0.3:1124",
            "--metrics",
            "127.0.0.3:9975",
        ],
    );
    server
        .proc
        .wait_for("Metrics on http://127.0.0.3:9975/metrics", SECS(5));
    let metrics = "127.0.0.3:9975";
    let m = scrape(&lab, metrics);
    assert_eq!(udp_answered(&m), 0.0);
    assert_eq!(tcp_answered(&m), 0.0);
    assert!(!m.has("ntpkit_tracking_stratum"), "{}", m.text);
    assert!(!m.has("ntpkit_source_reach"), "{}", m.text);
    let version = m.matching("ntpkit_build_info", &[]);
    assert_eq!(version.len(), 1, "{}", m.text);

    query(&lab, "127.0.0.3:1123", 5, false);
    lab.in_netns(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..2 {
            s.send_to(b"not an NTP packet", "127.0.0.3:1123").unwrap();
        }
    });
    // A TCP connection held open, then closed.
    let tcp: SocketAddr = "127.0.0.3:1124".parse().unwrap();
    let held = lab.in_netns(move || TcpStream::connect(tcp).unwrap());
    let open = |want: f64| {
        let deadline = Instant::now() + SECS(5);
        loop {
            let m = scrape(&lab, metrics);
            let v = m.value("ntpkit_server_tcp_open_connections", &[]);
            if v == want {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "open connections {v}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    open(1.0);
    drop(held);
    open(0.0);
    query(&lab, "127.0.0.3:1124", 2, true);
    let m = open(0.0);
    let udp = [("transport", "udp")];
    assert_eq!(udp_answered(&m), 5.0);
    assert_eq!(tcp_answered(&m), 2.0);
    let malformed = m.value("ntpkit_server_malformed_total", &udp);
    assert_eq!(malformed, 2.0, "{}", m.text);
    assert_eq!(m.value("ntpkit_server_tcp_connections_total", &[]), 2.0);

    let served = server.stop();
    assert_eq!(served.answered, 7);
    assert_eq!(served.malformed, 2);
}

/// A metrics port already taken stops the daemon at start, saying which and what to do.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn a_taken_metrics_port_stops_the_daemon_with_the_fix() {
    support::require("a_taken_metrics_port_stops_the_daemon_with_the_fix", &[]);
    let lab = Lab::new("metricsport");
    let _taken = lab.in_netns(|| std::net::TcpListener::bind("127.0.0.1:9975").unwrap());
    let path = lab.write(
        "taken.toml",
        "metrics = \"127.0.0.1:9975\"\n[sync]\nlocal-stratum = 1\n",
    );
    let mut p = lab.spawn(
        "taken",
        &[NTPKIT, "daemon", "-c", &path.to_string_lossy()],
        SECS(10),
    );
    let st = p.wait_timeout(SECS(10)).expect("exits at once");
    assert!(!st.success());
    let out = p.output();
    assert!(
        out.contains("cannot serve metrics on 127.0.0.1:9975: address already in use")
            && out.contains("metrics = \"127.0.0.1:9976\""),
        "{out}"
    );
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ntpkit-metrics-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ntpkit daemon --check` of `toml`: (success, stdout + stderr). Checking opens no socket.
fn check(dir: &TempDir, toml: &str) -> (bool, String) {
    let path = dir.0.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(NTPKIT)
        .args(["daemon", "--check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_rejects_a_bad_metrics_address_with_the_fix() {
    let dir = TempDir::new("check");
    let base = "[sync]\nlocal-stratum = 1\n";
    let (ok, out) = check(&dir, &format!("metrics = \"127.0.0.1:9975\"\n{base}"));
    assert!(ok && out.contains("configuration OK"), "{out}");
    for (value, want) in [
        (
            "localhost:9975",
            "not an IP address and port; write IP:PORT",
        ),
        ("9975", "not an IP address and port"),
        (
            "127.0.0.1:0",
            "port 0 would be a different port at every start",
        ),
    ] {
        let (ok, out) = check(&dir, &format!("metrics = \"{value}\"\n{base}"));
        assert!(!ok, "{value} accepted: {out}");
        assert!(
            out.contains(&format!("c.toml: metrics = \"{value}\": {want}"))
                && out.contains("e.g. metrics = \"127.0.0.1:9975\""),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1, "one line: {out}");
    }
    let (ok, out) = check(
        &dir,
        &format!("tcp = [\"127.0.0.1:4460\"]\nmetrics = \"[::]:4460\"\n{base}"),
    );
    assert!(!ok);
    assert!(
        out.contains("the same TCP port as tcp 127.0.0.1:4460; give the metrics endpoint a port"),
        "{out}"
    );
    let (ok, out) = check(&dir, &format!("metrics = 9975\n{base}"));
    assert!(!ok && out.contains("metrics"), "{out}");
}
