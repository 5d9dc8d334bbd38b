//! The page as AWS's own ClockBound client reads it (`clock-bound-client` from the registry),
//! and as this crate's reader reads it.

use clock_bound_client::{ClockBoundClient, ClockStatus};
use ntpkit_clock::page::{self, Body, PageWriter, Timespec};
use ntpkit_clock::{Clock, Error, Status};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fresh directory for one test's page.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ntpkit-clock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn body(status: Status, bound_nsec: i64, max_drift_ppb: u32) -> Body {
    let as_of = page::monotonic_coarse();
    Body {
        as_of,
        void_after: Timespec {
            sec: as_of.sec + 1000,
            nsec: as_of.nsec,
        },
        bound_nsec,
        max_drift_ppb,
        clock_status: status.code(),
        ..Body::default()
    }
}

fn nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128
}

fn aws_nanos(t: nix::sys::time::TimeSpec) -> i128 {
    t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
}

#[test]
fn clockbound_client_reads_what_ntpkit_writes() {
    let dir = scratch("aws");
    // The directory does not exist yet: the writer makes it.
    let path = dir.join("clockbound/shm0");
    let mut writer = PageWriter::create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644, "every user may read the page");

    // A new page says unknown until the first bound.
    let mut aws = ClockBoundClient::new_with_path(path.to_str().unwrap()).unwrap();
    assert_eq!(aws.now().unwrap().clock_status, ClockStatus::Unknown);
    let ours = Clock::open(&path).unwrap();
    assert!(matches!(
        ours.now(),
        Err(Error::Unsynchronized(Status::Unknown))
    ));

    // The same mapping sees every later update.
    writer.write(&body(Status::Synchronized, 123_456, 1_000));
    let before = nanos(SystemTime::now());
    let r = aws.now().unwrap();
    let after = nanos(SystemTime::now());
    assert_eq!(r.clock_status, ClockStatus::Synchronized);
    let (earliest, latest) = (aws_nanos(r.earliest), aws_nanos(r.latest));
    let half = (latest - earliest) / 2;
    // 123,456 ns, grown by 1 ppm for the moments since as-of.
    assert!((123_456..123_556).contains(&half), "half-width {half} ns");
    let mid = earliest + half;
    assert!(before <= mid && mid <= after, "centred on CLOCK_REALTIME");

    let i = ours.now().unwrap();
    assert_eq!(i.status, Status::Synchronized);
    let our_half = (nanos(i.latest) - nanos(i.earliest)) / 2;
    assert!((our_half - half).abs() < 100, "{our_half} vs {half}");

    writer.write(&body(Status::FreeRunning, 2_000_000, 16_000));
    let r = aws.now().unwrap();
    assert_eq!(r.clock_status, ClockStatus::FreeRunning, "holdover");
    assert!(aws_nanos(r.latest) - aws_nanos(r.earliest) >= 4_000_000);
    assert_eq!(ours.now().unwrap().status, Status::FreeRunning);

    // A page left unrefreshed for more than 5 s reads as free running; past void-after, as
    // unknown.
    let mut stale = body(Status::Synchronized, 1_000, 1_000);
    stale.as_of.sec -= 6;
    writer.write(&stale);
    assert_eq!(aws.now().unwrap().clock_status, ClockStatus::FreeRunning);
    assert_eq!(ours.now().unwrap().status, Status::FreeRunning);
    stale.void_after = stale.as_of;
    writer.write(&stale);
    assert_eq!(aws.now().unwrap().clock_status, ClockStatus::Unknown);
    assert!(matches!(ours.now(), Err(Error::Unsynchronized(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_restarted_writer_keeps_the_readers_mapping() {
    let dir = scratch("restart");
    let path = dir.join("shm0");
    let first = PageWriter::create(&path).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let mut aws = ClockBoundClient::new_with_path(path.to_str().unwrap()).unwrap();
    drop(first);
    // The new writer reuses the valid page in place: same file, so the client that mapped
    // it before sees the new writer's bound.
    let mut second = PageWriter::create(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    second.write(&body(Status::Synchronized, 5_000, 0));
    let r = aws.now().unwrap();
    assert_eq!(r.clock_status, ClockStatus::Synchronized);
    assert_eq!(aws_nanos(r.latest) - aws_nanos(r.earliest), 10_000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_that_is_not_a_page_is_refused_and_kept() {
    let dir = scratch("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shm0");
    let text = b"not a clock page at all";
    std::fs::write(&path, text).unwrap();
    assert!(matches!(Clock::open(&path), Err(Error::NotAPage(..))));
    // A mistyped path must not cost the file that is there.
    let e = PageWriter::create(&path).unwrap_err();
    assert!(e.to_string().contains("not a clock page; remove it"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), text);
    std::fs::write(&path, [0u8; 80]).unwrap();
    let e = Clock::open(&path).unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
    assert!(
        PageWriter::create(&path).is_err(),
        "80 zero bytes are not a page either"
    );
    // A page of another layout (ClockBound's version 1, say) is replaced.
    let mut old = vec![0u8; 64];
    old[..4].copy_from_slice(&page::MAGIC[0].to_ne_bytes());
    std::fs::write(&path, &old).unwrap();
    let mut w = PageWriter::create(&path).unwrap();
    w.write(&body(Status::Synchronized, 1, 0));
    assert_eq!(
        Clock::open(&path).unwrap().now().unwrap().status,
        Status::Synchronized
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    // So is an empty file.
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    PageWriter::create(&empty).unwrap();
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 80);
    std::fs::remove_file(&empty).unwrap();
    let e = Clock::open(&dir.join("absent")).unwrap_err();
    assert!(e.to_string().contains("clockbound-shm"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn commit_wait_waits_until_the_timestamp_is_certainly_past() {
    let dir = scratch("wait");
    let path = dir.join("shm0");
    let mut w = PageWriter::create(&path).unwrap();
    // A 20 ms bound: a timestamp taken at `latest` is certainly past about 40 ms later.
    w.write(&body(Status::Synchronized, 20_000_000, 0));
    let clock = Clock::open(&path).unwrap();
    let commit = clock.now().unwrap().latest;
    let waited = clock.wait_until_past(commit).unwrap();
    assert!(waited >= Duration::from_millis(39), "{waited:?}");
    assert!(clock.now().unwrap().certainly_after(commit));
    // No bound, no waiting.
    w.write(&body(Status::Unknown, 0, 0));
    assert!(matches!(
        clock.wait_until_past(SystemTime::now()),
        Err(Error::Unsynchronized(Status::Unknown))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
