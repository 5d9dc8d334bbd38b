//! The shared-memory page: ClockBound's layout, version 2, native byte order.
//!
//! ```text
//! offset  size  field
//!      0     8  magic               41 4D 5A 4E 43 42 02 00 (two u32: 0x414D5A4E, 0x43420200)
//!      8     4  segment size        u32, bytes (80)
//!     12     2  version             u16 (2)
//!     14     2  generation          u16: odd while the writer updates, even when done;
//!                                   after 65534 it goes to 2, never to 0
//!     16    16  as-of               CLOCK_MONOTONIC_COARSE (i64 s, i64 ns) of the bound
//!     32    16  void-after          CLOCK_MONOTONIC_COARSE (i64 s, i64 ns) after which the
//!                                   bound is not to be trusted
//!     48     8  bound               i64 ns: |CLOCK_REALTIME − true time| at as-of
//!     56     8  disruption marker   u64 (ntpkit writes 0)
//!     64     4  max drift           u32 ppb: how fast the bound grows after as-of
//!     68     4  clock status        i32: 0 unknown, 1 synchronized, 2 free running, 3 disrupted
//!     72     1  disruption support  u8 (ntpkit writes 0: no VMClock)
//!     73     7  padding
//! ```
//!
//! A reader takes the generation, copies the body, and takes the generation again: the copy
//! is whole if both are the same even number ([`Clock::now`](crate::Clock::now)). The
//! [`PageWriter`] is what `ntpkit daemon` publishes with.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU16, Ordering};

/// Where ClockBound's daemon publishes its page, and ntpkit's by default.
pub const DEFAULT_PATH: &str = "/var/run/clockbound/shm0";
/// The page's signature.
pub const MAGIC: [u32; 2] = [0x414D_5A4E, 0x4342_0200];
/// The layout version this crate reads and writes.
pub const VERSION: u16 = 2;
/// Bytes of the header (magic, size, version, generation).
pub const HEADER_LEN: usize = 16;
/// Bytes of the whole page.
pub const PAGE_LEN: usize = HEADER_LEN + std::mem::size_of::<Body>();

/// A `CLOCK_MONOTONIC_COARSE` or `CLOCK_REALTIME` reading, as `struct timespec` holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    /// Whole seconds.
    pub sec: i64,
    /// Nanoseconds, 0 to 999,999,999.
    pub nsec: i64,
}

impl Timespec {
    /// The reading as nanoseconds (i128: no overflow for any i64 second count).
    pub fn as_nanos(self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }

    /// The timespec of `nanos` nanoseconds (saturating at the ends of i64 seconds).
    pub fn from_nanos(nanos: i128) -> Timespec {
        let sec = nanos.div_euclid(1_000_000_000);
        let nsec = nanos.rem_euclid(1_000_000_000) as i64;
        Timespec {
            sec: sec.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            nsec,
        }
    }
}

/// The page's clock status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No bound: the clock is not synchronized, or the writer stopped vouching for it.
    Unknown,
    /// The writer keeps the clock synchronized and refreshed the bound within the last 5 s.
    Synchronized,
    /// The bound holds but the clock is not being corrected: the writer is in holdover, or
    /// it has not refreshed the page for 5 s (stopped, hung). The bound grows at the page's
    /// maximum drift until void-after.
    FreeRunning,
    /// The clock was disrupted (a virtual machine was migrated or resumed): no bound.
    Disrupted,
}

impl Status {
    /// The page's code for it.
    pub fn code(self) -> i32 {
        match self {
            Status::Unknown => 0,
            Status::Synchronized => 1,
            Status::FreeRunning => 2,
            Status::Disrupted => 3,
        }
    }

    /// The status of a code; None for a code the layout does not define.
    pub fn from_code(code: i32) -> Option<Status> {
        Some(match code {
            0 => Status::Unknown,
            1 => Status::Synchronized,
            2 => Status::FreeRunning,
            3 => Status::Disrupted,
            _ => return None,
        })
    }
}

