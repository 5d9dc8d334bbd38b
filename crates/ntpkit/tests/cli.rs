//! Smoke tests of `ntpkit serve`, `ntpkit query` and `ntpkit bench` as real processes on
//! loopback.
//!
//! Every process runs without CAP_SYS_TIME (setpriv) and under a deadline; servers listen on
//! port 0 and the tests read the bound ports from the "NTP server listening on" lines.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NTPKIT: &str = env!("CARGO_BIN_EXE_ntpkit");

fn ntpkit() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--bounding-set=-sys_time", "--inh-caps=-sys_time", NTPKIT]);
    c
}

/// A running `ntpkit serve`, stopped (SIGTERM) on drop.
struct Server {
    child: Child,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = ntpkit()
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ntpkit serve");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            udp: Vec::new(),
            tcp: Vec::new(),
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match s.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = s.child.kill();
                    let mut err = String::new();
                    let _ = s.child.stderr.take().unwrap().read_to_string(&mut err);
                    panic!("server did not start: {err}");
                }
            };
            if let Some(rest) = line.strip_prefix("NTP server listening on ") {
                let (addr, proto) = rest.split_once(' ').unwrap();
                let addr: SocketAddr = addr.parse().unwrap();
                match proto {
                    "(udp)" => s.udp.push(addr),
                    "(tcp)" => s.tcp.push(addr),
                    p => panic!("unknown transport {p}"),
                }
            }
            if line.starts_with("Waiting for NTP requests") {
                return s;
            }
        }
    }

    /// SIGTERM, wait, and return the counters line's (answered, ignored, malformed).
    fn stop(mut self) -> (u64, u64, u64) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("counters line");
            if let Some(rest) = line.strip_prefix("served: ") {
                let v: Vec<u64> = rest
                    .split(' ')
                    .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
                    .collect();
                let status = self.child.wait().unwrap();
                assert!(status.success(), "{status}");
                return (v[0], v[1], v[2]);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end (at most 30 s), reading its output as it comes: a command may print
/// more than a pipe holds.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    }
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Output {
        status: child.wait().unwrap(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn query_json(server: SocketAddr, tcp: bool) -> serde_json::Value {
    let mut cmd = ntpkit();
    cmd.args([
        "query",
        &server.to_string(),
        "-n",
        "3",
        "-i",
        "0.05",
        "--json",
    ]);
    if tcp {
        cmd.arg("--tcp");
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn query_over_udp_and_tcp_v4_and_v6() {
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--tcp",
        "127.0.0.1:0",
        "--tcp",
        "[::1]:0",
        "--stratum",
        "2",
        "--refid",
        "192.0.2.7",
    ]);
    assert_eq!((server.udp.len(), server.tcp.len()), (2, 2));
    let targets: Vec<(SocketAddr, bool)> = server
        .udp
        .iter()
        .map(|&a| (a, false))
        .chain(server.tcp.iter().map(|&a| (a, true)))
        .collect();
    for (addr, tcp) in targets {
        let v = query_json(addr, tcp);
        assert_eq!(v["address"], addr.to_string());
        assert_eq!(v["transport"], if tcp { "tcp" } else { "udp" });
        assert_eq!(v["stratum"], 2);
        assert_eq!(v["refid"], "192.0.2.7");
        assert_eq!(v["leap"], "no-leap");
        let offset = v["offset"].as_f64().unwrap();
        let delay = v["delay"].as_f64().unwrap();
        assert!(offset.abs() < 1e-3, "offset {offset} via {addr}");
        assert!((0.0..0.1).contains(&delay), "delay {delay}");
        let samples = v["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 3);
        for s in samples {
            assert_eq!(s["status"], "ok");
            for t in ["t1", "t2", "t3", "t4"] {
                let secs: f64 = s[t].as_str().unwrap().parse().unwrap();
                assert!(secs > 1.5e9, "{t} = {secs}");
            }
        }
    }
    assert_eq!(server.stop(), (12, 0, 0));
}

#[test]
fn text_output_follows_the_documents_client() {
    let server = Server::start(&["--listen", "127.0.0.1:0"]);
    let addr = server.udp[0].to_string();
    let out = run(ntpkit().args(["query", &addr, "-n", "2", "-i", "0.05"]));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("Response from {addr}")), "{text}");
    for needle in [
        "NTP Time: ",
        "Local Time: ",
        "Offset: ",
        "Delay: ",
        "Stratum: 10",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    assert!(
        text.contains("Reference ID:    76.79.67.76 (LOCL)"),
        "{text}"
    );
    assert!(text.contains("Best sample:"), "{text}");
    server.stop();
}

#[test]
fn malformed_and_non_client_packets_are_counted_not_answered() {
    // Exact counts of a burst: a receive buffer that keeps every datagram while a loaded test
    // machine deschedules the server (the default 64 KiB sheds load instead).
    let server = Server::start(&["--listen", "127.0.0.1:0", "--udp-recv-buffer", "4194304"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = server.udp[0];
    // 47 bytes: too short. 49 bytes: a v4 header with a trailer that is no MAC.
    // Mode 4 (server) and mode 6 (control): well formed, never answered.
    let mut server_mode = [0u8; 48];
    server_mode[0] = 0x24;
    let mut control = [0u8; 48];
    control[0] = 0x26;
    for i in 0..1000 {
        let pkt: &[u8] = match i % 4 {
            0 => &[0x23; 47],
            1 => &[0x23; 49],
            2 => &server_mode,
            _ => &control,
        };
        sock.send_to(pkt, to).unwrap();
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut buf = [0u8; 64];
    assert!(sock.recv_from(&mut buf).is_err(), "nothing is answered");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.stop(), (0, 500, 500));
}

#[test]
fn bind_failure_is_one_line_with_cause_and_fix() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(ntpkit().args(["serve", "--listen", &addr]));
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "error: cannot listen on {addr} (udp): address already in use"
        )),
        "{err}"
    );
}

#[test]
fn query_timeout_and_kiss_of_death_fail() {
    // Nobody answers on this socket's port.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = run(ntpkit().args(["query", &addr, "-n", "1", "-t", "0.3"]));
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("no reply from {addr} within 0.3 s")),
        "{err}"
    );

    // A server that answers every request with a RATE kiss.
    let kisser = UdpSocket::bind("127.0.0.1:0").unwrap();
    let kaddr = kisser.local_addr().unwrap().to_string();
    kisser
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        if let Ok((n, from)) = kisser.recv_from(&mut buf) {
            assert_eq!(n, 48);
            let mut reply = [0u8; 48];
            reply[0] = 0x24; // v4, mode 4
            reply[12..16].copy_from_slice(b"RATE");
            reply[24..32].copy_from_slice(&buf[40..48]);
            kisser.send_to(&reply, from).unwrap();
        }
    });
    let out = run(ntpkit().args(["query", &kaddr, "-n", "3", "-i", "0.05", "-t", "1"]));
    t.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("server {kaddr} sent kiss-o'-death RATE")),
        "{err}"
    );
}

