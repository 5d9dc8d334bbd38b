//! NTS interop: `ntpkit query --nts` against chronyd as NTS-KE and NTS NTP server, in a
//! private network namespace, with a self-signed certificate for `localhost`.
//!
//! chronyd runs with -x and without CAP_SYS_TIME (see `support`); all traffic stays on the
//! namespace's loopback. NTPKIT_SKIP_INTEROP=1 at build time marks the tests ignored.

mod support;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{chrony, Lab, Need, Proc, CHRONYC, CHRONYD, NTPKIT, NTPSEC_NTPD};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const NTP_PORT: u16 = 11925;
const KE_PORT: u16 = 11965;

/// A self-signed certificate for `localhost` (SAN DNS localhost and IP 127.0.0.1) and its
/// key, written as `NAME.crt` and `NAME.key` into the lab's directory, readable by chronyd.
/// With `ca`, it carries basic constraints CA:TRUE, as `openssl req -x509` makes them.
fn self_signed(lab: &Lab, name: &str, ca: bool) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let crt = lab.write(&format!("{name}.crt"), &cert.pem());
    let key_path = lab.write(&format!("{name}.key"), &key.serialize_pem());
    // The key is read by chronyd only; the lab's directory is chronyd's and closed to others.
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).expect("chmod key");
    (crt, key_path)
}

/// Starts chronyd as an NTS server on 127.0.0.1 (NTP on `NTP_PORT`, NTS-KE on `KE_PORT`).
fn nts_server<'l>(lab: &'l Lab, crt: &Path, key: &Path) -> Proc<'l> {
    let conf = format!(
        "port {NTP_PORT}\nntsport {KE_PORT}\nbindaddress 127.0.0.1\nallow 127.0.0.1\n\
         local stratum 1\nntsserverkey {key}\nntsservercert {crt}\nntsprocesses 1\n\
         cmdport 0\nbindcmdaddress {sock}\npidfile {pid}\n",
        key = key.display(),
        crt = crt.display(),
        sock = lab.path("server.sock").display(),
        pid = lab.path("server.pid").display(),
    );
    let conf = lab.write("server.conf", &conf);
    chrony::start(lab, &lab.ns, "server", &conf)
}

fn query_nts(lab: &Lab, ca: &Path, extra: &[&str]) -> (support::Run, Option<Value>) {
    let ke = format!("localhost:{KE_PORT}");
    let ca = ca.to_string_lossy().to_string();
    let mut args = vec![
        NTPKIT,
        "query",
        "--nts",
        &ke,
        "--ca-file",
        &ca,
        "--samples",
        "3",
        "--interval",
        "0.2",
    ];
    args.extend_from_slice(extra);
    let r = lab.run(&args, SECS(30));
    let v = serde_json::from_str(r.stdout.trim()).ok();
    (r, v)
}

/// The value of `chronyc serverstats` line `label` (e.g. "Authenticated NTP packets").
fn serverstat(lab: &Lab, label: &str) -> Option<u64> {
    let r = chrony::chronyc(lab, "server", &["serverstats"]);
    r.stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// `ntpkit query --nts` against chronyd: key exchange, authenticated requests chronyd
/// accepts, authentic replies we verify, stratum 1.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn query_nts_against_chronyd() {
    support::require(
        "query_nts_against_chronyd",
        &[Need::Tool(CHRONYD), Need::Tool(CHRONYC)],
    );
    let lab = Lab::new("ntsq");
    let (crt, key) = self_signed(&lab, "server", false);
    let server = nts_server(&lab, &crt, &key);

    let (r, v) = query_nts(&lab, &crt, &["--json"]);
    let v = v.unwrap_or_else(|| panic!("no JSON\n{r}\n{}", server.output()));
    assert!(r.status.success(), "{r}\n{}", server.output());
    assert_eq!(v["nts"]["aead"], "AEAD_AES_SIV_CMAC_256", "{v}");
    assert_eq!(v["nts"]["ke_server"], format!("localhost:{KE_PORT}"), "{v}");
    assert_eq!(
        v["nts"]["ntp_server"],
        format!("localhost:{NTP_PORT}"),
        "{v}"
    );
    assert!(v["nts"]["cookies"].as_u64().unwrap_or(0) >= 8, "{v}");
    assert_eq!(v["nts"]["dropped"], 0, "{v}");
    assert_eq!(v["stratum"], 1, "{v}");
    let ok = v["samples"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["status"] == "ok").count())
        .unwrap_or(0);
    assert_eq!(ok, 3, "{v}");

    // chronyd's own view: one key exchange, three authenticated requests.
    let ke = serverstat(&lab, "NTS-KE connections accepted");
    let auth = serverstat(&lab, "Authenticated NTP packets");
    support::say(&format!(
        "chronyd serverstats: NTS-KE accepted {ke:?}, authenticated NTP packets {auth:?}"
    ));
    if let Some(auth) = auth {
        assert!(auth >= 3, "chronyd counted {auth} authenticated packets");
    }

    // The text form names NTS, the AEAD and the servers.
    let (r, _) = query_nts(&lab, &crt, &[]);
    assert!(r.status.success(), "{r}");
    assert!(
        r.stdout
            .contains("authenticated with NTS (AEAD_AES_SIV_CMAC_256)"),
        "{r}"
    );
    assert!(r.stdout.contains(&format!("localhost:{NTP_PORT}")), "{r}");
}

/// Trusting a different self-signed certificate: the key exchange fails, naming --ca-file.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn query_nts_untrusted_certificate() {
    support::require(
        "query_nts_untrusted_certificate",
        &[Need::Tool(CHRONYD), Need::Tool(CHRONYC)],
    );
    let lab = Lab::new("ntsbad");
    let (crt, key) = self_signed(&lab, "server", false);
    let (other, _) = self_signed(&lab, "other", false);
    let _server = nts_server(&lab, &crt, &key);

    let (r, _) = query_nts(&lab, &other, &[]);
    assert!(!r.status.success(), "{r}");
    let err = r.stderr.trim();
    assert!(err.contains("not trusted"), "{r}");
    assert!(err.contains("--ca-file"), "{r}");
    assert_eq!(err.lines().count(), 1, "{r}");
}

