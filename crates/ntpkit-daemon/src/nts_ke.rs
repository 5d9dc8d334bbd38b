//! NTS-KE on a real socket for one-shot clients (`ntpkit query --nts`): loads the trusted
//! certificates, connects to the key-exchange server over TCP with a timeout and pumps bytes
//! between the blocking socket and [`ntpkit_nts::KeClient`] until the exchange ends.

use ntpkit_nts::ke::client_config;
pub use ntpkit_nts::ke::DEFAULT_KE_PORT;
use ntpkit_nts::{KeClient, KeError, KeOutcome};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::time_provider::DefaultTimeProvider;
use rustls::{ClientConfig, RootCertStore};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The system's CA bundle, trusted when no CA file is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why NTS could not be set up or used. Each message names the problem and what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum NtsError {
    /// The CA file could not be read or held no usable certificate.
    CaFile(PathBuf, String),
    /// `HOST[:PORT]` of the key-exchange server is malformed or does not resolve.
    Resolve(String, String),
    /// The key-exchange server refused the TCP connection.
    Refused(String),
    /// Connecting, reading or writing failed otherwise.
    Io(String, io::Error),
    /// The key-exchange server did not finish within the timeout.
    Timeout(String, Duration),
    /// The NTS-KE exchange failed.
    Ke(String, KeError),
    /// The TLS configuration could not be built.
    Tls(rustls::Error),
    /// The NTP server answered with an NTS NAK: it could not open the cookie.
    Nak(SocketAddr),
}

impl std::fmt::Display for NtsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NtsError::CaFile(p, e) => write!(
                f,
                "cannot use CA file {}: {e}: give a PEM file of trusted certificates with --ca-file",
                p.display()
            ),
            NtsError::Resolve(s, e) => write!(
                f,
                "cannot resolve NTS-KE server {s}: {e}: give --nts HOST[:PORT] (port {DEFAULT_KE_PORT} by default)"
            ),
            NtsError::Refused(s) => write!(
                f,
                "NTS-KE server {s} refused the connection: check the host and the key-exchange port (--nts HOST:PORT, {DEFAULT_KE_PORT} by default) and that the server runs NTS-KE"
            ),
            NtsError::Io(s, e) => write!(f, "NTS-KE with {s} failed: {e}"),
            NtsError::Timeout(s, t) => write!(
                f,
                "NTS-KE server {s} did not complete the key exchange within {} s: check the host and port, or raise --timeout",
                t.as_secs_f64()
            ),
            NtsError::Ke(s, KeError::UntrustedCertificate { reason, .. }) => write!(
                f,
                "the TLS certificate of NTS-KE server {s} is not trusted ({reason}): pass the server's certificate or the CA that signed it with --ca-file, or check the server name and this machine's date"
            ),
            NtsError::Ke(_, e) => write!(f, "{e}"),
            NtsError::Tls(e) => write!(f, "cannot set up TLS for NTS-KE: {e}"),
            NtsError::Nak(a) => write!(
                f,
                "NTP server {a} refused the NTS cookie (NTS NAK): run the query again for fresh cookies; if it persists, that NTP server does not share keys with the NTS-KE server"
            ),
        }
    }
}

impl std::error::Error for NtsError {}

/// Splits `HOST[:PORT]` (`[IPv6]:PORT`, or a bare IPv6 address) into host and port, `default`
/// when the port is absent.
pub fn split_host_port(s: &str, default: u16) -> Result<(String, u16), NtsError> {
    let bad = |why: String| NtsError::Resolve(s.to_string(), why);
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip().to_string(), a.port()));
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok((ip.to_string(), default));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return Ok((inner.to_string(), default));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad(format!("invalid port {p:?}")))?,
        ),
        None => (s, default),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host".into()));
    }
    Ok((host.to_string(), port))
}

/// Loads the certificates to trust: every certificate of the PEM file `ca_file`, or the
/// system bundle ([`SYSTEM_CA_BUNDLE`]) without one.
pub fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore, NtsError> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let err = |e: String| NtsError::CaFile(path.to_path_buf(), e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    if ca_file.is_some() {
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    } else {
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(roots)
}

/// The NTS-KE client configuration: `roots`, ring's cryptography and the system clock.
pub fn ke_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, NtsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    client_config(roots, provider, Arc::new(DefaultTimeProvider))
        .map(Arc::new)
        .map_err(NtsError::Tls)
}