// --- ntpkit bench ---

#[test]
fn bench_loads_a_server_and_reports_json_and_text() {
    // Every request comes from one address: without --no-rate-limit nearly all would be limited.
    let server = Server::start(&["--listen", "127.0.0.1:0", "--no-rate-limit"]);
    let addr = server.udp[0].to_string();
    // An open loop at a modest rate for 1 s: light enough not to disturb the other tests.
    let out = run(ntpkit().args([
        "bench",
        &addr,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rate",
        "4000",
        "--sockets",
        "2",
        "--json",
    ]));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["target"], addr);
    assert_eq!(v["mode"], "open");
    assert_eq!(v["sockets"], 2);
    let valid = v["valid"].as_u64().unwrap();
    let sent = v["sent"].as_u64().unwrap();
    assert!(valid > 0 && sent > 0, "{v}");
    let rate = v["sent_per_s"].as_f64().unwrap();
    assert!((3000.0..5000.0).contains(&rate), "{rate} requests/s");
    let loss = v["loss_pct"].as_f64().unwrap();
    assert!(loss < 1.0, "loss {loss} %");
    let lat = &v["latency_us"];
    let p50 = lat["p50"].as_f64().unwrap();
    let p999 = lat["p99_9"].as_f64().unwrap();
    let max = lat["max"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p999 && p999 <= max, "{lat}");
    assert!(p50 < 100_000.0, "median latency {p50} µs on loopback");
    assert_eq!(v["invalid"]["unknown_origin"], 0);
    assert_eq!(v["invalid"]["duplicate"], 0);
    assert_eq!(v["kod"]["rate"], 0);

    // A closed loop bounded by a request count: ends as soon as all are answered.
    let out = run(ntpkit().args([
        "bench",
        &addr,
        "--requests",
        "2000",
        "--warmup",
        "0",
        "--window",
        "8",
        "--sockets",
        "2",
    ]));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        &format!("target {addr}: closed loop, 8 in flight per socket, 2 sockets, 1 thread;")[..],
        "(2,000 sent)",
        "loss:     0.000 %",
        "latency:  p50 ",
        "kiss-o'-death: 0 (RATE 0, DENY 0, RSTR 0, other 0)",
        "invalid: 0 (",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let (answered, ignored, malformed) = server.stop();
    let total_sent = v["total"]["sent"].as_u64().unwrap();
    assert_eq!((ignored, malformed), (0, 0));
    assert!(answered >= valid + 2000, "{answered} answered");
    assert!(answered <= total_sent + 2000, "{answered} answered");

    // A server that limits the one client: bench counts its RATE kisses apart, not as replies.
    let limited = Server::start(&["--listen", "127.0.0.1:0"]);
    let addr = limited.udp[0].to_string();
    let out = run(ntpkit().args([
        "bench",
        &addr,
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--rate",
        "2000",
        "--json",
    ]));
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let kisses = v["kod"]["rate"].as_u64().unwrap();
    let valid = v["valid"].as_u64().unwrap();
    assert!(kisses > 0, "no RATE kiss from a rate-limited server: {v}");
    assert!(
        valid < 100,
        "{valid} replies past a limit of 1/s with bursts of 16: {v}"
    );
    assert_eq!(v["invalid"]["unknown_origin"], 0);
}

