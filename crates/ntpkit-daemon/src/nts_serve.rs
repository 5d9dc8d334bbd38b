//! NTS (RFC 8915) for `ntpkit serve`: the cookie master secret, the TLS configuration of the
//! key-exchange server, and the NTS-KE listener.
//!
//! Everything that reads files or binds sockets runs at start-up, before privileges are dropped
//! and the system-call filter is installed. The key-exchange server then runs on one thread of
//! its own with a `poll` loop over the listener and its non-blocking connections, each driving
//! an [`ntpkit_nts::KeServer`]: one request, one response with keys and cookies, close. Cookies
//! are sealed with the shared [`CookieKeyring`], which the UDP workers use to open them again.

use ntpkit_nts::ke::server_config;
use ntpkit_nts::keys::MIN_MASTER_LEN;
use ntpkit_nts::{make_cookie, CookieKeyring, KeServer, KeServerSettings, NtsKeys};
use ntpkit_os::{Interest, PollSet, TcpListener, TcpStream};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::time_provider::DefaultTimeProvider;
use rustls::ServerConfig;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A whole key exchange must end within this time after the connection was accepted.
pub const KE_DEADLINE: Duration = Duration::from_secs(10);
/// Most key-exchange connections open at once from one IP address.
pub const KE_PER_ADDRESS: usize = 4;
/// Most key-exchange connections open at once.
pub const KE_MAX_CONNECTIONS: usize = 256;
/// How often the idle key-exchange thread checks the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);

/// What NTS serving is asked to do.
#[derive(Clone, Debug)]
pub struct NtsServeConfig {
    /// Address of the NTS-KE listener (TCP).
    pub ke: SocketAddr,
    /// PEM file of the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key.
    pub key: PathBuf,
    /// File of the cookie master secret (created when missing).
    pub master: PathBuf,
    /// Cookie key rotation period, seconds.
    pub rotation_secs: u64,
}

/// Counters of NTS serving.
#[derive(Debug, Default)]
pub struct NtsCounters {
    /// Key exchanges completed with keys and cookies.
    pub ke_served: AtomicU64,
    /// Key exchanges that failed (TLS, bad request, timeout, limits).
    pub ke_failed: AtomicU64,
    /// Authenticated replies sent.
    pub replies: AtomicU64,
    /// NTS NAKs sent (cookies that did not open).
    pub naks: AtomicU64,
    /// NTS requests dropped (malformed or not authentic).
    pub dropped: AtomicU64,
}

/// Reads the cookie master secret from `path`, or creates it with 32 bytes from the OS random
/// source (mode 0600, written to a temporary file and renamed) when it does not exist; the
/// flag says whether it was created.
pub fn load_or_create_master(path: &Path) -> Result<(Vec<u8>, bool), String> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= MIN_MASTER_LEN => Ok((bytes, false)),
        Ok(bytes) => Err(format!(
            "NTS master secret {} holds {} bytes, at least {MIN_MASTER_LEN} are needed: remove it \
             to have a new one created, or fill it with `head -c 32 /dev/urandom > {}`",
            path.display(),
            bytes.len(),
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; MIN_MASTER_LEN];
            rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret).map_err(
                |e| format!("cannot create NTS master secret: OS random source failed: {e}"),
            )?;
            write_atomically(path, &secret).map_err(|e| {
                format!(
                    "cannot create NTS master secret {}: {e}: check that its directory exists \
                     and is writable, or point --nts-master elsewhere",
                    path.display()
                )
            })?;
            Ok((secret, true))
        }
        Err(e) => Err(format!(
            "cannot read NTS master secret {}: {e}: check the path and its permissions \
             (--nts-master)",
            path.display()
        )),
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Loads the certificate chain and private key into the key-exchange server's TLS
/// configuration (TLS 1.3, ALPN `ntske/1`).
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read certificate chain {}: {e}: give a PEM file with --cert",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {} holds no PEM certificate: give the server's certificate \
             (leaf first) with --cert",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read private key {}: {e}: give the certificate's PEM private key with --key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    server_config(chain, private, provider, Arc::new(DefaultTimeProvider))
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "cannot use certificate {} with key {}: {e}: check that the key belongs to \
                 the certificate",
                cert.display(),
                key.display()
            )
        })
}

