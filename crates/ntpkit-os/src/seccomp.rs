//! A seccomp filter that confines a running server to the system calls it makes, and kills the
//! whole process on any other.
//!
//! Installed once start-up is over (sockets bound, files read, privileges dropped), before any
//! thread is started: it holds for the thread that installs it and every thread it starts
//! later. It is installed with `prctl(PR_SET_SECCOMP)` rather than the `seccomp` system call,
//! which a preloaded simulator (clknetsim) does not pass through. The list
//! is what the daemon and `ntpkit serve` do while running: the event loop (`poll`, sockets,
//! the wake-up `eventfd`, signals), serving and polling over UDP and TCP (batched receive and
//! send, kernel timestamps), reading and adjusting the clock, name resolution on short-lived
//! threads (reading `/etc/hosts`, `/etc/resolv.conf`, asking DNS over UDP and TCP), the control
//! socket, the metrics endpoint, writing the drift file (temporary file, `fsync`, rename) and
//! the log. The filter is built by the `seccompiler` crate.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::io;

/// System calls allowed on every architecture.
const ALLOWED: &[libc::c_long] = &[
    // Memory and threads (the allocator, thread start and end, thread-local state).
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_prctl,
    libc::SYS_getrandom,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_capget,
    libc::SYS_prlimit64,
    // Signals.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_tgkill,
    // Waiting and time.
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_gettimeofday,
    // Descriptors and files (drift file, /etc/hosts, resolv.conf, log).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_renameat,
    libc::SYS_unlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_readlinkat,
    libc::SYS_eventfd2,
    libc::SYS_uname,
    libc::SYS_set_tid_address,
    // Sockets.
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
];

/// System calls that exist (and libc uses) only on some architectures.
#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[libc::c_long] = &[
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_readlink,
    libc::SYS_eventfd,
    libc::SYS_time,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_ARCH: &[libc::c_long] = &[];

/// Whether this kernel supports seccomp filters (`Seccomp:` in /proc/self/status, which
/// kernels with CONFIG_SECCOMP_FILTER show).
pub fn supported() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false)
}

/// Installs the filter on this thread and every thread it starts from now on. Also sets
/// `no_new_privs`.
pub fn install() -> io::Result<()> {
    let program: Vec<libc::sock_filter> = program()?
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    crate::privilege::set_no_new_privs()?;
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "filter too long"))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `program`, which lives until the call returns; the kernel copies
    // the filter.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The filter as a BPF program for this architecture.
fn program() -> io::Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(ALLOWED_ARCH)
        .map(|&nr| (nr as i64, Vec::new()))
        .collect();
    // Signals to itself only (a preloaded simulator ends its run this way).
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u64;
    let to_itself = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(io::Error::other)?;
    rules.insert(libc::SYS_kill as i64, vec![to_itself]);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, format!("seccomp: {e}")))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(io::Error::other)?;
    filter.try_into().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_architecture() {
        let program = program().expect("builds");
        assert!(program.len() > ALLOWED.len(), "one check per call at least");
    }
}