/// The header's fields but the generation, as read from a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub magic: [u32; 2],
    pub size: u32,
    pub version: u16,
}

impl Header {
    /// Reads the header at the start of `map`.
    ///
    /// # Safety
    /// `map` must point to at least [`HEADER_LEN`] readable, 4-aligned bytes.
    pub(crate) unsafe fn read(map: *const u8) -> Header {
        let words = map.cast::<u32>();
        Header {
            magic: [words.read_volatile(), words.add(1).read_volatile()],
            size: words.add(2).read_volatile(),
            version: map.add(12).cast::<u16>().read_volatile(),
        }
    }
}

/// The page after its header: what one update writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Body {
    /// When the bound was computed (`CLOCK_MONOTONIC_COARSE`).
    pub as_of: Timespec,
    /// After this (`CLOCK_MONOTONIC_COARSE`) the bound is not to be trusted.
    pub void_after: Timespec,
    /// |CLOCK_REALTIME − true time| at `as_of`, at most; nanoseconds.
    pub bound_nsec: i64,
    /// The VMClock disruption marker last seen (0: ntpkit does not follow a VMClock).
    pub disruption_marker: u64,
    /// How fast the bound grows after `as_of`, parts per billion.
    pub max_drift_ppb: u32,
    /// [`Status::code`].
    pub clock_status: i32,
    /// 1 if readers must check a VMClock's disruption marker (ntpkit writes 0).
    pub clock_disruption_support: u8,
    /// Zero.
    pub padding: [u8; 7],
}

/// Writes the page: the header once, then one [`Body`] per update under the generation
/// count. Creating a page at a path that already holds a valid one reuses that file, so
/// readers that mapped it keep reading the new writer's updates.
#[derive(Debug)]
pub struct PageWriter {
    map: *mut u8,
    path: PathBuf,
    _file: File,
}

// SAFETY: the mapping is owned by the writer and only written through `&mut self`.
unsafe impl Send for PageWriter {}

impl PageWriter {
    /// Opens the page at `path`, or creates it (and its directory, mode 0755): a new page is
    /// written whole under a temporary name and renamed into place, so a reader never finds
    /// a half-written header. The page is readable by every user (mode 0644) and starts with
    /// status unknown. A file at `path` is only ever replaced if it is empty or a clock page
    /// (of any layout version); anything else is refused, so a mistyped path loses nothing.
    pub fn create(path: &Path) -> io::Result<PageWriter> {
        if let Some(writer) = Self::reuse(path)? {
            return Ok(writer);
        }
        if let Some(what) = foreign_file(path)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is {what}, not a clock page; remove it or choose another path",
                    path.display()
                ),
            ));
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
        let mut temp_name = name.to_os_string();
        temp_name.push(format!(".{}.new", std::process::id()));
        let temp = dir.join(temp_name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)?;
        // The mode asked for is masked by the umask: set it outright.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.set_len(PAGE_LEN as u64)?;
        let mut writer = PageWriter {
            map: map_shared(&file)?,
            path: path.to_path_buf(),
            _file: file,
        };
        // SAFETY: the mapping is PAGE_LEN bytes, nobody else has the file yet.
        unsafe {
            let header = writer.map.cast::<u32>();
            header.write(MAGIC[0]);
            header.add(1).write(MAGIC[1]);
            header.add(2).write(PAGE_LEN as u32);
            writer.map.add(12).cast::<u16>().write(VERSION);
        }
        writer.write(&Body::default());
        if let Err(e) = std::fs::rename(&temp, path) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        Ok(writer)
    }

    /// The writer of an existing valid page at `path`; None if there is none to reuse.
    fn reuse(path: &Path) -> io::Result<Option<PageWriter>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() != PAGE_LEN as u64 {
            return Ok(None);
        }
        let map = map_shared(&file)?;
        let writer = PageWriter {
            map,
            path: path.to_path_buf(),
            _file: file,
        };
        // SAFETY: the mapping is PAGE_LEN bytes.
        let h = unsafe { Header::read(writer.map) };
        Ok(
            (h.magic == MAGIC && h.size as usize == PAGE_LEN && h.version == VERSION)
                .then_some(writer),
        )
    }

    /// Where the page is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn generation(&self) -> &AtomicU16 {
        // SAFETY: offset 14 is 2-aligned in a page-aligned mapping and lives as long as self.
        unsafe { &*self.map.add(14).cast::<AtomicU16>() }
    }

    /// Publishes `body`: generation to odd, the body, generation to the next even number.
    pub fn write(&mut self, body: &Body) {
        let generation = self.generation();
        let current = generation.load(Ordering::Relaxed);
        let even = current & !1;
        generation.store(even.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: the body lies within the mapping, 8-aligned at offset 16.
        unsafe {
            self.map
                .add(HEADER_LEN)
                .cast::<Body>()
                .write_volatile(*body)
        };
        let next = match even.wrapping_add(2) {
            0 => 2,
            n => n,
        };
        generation.store(next, Ordering::Release);
    }
}