/// A self-signed certificate with CA:TRUE as the server's own: chronyd serves it, but the
/// certificate verifier refuses a CA certificate as a server's; the message says so.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn query_nts_ca_certificate_as_server_certificate() {
    support::require(
        "query_nts_ca_certificate_as_server_certificate",
        &[Need::Tool(CHRONYD), Need::Tool(CHRONYC)],
    );
    let lab = Lab::new("ntsca");
    let (crt, key) = self_signed(&lab, "server", true);
    let _server = nts_server(&lab, &crt, &key);

    let (r, _) = query_nts(&lab, &crt, &[]);
    assert!(!r.status.success(), "{r}");
    let err = r.stderr.trim();
    assert!(err.contains("CA:TRUE") && err.contains("--ca-file"), "{r}");
    assert_eq!(err.lines().count(), 1, "{r}");
}

const SERVE_NTP_PORT: u16 = 11926;
const SERVE_KE_PORT: u16 = 11966;

/// Starts `ntpkit serve` with NTS at stratum 3 on 127.0.0.1 (NTP on `SERVE_NTP_PORT`, NTS-KE
/// on `SERVE_KE_PORT`), the master secret created in the lab's directory.
fn ntpkit_nts_server<'l>(lab: &'l Lab, crt: &Path, key: &Path) -> Proc<'l> {
    let listen = format!("127.0.0.1:{SERVE_NTP_PORT}");
    let ke = format!("127.0.0.1:{SERVE_KE_PORT}");
    ntpkit_nts_server_on(lab, "serve", &listen, &ke, 3, crt, key, &[])
}

/// Starts `ntpkit serve` named `name` with NTS: NTP on `listen`, NTS-KE on `ke`, at `stratum`,
/// with the lab's master secret file (created by the first server) and `extra` arguments.
#[allow(clippy::too_many_arguments)]
fn ntpkit_nts_server_on<'l>(
    lab: &'l Lab,
    name: &str,
    listen: &str,
    ke: &str,
    stratum: u8,
    crt: &Path,
    key: &Path,
    extra: &[&str],
) -> Proc<'l> {
    let stratum = stratum.to_string();
    let crt = crt.to_string_lossy().to_string();
    let key = key.to_string_lossy().to_string();
    let master = lab.path("master").to_string_lossy().to_string();
    let mut args = vec![
        NTPKIT,
        "serve",
        "--listen",
        listen,
        "--nts-ke",
        ke,
        "--cert",
        &crt,
        "--key",
        &key,
        "--nts-master",
        &master,
        "--stratum",
        &stratum,
    ];
    args.extend_from_slice(extra);
    let mut p = lab.spawn(name, &args, SECS(120));
    p.wait_for("Waiting for NTP requests", SECS(10));
    p
}

/// The `served nts:` counters of a running `ntpkit serve`, after SIGUSR1.
fn nts_counters(serve: &mut Proc) -> String {
    serve.signal_command(libc::SIGUSR1);
    let line = serve.wait_for("served nts:", SECS(5));
    line.lines()
        .rev()
        .find(|l| l.starts_with("served nts:"))
        .unwrap_or_default()
        .to_string()
}

/// `ntpkit query --nts` against `ntpkit serve --nts-ke`: key exchange, the NTP port announced
/// by the key-exchange server, authenticated replies at the served stratum; the master secret
/// is created with mode 0600.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn query_nts_against_ntpkit_serve() {
    support::require("query_nts_against_ntpkit_serve", &[]);
    let lab = Lab::new("ntss");
    let (crt, key) = self_signed(&lab, "server", false);
    let mut serve = ntpkit_nts_server(&lab, &crt, &key);
    assert!(
        serve.stdout().contains("Created NTS master secret"),
        "{}",
        serve.output()
    );
    let meta = fs::metadata(lab.path("master")).expect("master secret created");
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let ke = format!("localhost:{SERVE_KE_PORT}");
    let ca = crt.to_string_lossy().to_string();
    let r = lab.run(
        &[
            NTPKIT,
            "query",
            "--nts",
            &ke,
            "--ca-file",
            &ca,
            "--samples",
            "3",
            "--interval",
            "0.2",
            "--json",
        ],
        SECS(30),
    );
    assert!(r.status.success(), "{r}\n{}", serve.output());
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    assert_eq!(v["nts"]["aead"], "AEAD_AES_SIV_CMAC_256", "{v}");
    assert_eq!(
        v["nts"]["ntp_server"],
        format!("localhost:{SERVE_NTP_PORT}"),
        "{v}"
    );
    assert_eq!(v["nts"]["dropped"], 0, "{v}");
    assert_eq!(v["stratum"], 3, "{v}");
    let ok = v["samples"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["status"] == "ok").count())
        .unwrap_or(0);
    assert_eq!(ok, 3, "{v}");

    let counters = nts_counters(&mut serve);
    support::say(&format!("ntpkit serve: {counters}"));
    assert!(counters.contains("ke_served=1 "), "{counters}");
    assert!(counters.contains("replies=3 "), "{counters}");
    assert!(counters.contains("naks=0 dropped=0"), "{counters}");

    // An NTS request the server cannot process (a unique identifier, no cookie) gets no answer,
    // and counts as dropped and ignored, not as answered.
    lab.in_netns(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut request = vec![0u8; 48];
        request[0] = 0x23; // version 4, client
        request.extend_from_slice(&[0x01, 0x04, 0x00, 0x24]); // Unique Identifier, 36 bytes
        request.extend_from_slice(&[0x5a; 32]);
        s.send_to(&request, ("127.0.0.1", SERVE_NTP_PORT)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(
            s.recv_from(&mut buf).is_err(),
            "a dropped NTS request was answered"
        );
    });
    // A second report: the lines printed after the first.
    let reports = |serve: &Proc| serve.stdout().matches("served nts:").count();
    let before = reports(&serve);
    serve.signal_command(libc::SIGUSR1);
    support::wait(SECS(5), || reports(&serve) > before);
    let out = serve.stdout();
    let counters = out
        .lines()
        .rev()
        .find(|l| l.starts_with("served nts:"))
        .unwrap_or_default();
    assert!(
        counters.contains("replies=3 naks=0 dropped=1"),
        "{counters}"
    );
    let served = out
        .lines()
        .rev()
        .find(|l| l.starts_with("served udp:"))
        .unwrap_or_else(|| panic!("no `served udp:` line in\n{out}"));
    assert!(served.contains("answered=3 ignored=1 "), "{served}");
}

