//! The NTS-KE client: a TLS 1.3 session driven through buffers that sends one request and
//! reads one response.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::records::{KeRequest, KeResponse, Record, RecordReader, ResponseError};
use super::{export_keys, ALPN_NTSKE};
use crate::{AeadAlgorithm, NtsKeys};

/// What a successful NTS-KE gives a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeOutcome {
    /// Keys for the NTP exchanges that follow.
    pub keys: NtsKeys,
    /// Cookies to send, one per NTP request.
    pub cookies: Vec<Vec<u8>>,
    /// The NTP server to query; `None` means the NTS-KE server's own address.
    pub server: Option<String>,
    /// The NTP port to query; `None` means 123.
    pub port: Option<u16>,
}

/// Why an NTS-KE exchange failed, with who is at fault and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeError {
    /// The host name cannot be used as a TLS server name.
    #[error("{server:?} is not a valid DNS name or IP address for NTS-KE: fix the server name in the configuration")]
    InvalidServerName {
        /// The name given.
        server: String,
    },
    /// The server's certificate failed verification.
    #[error("the TLS certificate of NTS-KE server {server} is not trusted ({reason}): configure the CA file that signed it, or check the server name and this machine's date")]
    UntrustedCertificate {
        /// The server.
        server: String,
        /// What the verifier objected to.
        reason: String,
    },
    /// The server ended the TLS session with an alert.
    #[error("NTS-KE server {server} refused the TLS session (alert {alert}): check that it speaks NTS-KE over TLS 1.3 on this port")]
    TlsAlert {
        /// The server.
        server: String,
        /// The TLS alert received.
        alert: String,
    },
    /// The TLS session failed on this side.
    #[error("TLS with NTS-KE server {server} failed: {reason}")]
    Tls {
        /// The server.
        server: String,
        /// What rustls reported.
        reason: String,
    },
    /// The server did not agree on ALPN `ntske/1`, or did not use TLS 1.3.
    #[error("{server} did not agree on NTS-KE (ALPN ntske/1 over TLS 1.3): it is probably not an NTS-KE server, check the host and port")]
    NotNtsKe {
        /// The server.
        server: String,
    },
    /// The server answered with an Error record.
    #[error("NTS-KE server {server} answered with error {code}: if it persists, report it to the server's operator")]
    ServerError {
        /// The server.
        server: String,
        /// The error code it sent.
        code: super::ErrorCode,
    },
    /// The server implements none of the AEAD algorithms this client offers.
    #[error("NTS-KE server {server} supports none of the AEAD algorithms offered (AEAD_AES_SIV_CMAC_256): use another server")]
    NoCommonAead {
        /// The server.
        server: String,
    },
    /// The server does not offer NTPv4.
    #[error("NTS-KE server {server} does not offer NTPv4: use another server")]
    NoCommonProtocol {
        /// The server.
        server: String,
    },
    /// The response held no cookie.
    #[error("NTS-KE server {server} sent no cookies: retry later or use another server")]
    NoCookies {
        /// The server.
        server: String,
    },
    /// The response broke RFC 8915.
    #[error("NTS-KE server {server} sent a malformed response ({reason}): report it to the server's operator")]
    Malformed {
        /// The server.
        server: String,
        /// What was wrong.
        reason: String,
    },
    /// The connection ended before the response was complete.
    #[error("NTS-KE server {server} closed the connection before its response was complete: retry later")]
    ConnectionClosed {
        /// The server.
        server: String,
    },
}

