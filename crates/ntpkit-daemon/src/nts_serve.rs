//! NTS (RFC 8915) for `ntpkit serve` and `ntpkit daemon`: the cookie master secret, the TLS
//! configuration of the key-exchange server, and the NTS-KE listener.
//!
//! Everything that binds sockets runs at start-up ([`prepare`]), before privileges are dropped
//! and the system-call filter is installed. The key-exchange server then runs on one thread of
//! its own ([`KeListener::spawn`]) with a `poll` loop over its listeners and its non-blocking
//! connections, each driving an [`ntpkit_nts::KeServer`]: one request, one response with keys
//! and cookies, close. Cookies are sealed with the shared [`CookieKeyring`], which the UDP
//! servers use to open them again ([`crate::udp::UdpServer::serve_nts`]).
//!
//! The same thread reloads the certificate and key when their files change (checked every
//! [`TLS_CHECK`]) or when asked ([`crate::serve::Shared::nts_reload`], set on SIGHUP): new
//! connections get the new TLS configuration, open ones finish with the one they started
//! with, and a reload that fails keeps the previous one. The master secret is read once.
//!
//! Admission: the server's access rules and rate limit ([`Policy`]) decide at accept about
//! every connection (the rate limit with a table of its own, one connection counting as one
//! request), before the limits on connections open at once.

use ntpkit_core::{Admission, Policy};
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
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
/// How often the key-exchange thread looks at the certificate and key files for changes.
pub const TLS_CHECK: Duration = Duration::from_secs(2);
/// How often the idle key-exchange thread checks the stop and reload flags.
const STOP_POLL: Duration = Duration::from_millis(200);

/// What NTS serving is asked to do.
#[derive(Clone, Debug)]
pub struct NtsServeConfig {
    /// Addresses of the NTS-KE listeners (TCP).
    pub ke: Vec<SocketAddr>,
    /// PEM file of the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key.
    pub key: PathBuf,
    /// File of the cookie master secret (created when missing).
    pub master: PathBuf,
    /// Cookie key rotation period, seconds.
    pub rotation_secs: u64,
    /// NTP server announced to clients (None: this host).
    pub ntp_server: Option<String>,
    /// NTP port announced to clients (None: the first UDP listener's, unless 123).
    pub ntp_port: Option<u16>,
    /// How the user names the files, for error messages.
    pub names: NtsOptionNames,
}

/// How the options that name the NTS files are spelt where the user sets them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NtsOptionNames {
    /// The certificate chain.
    pub cert: &'static str,
    /// The private key.
    pub key: &'static str,
    /// The master secret.
    pub master: &'static str,
}

impl NtsOptionNames {
    /// `ntpkit serve`'s flags.
    pub const SERVE: NtsOptionNames = NtsOptionNames {
        cert: "--cert",
        key: "--key",
        master: "--nts-master",
    };
    /// The daemon's `[nts-ke-server]` keys.
    pub const DAEMON: NtsOptionNames = NtsOptionNames {
        cert: "nts-ke-server.cert",
        key: "nts-ke-server.key",
        master: "nts-ke-server.master",
    };
}

/// Counters of NTS serving.
#[derive(Debug, Default)]
pub struct NtsCounters {
    /// Key exchanges completed with keys and cookies.
    pub ke_served: AtomicU64,
    /// Key exchanges that failed (TLS, bad request, timeout, limits on open connections).
    pub ke_failed: AtomicU64,
    /// Key-exchange connections closed at accept by the access rules.
    pub ke_denied: AtomicU64,
    /// Key-exchange connections closed at accept by the rate limit.
    pub ke_limited: AtomicU64,
    /// Authenticated replies sent.
    pub replies: AtomicU64,
    /// NTS NAKs sent (cookies that did not open).
    pub naks: AtomicU64,
    /// NTS requests dropped (malformed or not authentic).
    pub dropped: AtomicU64,
}