/// chronyd as NTS client of `ntpkit serve`: it accepts our key exchange and our authenticated
/// replies (chronyd -Q exits 0 only after a valid measurement), with the NTP port given and
/// learnt from the key exchange.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn chronyd_nts_client_of_ntpkit_serve() {
    support::require("chronyd_nts_client_of_ntpkit_serve", &[Need::Tool(CHRONYD)]);
    let lab = Lab::new("ntsc");
    let (crt, key) = self_signed(&lab, "server", false);
    let mut serve = ntpkit_nts_server(&lab, &crt, &key);
    let trusted = format!("ntstrustedcerts {}", crt.display());
    let pid = format!("pidfile {}", lab.path("q.pid").display());
    for server in [
        format!("server localhost port {SERVE_NTP_PORT} ntsport {SERVE_KE_PORT} nts iburst"),
        // Without `port`: the port comes from the key-exchange server's announcement.
        format!("server localhost ntsport {SERVE_KE_PORT} nts iburst"),
    ] {
        let r = lab.run(
            &[
                CHRONYD,
                "-Q",
                "-t",
                "20",
                &server,
                &trusted,
                "cmdport 0",
                "bindcmdaddress /",
                &pid,
            ],
            SECS(30),
        );
        support::say(&format!(
            "chronyd -Q ({server}): {}",
            r.stdout_and_stderr().trim()
        ));
        assert!(r.status.success(), "{r}\n{}", serve.output());
        assert!(
            r.stdout_and_stderr().contains("System clock wrong by"),
            "{r}\n{}",
            serve.output()
        );
    }
    let counters = nts_counters(&mut serve);
    support::say(&format!("ntpkit serve: {counters}"));
    assert!(counters.contains("ke_served=2 "), "{counters}");
    assert!(!counters.contains("replies=0 "), "{counters}");
    assert!(counters.contains("naks=0 dropped=0"), "{counters}");
}

/// `--nts-ke` without its files is refused by the argument parser; a master secret that is too
/// short is refused at start with a one-line error naming the fix.
#[test]
fn serve_nts_flag_errors() {
    let out = std::process::Command::new(NTPKIT)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nts-ke",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run ntpkit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cert") && err.contains("--nts-master"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("ntpkit-nts-flags-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    let master = dir.join("master");
    fs::write(&master, [7u8; 16]).expect("write master");
    let missing = dir.join("missing.pem");
    // `serve` with NTS, the certificate and key missing: the one-line error of its start.
    let serve_error = || {
        let out = std::process::Command::new(NTPKIT)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--nts-ke",
                "127.0.0.1:0",
            ])
            .arg("--cert")
            .arg(&missing)
            .arg("--key")
            .arg(&missing)
            .arg("--nts-master")
            .arg(&master)
            .output()
            .expect("run ntpkit");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        err
    };
    let err = serve_error();
    assert!(
        err.contains("16 bytes") && err.contains("at least 32"),
        "{err}"
    );

    fs::write(&master, [7u8; 32]).expect("write master");
    let err = serve_error();
    assert!(
        err.contains("missing.pem") && err.contains("--cert"),
        "{err}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Two servers sharing one master secret: the key exchange on the first, whose NTP socket is on
/// 127.0.0.2 and which announces its port; the client then asks 127.0.0.1 on that port, where
/// only the second server listens, and that server opens the first one's cookies.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn shared_master_secret_between_two_servers() {
    support::require("shared_master_secret_between_two_servers", &[]);
    let lab = Lab::new("ntsm");
    let (crt, key) = self_signed(&lab, "server", false);
    let ke = format!("127.0.0.1:{SERVE_KE_PORT}");
    let mut first = ntpkit_nts_server_on(
        &lab,
        "first",
        &format!("127.0.0.2:{SERVE_NTP_PORT}"),
        &ke,
        3,
        &crt,
        &key,
        &[],
    );
    let mut second = ntpkit_nts_server_on(
        &lab,
        "second",
        &format!("127.0.0.1:{SERVE_NTP_PORT}"),
        &format!("127.0.0.1:{}", SERVE_KE_PORT + 1),
        4,
        &crt,
        &key,
        &[],
    );
    assert!(!second.stdout().contains("Created NTS master secret"));

    let ke = format!("localhost:{SERVE_KE_PORT}");
    let ca = crt.to_string_lossy().to_string();
    let r = lab.run(
        &[
            NTPKIT,
            "query",
            "--nts",
            &ke,
            "--ca-file",
            &ca,
            "--samples",
            "2",
            "--interval",
            "0.2",
            "--json",
        ],
        SECS(30),
    );
    assert!(
        r.status.success(),
        "{r}\n{}\n{}",
        first.output(),
        second.output()
    );
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    // Stratum 4: the replies came from the second server.
    assert_eq!(v["stratum"], 4, "{v}");
    assert_eq!(v["nts"]["dropped"], 0, "{v}");
    let a = nts_counters(&mut first);
    let b = nts_counters(&mut second);
    support::say(&format!("first: {a}\nsecond: {b}"));
    assert!(
        a.contains("ke_served=1 ") && a.contains("replies=0 "),
        "{a}"
    );
    assert!(
        b.contains("ke_served=0 ") && b.contains("replies=2 "),
        "{b}"
    );
    assert!(b.contains("naks=0 dropped=0"), "{b}");
}

