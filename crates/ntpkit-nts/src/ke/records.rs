//! NTS-KE records (RFC 8915 §4): their wire codec, an incremental reader, and the checks a
//! request and a response must pass.
//!
//! A record is a critical bit, a 15-bit type, a 16-bit body length and the body. A message is a
//! sequence of records closed by End of Message.

/// Largest NTS-KE message the reader buffers; a peer sending more is refused.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Next-protocol id of NTPv4, the only protocol NTS-KE negotiates here.
pub const NEXT_PROTOCOL_NTPV4: u16 = 0;

/// Record type numbers (IANA "Network Time Security Key Establishment Record Types").
pub mod record_type {
    /// End of Message.
    pub const END_OF_MESSAGE: u16 = 0;
    /// NTS Next Protocol Negotiation.
    pub const NEXT_PROTOCOL: u16 = 1;
    /// Error.
    pub const ERROR: u16 = 2;
    /// Warning.
    pub const WARNING: u16 = 3;
    /// AEAD Algorithm Negotiation.
    pub const AEAD_ALGORITHM: u16 = 4;
    /// New Cookie for NTPv4.
    pub const NEW_COOKIE: u16 = 5;
    /// NTPv4 Server Negotiation.
    pub const SERVER: u16 = 6;
    /// NTPv4 Port Negotiation.
    pub const PORT: u16 = 7;
}

const CRITICAL_BIT: u16 = 0x8000;

/// Codes of the Error record (RFC 8915 §4.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: the request had a critical record the server does not understand.
    UnrecognizedCriticalRecord,
    /// 1: the request was malformed or incomplete.
    BadRequest,
    /// 2: the server failed internally.
    InternalServerError,
    /// Any code not registered when this was written.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub const fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnrecognizedCriticalRecord => 0,
            ErrorCode::BadRequest => 1,
            ErrorCode::InternalServerError => 2,
            ErrorCode::Other(c) => c,
        }
    }

    /// The code with wire number `code`.
    pub const fn from_u16(code: u16) -> ErrorCode {
        match code {
            0 => ErrorCode::UnrecognizedCriticalRecord,
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::InternalServerError,
            c => ErrorCode::Other(c),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::UnrecognizedCriticalRecord => {
                f.write_str("unrecognized critical record (0)")
            }
            ErrorCode::BadRequest => f.write_str("bad request (1)"),
            ErrorCode::InternalServerError => f.write_str("internal server error (2)"),
            ErrorCode::Other(c) => write!(f, "unregistered error code {c}"),
        }
    }
}

/// One NTS-KE record, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// End of Message (type 0): closes a request or a response.
    EndOfMessage,
    /// NTS Next Protocol Negotiation (type 1): protocol ids, [`NEXT_PROTOCOL_NTPV4`] for NTPv4.
    NextProtocol(Vec<u16>),
    /// Error (type 2).
    Error(ErrorCode),
    /// Warning (type 3).
    Warning(u16),
    /// AEAD Algorithm Negotiation (type 4): registry ids of AEAD algorithms.
    AeadAlgorithm(Vec<u16>),
    /// New Cookie for NTPv4 (type 5): opaque to the client.
    NewCookie(Vec<u8>),
    /// NTPv4 Server Negotiation (type 6): host name or IP literal, in ASCII.
    Server(String),
    /// NTPv4 Port Negotiation (type 7).
    Port(u16),
    /// A record type this crate does not know, kept as received.
    Unknown {
        /// Whether the sender marked it critical: a receiver that does not understand a
        /// critical record must refuse the whole message.
        critical: bool,
        /// Record type (15 bits).
        record_type: u16,
        /// Raw body.
        body: Vec<u8>,
    },
}

