//! `ntpkit-nts`: Network Time Security (RFC 8915) without sockets, clocks or OS randomness.
//!
//! What it does: the NTS-KE exchange (records and the TLS 1.3 session, driven through buffers),
//! the keys it exports, the cookies a server hands out and opens again, the AEAD that protects
//! NTP packets, and the NTS extension fields of those packets. Randomness and time come in as
//! arguments, as everywhere in ntpkit's core, so the simulator and the daemon drive the same
//! code.
//!
//! What it does not do: open sockets, read files or clocks. TLS needs randomness and a clock
//! for certificate validity: the driver hands rustls its crypto provider and time provider.
//!
//! ```text
//!  client                                     NTS-KE server          NTP server (any host
//!                                                                    with the same master)
//!  KeClient ──TLS 1.3 "ntske/1" records──▶  KeServer
//!     ◀── keys (exporter §5.1), 8 cookies ──   make_cookie(keyring)
//!  CookieJar
//!  build_request ─ unique id, cookie, placeholders, authenticator(c2s) ─▶ process_request
//!  verify_reply  ◀─ unique id, authenticator(s2c){new cookies} ─────────  (or NTSN NAK)
//! ```
//!
//! Cookies carry the association's keys, sealed under a cookie key that [`keys`] derives from
//! a master secret and the rotation period's number (HKDF-SHA256). A server keeps no state per
//! client, and every server holding the same master opens every other's cookies: NTS-KE and
//! NTP may run on different hosts, and rotation needs no coordination. Cookies of the
//! previous, current and next period open.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod cookie;
pub mod ef;
pub mod jar;
pub mod ke;
pub mod keys;
pub mod server;

pub use aead::AeadError;
pub use cookie::{make_cookie, open_cookie, CookieError};
pub use ef::{
    build_request, verify_reply_to, BuildError, PendingRequest, ReplyError, ReplyVerdict,
};
pub use jar::{CookieJar, JarError, JAR_CAPACITY};
pub use ke::{KeClient, KeError, KeOutcome, KeServer, KeServerError, KeServerSettings};
pub use keys::{CookieKey, CookieKeyring, KeyError};
pub use server::{process_request, DropReason, ServerOutcome};

/// The AEAD algorithms NTS can negotiate (numbers of IANA's "AEAD Algorithms" registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    /// AEAD_AES_SIV_CMAC_256 (RFC 5297), which every NTS implementation must support.
    AesSivCmac256,
}

impl AeadAlgorithm {
    /// Every algorithm this crate implements, in order of preference.
    pub const ALL: [AeadAlgorithm; 1] = [AeadAlgorithm::AesSivCmac256];

    /// The registry number, as NTS-KE's AEAD Algorithm Negotiation record carries it.
    pub const fn id(self) -> u16 {
        match self {
            AeadAlgorithm::AesSivCmac256 => 15,
        }
    }

    /// The algorithm with registry number `id`, if this crate implements it.
    pub fn from_id(id: u16) -> Option<AeadAlgorithm> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    /// The algorithm's name in IANA's registry.
    pub const fn name(self) -> &'static str {
        match self {
            AeadAlgorithm::AesSivCmac256 => "AEAD_AES_SIV_CMAC_256",
        }
    }

    /// Length of each of its keys in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            AeadAlgorithm::AesSivCmac256 => 32,
        }
    }
}

/// The two keys of an NTS association (RFC 8915 §5.1), exported from the NTS-KE's TLS session:
/// the client protects its requests with `c2s` and the server its replies with `s2c`. A server
/// keeps no copy: they travel inside the cookies.
#[derive(Clone, PartialEq, Eq)]
pub struct NtsKeys {
    /// The negotiated AEAD algorithm.
    pub aead: AeadAlgorithm,
    /// Client-to-server key (`aead.key_len()` bytes).
    pub c2s: Vec<u8>,
    /// Server-to-client key (`aead.key_len()` bytes).
    pub s2c: Vec<u8>,
}

impl std::fmt::Debug for NtsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("NtsKeys")
            .field("aead", &self.aead)
            .field("c2s", &format_args!("[{} bytes]", self.c2s.len()))
            .field("s2c", &format_args!("[{} bytes]", self.s2c.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_round_trip_their_registry_numbers() {
        for a in AeadAlgorithm::ALL {
            assert_eq!(AeadAlgorithm::from_id(a.id()), Some(a));
        }
        assert_eq!(AeadAlgorithm::from_id(30), None);
        assert_eq!(AeadAlgorithm::AesSivCmac256.key_len(), 32);
    }

    #[test]
    fn keys_are_never_printed() {
        let k = NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: vec![0xab; 32],
            s2c: vec![0xcd; 32],
        };
        let shown = format!("{k:?}");
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
        assert!(shown.contains("[32 bytes]"), "{shown}");
    }
}
