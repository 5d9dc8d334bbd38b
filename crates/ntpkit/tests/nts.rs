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
use support::{chrony, Lab, Need, Proc, CHRONYC, CHRONYD, NTPKIT};

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