/// An NTS-KE client session, driven by the caller through buffers.
///
/// Call contract:
/// 1. [`new`](Self::new) with a configuration from [`super::client_config`] and the server's
///    host name (used for SNI and certificate checks).
/// 2. Loop:
///    - output: [`transmit`](Self::transmit) appends bytes to send on the TCP connection;
///      send all of them;
///    - output: [`outcome`](Self::outcome) returns the result once, when there is one; after
///      it, call `transmit` once more (it may hold a TLS close_notify or alert) and close the
///      connection;
///    - input: [`receive`](Self::receive) with the bytes read from the connection, or
///      [`receive_eof`](Self::receive_eof) when the peer closed it.
///
/// The driver owns the timeout: NTS-KE has none of its own.
#[derive(Debug)]
pub struct KeClient {
    conn: ClientConnection,
    server: String,
    request: KeRequest,
    request_sent: bool,
    reader: RecordReader,
    records: Vec<Record>,
    result: Option<Result<KeOutcome, KeError>>,
    finished: bool,
}

impl KeClient {
    /// Call once per exchange to start the TLS handshake with `server` (a DNS name or IP
    /// literal), asking for NTPv4 with every AEAD this crate implements.
    pub fn new(config: Arc<ClientConfig>, server: &str) -> Result<KeClient, KeError> {
        Self::with_request(config, server, KeRequest::ntpv4())
    }

    /// Like [`new`](Self::new), with the request given (for example with server or port
    /// preferences).
    pub fn with_request(
        config: Arc<ClientConfig>,
        server: &str,
        request: KeRequest,
    ) -> Result<KeClient, KeError> {
        let name =
            ServerName::try_from(server.to_string()).map_err(|_| KeError::InvalidServerName {
                server: server.to_string(),
            })?;
        // ALPN is set here too, so a configuration built elsewhere still negotiates NTS-KE.
        let conn = ClientConnection::new_with_alpn(config, name, vec![ALPN_NTSKE.to_vec()])
            .map_err(|e| KeError::Tls {
                server: server.to_string(),
                reason: e.to_string(),
            })?;
        Ok(KeClient {
            conn,
            server: server.to_string(),
            request,
            request_sent: false,
            reader: RecordReader::new(),
            records: Vec::new(),
            result: None,
            finished: false,
        })
    }