/// A running chronyd (-x) as NTS client of `ntpkit serve`: `chronyc authdata` shows the NTS
/// association with cookies and no NAK, `chronyc ntpdata` authenticated replies that pass all
/// of chrony's tests.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn chronyd_daemon_nts_client_of_ntpkit_serve() {
    support::require(
        "chronyd_daemon_nts_client_of_ntpkit_serve",
        &[Need::Tool(CHRONYD), Need::Tool(CHRONYC)],
    );
    let lab = Lab::new("ntsx");
    let (crt, key) = self_signed(&lab, "server", false);
    let mut serve = ntpkit_nts_server(&lab, &crt, &key);
    let conf = format!(
        "server localhost port {SERVE_NTP_PORT} ntsport {SERVE_KE_PORT} nts iburst minpoll 0 \
         maxpoll 0\nntstrustedcerts {crt}\nport 0\ncmdport 0\nbindcmdaddress {sock}\n\
         pidfile {pid}\n",
        crt = crt.display(),
        sock = lab.path("client.sock").display(),
        pid = lab.path("client.pid").display(),
    );
    let conf = lab.write("client.conf", &conf);
    let client = chrony::start(&lab, &lab.ns, "client", &conf);

    // ntpdata CSV: field 27 is "authenticated", the last one the good replies.
    let deadline = std::time::Instant::now() + SECS(30);
    let mut row = Vec::new();
    while std::time::Instant::now() < deadline {
        row = chrony::csv(&lab, "client", &["ntpdata", "127.0.0.1"])
            .into_iter()
            .next()
            .unwrap_or_default();
        if row.len() == 34 && row[33].parse::<u64>().unwrap_or(0) >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let auth = chrony::chronyc(&lab, "client", &["authdata"]);
    support::say(&format!("chronyc authdata:\n{}", auth.stdout.trim()));
    assert!(
        row.len() == 34 && row[33].parse::<u64>().unwrap_or(0) >= 3,
        "ntpdata {row:?}\n{}\n{}",
        client.output(),
        serve.output()
    );
    assert_eq!(row[27], "Yes", "ntpdata {row:?}");
    assert_eq!(
        format!("{} {} {}", row[23], row[24], row[25]),
        "111 111 1111",
        "{row:?}"
    );
    // authdata CSV: name, mode, key id, type, key length, last, attempts, NAKs, cookies, length.
    let a = chrony::csv(&lab, "client", &["authdata"]);
    let a = a.first().expect("authdata row");
    assert_eq!(a[1], "NTS", "{a:?}");
    assert_eq!(a[7], "0", "NAKs {a:?}");
    assert!(a[8].parse::<u64>().unwrap_or(0) >= 1, "cookies {a:?}");
    let counters = nts_counters(&mut serve);
    support::say(&format!("ntpkit serve: {counters}"));
    assert!(counters.contains("naks=0 dropped=0"), "{counters}");
}

/// The NTS status of the daemon's only source, once it has one.
fn daemon_nts(st: &Value) -> Option<&Value> {
    st["system"]["sources"].as_array()?.first()?.get("nts")
}

/// `[[server]] nts = true` in the daemon, against `ntpkit serve --nts-ke`: the key exchange
/// gives the source and its cookies, only authenticated replies discipline the clock, the jar
/// stays full. Then the server comes back with another master secret (it can no longer open
/// the daemon's cookies): the daemon gets an NTS NAK, runs a new key exchange, and goes on.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_synchronizes_over_nts_and_recovers_from_a_nak() {
    use support::daemon::{daemon, true_error, virtual_clock, wait_until, MAX_ERROR};
    support::require("daemon_synchronizes_over_nts_and_recovers_from_a_nak", &[]);
    let lab = Lab::new("ntsd");
    let (crt, key) = self_signed(&lab, "server", false);
    let mut serve = ntpkit_nts_server(&lab, &crt, &key);
    let toml = format!(
        "[[server]]\naddress = \"localhost:{SERVE_KE_PORT}\"\nnts = true\nca-file = \"{}\"\n\
         minpoll = 0\nmaxpoll = 0\n{}",
        crt.display(),
        virtual_clock(0.05, 20.0)
    );
    let mut d = daemon(&lab, "client", &toml);
    let synced = |_: &str, st: &Value| {
        st["system"]["sources"][0]["state"] == "selected"
            && true_error(st).abs() < MAX_ERROR
            && daemon_nts(st).is_some_and(|n| n["authenticated"].as_u64() >= Some(8))
    };
    let st = wait_until(&lab, &["client"], SECS(90), synced).remove(0);
    let n = daemon_nts(&st).expect("NTS status");
    support::say(&format!("daemon NTS after synchronizing: {n}"));
    assert_eq!(
        st["system"]["sources"][0]["address"],
        format!("127.0.0.1:{SERVE_NTP_PORT}"),
        "the NTP port comes from the key exchange"
    );
    assert_eq!(n["aead"], "AEAD_AES_SIV_CMAC_256", "{n}");
    assert_eq!(n["key_exchanges"], 1, "{n}");
    assert_eq!(
        (n["rejected"].as_u64(), n["naks"].as_u64()),
        (Some(0), Some(0)),
        "{n}"
    );
    assert!(n["cookies"].as_u64() >= Some(7), "the jar stays full: {n}");
    let counters = nts_counters(&mut serve);
    let total = serve
        .stdout()
        .lines()
        .rev()
        .find(|l| l.starts_with("served udp:"))
        .unwrap_or_default()
        .to_string();
    support::say(&format!("server: {counters}\n{total}"));
    // Every request the daemon sent was an NTS request: nothing went out in the clear.
    let answered: u64 = total
        .split_whitespace()
        .find_map(|w| w.strip_prefix("answered="))
        .and_then(|v| v.parse().ok())
        .expect("answered count");
    let replies: u64 = counters
        .split_whitespace()
        .find_map(|w| w.strip_prefix("replies="))
        .and_then(|v| v.parse().ok())
        .expect("NTS replies count");
    assert_eq!(answered, replies, "{total}\n{counters}");

    // The server restarts with a new master secret: the daemon's cookies no longer open.
    serve.stop_with(libc::SIGTERM);
    drop(serve);
    fs::remove_file(lab.path("master")).expect("remove the master secret");
    let _serve = ntpkit_nts_server(&lab, &crt, &key);
    let st = wait_until(&lab, &["client"], SECS(60), |_, st| {
        daemon_nts(st).is_some_and(|n| {
            n["naks"].as_u64() >= Some(1)
                && n["key_exchanges"].as_u64() >= Some(2)
                && n["authenticated"].as_u64() >= Some(replies + 3)
        }) && st["system"]["sources"][0]["state"] == "selected"
    })
    .remove(0);
    let n = daemon_nts(&st).expect("NTS status");
    support::say(&format!("daemon NTS after the NAK: {n}"));
    assert!(true_error(&st).abs() < MAX_ERROR, "{st}");
    let shown = lab.run(
        &[
            NTPKIT,
            "sources",
            "--socket",
            &lab.path("client.sock").to_string_lossy(),
        ],
        SECS(10),
    );
    shown.assert_ok();
    assert!(
        shown.stdout.contains("NTS Name/address") && shown.stdout.contains("AEAD_AES_SIV_CMAC_256"),
        "{shown}"
    );
    d.stop_with(libc::SIGTERM);
    assert!(d.output().contains("NTS NAK"), "{}", d.output());
}