/// Why bytes could not be read as NTS-KE records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The peer sent more than [`MAX_MESSAGE_LEN`] bytes without ending its message.
    #[error("NTS-KE message longer than {limit} bytes: the peer is not speaking NTS-KE or is misbehaving")]
    MessageTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A record's body length does not fit its type.
    #[error("NTS-KE record of type {record_type} has a body of {len} bytes, which that type does not allow")]
    BadLength {
        /// The record type.
        record_type: u16,
        /// The body length received.
        len: usize,
    },
    /// A Server Negotiation record holds something other than printable ASCII.
    #[error("NTS-KE server negotiation record is not a printable ASCII host name")]
    BadServerName,
    /// The byte stream ended in the middle of a record.
    #[error("NTS-KE message cut off in the middle of a record ({pending} bytes pending)")]
    Truncated {
        /// Bytes of the incomplete record that were received.
        pending: usize,
    },
}

impl Record {
    /// The record's type number.
    pub fn record_type(&self) -> u16 {
        use record_type::*;
        match self {
            Record::EndOfMessage => END_OF_MESSAGE,
            Record::NextProtocol(_) => NEXT_PROTOCOL,
            Record::Error(_) => ERROR,
            Record::Warning(_) => WARNING,
            Record::AeadAlgorithm(_) => AEAD_ALGORITHM,
            Record::NewCookie(_) => NEW_COOKIE,
            Record::Server(_) => SERVER,
            Record::Port(_) => PORT,
            Record::Unknown { record_type, .. } => *record_type & !CRITICAL_BIT,
        }
    }

    /// Whether the record is sent with the critical bit: as RFC 8915 §4.1 requires for the
    /// types that must be understood, and never for New Cookie, which must not carry it.
    pub fn is_critical(&self) -> bool {
        match self {
            Record::NewCookie(_) | Record::Server(_) | Record::Port(_) => false,
            Record::Unknown { critical, .. } => *critical,
            _ => true,
        }
    }

    /// Call to append the record's wire form to `out`.
    ///
    /// Bodies longer than 65535 bytes cannot be encoded; they are cut to that length, which
    /// only a caller building absurd cookies or lists could cause.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut head = self.record_type();
        if self.is_critical() {
            head |= CRITICAL_BIT;
        }
        out.extend_from_slice(&head.to_be_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let body_at = out.len();
        match self {
            Record::EndOfMessage => {}
            Record::NextProtocol(ids) | Record::AeadAlgorithm(ids) => {
                for id in ids.iter().take(usize::from(u16::MAX) / 2) {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Record::Error(code) => out.extend_from_slice(&code.to_u16().to_be_bytes()),
            Record::Warning(code) | Record::Port(code) => {
                out.extend_from_slice(&code.to_be_bytes())
            }
            Record::NewCookie(body) | Record::Unknown { body, .. } => {
                out.extend_from_slice(&body[..body.len().min(usize::from(u16::MAX))])
            }
            Record::Server(name) => {
                let b = name.as_bytes();
                out.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))])
            }
        }
        // The body was capped above, so its length fits in 16 bits.
        let len = u16::try_from(out.len() - body_at).unwrap_or(u16::MAX);
        out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// Call to decode one record from its header word (critical bit and type) and body.
    pub fn decode(head: u16, body: &[u8]) -> Result<Record, RecordError> {
        use record_type::*;
        let critical = head & CRITICAL_BIT != 0;
        let rtype = head & !CRITICAL_BIT;
        let bad = || RecordError::BadLength {
            record_type: rtype,
            len: body.len(),
        };
        let u16_body = || match body {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(bad()),
        };
        let u16_list = || {
            if body.len() % 2 != 0 {
                return Err(bad());
            }
            Ok(body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect::<Vec<u16>>())
        };
        Ok(match rtype {
            END_OF_MESSAGE if body.is_empty() => Record::EndOfMessage,
            END_OF_MESSAGE => return Err(bad()),
            NEXT_PROTOCOL => Record::NextProtocol(u16_list()?),
            ERROR => Record::Error(ErrorCode::from_u16(u16_body()?)),
            WARNING => Record::Warning(u16_body()?),
            AEAD_ALGORITHM => Record::AeadAlgorithm(u16_list()?),
            NEW_COOKIE => Record::NewCookie(body.to_vec()),
            SERVER => {
                if !body.iter().all(|b| b.is_ascii_graphic()) {
                    return Err(RecordError::BadServerName);
                }
                // All bytes are ASCII, so this conversion cannot fail.
                Record::Server(String::from_utf8_lossy(body).into_owned())
            }
            PORT => Record::Port(u16_body()?),
            _ => Record::Unknown {
                critical,
                record_type: rtype,
                body: body.to_vec(),
            },
        })
    }
}