/// Seconds since the Unix epoch by the system clock.
pub(crate) fn unix_secs() -> u64 {
    (ntpkit_os::realtime_nanos().max(0) / 1_000_000_000) as u64
}

/// The NTS-KE server: its listener and what its sessions share. Built at start-up, run on a
/// thread of its own once the system-call filter is installed.
#[derive(Debug)]
pub struct KeListener {
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    settings: KeServerSettings,
    ring: Arc<CookieKeyring>,
    rng: ChaCha20Rng,
    deadline: Duration,
}

struct Session {
    stream: TcpStream,
    peer: IpAddr,
    ke: KeServer,
    out: Vec<u8>,
    deadline: i64,
}

impl KeListener {
    /// Binds `addr`; the server announces `ntp_port` to clients when it is set (not 123).
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<ServerConfig>,
        ring: Arc<CookieKeyring>,
        ntp_port: Option<u16>,
    ) -> io::Result<KeListener> {
        let listener = TcpListener::bind(addr, 128)?;
        let rng = ChaCha20Rng::try_from_os_rng().map_err(io::Error::other)?;
        Ok(KeListener {
            listener,
            tls,
            settings: KeServerSettings {
                server: None,
                port: ntp_port,
            },
            ring,
            rng,
            deadline: KE_DEADLINE,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves key exchanges until `shared.stop` is set.
    pub fn run(mut self, shared: Arc<crate::serve::Shared>) {
        let mut sessions: Vec<Session> = Vec::new();
        let mut set = PollSet::new();
        let mut buf = vec![0u8; 4096];
        let counters = &shared.nts;
        while !shared.stop.load(Ordering::Relaxed) {
            set.clear();
            let li = set.push(self.listener.as_raw_fd(), Interest::Read);
            for s in &sessions {
                let interest = if s.out.is_empty() {
                    Interest::Read
                } else {
                    Interest::ReadWrite
                };
                set.push(s.stream.as_raw_fd(), interest);
            }
            let now = ntpkit_os::monotonic_nanos();
            let mut timeout = STOP_POLL;
            if let Some(d) = sessions.iter().map(|s| s.deadline).min() {
                timeout = timeout.min(Duration::from_nanos((d - now).max(0) as u64));
            }
            if let Err(e) = set.wait(Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("NTS-KE poll: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = ntpkit_os::monotonic_nanos();
            // Sessions first: their indices in the poll set follow the listener's.
            let mut keep = Vec::with_capacity(sessions.len());
            for (i, mut s) in sessions.drain(..).enumerate() {
                let idx = li + 1 + i;
                let open = self.drive(&mut s, set.readable(idx), &mut buf, counters);
                if !open {
                    continue;
                }
                if now >= s.deadline {
                    counters.ke_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("NTS-KE with {} timed out", s.peer);
                    continue;
                }
                keep.push(s);
            }
            sessions = keep;
            if set.readable(li) {
                self.accept(&mut sessions, now, counters);
            }
        }
    }

    fn accept(&mut self, sessions: &mut Vec<Session>, now: i64, counters: &NtsCounters) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("NTS-KE accept: {e}");
                    return;
                }
            };
            let peer = peer.ip();
            let from_peer = sessions.iter().filter(|s| s.peer == peer).count();
            if sessions.len() >= KE_MAX_CONNECTIONS || from_peer >= KE_PER_ADDRESS {
                counters.ke_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("NTS-KE connection from {peer} refused: too many open");
                continue; // dropping the stream closes it
            }
            match KeServer::new(self.tls.clone(), self.settings.clone()) {
                Ok(ke) => sessions.push(Session {
                    stream,
                    peer,
                    ke,
                    out: Vec::new(),
                    deadline: now + self.deadline.as_nanos() as i64,
                }),
                Err(e) => tracing::warn!("NTS-KE session: {e}"),
            }
        }
    }

    /// Moves bytes between a session's socket and its state machine; false once it is over.
    fn drive(
        &mut self,
        s: &mut Session,
        readable: bool,
        buf: &mut [u8],
        counters: &NtsCounters,
    ) -> bool {
        if readable && !s.ke.is_finished() {
            match s.stream.recv(buf) {
                Ok(0) => s.ke.receive_eof(),
                Ok(n) => {
                    let ring = &self.ring;
                    let rng = &mut self.rng;
                    let now = unix_secs();
                    let mut cookie = |keys: &NtsKeys| match make_cookie(ring, keys, now, rng) {
                        // Zero-padded to a multiple of 4 bytes, the length of the extension
                        // field it returns in (chronyd refuses other lengths); it opens so.
                        Ok(mut c) => {
                            c.resize(c.len().next_multiple_of(4), 0);
                            c
                        }
                        Err(e) => {
                            tracing::warn!("making an NTS cookie failed: {e}");
                            Vec::new()
                        }
                    };
                    s.ke.receive(&buf[..n], &mut cookie);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::debug!("NTS-KE with {}: {e}", s.peer);
                    counters.ke_failed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
        s.ke.transmit(&mut s.out);
        if let Some(outcome) = s.ke.outcome() {
            match outcome {
                Ok(served) => {
                    counters.ke_served.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "NTS-KE with {}: {} cookies, {}",
                        s.peer,
                        served.cookies,
                        served.aead.name()
                    );
                }
                Err(e) => {
                    counters.ke_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("NTS-KE with {}: {e}", s.peer);
                }
            }
            s.ke.transmit(&mut s.out);
        }
        while !s.out.is_empty() {
            match s.stream.send(&s.out) {
                Ok(n) => {
                    s.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("NTS-KE with {}: {e}", s.peer);
                    return false;
                }
            }
        }
        // Close once the response (or the alert) has gone out.
        !(s.ke.is_finished() && s.out.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_is_created_then_read_and_short_ones_refused() {
        let dir = std::env::temp_dir().join(format!("ntpkit-nts-master-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("master");
        let (made, created) = load_or_create_master(&path).unwrap();
        assert!(created);
        assert_eq!(made.len(), MIN_MASTER_LEN);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_master(&path).unwrap(), (made, false));
        std::fs::write(&path, [1u8; 16]).unwrap();
        let e = load_or_create_master(&path).unwrap_err();
        assert!(e.contains("16 bytes") && e.contains("at least 32"), "{e}");
        assert!(!e.contains('\n'));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A key-exchange server on 127.0.0.1 with a fresh certificate, on its own thread, and
    /// the deadline given; stopped when the returned `Shared` is told to.
    fn ke_server(deadline: Duration) -> (SocketAddr, Arc<crate::serve::Shared>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = server_config(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            provider,
            Arc::new(DefaultTimeProvider),
        )
        .unwrap();
        let ring = Arc::new(CookieKeyring::with_default_rotation(&[5; 32]).unwrap());
        let mut l =
            KeListener::bind("127.0.0.1:0".parse().unwrap(), Arc::new(tls), ring, None).unwrap();
        l.deadline = deadline;
        let addr = l.local_addr();
        let shared = Arc::new(crate::serve::Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || l.run(s));
        (addr, shared)
    }

    /// Whether the server closed `c` within `limit` (reads end of stream or a reset).
    fn closed_within(c: &mut std::net::TcpStream, limit: Duration) -> bool {
        use std::io::Read;
        c.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    #[test]
    fn ke_connections_are_limited_per_address_and_in_time() {
        let (addr, shared) = ke_server(Duration::from_millis(600));
        let mut open: Vec<_> = (0..KE_PER_ADDRESS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // One more from the same address is closed at once.
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        assert!(closed_within(&mut extra, Duration::from_millis(400)));
        // The silent ones are closed at the deadline.
        for c in &mut open {
            assert!(closed_within(c, Duration::from_secs(3)));
        }
        assert_eq!(
            shared.nts.ke_failed.load(Ordering::Relaxed),
            KE_PER_ADDRESS as u64 + 1
        );
        shared.stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn unreadable_tls_files_are_named() {
        let e = load_tls(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(
            e.contains("/nonexistent/c.pem") && e.contains("--cert"),
            "{e}"
        );
    }
}