/// A snapshot of [`NtsCounters`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NtsCounterValues {
    /// Key exchanges completed.
    pub ke_served: u64,
    /// Key exchanges failed.
    pub ke_failed: u64,
    /// Connections refused by the access rules.
    pub ke_denied: u64,
    /// Connections refused by the rate limit.
    pub ke_limited: u64,
    /// Authenticated replies.
    pub replies: u64,
    /// NAKs.
    pub naks: u64,
    /// Dropped requests.
    pub dropped: u64,
}

impl NtsCounters {
    /// Reads all counters.
    pub fn snapshot(&self) -> NtsCounterValues {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NtsCounterValues {
            ke_served: get(&self.ke_served),
            ke_failed: get(&self.ke_failed),
            ke_denied: get(&self.ke_denied),
            ke_limited: get(&self.ke_limited),
            replies: get(&self.replies),
            naks: get(&self.naks),
            dropped: get(&self.dropped),
        }
    }
}

/// Reads the cookie master secret from `path`, or creates it with 32 bytes from the OS random
/// source (mode 0600, written to a temporary file and renamed) when it does not exist; the
/// flag says whether it was created. `option` names the setting in messages.
pub fn load_or_create_master(path: &Path, option: &str) -> Result<(Vec<u8>, bool), String> {
    match read_master(path, option)? {
        Some(bytes) => Ok((bytes, false)),
        None => {
            let mut secret = vec![0u8; MIN_MASTER_LEN];
            rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret).map_err(
                |e| format!("cannot create NTS master secret: OS random source failed: {e}"),
            )?;
            write_atomically(path, &secret).map_err(|e| {
                format!(
                    "cannot create NTS master secret {}: {e}: check that its directory exists \
                     and is writable, or point {option} elsewhere",
                    path.display()
                )
            })?;
            Ok((secret, true))
        }
    }
}