/// A daemon whose NTS source presents a certificate it does not trust never uses that source
/// and never falls back to plain NTP: the log says why and what to configure.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_refuses_an_untrusted_nts_server() {
    use support::daemon::{daemon, status};
    support::require("daemon_refuses_an_untrusted_nts_server", &[]);
    let lab = Lab::new("ntsu");
    let (crt, key) = self_signed(&lab, "server", false);
    let (other, _) = self_signed(&lab, "other", false);
    let mut serve = ntpkit_nts_server(&lab, &crt, &key);
    let toml = format!(
        "[[server]]\naddress = \"localhost:{SERVE_KE_PORT}\"\nnts = true\nca-file = \"{}\"\n\
         minpoll = 0\nmaxpoll = 0\n[clock]\nbackend = \"observe\"\n",
        other.display(),
    );
    let mut d = daemon(&lab, "client", &toml);
    support::wait(SECS(20), || d.output().contains("is not trusted"));
    let out = d.output();
    assert!(
        out.contains("is not trusted") && out.contains("set ca-file"),
        "{out}"
    );
    let st = status(&lab, "client");
    assert_eq!(
        st["system"]["sources"].as_array().map(Vec::len),
        Some(0),
        "{st}"
    );
    assert_eq!(st["system"]["tracking"]["synchronized"], false, "{st}");
    let counters = nts_counters(&mut serve);
    assert!(counters.contains("replies=0 "), "{counters}");
    let udp = serve
        .stdout()
        .lines()
        .rev()
        .find(|l| l.starts_with("served udp:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        udp.contains("answered=0 "),
        "no plain request either: {udp}"
    );
    d.stop_with(libc::SIGTERM);
}

/// The daemon as NTS client of chronyd's NTS server: synchronized on authenticated replies.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_synchronizes_over_nts_to_chronyd() {
    use support::daemon::{daemon, true_error, virtual_clock, wait_until, MAX_ERROR};
    support::require(
        "daemon_synchronizes_over_nts_to_chronyd",
        &[Need::Tool(CHRONYD)],
    );
    let lab = Lab::new("ntsc");
    let (crt, key) = self_signed(&lab, "server", false);
    let _server = nts_server(&lab, &crt, &key);
    let toml = format!(
        "[[server]]\naddress = \"localhost:{KE_PORT}\"\nnts = true\nca-file = \"{}\"\n\
         minpoll = 0\nmaxpoll = 0\n{}",
        crt.display(),
        virtual_clock(-0.03, -15.0)
    );
    let mut d = daemon(&lab, "client", &toml);
    let st = wait_until(&lab, &["client"], SECS(120), |_, st| {
        st["system"]["sources"][0]["state"] == "selected"
            && true_error(st).abs() < MAX_ERROR
            && daemon_nts(st).is_some_and(|n| n["authenticated"].as_u64() >= Some(8))
    })
    .remove(0);
    let n = daemon_nts(&st).expect("NTS status");
    support::say(&format!("daemon NTS with chronyd: {n}"));
    assert_eq!(
        st["system"]["sources"][0]["address"],
        format!("127.0.0.1:{NTP_PORT}"),
        "{st}"
    );
    assert_eq!(
        (n["rejected"].as_u64(), n["naks"].as_u64()),
        (Some(0), Some(0)),
        "{n}"
    );
    assert!(n["cookies"].as_u64() >= Some(7), "{n}");
    d.stop_with(libc::SIGTERM);
}