    /// Output: call to append the bytes waiting to be sent to `out`.
    pub fn transmit(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Output: the result, returned once when the exchange has ended; `None` while it runs.
    pub fn outcome(&mut self) -> Option<Result<KeOutcome, KeError>> {
        self.result.take()
    }

    /// Whether the exchange has ended (its outcome may already have been taken).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Input: call with each piece of bytes read from the connection.
    pub fn receive(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.finished {
            match self.conn.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let reason = e.to_string();
                    self.fail(KeError::Tls {
                        server: self.server.clone(),
                        reason,
                    });
                    return;
                }
            }
            if let Err(e) = self.conn.process_new_packets() {
                let err = self.tls_error(e);
                self.fail(err);
                return;
            }
            self.progress();
        }
    }

    /// Input: call when the peer has closed the connection.
    pub fn receive_eof(&mut self) {
        if !self.finished {
            self.fail(KeError::ConnectionClosed {
                server: self.server.clone(),
            });
        }
    }

    fn tls_error(&self, e: rustls::Error) -> KeError {
        let server = self.server.clone();
        match e {
            rustls::Error::InvalidCertificate(reason) => KeError::UntrustedCertificate {
                server,
                reason: certificate_reason(&reason),
            },
            rustls::Error::AlertReceived(alert) => KeError::TlsAlert {
                server,
                alert: format!("{alert:?}"),
            },
            rustls::Error::NoApplicationProtocol => KeError::NotNtsKe { server },
            other => KeError::Tls {
                server,
                reason: other.to_string(),
            },
        }
    }

    fn fail(&mut self, e: KeError) {
        self.finished = true;
        self.result = Some(Err(e));
    }

    /// Moves the exchange forward after new TLS data was processed.
    fn progress(&mut self) {
        if self.finished || self.conn.is_handshaking() {
            return;
        }
        if !self.request_sent {
            let tls13 = self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            if !tls13 || self.conn.alpn_protocol() != Some(ALPN_NTSKE) {
                self.fail(KeError::NotNtsKe {
                    server: self.server.clone(),
                });
                self.conn.send_close_notify();
                return;
            }
            let mut wire = Vec::new();
            self.request.emit(&mut wire);
            // The writer buffers in memory; it fails only on a closed session.
            if self.conn.writer().write_all(&wire).is_err() {
                self.fail(KeError::ConnectionClosed {
                    server: self.server.clone(),
                });
                return;
            }
            self.request_sent = true;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => {
                    // close_notify before End of Message.
                    self.receive_eof();
                    return;
                }
                Ok(n) => {
                    if let Err(e) = self.reader.push(&buf[..n]) {
                        self.fail(KeError::Malformed {
                            server: self.server.clone(),
                            reason: e.to_string(),
                        });
                        return;
                    }
                    if self.take_records() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.receive_eof();
                    return;
                }
            }
        }
    }

    /// Takes complete records from the reader; true once the exchange has ended.
    fn take_records(&mut self) -> bool {
        loop {
            match self.reader.next_record() {
                Ok(Some(Record::EndOfMessage)) => {
                    self.records.push(Record::EndOfMessage);
                    self.finish();
                    return true;
                }
                Ok(Some(r)) => self.records.push(r),
                Ok(None) => return false,
                Err(e) => {
                    self.fail(KeError::Malformed {
                        server: self.server.clone(),
                        reason: e.to_string(),
                    });
                    return true;
                }
            }
        }
    }

    /// Checks the complete response and exports the keys.
    fn finish(&mut self) {
        let server = self.server.clone();
        let result = KeResponse::from_records(&self.records, &self.request.aeads)
            .map_err(|e| match e {
                ResponseError::Error(code) => KeError::ServerError {
                    server: server.clone(),
                    code,
                },
                ResponseError::NoCommonAead => KeError::NoCommonAead {
                    server: server.clone(),
                },
                ResponseError::NoCommonProtocol => KeError::NoCommonProtocol {
                    server: server.clone(),
                },
                ResponseError::NoCookies => KeError::NoCookies {
                    server: server.clone(),
                },
                other @ (ResponseError::Warning(_) | ResponseError::Malformed(_)) => {
                    KeError::Malformed {
                        server: server.clone(),
                        reason: other.to_string(),
                    }
                }
            })
            .and_then(|resp| {
                // from_records accepted only an offered id, and only implemented ids are offered.
                let aead = resp.aead.and_then(AeadAlgorithm::from_id).ok_or_else(|| {
                    KeError::NoCommonAead {
                        server: server.clone(),
                    }
                })?;
                let protocol = resp.protocol.unwrap_or(super::records::NEXT_PROTOCOL_NTPV4);
                let keys = export_keys(&*self.conn, protocol, aead).map_err(|e| KeError::Tls {
                    server: server.clone(),
                    reason: e.to_string(),
                })?;
                Ok(KeOutcome {
                    keys,
                    cookies: resp.cookies,
                    server: resp.server,
                    port: resp.port,
                })
            });
        self.finished = true;
        self.result = Some(result);
        self.conn.send_close_notify();
    }
}