/// Reads the cookie master secret at `path` (None: there is no such file), refusing one too
/// short. `option` names the setting in messages.
pub fn read_master(path: &Path, option: &str) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= MIN_MASTER_LEN => Ok(Some(bytes)),
        Ok(bytes) => Err(format!(
            "NTS master secret {} holds {} bytes, at least {MIN_MASTER_LEN} are needed: remove it \
             to have a new one created, or fill it with `head -c 32 /dev/urandom > {}`",
            path.display(),
            bytes.len(),
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read NTS master secret {}: {e}: check the path and its permissions \
             ({option})",
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
/// configuration (TLS 1.3, ALPN `ntske/1`); `names` spell the settings in messages.
pub fn load_tls(
    cert: &Path,
    key: &Path,
    names: NtsOptionNames,
) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read certificate chain {}: {e}: give a PEM file with {}",
                cert.display(),
                names.cert
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {} holds no PEM certificate: give the server's certificate \
             (leaf first) with {}",
            cert.display(),
            names.cert
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read private key {}: {e}: give the certificate's PEM private key with {}",
            key.display(),
            names.key
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

/// NTS serving set up at start-up: the master secret read (or created), the certificate
/// loaded, the key-exchange listeners bound. Give `ring` to every UDP server, then
/// [`KeListener::spawn`] the listener once the system-call filter is installed.
#[derive(Debug)]
pub struct NtsStart {
    /// The cookie keys, shared by the key exchange and the UDP servers.
    pub ring: Arc<CookieKeyring>,
    /// The key-exchange server, not yet running.
    pub listener: KeListener,
    /// Whether the master secret file was created now.
    pub master_created: bool,
}

/// Sets NTS serving up as `config` says, the key exchange admitting clients as `policy`
/// decides; `ntp_port` is the port of the first UDP listener (announced unless 123, or
/// unless `config.ntp_port` says otherwise).
pub fn prepare(
    config: &NtsServeConfig,
    policy: Policy,
    ntp_port: Option<u16>,
) -> Result<NtsStart, crate::serve::ServeError> {
    use crate::serve::ServeError;
    let (master, master_created) =
        load_or_create_master(&config.master, config.names.master).map_err(ServeError::Nts)?;
    let ring = Arc::new(
        CookieKeyring::new(&master, config.rotation_secs)
            .map_err(|e| ServeError::Nts(format!("NTS master secret: {e}")))?,
    );
    let tls = load_tls(&config.cert, &config.key, config.names).map_err(ServeError::Nts)?;
    let settings = KeServerSettings {
        server: config.ntp_server.clone(),
        port: config.ntp_port.or(ntp_port.filter(|&p| p != 123)),
    };
    let mut listeners = Vec::new();
    for &addr in &config.ke {
        let l = TcpListener::bind(addr, 128).map_err(|source| ServeError::Bind {
            addr,
            transport: crate::serve::Transport::NtsKe,
            source,
        })?;
        listeners.push(l);
    }
    let mut listener =
        KeListener::new(listeners, tls, ring.clone(), settings, policy).map_err(ServeError::Io)?;
    listener.files = Some(TlsFiles::new(config));
    Ok(NtsStart {
        ring,
        listener,
        master_created,
    })
}

/// The certificate and key files, and what they looked like at the last load.
#[derive(Debug)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    names: NtsOptionNames,
    seen: [Option<FileStamp>; 2],
    /// When to look at them next (monotonic ns).
    next_check: i64,
}

/// What tells a file's versions apart: replaced (a new inode), rewritten (size, time).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

impl TlsFiles {
    fn new(config: &NtsServeConfig) -> TlsFiles {
        TlsFiles {
            seen: [stamp(&config.cert), stamp(&config.key)],
            cert: config.cert.clone(),
            key: config.key.clone(),
            names: config.names,
            next_check: ntpkit_os::monotonic_nanos() + TLS_CHECK.as_nanos() as i64,
        }
    }
}

/// The NTS-KE server: its listeners and what its sessions share. Built at start-up, run on a
/// thread of its own once the system-call filter is installed.
#[derive(Debug)]
pub struct KeListener {
    listeners: Vec<TcpListener>,
    tls: Arc<ServerConfig>,
    files: Option<TlsFiles>,
    settings: KeServerSettings,
    ring: Arc<CookieKeyring>,
    policy: Policy,
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
    fn new(
        listeners: Vec<TcpListener>,
        tls: Arc<ServerConfig>,
        ring: Arc<CookieKeyring>,
        settings: KeServerSettings,
        policy: Policy,
    ) -> io::Result<KeListener> {
        let rng = ChaCha20Rng::try_from_os_rng().map_err(io::Error::other)?;
        Ok(KeListener {
            listeners,
            tls,
            files: None,
            settings,
            ring,
            policy,
            rng,
            deadline: KE_DEADLINE,
        })
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr()).collect()
    }

    /// Starts the key-exchange thread (after the system-call filter is installed); it runs
    /// until `shared.stop` is set. From now on the counters report NTS.
    pub fn spawn(
        self,
        shared: Arc<crate::serve::Shared>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        shared.nts_on.store(true, Ordering::Relaxed);
        std::thread::Builder::new()
            .name("nts-ke".into())
            .spawn(move || self.run(shared))
    }

    /// Serves key exchanges until `shared.stop` is set.
    pub fn run(mut self, shared: Arc<crate::serve::Shared>) {
        let mut sessions: Vec<Session> = Vec::new();
        let mut set = PollSet::new();
        let mut buf = vec![0u8; 4096];
        let counters = &shared.nts;
        while !shared.stop.load(Ordering::Relaxed) {
            if shared.nts_reload.swap(false, Ordering::Relaxed) {
                self.reload_tls(true);
            }
            set.clear();
            for l in &self.listeners {
                set.push(l.as_raw_fd(), Interest::Read);
            }
            let first_session = set.len();
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
            let mut keep = Vec::with_capacity(sessions.len());
            for (i, mut s) in sessions.drain(..).enumerate() {
                let open = self.drive(&mut s, set.readable(first_session + i), &mut buf, counters);
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
            for k in 0..self.listeners.len() {
                if set.readable(k) {
                    self.accept(k, &mut sessions, now, counters);
                }
            }
            if self.files.as_ref().is_some_and(|f| now >= f.next_check) {
                self.reload_tls(false);
            }
        }
    }

    /// Loads the certificate and key again if their files changed since the last load (or if
    /// `forced`); keeps the current configuration if that fails.
    fn reload_tls(&mut self, forced: bool) {
        let Some(files) = &mut self.files else {
            return;
        };
        files.next_check = ntpkit_os::monotonic_nanos() + TLS_CHECK.as_nanos() as i64;
        let now = [stamp(&files.cert), stamp(&files.key)];
        if !forced && now == files.seen {
            return;
        }
        files.seen = now;
        match load_tls(&files.cert, &files.key, files.names) {
            Ok(tls) => {
                self.tls = tls;
                tracing::info!(
                    "NTS-KE: loaded certificate {} and key {}; new connections use them",
                    files.cert.display(),
                    files.key.display()
                );
            }
            Err(e) => tracing::error!(
                "NTS-KE: cannot reload the certificate: {e}; still serving the previous \
                 certificate"
            ),
        }
    }

    fn accept(&mut self, k: usize, sessions: &mut Vec<Session>, now: i64, counters: &NtsCounters) {
        loop {
            let (stream, peer) = match self.listeners[k].accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("NTS-KE accept: {e}");
                    return;
                }
            };
            let peer = peer.ip();
            // Dropping the stream closes it.
            match self.policy.admit(peer, now) {
                Admission::Serve => {}
                Admission::Limited | Admission::Kiss(ntpkit_wire::KissCode::Rate) => {
                    counters.ke_limited.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("NTS-KE connection from {peer} refused: over its rate");
                    continue;
                }
                Admission::Denied | Admission::Kiss(_) => {
                    counters.ke_denied.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("NTS-KE connection from {peer} refused by the access rules");
                    continue;
                }
            }
            let from_peer = sessions.iter().filter(|s| s.peer == peer).count();
            if sessions.len() >= KE_MAX_CONNECTIONS || from_peer >= KE_PER_ADDRESS {
                counters.ke_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("NTS-KE connection from {peer} refused: too many open");
                continue;
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
        let (made, created) = load_or_create_master(&path, "--nts-master").unwrap();
        assert!(created);
        assert_eq!(made.len(), MIN_MASTER_LEN);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_master(&path, "--nts-master").unwrap(),
            (made, false)
        );
        std::fs::write(&path, [1u8; 16]).unwrap();
        let e = load_or_create_master(&path, "--nts-master").unwrap_err();
        assert!(e.contains("16 bytes") && e.contains("at least 32"), "{e}");
        assert!(!e.contains('\n'));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed certificate for `localhost`: its chain and its key.
    fn certificate() -> (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        String,
        String,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert.pem(),
            key.serialize_pem(),
        )
    }

    /// A key-exchange server on 127.0.0.1 with a fresh certificate, on its own thread, with
    /// the deadline and policy given; stopped when the returned `Shared` is told to.
    fn ke_server(deadline: Duration, policy: Policy) -> (SocketAddr, Arc<crate::serve::Shared>) {
        let (chain, key, _, _) = certificate();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = server_config(chain, key, provider, Arc::new(DefaultTimeProvider)).unwrap();
        let ring = Arc::new(CookieKeyring::with_default_rotation(&[5; 32]).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let mut l = KeListener::new(
            vec![listener],
            Arc::new(tls),
            ring,
            KeServerSettings::default(),
            policy,
        )
        .unwrap();
        l.deadline = deadline;
        let addr = l.local_addrs()[0];
        let shared = Arc::new(crate::serve::Shared::default());
        l.spawn(shared.clone()).unwrap();
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
        let (addr, shared) = ke_server(Duration::from_millis(600), Policy::default());
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
    fn denied_and_too_frequent_connections_are_closed_at_accept() {
        let policy = Policy {
            access: ntpkit_core::AccessList::new(vec![
                "deny 127.0.0.2".parse().unwrap(),
                "allow all".parse().unwrap(),
            ]),
            rate: Some(ntpkit_core::RateLimiter::new(
                ntpkit_core::RateLimit {
                    interval: 12,
                    burst: 2,
                    ..ntpkit_core::RateLimit::default()
                },
                [1, 2],
            )),
        };
        let (addr, shared) = ke_server(Duration::from_secs(5), policy);
        let connect_from = |ip: &str| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let from: SocketAddr = format!("{ip}:0").parse().unwrap();
            s.bind(&from.into()).unwrap();
            s.connect(&addr.into()).unwrap();
            std::net::TcpStream::from(s)
        };
        let mut denied = connect_from("127.0.0.2");
        assert!(closed_within(&mut denied, Duration::from_millis(500)));
        // Two connections within the burst stay open (until their deadline); the third is
        // over the rate and closed at once.
        let mut first = connect_from("127.0.0.1");
        let mut second = connect_from("127.0.0.1");
        let mut third = connect_from("127.0.0.1");
        assert!(closed_within(&mut third, Duration::from_millis(500)));
        assert!(!closed_within(&mut first, Duration::from_millis(100)));
        assert!(!closed_within(&mut second, Duration::from_millis(100)));
        let c = shared.nts.snapshot();
        assert_eq!((c.ke_denied, c.ke_limited, c.ke_failed), (1, 1, 0), "{c:?}");
        shared.stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn certificate_reload_takes_good_files_and_keeps_the_old_on_bad_ones() {
        let dir = std::env::temp_dir().join(format!("ntpkit-nts-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = NtsServeConfig {
            ke: vec!["127.0.0.1:0".parse().unwrap()],
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            master: dir.join("master"),
            rotation_secs: 86_400,
            ntp_server: None,
            ntp_port: None,
            names: NtsOptionNames::SERVE,
        };
        // Replaced as a renamed temporary file, as certificate tools do.
        let install = |path: &Path, text: &str| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        };
        let (_, _, cert_a, key_a) = certificate();
        install(&config.cert, &cert_a);
        install(&config.key, &key_a);
        let mut l = prepare(&config, Policy::default(), None).unwrap().listener;
        let first = l.tls.clone();
        l.reload_tls(false);
        assert!(
            Arc::ptr_eq(&first, &l.tls),
            "unchanged files are not reloaded"
        );

        let (_, _, cert_b, key_b) = certificate();
        install(&config.cert, &cert_b);
        install(&config.key, &key_b);
        l.reload_tls(false);
        assert!(!Arc::ptr_eq(&first, &l.tls), "changed files are reloaded");
        let second = l.tls.clone();

        // A key that does not belong to the certificate, then garbage: the last good
        // configuration stays.
        install(&config.key, &key_a);
        l.reload_tls(false);
        assert!(Arc::ptr_eq(&second, &l.tls));
        install(&config.cert, "not a certificate\n");
        l.reload_tls(true);
        assert!(Arc::ptr_eq(&second, &l.tls));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unreadable_tls_files_are_named() {
        let e = load_tls(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
            NtsOptionNames::SERVE,
        )
        .unwrap_err();
        assert!(
            e.contains("/nonexistent/c.pem") && e.contains("--cert"),
            "{e}"
        );
        let e = load_tls(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
            NtsOptionNames::DAEMON,
        )
        .unwrap_err();
        assert!(e.contains("nts-ke-server.cert"), "{e}");
    }
}
