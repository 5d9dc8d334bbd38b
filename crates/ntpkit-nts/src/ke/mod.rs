//! NTS Key Establishment (RFC 8915 §4 and §5.1): the records, the keys exported from the TLS
//! session, and buffer-driven client and server state machines.
//!
//! Nothing here touches the network, a clock or the OS random source: the TLS configurations
//! take the `CryptoProvider` (which holds the random source) and the `TimeProvider` (which
//! certificate checks read) from the caller, and the state machines exchange bytes through
//! buffers the driver moves.

pub mod client;
pub mod records;
pub mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{AeadAlgorithm, NtsKeys};

/// TCP port NTS-KE servers listen on unless told otherwise (RFC 8915 §6).
pub const DEFAULT_KE_PORT: u16 = 4460;

/// ALPN protocol id NTS-KE runs under (RFC 8915 §4).
pub const ALPN_NTSKE: &[u8] = b"ntske/1";

/// TLS exporter label for the NTS keys (RFC 8915 §5.1).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";

/// Call on a finished TLS 1.3 handshake (either side) to derive the C2S and S2C keys of the
/// negotiated next protocol and AEAD, as RFC 8915 §5.1 defines them.
pub fn export_keys<D>(
    conn: &rustls::ConnectionCommon<D>,
    next_protocol: u16,
    aead: AeadAlgorithm,
) -> Result<NtsKeys, rustls::Error> {
    let export = |direction: u8| {
        let [p0, p1] = next_protocol.to_be_bytes();
        let [a0, a1] = aead.id().to_be_bytes();
        let context = [p0, p1, a0, a1, direction];
        conn.export_keying_material(vec![0u8; aead.key_len()], EXPORTER_LABEL, Some(&context))
    };
    Ok(NtsKeys {
        aead,
        c2s: export(0x00)?,
        s2c: export(0x01)?,
    })
}

/// Call once at start-up to build the TLS configuration of NTS-KE clients: TLS 1.3 only,
/// ALPN `ntske/1`, server certificates checked against `roots` (system roots or a CA file,
/// loaded by the driver).
///
/// `provider` supplies the cryptography and the random source, `time` the clock against which
/// certificate validity is checked.
pub fn client_config(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    time: Arc<dyn TimeProvider>,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
    Ok(config)
}

/// Call once at start-up to build the TLS configuration of an NTS-KE server: TLS 1.3 only,
/// ALPN `ntske/1`, the given certificate chain (leaf first) and its private key.
///
/// `provider` supplies the cryptography and the random source, `time` the clock rustls reads.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
    time: Arc<dyn TimeProvider>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_NTSKE.to_vec()];
    // One request per connection: session tickets would only cost bytes and state.
    config.send_tls13_tickets = 0;
    Ok(config)
}

pub use client::{KeClient, KeError, KeOutcome};
pub use records::{ErrorCode, KeRequest, KeResponse, Record, RecordError, RecordReader};
pub use server::{KeServed, KeServer, KeServerError, KeServerSettings};

#[cfg(test)]
pub(crate) mod testutil {
    //! Certificates and an in-memory pump shared by the client and server tests.

    use super::*;
    use rustls::time_provider::DefaultTimeProvider;

    /// A CA and a leaf for `name` signed by it.
    pub struct Pki {
        pub ca: CertificateDer<'static>,
        pub chain: Vec<CertificateDer<'static>>,
        pub key_der: Vec<u8>,
    }

    pub fn pki(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ntpkit test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        Pki {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }

    pub fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn clock() -> Arc<dyn TimeProvider> {
        Arc::new(DefaultTimeProvider)
    }

    pub fn server_cfg(p: &Pki) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(p.key_der.clone().into());
        Arc::new(server_config(p.chain.clone(), key, provider(), clock()).unwrap())
    }

    pub fn roots(ca: &CertificateDer<'static>) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        roots
    }

    pub fn client_cfg(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
        Arc::new(client_config(roots(ca), provider(), clock()).unwrap())
    }

    /// A cookie maker that records the keys it was handed.
    pub fn cookie_maker(seen: &mut Vec<NtsKeys>) -> impl FnMut(&NtsKeys) -> Vec<u8> + '_ {
        move |k: &NtsKeys| {
            seen.push(k.clone());
            vec![0xc0; 100]
        }
    }

    /// Moves bytes between a client and a server, `chunk` bytes per delivery, until neither
    /// has anything left to say.
    pub fn pump(
        client: &mut KeClient,
        server: &mut KeServer,
        make_cookie: &mut dyn FnMut(&NtsKeys) -> Vec<u8>,
        chunk: usize,
    ) {
        for _ in 0..100 {
            let mut c2s = Vec::new();
            client.transmit(&mut c2s);
            for piece in c2s.chunks(chunk) {
                server.receive(piece, make_cookie);
            }
            let mut s2c = Vec::new();
            server.transmit(&mut s2c);
            for piece in s2c.chunks(chunk) {
                client.receive(piece);
            }
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
        }
        panic!("NTS-KE exchange did not settle");
    }

    /// Runs a plain rustls client against `server`, writing `request` once the handshake is
    /// done; returns the plaintext it received and the error it hit, if any.
    pub fn raw_exchange(
        config: ClientConfig,
        request: &[u8],
        server: &mut KeServer,
    ) -> (Vec<u8>, Option<rustls::Error>) {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("ke.test").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut sent = false;
        let mut plain = Vec::new();
        let mut make = |_: &NtsKeys| vec![1u8; 10];
        for _ in 0..100 {
            let mut c2s = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut c2s).unwrap();
            }
            server.receive(&c2s, &mut make);
            let mut s2c = Vec::new();
            server.transmit(&mut s2c);
            let mut rd = &s2c[..];
            while !rd.is_empty() {
                conn.read_tls(&mut rd).unwrap();
                if let Err(e) = conn.process_new_packets() {
                    return (plain, Some(e));
                }
            }
            if !conn.is_handshaking() && !sent {
                conn.writer().write_all(request).unwrap();
                sent = true;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&buf[..n]);
            }
            if c2s.is_empty() && s2c.is_empty() && !conn.wants_write() {
                break;
            }
        }
        (plain, None)
    }

    /// A client configuration built directly with rustls, for clients that break the rules.
    pub fn raw_client_config(
        ca: &CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> ClientConfig {
        let mut c = ClientConfig::builder_with_details(provider(), clock())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots(ca))
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        c
    }
}