/// What the certificate verifier objected to, in words.
fn certificate_reason(e: &rustls::CertificateError) -> String {
    let text = e.to_string();
    // webpki refuses a CA certificate (basic constraints CA:TRUE) presented as the server's
    // own; `openssl req -x509` makes such self-signed certificates by default.
    if text.contains("CaUsedAsEndEntity") {
        return "the server presents a CA certificate (basic constraints CA:TRUE) as its own; \
                give the server a certificate without CA:TRUE"
            .to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ke::testutil::*;
    use crate::ke::{KeServer, KeServerError, KeServerSettings, EXPORTER_LABEL};

    fn settings() -> KeServerSettings {
        KeServerSettings {
            server: Some("ntp.ke.test".into()),
            port: Some(1123),
        }
    }

    #[test]
    fn full_exchange_gives_both_sides_the_same_keys_and_eight_cookies() {
        let p = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        let mut server = KeServer::new(server_cfg(&p), settings()).unwrap();
        let mut seen = Vec::new();
        pump(
            &mut client,
            &mut server,
            &mut cookie_maker(&mut seen),
            usize::MAX,
        );

        let out = client
            .outcome()
            .expect("client finished")
            .expect("exchange succeeded");
        assert!(client.is_finished() && client.outcome().is_none());
        assert_eq!(out.cookies, vec![vec![0xc0; 100]; 8]);
        assert_eq!(out.server.as_deref(), Some("ntp.ke.test"));
        assert_eq!(out.port, Some(1123));
        assert_eq!(out.keys.aead, AeadAlgorithm::AesSivCmac256);
        assert_eq!(out.keys.c2s.len(), 32);
        assert_ne!(out.keys.c2s, out.keys.s2c);
        assert_eq!(seen.len(), 8);
        assert!(
            seen.iter().all(|k| *k == out.keys),
            "server and client keys differ"
        );
        assert_eq!(
            server.outcome(),
            Some(Ok(crate::ke::KeServed {
                aead: AeadAlgorithm::AesSivCmac256,
                cookies: 8
            }))
        );

        // The keys are RFC 8915 §5.1's exporter output, computed here without export_keys.
        let direct = |ctx: [u8; 5]| {
            client
                .conn
                .export_keying_material(vec![0u8; 32], EXPORTER_LABEL, Some(&ctx))
                .unwrap()
        };
        assert_eq!(out.keys.c2s, direct([0, 0, 0, 15, 0]));
        assert_eq!(out.keys.s2c, direct([0, 0, 0, 15, 1]));
    }

    #[test]
    fn one_byte_at_a_time_works_the_same() {
        let p = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let mut seen = Vec::new();
        pump(&mut client, &mut server, &mut cookie_maker(&mut seen), 1);
        let out = client.outcome().unwrap().unwrap();
        assert_eq!(out.cookies.len(), 8);
        assert_eq!((out.server, out.port), (None, None));
        assert_eq!(seen[0], out.keys);
    }

    #[test]
    fn a_server_signed_by_another_ca_is_not_trusted() {
        let p = pki("ke.test");
        let other = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&other.ca), "ke.test").unwrap();
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let mut seen = Vec::new();
        pump(
            &mut client,
            &mut server,
            &mut cookie_maker(&mut seen),
            usize::MAX,
        );
        let err = client.outcome().unwrap().unwrap_err();
        assert!(
            matches!(&err, KeError::UntrustedCertificate { server, .. } if server == "ke.test"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("ke.test") && msg.contains("CA file"), "{msg}");
        assert!(seen.is_empty());
        assert!(matches!(server.outcome(), Some(Err(KeServerError::Tls(_)))));
    }

    #[test]
    fn a_ca_certificate_as_the_servers_own_is_explained() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ke.test".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let server_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server_cfg = Arc::new(
            crate::ke::server_config(vec![der.clone()], server_key, provider(), clock()).unwrap(),
        );
        let mut client = KeClient::new(client_cfg(&der), "ke.test").unwrap();
        let mut server = KeServer::new(server_cfg, KeServerSettings::default()).unwrap();
        let mut seen = Vec::new();
        pump(
            &mut client,
            &mut server,
            &mut cookie_maker(&mut seen),
            usize::MAX,
        );
        match client.outcome().unwrap().unwrap_err() {
            KeError::UntrustedCertificate { reason, .. } => {
                assert!(reason.contains("CA:TRUE"), "{reason}")
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_certificate_for_another_name_is_not_trusted() {
        let p = pki("other.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        pump(
            &mut client,
            &mut server,
            &mut |_: &NtsKeys| vec![1],
            usize::MAX,
        );
        assert!(matches!(
            client.outcome(),
            Some(Err(KeError::UntrustedCertificate { .. }))
        ));
    }

    #[test]
    fn no_common_aead_is_reported_on_both_sides() {
        let p = pki("ke.test");
        let request = KeRequest {
            aeads: vec![30, 31],
            ..KeRequest::ntpv4()
        };
        let mut client = KeClient::with_request(client_cfg(&p.ca), "ke.test", request).unwrap();
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let mut seen = Vec::new();
        pump(
            &mut client,
            &mut server,
            &mut cookie_maker(&mut seen),
            usize::MAX,
        );
        assert_eq!(
            client.outcome(),
            Some(Err(KeError::NoCommonAead {
                server: "ke.test".into()
            }))
        );
        assert_eq!(
            server.outcome(),
            Some(Err(KeServerError::NoCommonAead(vec![30, 31])))
        );
        assert!(seen.is_empty(), "no cookies without keys");
    }

    #[test]
    fn a_bad_request_comes_back_as_a_server_error() {
        let p = pki("ke.test");
        let request = KeRequest {
            protocols: vec![],
            ..KeRequest::ntpv4()
        };
        let mut client = KeClient::with_request(client_cfg(&p.ca), "ke.test", request).unwrap();
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        pump(
            &mut client,
            &mut server,
            &mut |_: &NtsKeys| vec![1],
            usize::MAX,
        );
        assert_eq!(
            client.outcome(),
            Some(Err(KeError::ServerError {
                server: "ke.test".into(),
                code: crate::ke::ErrorCode::BadRequest
            }))
        );
    }

    fn server_with_alpn(p: &Pki, alpn: Vec<Vec<u8>>) -> KeServer {
        let mut cfg = (*server_cfg(p)).clone();
        cfg.alpn_protocols = alpn;
        KeServer::new(std::sync::Arc::new(cfg), KeServerSettings::default()).unwrap()
    }

    #[test]
    fn a_server_without_alpn_is_not_nts_ke() {
        let p = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        let mut server = server_with_alpn(&p, vec![]);
        let mut seen = Vec::new();
        pump(
            &mut client,
            &mut server,
            &mut cookie_maker(&mut seen),
            usize::MAX,
        );
        let err = client.outcome().unwrap().unwrap_err();
        assert_eq!(
            err,
            KeError::NotNtsKe {
                server: "ke.test".into()
            }
        );
        assert!(err.to_string().contains("host and port"), "{err}");
        assert!(seen.is_empty(), "the request was never sent");
    }

    #[test]
    fn a_server_with_another_alpn_ends_with_an_alert() {
        let p = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        let mut server = server_with_alpn(&p, vec![b"http/1.1".to_vec()]);
        pump(
            &mut client,
            &mut server,
            &mut |_: &NtsKeys| vec![1],
            usize::MAX,
        );
        let err = client.outcome().unwrap().unwrap_err();
        assert!(
            matches!(&err, KeError::TlsAlert { alert, .. } if alert.contains("NoApplicationProtocol")),
            "{err:?}"
        );
    }

    #[test]
    fn a_connection_closed_early_is_reported() {
        let p = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        let mut out = Vec::new();
        client.transmit(&mut out);
        assert!(!out.is_empty(), "ClientHello is ready at once");
        client.receive_eof();
        assert!(matches!(
            client.outcome(),
            Some(Err(KeError::ConnectionClosed { .. }))
        ));
    }

    #[test]
    fn garbage_from_the_server_is_a_tls_error() {
        let p = pki("ke.test");
        let mut client = KeClient::new(client_cfg(&p.ca), "ke.test").unwrap();
        client.receive(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert!(matches!(client.outcome(), Some(Err(KeError::Tls { .. }))));
    }

    #[test]
    fn invalid_server_names_are_refused() {
        let p = pki("ke.test");
        assert!(matches!(
            KeClient::new(client_cfg(&p.ca), "bad name!"),
            Err(KeError::InvalidServerName { .. })
        ));
    }
}
