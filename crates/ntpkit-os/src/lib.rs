//! `ntpkit-os`: the only crate of ntpkit with `unsafe` code.
//!
//! What it does: the operating-system calls the safe crates cannot make through `std` —
//! UDP sockets with kernel receive timestamps (`SO_TIMESTAMPNS`), software transmit timestamps
//! (`SO_TIMESTAMPING`, read from the error queue) and batched `recvmmsg`/`sendmmsg` ([`udp`]); non-blocking TCP for an event loop ([`tcp`]); `poll`, a
//! wake-up descriptor and signal handlers ([`poll`]); descriptor flags and peer credentials
//! ([`fd`]); reading the realtime and monotonic clocks, measuring their precision and reading
//! the kernel's clock status with a read-only `adjtimex` ([`clock`]); raising the open-file
//! limit ([`raise_nofile_limit`]); dropping privileges after start ([`privilege`]) and
//! confining the running process to the system calls it makes ([`seccomp`]).
//!
//! Every socket is made with plain calls (no flags in the socket type, no `accept4`, no
//! `epoll`), so that the daemon also runs unmodified under clknetsim, the simulator that
//! replaces these calls through `LD_PRELOAD`.
//!
//! Adjusting the clock lives only in [`adjust`], for the daemon's `system` backend, which a
//! person must ask for and which needs CAP_SYS_TIME; tests never use it. Everything else here is
//! read only (`adjtimex` with `modes = 0`).
//!
//! Linux only: `recvmmsg`, `sendmmsg`, `SO_TIMESTAMPNS` and `SO_TIMESTAMPING` are Linux
//! interfaces.
#![deny(unsafe_op_in_unsafe_fn)]
// libc field types differ between targets (time_t, rlim_t, msg_controllen): the casts stay.
#![allow(clippy::unnecessary_cast)]
#![warn(missing_docs)]

pub mod adjust;
pub mod clock;
pub mod fd;
pub mod poll;
pub mod privilege;
pub mod seccomp;
pub mod tcp;
pub mod udp;

pub use clock::{
    clock_precision_log2, kernel_clock_status, monotonic_nanos, realtime_nanos, KernelClockStatus,
};
pub use poll::{handle_signals, take_signals, Interest, PollSet, Signal, Waker};
pub use tcp::{TcpListener, TcpStream};
pub use udp::{Received, RecvBatch, SendBatch, UdpSocket, UdpSocketOptions};

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit; returns the new soft
/// limit. Call once at start by servers that hold many TCP connections.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; only the soft limit changes, within the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}
