//! The server's cookie keys: one per rotation period, all derived from one master secret.
//!
//! A server keeps only the master secret. The key of period `p` is
//! HKDF-SHA256(ikm = master, salt = none, info = "ntpkit nts cookie key" || p as u64 BE), so
//! every server that shares the master derives the same keys and opens the others' cookies.

use crate::aead::SivKey;
use hkdf::Hkdf;
use sha2::Sha256;
use std::sync::{Arc, RwLock};

/// Shortest master secret accepted, in bytes.
pub const MIN_MASTER_LEN: usize = 32;
/// Default lifetime of one cookie key: a day.
pub const DEFAULT_ROTATION_SECS: u64 = 86_400;
/// Length of a cookie key (AEAD_AES_SIV_CMAC_256).
pub const COOKIE_KEY_LEN: usize = 32;

const INFO_LABEL: &[u8] = b"ntpkit nts cookie key";

/// Why a keyring could not be made.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum KeyError {
    /// The master secret is too short to be a key.
    #[error("cookie master secret is {0} bytes, at least {MIN_MASTER_LEN} are needed")]
    MasterTooShort(usize),
    /// A rotation period of zero seconds.
    #[error("cookie key rotation period must be at least one second")]
    ZeroRotation,
}

/// The key of one period, derived from the master secret.
#[derive(Clone)]
pub struct CookieKey {
    /// The period this key belongs to.
    pub period: u64,
    key: [u8; COOKIE_KEY_LEN],
    /// The key expanded for sealing and opening, shared by every copy.
    siv: Arc<SivKey>,
}

impl PartialEq for CookieKey {
    fn eq(&self, other: &Self) -> bool {
        self.period == other.period && self.key == other.key
    }
}

impl Eq for CookieKey {}

impl CookieKey {
    /// The key expanded for AEAD_AES_SIV_CMAC_256: call to seal or open a cookie.
    pub fn siv(&self) -> &SivKey {
        &self.siv
    }

    /// The key bytes; call only to seal or open a cookie.
    pub fn bytes(&self) -> &[u8; COOKIE_KEY_LEN] {
        &self.key
    }

    /// The 32-bit key identifier a cookie carries: the low 32 bits of the period.
    pub fn key_id(&self) -> u32 {
        self.period as u32
    }
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieKey")
            .field("period", &self.period)
            .field("key", &format_args!("[{COOKIE_KEY_LEN} bytes]"))
            .finish()
    }
}

/// A server's master secret and rotation period; derives the key of any period.
pub struct CookieKeyring {
    master: Vec<u8>,
    rotation_secs: u64,
    /// Keys derived already, the latest [`KEY_CACHE`] periods: every NTS reply needs the key
    /// of its request's cookie and the current one, and deriving one costs two HMAC-SHA256
    /// runs, about a microsecond.
    cache: RwLock<Vec<CookieKey>>,
}

/// Periods whose keys a keyring keeps derived: the previous, current and next, and one more
/// so that a rotation does not evict a key still in use.
const KEY_CACHE: usize = 4;

impl Clone for CookieKeyring {
    fn clone(&self) -> Self {
        CookieKeyring {
            master: self.master.clone(),
            rotation_secs: self.rotation_secs,
            cache: RwLock::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for CookieKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieKeyring")
            .field("master", &format_args!("[{} bytes]", self.master.len()))
            .field("rotation_secs", &self.rotation_secs)
            .finish()
    }
}

impl CookieKeyring {
    /// Call at server start with the configured master secret and rotation period.
    pub fn new(master: &[u8], rotation_secs: u64) -> Result<CookieKeyring, KeyError> {
        if master.len() < MIN_MASTER_LEN {
            return Err(KeyError::MasterTooShort(master.len()));
        }
        if rotation_secs == 0 {
            return Err(KeyError::ZeroRotation);
        }
        Ok(CookieKeyring {
            master: master.to_vec(),
            rotation_secs,
            cache: RwLock::new(Vec::with_capacity(KEY_CACHE)),
        })
    }

    /// Call at server start when no rotation period is configured (a day).
    pub fn with_default_rotation(master: &[u8]) -> Result<CookieKeyring, KeyError> {
        Self::new(master, DEFAULT_ROTATION_SECS)
    }

    /// Seconds each key is current.
    pub fn rotation_secs(&self) -> u64 {
        self.rotation_secs
    }

    /// The period that is current at `unix_secs`.
    pub fn period(&self, unix_secs: u64) -> u64 {
        unix_secs / self.rotation_secs
    }

    /// The key of `period`.
    pub fn key(&self, period: u64) -> CookieKey {
        if let Ok(cache) = self.cache.read() {
            if let Some(k) = cache.iter().find(|k| k.period == period) {
                return k.clone();
            }
        }
        let key = self.derive(period);
        if let Ok(mut cache) = self.cache.write() {
            if !cache.iter().any(|k| k.period == period) {
                if cache.len() >= KEY_CACHE {
                    cache.remove(0);
                }
                cache.push(key.clone());
            }
        }
        key
    }