/// Runs one NTS-KE exchange with `host`:`port` (TCP, at most `timeout` in all) and returns
/// what it negotiated.
pub fn key_exchange(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<KeOutcome, NtsError> {
    let name = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| NtsError::Resolve(name.clone(), e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(NtsError::Resolve(name, "no address".into()));
    }
    key_exchange_at(host, &name, &addrs, config, timeout)
}

/// Runs one NTS-KE exchange with the first of `addrs` that accepts a TCP connection,
/// verifying its certificate for `host` (at most `timeout` in all); `name` names the server
/// in errors.
pub fn key_exchange_at(
    host: &str,
    name: &str,
    addrs: &[SocketAddr],
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<KeOutcome, NtsError> {
    let name = name.to_string();
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(NtsError::Refused(name))
        }
        (None, Some(e)) if is_timeout(&e) => return Err(NtsError::Timeout(name, timeout)),
        (None, e) => {
            return Err(NtsError::Io(
                name,
                e.unwrap_or_else(|| io::Error::other("no address")),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let mut client = KeClient::new(config, host).map_err(|e| NtsError::Ke(name.clone(), e))?;
    let io_err = |e: io::Error| {
        if is_timeout(&e) {
            NtsError::Timeout(name.clone(), timeout)
        } else {
            NtsError::Io(name.clone(), e)
        }
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut eof = false;
    loop {
        out.clear();
        client.transmit(&mut out);
        if !out.is_empty() {
            let left = remaining(deadline).ok_or_else(|| io_err(timed_out()))?;
            stream.set_write_timeout(Some(left)).map_err(io_err)?;
            // After the outcome the peer may already have closed: what is left is a courtesy.
            if let Err(e) = stream.write_all(&out) {
                if !eof {
                    return Err(io_err(e));
                }
            }
        }
        if let Some(result) = client.outcome() {
            out.clear();
            client.transmit(&mut out);
            let _ = stream.write_all(&out);
            let _ = stream.shutdown(Shutdown::Both);
            return result.map_err(|e| NtsError::Ke(name.clone(), e));
        }
        if eof {
            // The client reports a result on end of stream; if not, the exchange is stuck.
            return Err(NtsError::Ke(
                name.clone(),
                KeError::ConnectionClosed {
                    server: host.to_string(),
                },
            ));
        }
        let left = remaining(deadline).ok_or_else(|| io_err(timed_out()))?;
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => {
                eof = true;
                client.receive_eof();
            }
            Ok(n) => client.receive(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                eof = true;
                client.receive_eof();
            }
            Err(e) => return Err(io_err(e)),
        }
    }
}

/// The NTP server an NTS-KE negotiated: its `HOST:PORT` as text and its address. Without a
/// server record the key-exchange server's own host (`ke_host`) is meant, and port 123
/// without a port record.
pub fn negotiated_server(
    outcome: &KeOutcome,
    ke_host: &str,
) -> Result<(String, SocketAddr), NtsError> {
    let host = outcome
        .server
        .clone()
        .unwrap_or_else(|| ke_host.to_string());
    let port = outcome.port.unwrap_or(crate::query::NTP_PORT);
    let name = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| NtsError::Resolve(name.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| NtsError::Resolve(name.clone(), "no address".into()))?;
    Ok((name, addr))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn timed_out() -> io::Error {
    io::Error::from(io::ErrorKind::TimedOut)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| split_host_port(s, 4460).unwrap();
        assert_eq!(hp("localhost"), ("localhost".into(), 4460));
        assert_eq!(hp("localhost:11965"), ("localhost".into(), 11965));
        assert_eq!(hp("127.0.0.1:1"), ("127.0.0.1".into(), 1));
        assert_eq!(hp("::1"), ("::1".into(), 4460));
        assert_eq!(hp("[::1]"), ("::1".into(), 4460));
        assert_eq!(hp("[::1]:99"), ("::1".into(), 99));
        assert!(split_host_port("host:x", 4460).is_err());
        assert!(split_host_port(":5", 4460).is_err());
    }

    #[test]
    fn refused_connection_names_the_port() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = ke_config(RootCertStore::empty()).unwrap();
        let e = key_exchange("127.0.0.1", port, cfg, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, NtsError::Refused(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("refused the connection") && text.contains(&port.to_string()));
    }

    #[test]
    fn missing_ca_file_names_the_flag() {
        let e = load_roots(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.to_string().contains("--ca-file"), "{e}");
    }
}
