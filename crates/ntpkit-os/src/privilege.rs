//! Least privilege: switching to an unprivileged user after the privileged work is done, keeping
//! only the capabilities still needed, and confining the process to the system calls it makes
//! ([`seccomp`](crate::seccomp)).
//!
//! A server binds port 123 (CAP_NET_BIND_SERVICE or root) and, for the `system` clock backend,
//! adjusts the clock (CAP_SYS_TIME). Everything else — serving, polling sources, resolving
//! names, answering the control socket, writing the drift file — needs no privilege. So, once
//! the sockets are bound, [`drop_privileges`] switches user and group and reduces every
//! capability set (effective, permitted, inheritable, ambient, bounding) to the ones asked for,
//! and sets `no_new_privs` so that no later `execve` could regain any.

use std::ffi::{CStr, CString};
use std::io;

/// A capability the process may keep (the bit numbers of linux/capability.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Adjusting the system clock (`clock_adjtime`, `settimeofday`).
    SysTime,
    /// Binding ports below 1024.
    NetBindService,
}

impl Capability {
    /// Its bit in the capability sets.
    pub fn bit(self) -> u32 {
        match self {
            Capability::SysTime => 25,
            Capability::NetBindService => 10,
        }
    }
}

/// A user account to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
}

/// Looks a user up by name in the password database. `Ok(None)` when no such user exists.
pub fn lookup_user(name: &str) -> io::Result<Option<Account>> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Ok(Some(Account {
            name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
}

/// The effective capabilities of this process, as a bit mask (from `capget`).
pub fn effective_capabilities() -> io::Result<u64> {
    let (effective, _, _) = read_capabilities()?;
    Ok(effective)
}

/// What [`drop_privileges`] did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The user now running, if it changed.
    pub switched_to: Option<Account>,
    /// The effective capabilities kept.
    pub kept: u64,
}

/// Reduces this process to `account` (if given) and the capabilities `keep`, for every thread
/// started afterwards; threads already running keep their credentials, so call it before
/// starting any.
///
/// In order: keep capabilities across the user switch (`PR_SET_KEEPCAPS`), drop every other
/// capability from the bounding set, set the supplementary groups to the account's group, the
/// group IDs and user IDs (real, effective, saved), then the capability sets to exactly `keep`
/// (fewer if the process never had them), clear the ambient set and set `no_new_privs`.
///
/// Without `account` only the capabilities are reduced (a process started as root stays uid 0,
/// which still owns root's files: prefer a user). Fails if switching needs privileges this
/// process lacks.
pub fn drop_privileges(account: Option<&Account>, keep: &[Capability]) -> io::Result<Dropped> {
    let keep_mask: u64 = keep.iter().fold(0, |m, c| m | 1 << c.bit());
    let (_, permitted, _) = read_capabilities()?;
    let keep_mask = keep_mask & permitted;
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let switching = account.filter(|a| {
        // SAFETY: getuid/getgid cannot fail.
        unsafe { libc::getuid() != a.uid || libc::geteuid() != a.uid || libc::getgid() != a.gid }
    });
    if switching.is_some() {
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })?;
    }
    // The bounding set limits what any later program could gain; dropping needs CAP_SETPCAP,
    // so do it before the switch. A process without CAP_SETPCAP has nothing to drop there
    // that no_new_privs does not already make harmless.
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in 0..=last_capability() {
            if keep_mask & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only; EINVAL for unknown bits is fine.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            }
        }
    }
    if let Some(a) = switching {
        let groups = [a.gid];
        // SAFETY: `groups` holds one valid gid.
        check(unsafe { libc::setgroups(1, groups.as_ptr()) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setresgid(a.gid, a.gid, a.gid) })?;
        // SAFETY: integer arguments only.
        check(unsafe { libc::setresuid(a.uid, a.uid, a.uid) })?;
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })?;
    }
    set_capabilities(keep_mask, keep_mask, 0)?;
    // SAFETY: prctl with integer arguments only. Fails (EINVAL) on kernels before 4.3, which
    // have no ambient set to clear.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    set_no_new_privs()?;
    let (effective, _, _) = read_capabilities()?;
    Ok(Dropped {
        switched_to: switching.cloned(),
        kept: effective,
    })
}

/// Sets `no_new_privs`: no `execve` of this process or its children can gain privileges
/// (needed anyway to install a seccomp filter without CAP_SYS_ADMIN).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True if the process may write into `dir` (as its current user, `access(W_OK)`).
pub fn can_write(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

const CAP_SETPCAP: u32 = 8;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

// The C library's wrappers (not `syscall(SYS_capget, …)`: a preloaded simulator such as
// clknetsim replaces `syscall` and knows only the calls it simulates).
extern "C" {
    fn capget(header: *mut CapHeader, data: *mut CapData) -> libc::c_int;
    fn capset(header: *mut CapHeader, data: *const CapData) -> libc::c_int;
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// (effective, permitted, inheritable) of this thread.
fn read_capabilities() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data words as the version-3 interface wants.
    let r = unsafe { capget(&mut header, data.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn set_capabilities(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data words as the version-3 interface wants.
    let r = unsafe { capset(&mut header, data.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_a_missing_user_are_looked_up() {
        let root = lookup_user("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("no-such-user-ntpkit-test").unwrap(), None);
        assert!(lookup_user("bad\0name").is_err());
    }

    #[test]
    fn capabilities_are_read() {
        let (e, p, _) = read_capabilities().unwrap();
        assert_eq!(e & !p, 0, "effective is a subset of permitted");
    }
}