/// NTPsec's ntpd as NTS server (NTS-KE on 4460, NTP on 123, orphan stratum 5, clock discipline
/// off, no CAP_SYS_TIME): `ntpkit query --nts` authenticates against it, and so does the
/// daemon, which synchronizes on its authenticated replies alone.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn query_and_daemon_authenticate_against_ntpsec() {
    use support::daemon::{daemon, true_error, virtual_clock, wait_until, MAX_ERROR};
    support::require(
        "query_and_daemon_authenticate_against_ntpsec",
        &[Need::Tool(NTPSEC_NTPD)],
    );
    let lab = Lab::new("ntsp");
    let (crt, key) = self_signed(&lab, "server", false);
    let conf = lab.write(
        "ntp.conf",
        &format!(
            "disable ntp\ndisable kernel\ntos orphan 5 orphanwait 0\n\
             restrict default kod nomodify noquery nopeer limited\n\
             restrict 127.0.0.1\nrestrict ::1\n\
             nts enable\nnts key {}\nnts cert {}\nnts cookie {}\n",
            key.display(),
            crt.display(),
            lab.path("nts-keys").display()
        ),
    );
    let (conf, pid, log) = (
        conf.to_string_lossy().to_string(),
        lab.path("ntpd.pid").to_string_lossy().to_string(),
        lab.path("ntpd.log").to_string_lossy().to_string(),
    );
    // No -u: ntpd would then try to keep CAP_SYS_TIME. It has none to keep (setpriv).
    let ntpd = lab.spawn(
        "ntpd",
        &[NTPSEC_NTPD, "-n", "-c", &conf, "-p", &pid, "-l", &log],
        SECS(180),
    );
    let ca = crt.to_string_lossy().to_string();
    // Orphan mode takes a few seconds to become a stratum-5 server.
    let deadline = std::time::Instant::now() + SECS(60);
    let v = loop {
        let r = lab.run(
            &[
                NTPKIT,
                "query",
                "--nts",
                "localhost",
                "--ca-file",
                &ca,
                "--samples",
                "2",
                "--interval",
                "0.2",
                "--timeout",
                "2",
                "--json",
            ],
            SECS(30),
        );
        let v: Option<Value> = serde_json::from_str(r.stdout.trim()).ok();
        if let Some(v) = v.filter(|v| r.status.success() && v["stratum"] == 5) {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no authenticated answer from NTPsec within 60 s; last:\n{r}\n{}\n{}",
            ntpd.output(),
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    support::say(&format!("query --nts against NTPsec: {}", v["nts"]));
    assert_eq!(v["nts"]["aead"], "AEAD_AES_SIV_CMAC_256", "{v}");
    assert_eq!(v["nts"]["dropped"], 0, "{v}");
    assert!(f64_abs(&v["offset"]) < MAX_ERROR, "{v}");

    let toml = format!(
        "[[server]]\naddress = \"localhost\"\nnts = true\nca-file = \"{ca}\"\n\
         minpoll = 0\nmaxpoll = 0\n{}",
        virtual_clock(0.02, 12.0)
    );
    let mut d = daemon(&lab, "client", &toml);
    let st = wait_until(&lab, &["client"], SECS(120), |_, st| {
        st["system"]["sources"][0]["state"] == "selected"
            && true_error(st).abs() < MAX_ERROR
            && daemon_nts(st).is_some_and(|n| n["authenticated"].as_u64() >= Some(8))
    })
    .remove(0);
    let n = daemon_nts(&st).expect("NTS status");
    support::say(&format!("daemon NTS with NTPsec: {n}"));
    assert_eq!(
        (n["rejected"].as_u64(), n["naks"].as_u64()),
        (Some(0), Some(0)),
        "{n}"
    );
    assert!(n["cookies"].as_u64() >= Some(7), "{n}");
    d.stop_with(libc::SIGTERM);
}

fn f64_abs(v: &Value) -> f64 {
    v.as_f64().map_or(f64::INFINITY, f64::abs)
}

/// An NTS source whose server dies: each poll spends a cookie with no reply, the empty jar
/// skips polls and asks for a key exchange, which is refused and retried with a back-off (the
/// status says why); when the server is back, a key exchange refills the jar and the source
/// is selected again.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_nts_source_survives_a_dead_server() {
    use support::daemon::{daemon, virtual_clock, wait_until};
    support::require("daemon_nts_source_survives_a_dead_server", &[]);
    let lab = Lab::new("ntsk");
    let (crt, key) = self_signed(&lab, "server", false);
    let mut serve = ntpkit_nts_server(&lab, &crt, &key);
    let toml = format!(
        "[[server]]\naddress = \"localhost:{SERVE_KE_PORT}\"\nnts = true\nca-file = \"{}\"\n\
         minpoll = 0\nmaxpoll = 0\n{}",
        crt.display(),
        virtual_clock(0.0, 5.0)
    );
    let mut d = daemon(&lab, "client", &toml);
    wait_until(&lab, &["client"], SECS(60), |_, st| {
        st["system"]["sources"][0]["state"] == "selected"
    });
    serve.stop_with(libc::SIGTERM);
    drop(serve);
    let st = wait_until(&lab, &["client"], SECS(60), |_, st| {
        daemon_nts(st).is_some_and(|n| {
            n["cookies"] == 0
                && n["starved"].as_u64() >= Some(1)
                && n["key_exchange_failures"].as_u64() >= Some(1)
        })
    })
    .remove(0);
    let n = daemon_nts(&st).expect("NTS status").clone();
    support::say(&format!("daemon NTS with its server down: {n}"));
    assert!(
        n["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the connection")),
        "{n}"
    );
    assert_eq!(st["system"]["sources"][0]["state"], "unreachable", "{st}");
    let _serve = ntpkit_nts_server(&lab, &crt, &key);
    let st = wait_until(&lab, &["client"], SECS(90), |_, st| {
        st["system"]["sources"][0]["state"] == "selected"
            && daemon_nts(st).is_some_and(|m| {
                m["key_exchanges"].as_u64() >= Some(2)
                    && m["authenticated"].as_u64() > n["authenticated"].as_u64()
            })
    })
    .remove(0);
    support::say(&format!(
        "daemon NTS after the server came back: {}",
        daemon_nts(&st).expect("NTS status")
    ));
    assert!(
        daemon_nts(&st).expect("NTS")["last_error"].is_null(),
        "{st}"
    );
    d.stop_with(libc::SIGTERM);
}

/// A CA named `name` and a leaf certificate for `localhost` (DNS and 127.0.0.1) signed by it:
/// the CA's certificate, the leaf's chain (leaf first) and the leaf's key, as PEM text.
fn ca_and_leaf(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key pair");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("ntpkit test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = rcgen::KeyPair::generate().expect("key pair");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf certificate");
    (
        ca.pem(),
        format!("{}{}", leaf.pem(), ca.pem()),
        leaf_key.serialize_pem(),
    )
}

/// Replaces `path` with `text` as certificate tools do: a temporary file renamed over it.
fn install(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).expect("write temporary file");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::rename(&tmp, path).expect("rename into place");
}

/// One `ntpkit query --nts localhost:KE` trusting `ca`, one sample.
fn query_once(lab: &Lab, ke_port: u16, ca: &Path) -> support::Run {
    let ke = format!("localhost:{ke_port}");
    let ca = ca.to_string_lossy().to_string();
    lab.run(
        &[
            NTPKIT,
            "query",
            "--nts",
            &ke,
            "--ca-file",
            &ca,
            "--samples",
            "1",
            "--json",
        ],
        SECS(20),
    )
}