    /// Derives the key of `period` from the master secret.
    fn derive(&self, period: u64) -> CookieKey {
        let mut info = [0u8; INFO_LABEL.len() + 8];
        info[..INFO_LABEL.len()].copy_from_slice(INFO_LABEL);
        info[INFO_LABEL.len()..].copy_from_slice(&period.to_be_bytes());
        let mut key = [0u8; COOKIE_KEY_LEN];
        // A 32-byte output is far below HKDF-SHA256's limit of 255 * 32 bytes, so this cannot
        // fail; the fallback keeps the function total without a panic path.
        if Hkdf::<Sha256>::new(None, &self.master)
            .expand(&info, &mut key)
            .is_err()
        {
            key = [0; COOKIE_KEY_LEN];
        }
        CookieKey {
            period,
            key,
            siv: Arc::new(SivKey::from_key(&key)),
        }
    }

    /// Call to seal a new cookie: the key current at `unix_secs`.
    pub fn current(&self, unix_secs: u64) -> CookieKey {
        self.key(self.period(unix_secs))
    }

    /// Call to open a cookie: the key whose identifier is `key_id`, if that is the previous,
    /// current or next period at `unix_secs` (the next one covers servers whose clocks run a
    /// little ahead of this one's at a rotation).
    pub fn key_for_id(&self, key_id: u32, unix_secs: u64) -> Option<CookieKey> {
        let now = self.period(unix_secs);
        [Some(now), now.checked_sub(1), now.checked_add(1)]
            .into_iter()
            .flatten()
            .find(|p| *p as u32 == key_id)
            .map(|p| self.key(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: [u8; 32] = [0x42; 32];

    #[test]
    fn derived_keys_are_kept_and_stay_the_same() {
        let k = CookieKeyring::new(&MASTER, 100).unwrap();
        let fresh: Vec<CookieKey> = (0..10).map(|p| k.derive(p)).collect();
        for _ in 0..2 {
            for (p, want) in fresh.iter().enumerate() {
                assert_eq!(&k.key(p as u64), want);
            }
        }
        assert!(k.cache.read().unwrap().len() <= KEY_CACHE);
        // The kept key schedules open what the key's bytes sealed.
        let key = k.key(3);
        let alg = crate::AeadAlgorithm::AesSivCmac256;
        let sealed = crate::aead::seal(alg, key.bytes(), b"ad", &[1; 16], b"keys").unwrap();
        let mut plain = sealed[16..].to_vec();
        key.siv()
            .open_in_place(b"ad", &[1; 16], &sealed[..16], &mut plain)
            .unwrap();
        assert_eq!(plain, b"keys");
    }

    #[test]
    fn same_master_same_keys_other_master_other_keys() {
        let a = CookieKeyring::with_default_rotation(&MASTER).unwrap();
        let b = CookieKeyring::with_default_rotation(&MASTER).unwrap();
        let c = CookieKeyring::with_default_rotation(&[0x43; 32]).unwrap();
        assert_eq!(a.key(7), b.key(7));
        assert_ne!(a.key(7).bytes(), c.key(7).bytes());
        assert_ne!(a.key(7).bytes(), a.key(8).bytes());
    }

    #[test]
    fn periods_and_neighbours() {
        let k = CookieKeyring::new(&MASTER, 100).unwrap();
        assert_eq!(k.period(0), 0);
        assert_eq!(k.period(199), 1);
        assert_eq!(k.current(250).period, 2);
        let now = 1_000;
        for p in [9u64, 10, 11] {
            assert_eq!(k.key_for_id(p as u32, now).map(|c| c.period), Some(p));
        }
        assert_eq!(k.key_for_id(8, now), None);
        assert_eq!(k.key_for_id(12, now), None);
        // Period 0 has no predecessor worth a key, but the lookup stays total.
        assert_eq!(k.key_for_id(u32::MAX, 0), None);
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert_eq!(
            CookieKeyring::new(&[1; 31], 10).unwrap_err(),
            KeyError::MasterTooShort(31)
        );
        assert_eq!(
            CookieKeyring::new(&MASTER, 0).unwrap_err(),
            KeyError::ZeroRotation
        );
    }

    #[test]
    fn key_material_is_never_printed() {
        let k = CookieKeyring::with_default_rotation(&MASTER).unwrap();
        let shown = format!("{k:?} {:?}", k.key(3));
        assert!(!shown.contains("66") && !shown.contains("42"), "{shown}");
        let key_hex: String = k.key(3).bytes().iter().map(|b| format!("{b}")).collect();
        assert!(!shown.contains(&key_hex[..6]), "{shown}");
    }
}
