//! The NTS-KE server: a TLS 1.3 session driven through buffers that reads one request,
//! answers it and closes.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use super::records::{
    ErrorCode, KeRequest, KeResponse, Record, RecordReader, RequestError, NEXT_PROTOCOL_NTPV4,
};
use super::{export_keys, ALPN_NTSKE};
use crate::{AeadAlgorithm, NtsKeys};

/// Cookies handed out per successful exchange (RFC 8915 §4 suggests eight).
pub const COOKIES_PER_RESPONSE: usize = 8;

/// What the server announces besides keys and cookies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeServerSettings {
    /// NTP server clients should query, when it is not this host.
    pub server: Option<String>,
    /// NTP port clients should query, when it is not 123.
    pub port: Option<u16>,
}

/// A request answered with keys and cookies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeServed {
    /// The AEAD algorithm chosen.
    pub aead: AeadAlgorithm,
    /// How many cookies were sent.
    pub cookies: usize,
}

/// Why a server session ended without handing out keys.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeServerError {
    /// The TLS session failed (for example a client without TLS 1.3 or with a wrong ALPN).
    #[error("NTS-KE TLS session failed: {0}")]
    Tls(String),
    /// The client completed TLS without ALPN `ntske/1`; the session was closed unanswered.
    #[error(
        "NTS-KE client did not negotiate ALPN ntske/1 over TLS 1.3: it is not an NTS-KE client"
    )]
    NotNtsKe,
    /// The request was refused with an Error record.
    #[error("refused NTS-KE request: {0}")]
    BadRequest(RequestError),
    /// The client offers NTPv4 with no AEAD algorithm this server implements; it was told so
    /// with an empty AEAD record.
    #[error("NTS-KE client offers no AEAD algorithm this server implements (offered {0:?})")]
    NoCommonAead(Vec<u16>),
    /// The client does not offer NTPv4; it was told so with an empty Next Protocol record.
    #[error("NTS-KE client does not offer NTPv4 (offered {0:?})")]
    NoCommonProtocol(Vec<u16>),
    /// The keys could not be exported; the client was sent Internal Server Error.
    #[error("NTS-KE key export failed: {0}")]
    Export(String),
    /// The connection ended before the request was complete.
    #[error("NTS-KE client closed the connection before its request was complete")]
    ConnectionClosed,
}

/// An NTS-KE server session for one accepted connection, driven by the caller through
/// buffers.
///
/// Call contract:
/// 1. [`new`](Self::new) with a configuration from [`super::server_config`].
/// 2. Loop:
///    - input: [`receive`](Self::receive) with the bytes read from the connection, and the
///      cookie maker that is called once per cookie with the exported keys, or
///      [`receive_eof`](Self::receive_eof) when the peer closed it;
///    - output: [`transmit`](Self::transmit) appends bytes to send; send all of them;
///    - output: [`outcome`](Self::outcome) returns the result once; after it, call
///      `transmit` once more and close the connection.
///
/// The driver owns the timeout and the limit on concurrent sessions.
#[derive(Debug)]
pub struct KeServer {
    conn: ServerConnection,
    settings: KeServerSettings,
    reader: RecordReader,
    records: Vec<Record>,
    result: Option<Result<KeServed, KeServerError>>,
    finished: bool,
}