/// Call to append a whole message (`records` followed by End of Message) to `out`.
pub fn emit_message(records: &[Record], out: &mut Vec<u8>) {
    for r in records {
        r.emit(out);
    }
    Record::EndOfMessage.emit(out);
}

/// Reassembles records from bytes that arrive in arbitrary pieces, as a TLS stream delivers
/// them. It holds at most one message of [`MAX_MESSAGE_LEN`] bytes.
#[derive(Debug, Default, Clone)]
pub struct RecordReader {
    buf: Vec<u8>,
    pos: usize,
    received: usize,
}

impl RecordReader {
    /// Call once per message to get an empty reader.
    pub fn new() -> RecordReader {
        RecordReader::default()
    }

    /// Call with each piece of the stream as it arrives; refuses a message that grows past
    /// [`MAX_MESSAGE_LEN`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let total = self.received.saturating_add(bytes.len());
        if total > MAX_MESSAGE_LEN {
            return Err(RecordError::MessageTooLong {
                limit: MAX_MESSAGE_LEN,
            });
        }
        self.received = total;
        // Drop consumed bytes before growing, so the buffer never holds more than one message.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Call after [`push`](Self::push), repeatedly, to take each complete record; `Ok(None)`
    /// means more bytes are needed.
    pub fn next_record(&mut self) -> Result<Option<Record>, RecordError> {
        let rest = &self.buf[self.pos..];
        let (Some(head), Some(len)) = (rest.get(0..2), rest.get(2..4)) else {
            return Ok(None);
        };
        let head = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let Some(body) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let record = Record::decode(head, body)?;
        self.pos += 4 + len;
        Ok(Some(record))
    }

    /// Bytes received but not yet returned as a record.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Call when the stream has ended: fails if a record was cut off.
    pub fn finish(&self) -> Result<(), RecordError> {
        match self.pending() {
            0 => Ok(()),
            pending => Err(RecordError::Truncated { pending }),
        }
    }
}

/// Call to decode a complete byte string into records (all of them, End of Message included).
pub fn parse_records(bytes: &[u8]) -> Result<Vec<Record>, RecordError> {
    let mut reader = RecordReader::new();
    reader.push(bytes)?;
    let mut out = Vec::new();
    while let Some(r) = reader.next_record()? {
        out.push(r);
    }
    reader.finish()?;
    Ok(out)
}

/// What a client asks for (RFC 8915 §4: Next Protocol, AEAD list, optional server and port
/// preferences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeRequest {
    /// Next-protocol ids offered, in order of preference.
    pub protocols: Vec<u16>,
    /// AEAD registry ids offered, in order of preference.
    pub aeads: Vec<u16>,
    /// The NTP server the client would like (a hint the server may ignore).
    pub server: Option<String>,
    /// The NTP port the client would like (a hint the server may ignore).
    pub port: Option<u16>,
}

/// Why a server refuses a request; its [`code`](RequestError::code) goes into the Error
/// record of the answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request holds a critical record of an unknown type.
    #[error("NTS-KE request has a critical record of unknown type {0}")]
    UnrecognizedCritical(u16),
    /// The request breaks RFC 8915 §4 in the way described.
    #[error("bad NTS-KE request: {0}")]
    BadRequest(&'static str),
}

impl RequestError {
    /// The Error record code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::UnrecognizedCritical(_) => ErrorCode::UnrecognizedCriticalRecord,
            RequestError::BadRequest(_) => ErrorCode::BadRequest,
        }
    }
}