/// `ntpkit serve --nts-ke` takes a new certificate and key when their files are replaced,
/// without a restart: clients trusting the new CA succeed within a bounded wait and clients
/// trusting only the old one are refused; plain NTP over UDP is answered throughout. A
/// replacement that is not a certificate keeps the previous one serving, and so does SIGHUP
/// with those files.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn serve_reloads_certificate_without_dropping_service() {
    support::require("serve_reloads_certificate_without_dropping_service", &[]);
    let lab = Lab::new("ntsr");
    let (ca_a, chain_a, key_a) = ca_and_leaf("A");
    let (ca_b, chain_b, key_b) = ca_and_leaf("B");
    let ca_a = lab.write("ca-a.crt", &ca_a);
    let ca_b = lab.write("ca-b.crt", &ca_b);
    // Where serve can still read once it has dropped its capabilities: the work directory is
    // closed to root without CAP_DAC_OVERRIDE.
    let dir = lab.own_dir("tls");
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    install(&crt, &chain_a);
    install(&key, &key_a);
    let listen = format!("127.0.0.1:{SERVE_NTP_PORT}");
    let ke = format!("127.0.0.1:{SERVE_KE_PORT}");
    let master = lab.path("master").to_string_lossy().to_string();
    let (crt_s, key_s) = (
        crt.to_string_lossy().to_string(),
        key.to_string_lossy().to_string(),
    );
    let mut serve = lab.spawn(
        "serve",
        &[
            NTPKIT,
            "serve",
            "--listen",
            &listen,
            "--nts-ke",
            &ke,
            "--cert",
            &crt_s,
            "--key",
            &key_s,
            "--nts-master",
            &master,
            "--no-rate-limit",
        ],
        SECS(120),
    );
    serve.wait_for("Waiting for NTP requests", SECS(10));

    // Plain NTP every 50 ms from a thread in the namespace, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let ns = lab.ns.clone();
    let prober = std::thread::spawn(move || {
        support::enter_netns(&ns);
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.connect(("127.0.0.1", SERVE_NTP_PORT)).expect("connect");
        let (mut sent, mut answered) = (0u32, 0u32);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && sent < 2000 {
            sent += 1;
            if support::ntp::udp_exchange(&s, Duration::from_millis(500)).is_ok() {
                answered += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (sent, answered)
    });

    let r = query_once(&lab, SERVE_KE_PORT, &ca_a);
    assert!(r.status.success(), "{r}\n{}", serve.output());

    install(&crt, &chain_b);
    install(&key, &key_b);
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < SECS(15) {
        let r = query_once(&lab, SERVE_KE_PORT, &ca_b);
        if r.status.success() {
            last = None;
            break;
        }
        last = Some(r);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        last.is_none(),
        "a client trusting the new CA still fails 15 s after the replacement: {}\n{}",
        last.map(|r| r.to_string()).unwrap_or_default(),
        serve.output()
    );
    support::say(&format!(
        "new certificate served {:.1} s after the files were replaced",
        started.elapsed().as_secs_f64()
    ));
    let r = query_once(&lab, SERVE_KE_PORT, &ca_a);
    assert!(!r.status.success(), "{r}");
    assert!(r.stderr.contains("not trusted"), "{r}");

    // Garbage in place of the certificate: logged, and B keeps serving.
    install(&crt, "this is not a certificate\n");
    serve.wait_for("cannot reload the certificate", SECS(10));
    let r = query_once(&lab, SERVE_KE_PORT, &ca_b);
    assert!(r.status.success(), "{r}\n{}", serve.output());
    // SIGHUP tries again at once, with the same outcome.
    let failures = |p: &Proc| p.stderr().matches("cannot reload the certificate").count();
    let before = failures(&serve);
    serve.signal_command(libc::SIGHUP);
    support::wait(SECS(5), || failures(&serve) > before);
    let r = query_once(&lab, SERVE_KE_PORT, &ca_b);
    assert!(r.status.success(), "{r}\n{}", serve.output());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, answered) = prober.join().expect("prober");
    support::say(&format!(
        "plain NTP during the reloads: {answered} of {sent} answered"
    ));
    assert_eq!(answered, sent, "{}", serve.output());
    let counters = nts_counters(&mut serve);
    assert!(counters.contains("ke_served=4 "), "{counters}");
}

/// `ntpkit daemon` with `[nts-ke-server]`, serving from its event loop and from a serving
/// thread: `ntpkit query --nts` gets authenticated replies at the daemon's stratum, with the
/// NTP port announced by the key exchange, and `ntpkit status` counts them. After SIGHUP with
/// a certificate from another CA in place, clients trusting that CA are served.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_serves_nts() {
    support::require("daemon_serves_nts", &[]);
    let lab = Lab::new("ntsd");
    // Readable by the daemon after it has dropped its capabilities (for the reload).
    let dir = lab.own_dir("state");
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    for threads in [0, 1] {
        let (ca_a, chain_a, key_a) = ca_and_leaf("A");
        let (ca_b, chain_b, key_b) = ca_and_leaf("B");
        let ca_a = lab.write("ca-a.crt", &ca_a);
        let ca_b = lab.write("ca-b.crt", &ca_b);
        install(&crt, &chain_a);
        install(&key, &key_a);
        let name = format!("d{threads}");
        let master = dir.join(format!("master{threads}"));
        let toml = format!(
            "listen = [\"127.0.0.1:{SERVE_NTP_PORT}\"]\nserve-threads = {threads}\n\
             access = [\"deny 127.0.0.2\", \"allow all\"]\n\
             [sync]\nlocal-stratum = 2\n[nts-ke-server]\nlisten = [\"127.0.0.1:{SERVE_KE_PORT}\"]\n\
             cert = \"{}\"\nkey = \"{}\"\nmaster = \"{}\"\n",
            crt.display(),
            key.display(),
            master.display()
        );
        let mut d = support::daemon::daemon(&lab, &name, &toml);
        let ke = format!("localhost:{SERVE_KE_PORT}");
        let ca = ca_a.to_string_lossy().to_string();
        let r = lab.run(
            &[
                NTPKIT,
                "query",
                "--nts",
                &ke,
                "--ca-file",
                &ca,
                "--samples",
                "3",
                "--interval",
                "0.2",
                "--json",
            ],
            SECS(30),
        );
        assert!(
            r.status.success(),
            "serve-threads {threads}: {r}\n{}",
            d.output()
        );
        let v: Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
        assert_eq!(v["stratum"], 2, "{v}");
        assert_eq!(
            v["nts"]["ntp_server"],
            format!("localhost:{SERVE_NTP_PORT}"),
            "{v}"
        );
        assert_eq!(v["nts"]["dropped"], 0, "{v}");
        let meta = fs::metadata(&master).expect("master secret created");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let st = support::daemon::status(&lab, &name);
        let nts = &st["server"]["nts"];
        support::say(&format!(
            "daemon (serve-threads {threads}) NTS counters: {nts}"
        ));
        assert_eq!(nts["ke_served"], 1, "{st}");
        assert_eq!(nts["replies"], 3, "{st}");
        assert_eq!(nts["dropped"], 0, "{st}");
        // The access rules close a key-exchange connection from a refused address at once.
        let closed = lab.in_netns(|| {
            use std::io::Read;
            let to = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, SERVE_KE_PORT);
            let mut c = support::tcp_connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), to)
                .expect("connect");
            c.set_read_timeout(Some(SECS(2))).expect("timeout");
            match c.read(&mut [0u8; 16]) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        });
        assert!(closed, "a refused address kept its connection");
        let st = support::daemon::status(&lab, &name);
        assert_eq!(st["server"]["nts"]["ke_denied"], 1, "{st}");

        install(&crt, &chain_b);
        install(&key, &key_b);
        d.signal_command(libc::SIGHUP);
        d.wait_for("NTS-KE: loaded certificate", SECS(10));
        let r = query_once(&lab, SERVE_KE_PORT, &ca_b);
        assert!(r.status.success(), "{r}\n{}", d.output());
        let r = query_once(&lab, SERVE_KE_PORT, &ca_a);
        assert!(r.stderr.contains("not trusted"), "{r}");
        d.stop_with(libc::SIGTERM);
    }
}