impl Drop for PageWriter {
    fn drop(&mut self) {
        // SAFETY: mapped by map_shared with PAGE_LEN bytes.
        unsafe { libc::munmap(self.map.cast(), PAGE_LEN) };
    }
}

/// What the file at `path` is, if it exists and may not be replaced by a page: anything but
/// an empty file or one that starts with the page signature.
fn foreign_file(path: &Path) -> io::Result<Option<String>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Ok(Some("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Ok(None);
    }
    let mut start = [0u8; 4];
    let n = std::io::Read::read(&mut File::open(path)?, &mut start)?;
    Ok((n < 4 || u32::from_ne_bytes(start) != MAGIC[0])
        .then(|| format!("a file of {} bytes", meta.len())))
}

/// Maps the first PAGE_LEN bytes of `file` shared and writable.
fn map_shared(file: &File) -> io::Result<*mut u8> {
    // SAFETY: a fresh mapping of a file we hold open; checked for failure.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(map.cast())
}

/// `CLOCK_MONOTONIC_COARSE` now: the clock the page's as-of and void-after are on.
pub fn monotonic_coarse() -> Timespec {
    clock(libc::CLOCK_MONOTONIC_COARSE)
}

/// `CLOCK_REALTIME` now: the clock the page's bound is about.
pub fn realtime() -> Timespec {
    clock(libc::CLOCK_REALTIME)
}

fn clock(id: libc::clockid_t) -> Timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer; these clocks cannot fail on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Timespec {
        sec: ts.tv_sec,
        nsec: ts.tv_nsec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_clockbounds() {
        assert_eq!(std::mem::size_of::<Body>(), 64);
        assert_eq!(PAGE_LEN, 80);
        let b = Body::default();
        let base = &b as *const Body as usize;
        let at = |p: *const u8| p as usize - base + HEADER_LEN;
        assert_eq!(at(&b.as_of as *const _ as *const u8), 16);
        assert_eq!(at(&b.void_after as *const _ as *const u8), 32);
        assert_eq!(at(&b.bound_nsec as *const _ as *const u8), 48);
        assert_eq!(at(&b.disruption_marker as *const _ as *const u8), 56);
        assert_eq!(at(&b.max_drift_ppb as *const _ as *const u8), 64);
        assert_eq!(at(&b.clock_status as *const _ as *const u8), 68);
        assert_eq!(at(&b.clock_disruption_support as *const u8), 72);
    }

    #[test]
    fn timespec_nanos_round_trip() {
        for n in [0i128, 1, -1, 1_500_000_000, -1_500_000_001, 1 << 62] {
            assert_eq!(Timespec::from_nanos(n).as_nanos(), n);
        }
        assert_eq!(
            Timespec::from_nanos(-1),
            Timespec {
                sec: -1,
                nsec: 999_999_999
            }
        );
    }

    #[test]
    fn status_codes_are_the_layouts() {
        for s in [
            Status::Unknown,
            Status::Synchronized,
            Status::FreeRunning,
            Status::Disrupted,
        ] {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(4), None);
    }
}