#[test]
fn bench_refuses_targets_outside_loopback() {
    for target in ["192.0.2.1:123", "[2001:db8::1]:123", "0.0.0.0:123"] {
        let started = Instant::now();
        // A run would take 5.5 s at least (warm-up, duration, grace).
        let out = run(ntpkit().args(["bench", target, "--duration", "5"]));
        let line = one_error_line(&out);
        assert!(
            line.contains(&format!(
                "refusing to load {target}: it is not a loopback address"
            )),
            "{line}"
        );
        assert!(line.contains("127.0.0.0/8 and ::1"), "{line}");
        assert!(line.contains("--allow-remote"), "{line}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "refused at once"
        );
    }
}

#[test]
fn bench_without_a_server_fails_and_says_why() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string(); // the socket is closed again: nothing listens there
    let out = run(ntpkit().args([
        "bench",
        &port,
        "--rate",
        "200",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--grace",
        "0.1",
    ]));
    let line = one_error_line(&out);
    assert!(
        line.contains(&format!("no valid reply from {port}: connection refused")),
        "{line}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("loss:     100.000 %"), "{text}");
}

// --- ntpkit simulate ---

fn scenario(name: &str) -> String {
    format!("{}/../../scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// A fresh empty directory for one test's files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ntpkit-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The one line of stderr of a failed command.
fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

#[test]
fn bench_nts_errors_name_the_problem() {
    let dir = TempDir::new("bench-nts");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca = dir.path("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // the listener is closed again: nothing listens there
    let refused = format!("127.0.0.1:{port}");
    for mode in ["--nts", "--nts-ke"] {
        let started = Instant::now();
        let out = run(ntpkit().args(["bench", mode, &refused, "--ca-file", &ca, "-d", "5"]));
        let line = one_error_line(&out);
        assert!(
            line.contains(&format!("NTS-KE server {refused} refused the connection")),
            "{line}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "failed at once");
        let out = run(ntpkit().args(["bench", mode, "localhost:ke", "--ca-file", &ca]));
        let line = one_error_line(&out);
        assert!(
            line.contains("cannot resolve NTS-KE server localhost:ke: invalid port"),
            "{line}"
        );
        let out = run(ntpkit().args(["bench", mode, "192.0.2.1:4460"]));
        let line = one_error_line(&out);
        assert!(
            line.contains("refusing to load 192.0.2.1:4460: it is not a loopback address"),
            "{line}"
        );
        let out = run(ntpkit().args(["bench", mode, &refused, "--ca-file", "/nonexistent/ca.pem"]));
        let line = one_error_line(&out);
        assert!(
            line.contains("cannot use CA file /nonexistent/ca.pem") && line.contains("--ca-file"),
            "{line}"
        );
    }
    let out = run(ntpkit().args(["bench", "127.0.0.1:123", "--ca-file", &ca]));
    let line = one_error_line(&out);
    assert!(line.contains("--ca-file is for NTS"), "{line}");
    let out = run(ntpkit().args(["bench", "127.0.0.1:123", "--nts", "localhost"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn simulate_rejects_unwritable_outputs_before_the_run() {
    let dir = TempDir::new("unwritable");
    let a_file = dir.path("plain-file");
    std::fs::write(&a_file, "").unwrap();
    let good_png = dir.path("good.png");
    let missing_dir = dir.path("no-such-dir");
    // (arguments, what the error line must name, what it must give as the reason)
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec!["--plot".into(), format!("{missing_dir}/p.png")],
            format!("{missing_dir}/p.png"),
            "No such file or directory",
        ),
        (
            vec!["--csv".into(), format!("{missing_dir}/t.csv")],
            format!("{missing_dir}/t.csv"),
            "No such file or directory",
        ),
        (
            vec!["--csv".into(), format!("{a_file}/t.csv")],
            format!("{a_file}/t.csv"),
            "Not a directory",
        ),
        (
            vec!["--plot".into(), dir.path("p.pdf")],
            dir.path("p.pdf"),
            "must end in .svg or .png",
        ),
        (
            // The plot file is fine, the CSV is not: neither is left behind.
            vec![
                "--plot".into(),
                good_png.clone(),
                "--csv".into(),
                format!("{missing_dir}/t.csv"),
            ],
            format!("{missing_dir}/t.csv"),
            "No such file or directory",
        ),
    ];
    for (args, path, reason) in cases {
        // Thirty simulated days of 10,000 clients would take minutes: the error must come
        // first (run() gives up after 30 s).
        let out = run(ntpkit()
            .args(["simulate", &scenario("clients-10000"), "--duration", "30d"])
            .args(&args));
        let line = one_error_line(&out);
        assert!(line.contains(&path), "{args:?}: {line}");
        assert!(line.contains(reason), "{args:?}: {line}");
        assert!(out.stdout.is_empty(), "{args:?}: no report");
    }
    assert!(!std::path::Path::new(&good_png).exists());
    assert!(!std::path::Path::new(&dir.path("p.pdf")).exists());
}

#[test]
fn simulate_failing_after_the_run_leaves_no_plot_behind() {
    let dir = TempDir::new("after-run");
    let png = dir.path("p.png");
    // /dev/full accepts the open and fails every write.
    let out = run(ntpkit().args([
        "simulate",
        &scenario("falsetickers"),
        "--plot",
        &png,
        "--csv",
        "/dev/full",
    ]));
    let line = one_error_line(&out);
    assert!(
        line.contains("/dev/full") && line.contains("No space left on device"),
        "{line}"
    );
    assert!(!std::path::Path::new(&png).exists());
}

#[test]
fn simulate_missing_scenario_names_file_and_cause_once() {
    let dir = TempDir::new("missing");
    let path = dir.path("absent.toml");
    let out = run(ntpkit().args(["simulate", &path]));
    let line = one_error_line(&out);
    assert_eq!(
        line,
        format!("error: cannot read scenario file {path}: No such file or directory (os error 2)")
    );
}

#[test]
fn simulate_csv_dash_goes_to_stdout_and_the_report_to_stderr() {
    let dir = TempDir::new("csv-stdout");
    for json in [false, true] {
        let mut cmd = ntpkit();
        cmd.current_dir(&dir.0)
            .args(["simulate", &scenario("seed-hierarchy"), "--csv", "-"]);
        if json {
            cmd.arg("--json");
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "{out:?}");
        let csv = String::from_utf8(out.stdout).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("time_s,node,true_offset_s,frequency_error_ppm,measured_offset_s,delay_s")
        );
        let mut rows = 0;
        for line in lines {
            assert_eq!(line.split(',').count(), 6, "{line}");
            rows += 1;
        }
        assert!(rows > 1000, "{rows} rows");
        let err = String::from_utf8(out.stderr).unwrap();
        if json {
            let v: serde_json::Value = serde_json::from_str(&err).expect("the JSON report");
            assert_eq!(v["scenario"], "seed-hierarchy", "{err}");
        } else {
            assert!(err.starts_with("scenario seed-hierarchy"), "{err}");
            assert!(
                err.contains("=== NTP Synchronization Statistics ==="),
                "{err}"
            );
        }
        assert!(!dir.0.join("-").exists(), "no file named -");
    }
}

/// Long enough (several seconds) that the progress bar, shown after a second, appears.
const LONG_RUN: [&str; 5] = ["--duration", "8h", "--rows", "1", "--threads"];

#[test]
fn simulate_shows_progress_on_a_terminal_only() {
    let sc = scenario("clients-10000");
    // Standard error a pipe: nothing but the report, on stdout.
    let out = run(ntpkit().args(["simulate", &sc]).args(LONG_RUN).arg("2"));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.starts_with("scenario clients-10000"), "{report}");

    // On a terminal (script(1) runs the command on a pseudo-terminal): a progress bar.
    let cmd = format!(
        "stty cols 120 rows 40; setpriv --bounding-set=-sys_time --inh-caps=-sys_time \
         '{NTPKIT}' simulate '{sc}' {} 2",
        LONG_RUN.join(" ")
    );
    let out = run(Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::null()));
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("simulating clients-10000 ["), "{screen}");
    assert!(screen.contains('%'), "{screen}");
    // The bar is cleared before the report, which is the same as without it.
    assert!(screen.contains(report.lines().nth(1).unwrap()), "{screen}");
}
