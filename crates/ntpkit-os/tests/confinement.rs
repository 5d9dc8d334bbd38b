//! Dropping privileges and the system-call filter, each in a child process (this test binary
//! run again for one test), since both are irreversible. Needs root. Changes no clock: the
//! capability kept here is CAP_NET_BIND_SERVICE, through the same code that keeps
//! CAP_SYS_TIME for the daemon's `system` clock backend.

use ntpkit_os::privilege::{self, Capability};
use std::process::Command;

const CHILD: &str = "NTPKIT_CONFINEMENT_CHILD";

/// Runs test `name` again in a child process with the child marker set; returns its status and
/// output.
fn in_child(name: &str) -> (std::process::ExitStatus, String) {
    assert_eq!(
        ntpkit_os::fd::effective_uid(),
        0,
        "this test switches users: run it as root"
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// The calling thread's `/proc` status line `key`.
fn status_of_this_thread(key: &str) -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap()
}

#[test]
fn switching_user_keeps_exactly_the_capabilities_asked_for() {
    if std::env::var_os(CHILD).is_some() {
        let nobody = privilege::lookup_user("nobody").unwrap().unwrap();
        let dropped =
            privilege::drop_privileges(Some(&nobody), &[Capability::NetBindService]).unwrap();
        assert_eq!(dropped.switched_to.as_ref(), Some(&nobody));
        assert_eq!(dropped.kept, 1 << Capability::NetBindService.bit());
        println!("Uid={}", status_of_this_thread("Uid"));
        for set in [
            "CapEff",
            "CapPrm",
            "CapBnd",
            "CapInh",
            "CapAmb",
            "NoNewPrivs",
        ] {
            println!("{set}={}", status_of_this_thread(set));
        }
        // Root cannot be had back.
        // SAFETY: setuid with an integer argument.
        assert_ne!(unsafe { libc::setuid(0) }, 0, "became root again");
        return;
    }
    let (st, out) = in_child("switching_user_keeps_exactly_the_capabilities_asked_for");
    assert!(st.success(), "{out}");
    let nobody = privilege::lookup_user("nobody").unwrap().unwrap().uid;
    assert!(
        out.contains(&format!("Uid={nobody}\t{nobody}\t{nobody}\t{nobody}")),
        "{out}"
    );
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert!(
            out.contains(&format!("{set}=0000000000000400")),
            "{set}: {out}"
        );
    }
    for set in ["CapInh", "CapAmb"] {
        assert!(
            out.contains(&format!("{set}=0000000000000000")),
            "{set}: {out}"
        );
    }
    assert!(out.contains("NoNewPrivs=1"), "{out}");
}

#[test]
fn the_filter_allows_what_a_server_does_and_kills_anything_else() {
    if std::env::var_os(CHILD).is_some() {
        ntpkit_os::seccomp::install().unwrap();
        // What a server does still works: clocks, a UDP exchange on loopback, a file.
        let _ = ntpkit_os::realtime_nanos();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
        let _ = std::fs::read_to_string("/etc/hosts").unwrap();
        println!("allowed calls work");
        // A call no server makes: the process dies at once.
        // SAFETY: a plain system call without arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
        println!("still alive after a forbidden call");
        return;
    }
    let (st, out) = in_child("the_filter_allows_what_a_server_does_and_kills_anything_else");
    assert!(out.contains("allowed calls work"), "{out}");
    assert!(!out.contains("still alive"), "{out}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}: {out}");
}