impl KeServer {
    /// Call once per accepted connection.
    pub fn new(
        config: Arc<ServerConfig>,
        settings: KeServerSettings,
    ) -> Result<KeServer, KeServerError> {
        let conn = ServerConnection::new(config).map_err(|e| KeServerError::Tls(e.to_string()))?;
        Ok(KeServer {
            conn,
            settings,
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

    /// Output: the result, returned once when the session has ended; `None` while it runs.
    pub fn outcome(&mut self) -> Option<Result<KeServed, KeServerError>> {
        self.result.take()
    }

    /// Whether the session has ended (its outcome may already have been taken).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Input: call with each piece of bytes read from the connection; `make_cookie` is called
    /// [`COOKIES_PER_RESPONSE`] times with the keys once the request is complete.
    pub fn receive(&mut self, mut bytes: &[u8], make_cookie: &mut dyn FnMut(&NtsKeys) -> Vec<u8>) {
        while !bytes.is_empty() && !self.finished {
            match self.conn.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.fail(KeServerError::Tls(e.to_string()));
                    return;
                }
            }
            if let Err(e) = self.conn.process_new_packets() {
                self.fail(KeServerError::Tls(e.to_string()));
                return;
            }
            self.progress(make_cookie);
        }
    }

    /// Input: call when the peer has closed the connection.
    pub fn receive_eof(&mut self) {
        if !self.finished {
            self.fail(KeServerError::ConnectionClosed);
        }
    }

    fn fail(&mut self, e: KeServerError) {
        self.finished = true;
        self.result = Some(Err(e));
    }

    fn progress(&mut self, make_cookie: &mut dyn FnMut(&NtsKeys) -> Vec<u8>) {
        if self.finished || self.conn.is_handshaking() {
            return;
        }
        // rustls refuses a client whose ALPN list lacks ntske/1, but lets one without ALPN
        // through, so that case is caught here.
        let tls13 = self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        if !tls13 || self.conn.alpn_protocol() != Some(ALPN_NTSKE) {
            self.fail(KeServerError::NotNtsKe);
            self.conn.send_close_notify();
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => {
                    self.receive_eof();
                    return;
                }
                Ok(n) => {
                    if let Err(e) = self.reader.push(&buf[..n]) {
                        self.refuse(RequestError::BadRequest(record_problem(&e)));
                        return;
                    }
                    loop {
                        match self.reader.next_record() {
                            Ok(Some(Record::EndOfMessage)) => {
                                self.records.push(Record::EndOfMessage);
                                self.answer(make_cookie);
                                return;
                            }
                            Ok(Some(r)) => self.records.push(r),
                            Ok(None) => break,
                            Err(e) => {
                                self.refuse(RequestError::BadRequest(record_problem(&e)));
                                return;
                            }
                        }
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

    /// Sends `response` followed by close_notify and ends the session with `result`.
    fn send(&mut self, response: &[u8], result: Result<KeServed, KeServerError>) {
        // The writer buffers in memory; a failure means the session is already closed, and
        // the result says why the exchange ended either way.
        let _ = self.conn.writer().write_all(response);
        self.conn.send_close_notify();
        self.finished = true;
        self.result = Some(result);
    }

    fn refuse(&mut self, why: RequestError) {
        let mut wire = Vec::new();
        super::records::emit_message(&[Record::Error(why.code())], &mut wire);
        self.send(&wire, Err(KeServerError::BadRequest(why)));
    }

    fn answer(&mut self, make_cookie: &mut dyn FnMut(&NtsKeys) -> Vec<u8>) {
        let request = match KeRequest::from_records(&self.records) {
            Ok(r) => r,
            Err(e) => return self.refuse(e),
        };
        let mut wire = Vec::new();
        if !request.protocols.contains(&NEXT_PROTOCOL_NTPV4) {
            KeResponse::default().emit(&mut wire);
            return self.send(
                &wire,
                Err(KeServerError::NoCommonProtocol(request.protocols)),
            );
        }
        let Some(aead) = request
            .aeads
            .iter()
            .find_map(|&id| AeadAlgorithm::from_id(id))
        else {
            KeResponse {
                protocol: Some(NEXT_PROTOCOL_NTPV4),
                ..KeResponse::default()
            }
            .emit(&mut wire);
            return self.send(&wire, Err(KeServerError::NoCommonAead(request.aeads)));
        };
        let keys = match export_keys(&*self.conn, NEXT_PROTOCOL_NTPV4, aead) {
            Ok(k) => k,
            Err(e) => {
                super::records::emit_message(
                    &[Record::Error(ErrorCode::InternalServerError)],
                    &mut wire,
                );
                return self.send(&wire, Err(KeServerError::Export(e.to_string())));
            }
        };
        let cookies: Vec<Vec<u8>> = (0..COOKIES_PER_RESPONSE)
            .map(|_| make_cookie(&keys))
            .collect();
        KeResponse {
            protocol: Some(NEXT_PROTOCOL_NTPV4),
            aead: Some(aead.id()),
            cookies,
            server: self.settings.server.clone(),
            port: self.settings.port,
        }
        .emit(&mut wire);
        self.send(
            &wire,
            Ok(KeServed {
                aead,
                cookies: COOKIES_PER_RESPONSE,
            }),
        );
    }
}

fn record_problem(e: &super::RecordError) -> &'static str {
    match e {
        super::RecordError::MessageTooLong { .. } => "request too long",
        super::RecordError::BadLength { .. } => "record body of the wrong length",
        super::RecordError::BadServerName => "server name not in ASCII",
        super::RecordError::Truncated { .. } => "record cut off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ke::records::parse_records;
    use crate::ke::testutil::*;
    use rustls::version::{TLS12, TLS13};

    fn request_bytes(records: &[Record]) -> Vec<u8> {
        let mut v = Vec::new();
        for r in records {
            r.emit(&mut v);
        }
        v
    }

    #[test]
    fn a_tls12_client_is_refused() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS12], &[ALPN_NTSKE]);
        let (plain, err) = raw_exchange(cfg, b"", &mut server);
        assert!(plain.is_empty());
        assert!(
            matches!(err, Some(rustls::Error::AlertReceived(_))),
            "{err:?}"
        );
        assert!(matches!(server.outcome(), Some(Err(KeServerError::Tls(_)))));
    }

    #[test]
    fn a_client_with_a_wrong_alpn_is_refused() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS13], &[b"http/1.1"]);
        let (plain, err) = raw_exchange(cfg, b"", &mut server);
        assert!(plain.is_empty());
        assert!(err.is_some());
        assert!(matches!(server.outcome(), Some(Err(KeServerError::Tls(_)))));
    }

    #[test]
    fn a_client_without_alpn_gets_no_answer() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS13], &[]);
        let mut req = Vec::new();
        KeRequest::ntpv4().emit(&mut req);
        let (plain, _) = raw_exchange(cfg, &req, &mut server);
        assert!(
            plain.is_empty(),
            "no records for a client that is not NTS-KE"
        );
        assert_eq!(server.outcome(), Some(Err(KeServerError::NotNtsKe)));
    }

    #[test]
    fn an_unknown_critical_record_gets_error_0() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS13], &[ALPN_NTSKE]);
        let req = request_bytes(&[
            Record::NextProtocol(vec![0]),
            Record::Unknown {
                critical: true,
                record_type: 0x1234,
                body: vec![1, 2],
            },
            Record::AeadAlgorithm(vec![15]),
            Record::EndOfMessage,
        ]);
        let (plain, err) = raw_exchange(cfg, &req, &mut server);
        assert_eq!(err, None);
        assert_eq!(
            parse_records(&plain).unwrap(),
            [
                Record::Error(ErrorCode::UnrecognizedCriticalRecord),
                Record::EndOfMessage
            ]
        );
        assert_eq!(
            server.outcome(),
            Some(Err(KeServerError::BadRequest(
                RequestError::UnrecognizedCritical(0x1234)
            )))
        );
    }

    #[test]
    fn an_unknown_non_critical_record_is_ignored() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS13], &[ALPN_NTSKE]);
        let req = request_bytes(&[
            Record::NextProtocol(vec![0]),
            Record::Unknown {
                critical: false,
                record_type: 0x1234,
                body: vec![1, 2],
            },
            Record::AeadAlgorithm(vec![30, 15]),
            Record::EndOfMessage,
        ]);
        let (plain, _) = raw_exchange(cfg, &req, &mut server);
        let resp = KeResponse::from_records(&parse_records(&plain).unwrap(), &[15]).unwrap();
        assert_eq!(resp.aead, Some(15));
        assert_eq!(resp.cookies.len(), COOKIES_PER_RESPONSE);
    }

    #[test]
    fn a_record_of_the_wrong_length_gets_bad_request() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS13], &[ALPN_NTSKE]);
        // An End of Message record with a one-byte body.
        let (plain, _) = raw_exchange(cfg, &[0x80, 0, 0, 1, 0], &mut server);
        assert_eq!(
            parse_records(&plain).unwrap(),
            [Record::Error(ErrorCode::BadRequest), Record::EndOfMessage]
        );
    }

    #[test]
    fn a_client_without_ntpv4_gets_an_empty_next_protocol() {
        let p = pki("ke.test");
        let mut server = KeServer::new(server_cfg(&p), KeServerSettings::default()).unwrap();
        let cfg = raw_client_config(&p.ca, &[&TLS13], &[ALPN_NTSKE]);
        let req = request_bytes(&[
            Record::NextProtocol(vec![7]),
            Record::AeadAlgorithm(vec![15]),
            Record::EndOfMessage,
        ]);
        let (plain, _) = raw_exchange(cfg, &req, &mut server);
        let recs = parse_records(&plain).unwrap();
        assert_eq!(recs[0], Record::NextProtocol(vec![]));
        assert_eq!(
            server.outcome(),
            Some(Err(KeServerError::NoCommonProtocol(vec![7])))
        );
    }
}