/// `ntpkit bench --nts` and `--nts-ke` against `ntpkit serve --nts-ke` for about a second each:
/// authenticated replies, every one verified and none failing, key exchanges completed; with
/// another certificate trusted, the key exchange fails with the message of `query --nts`.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn bench_nts_against_ntpkit_serve() {
    support::require("bench_nts_against_ntpkit_serve", &[]);
    let _load = support::loading();
    let lab = Lab::new("ntsb");
    let (crt, key) = self_signed(&lab, "server", false);
    let (other, _) = self_signed(&lab, "other", false);
    // Every request comes from one address: without --no-rate-limit nearly all would be limited.
    let mut serve = ntpkit_nts_server_on(
        &lab,
        "serve",
        &format!("127.0.0.1:{SERVE_NTP_PORT}"),
        &format!("127.0.0.1:{SERVE_KE_PORT}"),
        3,
        &crt,
        &key,
        &["--no-rate-limit"],
    );
    let ke = format!("localhost:{SERVE_KE_PORT}");
    let ca = crt.to_string_lossy().to_string();
    let r = lab.run(
        &[
            NTPKIT,
            "bench",
            "--nts",
            &ke,
            "--ca-file",
            &ca,
            "--rate",
            "2000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--sockets",
            "2",
            "--json",
        ],
        SECS(30),
    );
    assert!(r.status.success(), "{r}\n{}", serve.output());
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    assert_eq!(v["target"], format!("127.0.0.1:{SERVE_NTP_PORT}"), "{v}");
    assert_eq!(
        v["nts"]["ntp_server"],
        format!("localhost:{SERVE_NTP_PORT}"),
        "{v}"
    );
    assert!(v["valid"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["nts"]["failed"], 0, "{v}");
    assert_eq!(v["nts"]["naks"], 0, "{v}");
    assert_eq!(v["nts"]["verified"], v["total"]["valid"], "{v}");
    assert_eq!(v["invalid"]["unknown_origin"], 0, "{v}");

    let r = lab.run(
        &[
            NTPKIT,
            "bench",
            "--nts-ke",
            &ke,
            "--ca-file",
            &ca,
            "--duration",
            "1",
            "--warmup",
            "0",
            "--requests",
            "40",
            "--json",
        ],
        SECS(30),
    );
    assert!(r.status.success(), "{r}\n{}", serve.output());
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("JSON");
    assert_eq!(v["mode"], "nts-ke", "{v}");
    assert_eq!(v["total"]["failed"], 0, "{v}");
    assert_eq!(v["total"]["completed"], 40, "{v}");
    let counters = nts_counters(&mut serve);
    support::say(&format!("ntpkit serve: {counters}"));
    // One exchange for --nts, one checked before the run and 40 in it for --nts-ke.
    assert!(counters.contains("ke_served=42 "), "{counters}");
    assert!(counters.contains("naks=0 dropped=0"), "{counters}");

    for mode in ["--nts", "--nts-ke"] {
        let other = other.to_string_lossy().to_string();
        let r = lab.run(
            &[
                NTPKIT,
                "bench",
                mode,
                &ke,
                "--ca-file",
                &other,
                "--duration",
                "1",
            ],
            SECS(30),
        );
        assert!(!r.status.success(), "{r}");
        let err = r.stderr.trim();
        assert!(
            err.contains("not trusted") && err.contains("--ca-file"),
            "{r}"
        );
        assert_eq!(err.lines().count(), 1, "{r}");
    }
}

/// `[[pool]] nts = true`: each address of the name is a key-exchange server for the pool's
/// name; those that complete the exchange become members (here the one on 127.0.0.1; the
/// name's other address, if it has one, has no server), and the pool synchronizes over NTS.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn daemon_pool_with_nts() {
    use support::daemon::{daemon, virtual_clock, wait_until};
    support::require("daemon_pool_with_nts", &[]);
    let lab = Lab::new("ntsl");
    let (crt, key) = self_signed(&lab, "server", false);
    let _serve = ntpkit_nts_server(&lab, &crt, &key);
    let toml = format!(
        "[[pool]]\nname = \"localhost:{SERVE_KE_PORT}\"\nnts = true\nca-file = \"{}\"\n\
         max-sources = 2\nminpoll = 0\nmaxpoll = 0\n{}",
        crt.display(),
        virtual_clock(0.01, 3.0)
    );
    let mut d = daemon(&lab, "client", &toml);
    let st = wait_until(&lab, &["client"], SECS(60), |_, st| {
        st["system"]["sources"][0]["state"] == "selected"
            && daemon_nts(st).is_some_and(|n| n["authenticated"].as_u64() >= Some(4))
    })
    .remove(0);
    let sources = st["system"]["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1, "{st}");
    assert_eq!(
        sources[0]["address"],
        format!("127.0.0.1:{SERVE_NTP_PORT}"),
        "{st}"
    );
    assert_eq!(sources[0]["name"], "localhost", "{st}");
    let n = daemon_nts(&st).expect("NTS status");
    assert_eq!(
        (n["rejected"].as_u64(), n["naks"].as_u64()),
        (Some(0), Some(0)),
        "{n}"
    );
    d.stop_with(libc::SIGTERM);
}