impl KeRequest {
    /// The request an NTPv4 client sends, offering every AEAD this crate implements.
    pub fn ntpv4() -> KeRequest {
        KeRequest {
            protocols: vec![NEXT_PROTOCOL_NTPV4],
            aeads: crate::AeadAlgorithm::ALL.iter().map(|a| a.id()).collect(),
            server: None,
            port: None,
        }
    }

    /// Call to append the request's wire form, End of Message included, to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut records = vec![
            Record::NextProtocol(self.protocols.clone()),
            Record::AeadAlgorithm(self.aeads.clone()),
        ];
        records.extend(self.server.clone().map(Record::Server));
        records.extend(self.port.map(Record::Port));
        emit_message(&records, out);
    }

    /// Call on a server with the records of a complete request (End of Message last) to check
    /// them against RFC 8915 §4.
    pub fn from_records(records: &[Record]) -> Result<KeRequest, RequestError> {
        // An unknown critical record is answered with its own code before any other check.
        for r in records {
            if let Record::Unknown {
                critical: true,
                record_type,
                ..
            } = r
            {
                return Err(RequestError::UnrecognizedCritical(*record_type));
            }
        }
        let mut protocols = None;
        let mut aeads = None;
        let mut server = None;
        let mut port = None;
        let mut ended = false;
        for r in records {
            if ended {
                return Err(RequestError::BadRequest("records after End of Message"));
            }
            match r {
                Record::EndOfMessage => ended = true,
                Record::NextProtocol(ids) => {
                    if protocols.replace(ids.clone()).is_some() {
                        return Err(RequestError::BadRequest(
                            "more than one Next Protocol record",
                        ));
                    }
                }
                Record::AeadAlgorithm(ids) => {
                    if aeads.replace(ids.clone()).is_some() {
                        return Err(RequestError::BadRequest("more than one AEAD record"));
                    }
                }
                Record::Error(_) | Record::Warning(_) => {
                    return Err(RequestError::BadRequest(
                        "clients must not send Error or Warning",
                    ))
                }
                Record::Server(s) => server = Some(s.clone()),
                Record::Port(p) => port = Some(*p),
                // Cookies in a request mean nothing to NTS-KE, and unknown non-critical
                // records are ignored as the RFC requires.
                Record::NewCookie(_) | Record::Unknown { .. } => {}
            }
        }
        if !ended {
            return Err(RequestError::BadRequest("no End of Message"));
        }
        let Some(protocols) = protocols else {
            return Err(RequestError::BadRequest("no Next Protocol record"));
        };
        if protocols.is_empty() {
            return Err(RequestError::BadRequest("empty Next Protocol record"));
        }
        let aeads = aeads.unwrap_or_default();
        if protocols.contains(&NEXT_PROTOCOL_NTPV4) && aeads.is_empty() {
            return Err(RequestError::BadRequest(
                "NTPv4 offered without AEAD algorithms",
            ));
        }
        Ok(KeRequest {
            protocols,
            aeads,
            server,
            port,
        })
    }
}

/// What a server answers, as records carry it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeResponse {
    /// The chosen next protocol; `None` sends an empty record (no protocol in common).
    pub protocol: Option<u16>,
    /// The chosen AEAD id; `None` sends an empty record (no algorithm in common).
    pub aead: Option<u16>,
    /// Cookies for NTPv4.
    pub cookies: Vec<Vec<u8>>,
    /// The NTP server to use, when it is not the NTS-KE server itself.
    pub server: Option<String>,
    /// The NTP port to use, when it is not 123.
    pub port: Option<u16>,
}

/// Why a client refuses a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The server answered with an Error record.
    #[error("the NTS-KE server answered with an error: {0}")]
    Error(ErrorCode),
    /// The server sent a Warning; no warning codes are registered, so none can be understood
    /// and the response is discarded.
    #[error("the NTS-KE server sent warning code {0}, which this client does not understand")]
    Warning(u16),
    /// The server supports none of the offered next protocols.
    #[error("the NTS-KE server supports no protocol offered (NTPv4)")]
    NoCommonProtocol,
    /// The server supports none of the offered AEAD algorithms.
    #[error("the NTS-KE server supports none of the AEAD algorithms offered")]
    NoCommonAead,
    /// The response holds no cookie.
    #[error("the NTS-KE server sent no cookies")]
    NoCookies,
    /// The response breaks RFC 8915 §4 in the way described.
    #[error("malformed NTS-KE response: {0}")]
    Malformed(&'static str),
}

