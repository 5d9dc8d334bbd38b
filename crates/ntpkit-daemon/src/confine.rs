//! What `ntpkit daemon` and `ntpkit serve` give up once they have started: root, every
//! capability they no longer need, and every system call they do not make.
//!
//! Call [`drop_privileges`] after the privileged work (binding port 123, opening the control
//! socket, reading the drift file, checking that the clock can be adjusted), then
//! [`install_seccomp`], both before starting any thread: credentials and the filter are
//! inherited by the threads started afterwards.

use ntpkit_os::privilege::{self, Capability};
use std::path::Path;

/// Switches to `user` (if given) and keeps only the capabilities `keep`; then checks that the
/// directories in `writable` (where files are replaced while running) can still be written.
/// The error names the problem and the fix.
pub fn drop_privileges(
    user: Option<&str>,
    keep: &[Capability],
    writable: &[(&str, &Path)],
) -> Result<(), String> {
    let account = match user {
        None => None,
        Some(name) => match privilege::lookup_user(name) {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                return Err(format!(
                    "user {name:?} does not exist; create it (useradd --system {name}) or run \
                     without a user"
                ))
            }
            Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
        },
    };
    let dropped =
        privilege::drop_privileges(account.as_ref(), keep).map_err(|e| match &account {
            Some(a) => format!(
                "cannot switch to user {:?} (uid {}, gid {}): {e}; start as root (or with \
             CAP_SETUID and CAP_SETGID), or run without a user",
                a.name, a.uid, a.gid
            ),
            None => format!("cannot drop capabilities: {e}"),
        })?;
    match &dropped.switched_to {
        Some(a) => tracing::info!(
            "running as user {} (uid {}, gid {}), capabilities kept: {}",
            a.name,
            a.uid,
            a.gid,
            capability_names(dropped.kept)
        ),
        None => tracing::debug!("capabilities kept: {}", capability_names(dropped.kept)),
    }
    if ntpkit_os::fd::effective_uid() == 0 {
        tracing::warn!(
            "running as root; set a user to run as once started (daemon: user = \"ntpkit\"; \
             serve: --user ntpkit)"
        );
    }
    for (what, path) in writable {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !privilege::can_write(dir) {
            let who = dropped
                .switched_to
                .as_ref()
                .map_or_else(|| "this user".to_string(), |a| format!("user {}", a.name));
            return Err(format!(
                "{who} cannot write {} (the {what}'s directory), so it could not be kept; \
                 give it the directory (chown {} {})",
                dir.display(),
                dropped
                    .switched_to
                    .as_ref()
                    .map_or("USER", |a| a.name.as_str()),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Installs the system-call filter if `enabled` and the kernel supports it.
pub fn install_seccomp(enabled: bool) -> Result<(), String> {
    if !enabled {
        tracing::info!("system-call filter off");
        return Ok(());
    }
    if !ntpkit_os::seccomp::supported() {
        tracing::warn!("this kernel has no seccomp filters; running without a system-call filter");
        return Ok(());
    }
    ntpkit_os::seccomp::install()
        .map_err(|e| format!("cannot install the system-call filter: {e}; turn it off to run (daemon: seccomp = false; serve: --no-seccomp)"))?;
    tracing::debug!("system-call filter installed");
    Ok(())
}

fn capability_names(mask: u64) -> String {
    let names: Vec<&str> = [
        (Capability::SysTime, "CAP_SYS_TIME"),
        (Capability::NetBindService, "CAP_NET_BIND_SERVICE"),
    ]
    .iter()
    .filter(|(c, _)| mask & (1 << c.bit()) != 0)
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() && mask == 0 {
        "none".into()
    } else if names.is_empty() {
        format!("{mask:#x}")
    } else {
        names.join(", ")
    }
}
