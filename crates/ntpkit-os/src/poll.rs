//! Waiting on many descriptors at once with `poll(2)`, a wake-up descriptor for other threads
//! and signal handlers (`eventfd(2)`), and signal handlers that only record the signal.
//!
//! Only `poll` is used, not `epoll`: the daemon's event loop must also run where the socket and
//! clock calls are provided by a preloaded simulator (clknetsim), which implements `poll` and
//! `select` over its own descriptors but not `epoll`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What to wait for on a descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Interest {
    /// Readable (or a listener with a connection to accept).
    Read,
    /// Writable.
    Write,
    /// Either.
    ReadWrite,
}

/// The descriptors of one `poll` call, reused from call to call (no allocation once grown).
#[derive(Debug, Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    /// An empty set.
    pub fn new() -> PollSet {
        PollSet::default()
    }

    /// Forgets every descriptor (call before filling the set for the next wait).
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Adds `fd`; returns its index for [`readable`](Self::readable) and friends.
    pub fn push(&mut self, fd: RawFd, interest: Interest) -> usize {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            Interest::ReadWrite => libc::POLLIN | libc::POLLOUT,
        };
        self.fds.push(libc::pollfd {
            fd,
            events,
            revents: 0,
        });
        self.fds.len() - 1
    }

    /// Descriptors in the set.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// True if the set is empty.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Waits until a descriptor is ready or `timeout` passes (None: forever). Returns how many
    /// are ready; 0 on timeout. A signal interrupts the wait: `Ok(0)` then too.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let ms = match timeout {
            None => -1,
            // Rounded up: waking early only to wait again wastes a wake-up.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
        };
        for f in &mut self.fds {
            f.revents = 0;
        }
        // SAFETY: `fds` is a valid, writable array of `len` pollfds.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    /// True if descriptor `i` can be read (or has hung up or failed: a read then says how).
    pub fn readable(&self, i: usize) -> bool {
        self.fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// True if descriptor `i` can be written (or failed).
    pub fn writable(&self, i: usize) -> bool {
        self.fds[i].revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0
    }
}

/// Wakes a thread blocked in [`PollSet::wait`] from another thread or a signal handler: an
/// `eventfd` the waiting thread polls for reading.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// Creates the descriptor.
    pub fn new() -> io::Result<Arc<Waker>> {
        // SAFETY: plain eventfd(2) call.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(Waker { fd }))
    }

    /// Wakes the waiting thread (async-signal-safe: one `write`).
    pub fn wake(&self) {
        wake_fd(self.fd.as_raw_fd());
    }

    /// Clears the wake-up (call when the descriptor polled readable).
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn wake_fd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local value; write(2) is async-signal-safe. A failure (the
    // counter saturated, or no such descriptor) only loses a wake-up that is already pending.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Signals a daemon handles.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Signal {
    /// SIGINT.
    Interrupt = 0,
    /// SIGTERM.
    Terminate = 1,
    /// SIGHUP.
    Hangup = 2,
    /// SIGUSR1.
    User1 = 3,
}

impl Signal {
    const ALL: [Signal; 4] = [
        Signal::Interrupt,
        Signal::Terminate,
        Signal::Hangup,
        Signal::User1,
    ];

    fn number(self) -> libc::c_int {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Hangup => libc::SIGHUP,
            Signal::User1 => libc::SIGUSR1,
        }
    }
}

/// Signals received and not yet taken, one bit per [`Signal`].
static PENDING: AtomicU32 = AtomicU32::new(0);
/// The descriptor the handler wakes (-1: none).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int) {
    for s in Signal::ALL {
        if s.number() == signo {
            PENDING.fetch_or(1 << s as u32, Ordering::SeqCst);
        }
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        wake_fd(fd);
    }
}

/// Handles `signals` from now on by recording them and waking `waker`; take them with
/// [`take_signals`]. The waker must live as long as the process (hold its `Arc`).
pub fn handle_signals(signals: &[Signal], waker: &Arc<Waker>) -> io::Result<()> {
    WAKE_FD.store(waker.as_raw_fd(), Ordering::SeqCst);
    for s in signals {
        // SAFETY: sigaction is plain data; all-zero is a valid start (empty mask, no flags).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: installs a handler that only touches atomics and calls write(2).
        if unsafe { libc::sigaction(s.number(), &act, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signals received since the last call.
pub fn take_signals() -> Vec<Signal> {
    let bits = PENDING.swap(0, Ordering::SeqCst);
    Signal::ALL
        .into_iter()
        .filter(|s| bits & (1 << *s as u32) != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waker_ends_a_wait_from_another_thread() {
        let waker = Waker::new().unwrap();
        let mut set = PollSet::new();
        set.push(waker.as_raw_fd(), Interest::Read);
        assert_eq!(set.wait(Some(Duration::from_millis(1))).unwrap(), 0);
        let w = waker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        assert_eq!(set.wait(Some(Duration::from_secs(10))).unwrap(), 1);
        assert!(set.readable(0));
        waker.drain();
        assert_eq!(set.wait(Some(Duration::from_millis(1))).unwrap(), 0);
        t.join().unwrap();
    }
}