impl KeResponse {
    /// Call on a server to append the response's wire form, End of Message included, to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut records = vec![
            Record::NextProtocol(self.protocol.into_iter().collect()),
            Record::AeadAlgorithm(self.aead.into_iter().collect()),
        ];
        records.extend(self.cookies.iter().cloned().map(Record::NewCookie));
        records.extend(self.server.clone().map(Record::Server));
        records.extend(self.port.map(Record::Port));
        emit_message(&records, out);
    }

    /// Call on a client with the records of a complete response (End of Message last) and
    /// the AEAD ids it offered, to check them against RFC 8915 §4.
    pub fn from_records(
        records: &[Record],
        offered_aeads: &[u16],
    ) -> Result<KeResponse, ResponseError> {
        let mut protocols: Option<&Vec<u16>> = None;
        let mut aeads: Option<&Vec<u16>> = None;
        let mut resp = KeResponse::default();
        let mut ended = false;
        // An Error record decides the outcome whatever else the response holds.
        if let Some(code) = records.iter().find_map(|r| match r {
            Record::Error(c) => Some(*c),
            _ => None,
        }) {
            return Err(ResponseError::Error(code));
        }
        for r in records {
            if ended {
                return Err(ResponseError::Malformed("records after End of Message"));
            }
            match r {
                Record::EndOfMessage => ended = true,
                Record::NextProtocol(ids) => {
                    if protocols.replace(ids).is_some() {
                        return Err(ResponseError::Malformed(
                            "more than one Next Protocol record",
                        ));
                    }
                }
                Record::AeadAlgorithm(ids) => {
                    if aeads.replace(ids).is_some() {
                        return Err(ResponseError::Malformed("more than one AEAD record"));
                    }
                }
                Record::Warning(code) => return Err(ResponseError::Warning(*code)),
                Record::NewCookie(c) => resp.cookies.push(c.clone()),
                Record::Server(s) => {
                    if resp.server.replace(s.clone()).is_some() {
                        return Err(ResponseError::Malformed("more than one Server record"));
                    }
                }
                Record::Port(p) => {
                    if resp.port.replace(*p).is_some() {
                        return Err(ResponseError::Malformed("more than one Port record"));
                    }
                }
                Record::Unknown { critical: true, .. } => {
                    return Err(ResponseError::Malformed("unknown critical record"))
                }
                Record::Unknown {
                    critical: false, ..
                } => {}
                Record::Error(_) => {}
            }
        }
        if !ended {
            return Err(ResponseError::Malformed("no End of Message"));
        }
        match protocols.map(Vec::as_slice) {
            None => return Err(ResponseError::Malformed("no Next Protocol record")),
            Some([]) => return Err(ResponseError::NoCommonProtocol),
            Some([NEXT_PROTOCOL_NTPV4]) => resp.protocol = Some(NEXT_PROTOCOL_NTPV4),
            Some(_) => {
                return Err(ResponseError::Malformed(
                    "Next Protocol other than NTPv4 alone",
                ))
            }
        }
        match aeads.map(Vec::as_slice) {
            None => return Err(ResponseError::Malformed("no AEAD record")),
            Some([]) => return Err(ResponseError::NoCommonAead),
            Some([id]) if offered_aeads.contains(id) => resp.aead = Some(*id),
            Some([_]) => {
                return Err(ResponseError::Malformed(
                    "AEAD algorithm that was not offered",
                ))
            }
            Some(_) => {
                return Err(ResponseError::Malformed(
                    "more than one AEAD algorithm chosen",
                ))
            }
        }
        if resp.cookies.is_empty() {
            return Err(ResponseError::NoCookies);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes_of(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            r.emit(&mut out);
        }
        out
    }

    #[test]
    fn request_has_the_rfc_wire_form() {
        let mut out = Vec::new();
        KeRequest::ntpv4().emit(&mut out);
        assert_eq!(
            out,
            [0x80, 1, 0, 2, 0, 0, 0x80, 4, 0, 2, 0, 15, 0x80, 0, 0, 0],
            "Next Protocol NTPv4, AEAD 15, End of Message, all critical"
        );
    }

    #[test]
    fn cookies_are_never_critical() {
        let out = bytes_of(&[Record::NewCookie(vec![1, 2, 3])]);
        assert_eq!(out, [0, 5, 0, 3, 1, 2, 3]);
    }

    #[test]
    fn wrong_body_lengths_are_typed_errors() {
        for (head, body) in [
            (0x8000u16, &[0u8][..]),
            (0x8001, &[0, 0, 0][..]),
            (0x8002, &[0][..]),
            (0x8003, &[0, 0, 0][..]),
            (0x8004, &[1][..]),
            (0x0007, &[][..]),
        ] {
            assert!(matches!(
                Record::decode(head, body),
                Err(RecordError::BadLength { .. })
            ));
        }
        assert_eq!(
            Record::decode(6, b"bad name"),
            Err(RecordError::BadServerName)
        );
    }

    #[test]
    fn oversized_messages_are_refused() {
        let mut r = RecordReader::new();
        assert!(r.push(&vec![0u8; MAX_MESSAGE_LEN]).is_ok());
        assert_eq!(
            r.push(&[0]),
            Err(RecordError::MessageTooLong {
                limit: MAX_MESSAGE_LEN
            })
        );
    }

    #[test]
    fn truncated_records_are_reported() {
        assert_eq!(
            parse_records(&[0, 5, 0, 4, 1]),
            Err(RecordError::Truncated { pending: 5 })
        );
    }

    #[test]
    fn requests_are_validated() {
        let ok = parse_records(&{
            let mut v = Vec::new();
            KeRequest::ntpv4().emit(&mut v);
            v
        })
        .unwrap();
        assert_eq!(KeRequest::from_records(&ok), Ok(KeRequest::ntpv4()));

        let unknown_critical = [
            Record::Unknown {
                critical: true,
                record_type: 99,
                body: vec![],
            },
            Record::NextProtocol(vec![0]),
            Record::EndOfMessage,
        ];
        assert_eq!(
            KeRequest::from_records(&unknown_critical).map_err(|e| e.code()),
            Err(ErrorCode::UnrecognizedCriticalRecord)
        );
        let unknown_ignored = [
            Record::Unknown {
                critical: false,
                record_type: 99,
                body: vec![1],
            },
            Record::NextProtocol(vec![0]),
            Record::AeadAlgorithm(vec![15]),
            Record::EndOfMessage,
        ];
        assert!(KeRequest::from_records(&unknown_ignored).is_ok());
        for bad in [
            &[Record::AeadAlgorithm(vec![15]), Record::EndOfMessage][..],
            &[Record::NextProtocol(vec![0]), Record::EndOfMessage][..],
            &[
                Record::NextProtocol(vec![0]),
                Record::AeadAlgorithm(vec![15]),
            ][..],
            &[
                Record::NextProtocol(vec![0]),
                Record::NextProtocol(vec![0]),
                Record::AeadAlgorithm(vec![15]),
                Record::EndOfMessage,
            ][..],
            &[
                Record::NextProtocol(vec![0]),
                Record::AeadAlgorithm(vec![15]),
                Record::Error(ErrorCode::BadRequest),
                Record::EndOfMessage,
            ][..],
        ] {
            assert_eq!(
                KeRequest::from_records(bad).map_err(|e| e.code()),
                Err(ErrorCode::BadRequest),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn responses_are_validated() {
        let good = KeResponse {
            protocol: Some(0),
            aead: Some(15),
            cookies: vec![vec![7; 100]; 8],
            server: Some("ntp.example.org".into()),
            port: Some(1234),
        };
        let recs = |r: &KeResponse| {
            let mut v = Vec::new();
            r.emit(&mut v);
            parse_records(&v).unwrap()
        };
        assert_eq!(
            KeResponse::from_records(&recs(&good), &[15]),
            Ok(good.clone())
        );
        assert_eq!(
            KeResponse::from_records(&recs(&good), &[30]),
            Err(ResponseError::Malformed(
                "AEAD algorithm that was not offered"
            ))
        );
        let no_aead = KeResponse {
            aead: None,
            cookies: vec![],
            ..good.clone()
        };
        assert_eq!(
            KeResponse::from_records(&recs(&no_aead), &[15]),
            Err(ResponseError::NoCommonAead)
        );
        let no_cookies = KeResponse {
            cookies: vec![],
            ..good.clone()
        };
        assert_eq!(
            KeResponse::from_records(&recs(&no_cookies), &[15]),
            Err(ResponseError::NoCookies)
        );
        let err = [Record::Error(ErrorCode::BadRequest), Record::EndOfMessage];
        assert_eq!(
            KeResponse::from_records(&err, &[15]),
            Err(ResponseError::Error(ErrorCode::BadRequest))
        );
        let mut critical = recs(&good);
        critical.insert(
            0,
            Record::Unknown {
                critical: true,
                record_type: 1000,
                body: vec![],
            },
        );
        assert!(matches!(
            KeResponse::from_records(&critical, &[15]),
            Err(ResponseError::Malformed(_))
        ));
    }

    fn any_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            Just(Record::EndOfMessage),
            proptest::collection::vec(any::<u16>(), 0..8).prop_map(Record::NextProtocol),
            any::<u16>().prop_map(|c| Record::Error(ErrorCode::from_u16(c))),
            any::<u16>().prop_map(Record::Warning),
            proptest::collection::vec(any::<u16>(), 0..8).prop_map(Record::AeadAlgorithm),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Record::NewCookie),
            "[!-~]{0,40}".prop_map(Record::Server),
            any::<u16>().prop_map(Record::Port),
            (
                any::<bool>(),
                8u16..0x8000,
                proptest::collection::vec(any::<u8>(), 0..50)
            )
                .prop_map(|(critical, record_type, body)| Record::Unknown {
                    critical,
                    record_type,
                    body
                }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(any_record(), 0..20)) {
            let wire = bytes_of(&records);
            let parsed = parse_records(&wire).unwrap();
            prop_assert_eq!(&parsed, &records);
            prop_assert_eq!(bytes_of(&parsed), wire);
        }

        #[test]
        fn parse_emit_parse_is_stable(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            // Arbitrary bytes never panic; whatever parses re-encodes to the same records.
            if let Ok(records) = parse_records(&bytes) {
                let again = parse_records(&bytes_of(&records)).unwrap();
                prop_assert_eq!(again, records);
            }
        }

        #[test]
        fn chunked_delivery_gives_the_same_records(
            records in proptest::collection::vec(any_record(), 0..10),
            chunk in 1usize..17,
        ) {
            let wire = bytes_of(&records);
            let mut reader = RecordReader::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                reader.push(piece).unwrap();
                while let Some(r) = reader.next_record().unwrap() {
                    got.push(r);
                }
            }
            reader.finish().unwrap();
            prop_assert_eq!(got, records);
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_records() {
        let mut wire = Vec::new();
        KeResponse {
            protocol: Some(0),
            aead: Some(15),
            cookies: vec![vec![9; 64]; 8],
            server: Some("192.0.2.1".into()),
            port: Some(123),
        }
        .emit(&mut wire);
        let mut reader = RecordReader::new();
        let mut got = Vec::new();
        for b in &wire {
            reader.push(std::slice::from_ref(b)).unwrap();
            while let Some(r) = reader.next_record().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, parse_records(&wire).unwrap());
        assert_eq!(got.len(), 13);
    }
}
