//! The drift file: the clock's frequency error estimate (ppm), kept across restarts.
//!
//! Written atomically: to a new temporary file beside it (created exclusively, under a name
//! nobody can predict, so that a world-writable directory cannot be used to redirect the
//! write), flushed to disk, then renamed over the old one: a crash leaves either the old value
//! or the new one, never a torn file.

use rand_core::{OsRng, TryRngCore};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads a drift file: one number, ppm. None if the file does not exist. Every error names the
/// file.
pub fn read(path: &Path) -> io::Result<Option<f64>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let v: f64 = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: not a frequency in ppm; delete the file to start afresh",
                            path.display()
                        ),
                    )
                })?;
            if !v.is_finite() || v.abs() > 500.0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {v} ppm is out of range; delete the file to start afresh",
                        path.display()
                    ),
                ));
            }
            Ok(Some(v))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(named(e)),
    }
}

/// Writes `ppm` to `path` atomically.
pub fn write(path: &Path, ppm: f64) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("drift file path has no file name"))?;
    let (tmp, mut file) = create_temporary(dir, &name.to_string_lossy())?;
    let written = writeln!(file, "{ppm:.6}")
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new file `.NAME.RANDOM.tmp` in `dir`, created exclusively (never an existing file or a
/// symbolic link someone placed there), mode 0644.
fn create_temporary(dir: &Path, name: &str) -> io::Result<(std::path::PathBuf, std::fs::File)> {
    let mut last = None;
    for _ in 0..8 {
        let tag = OsRng
            .try_next_u64()
            .map_err(|e| io::Error::other(format!("no OS randomness: {e}")))?;
        let tmp = dir.join(format!(".{name}.{tag:016x}.tmp"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot create a temporary file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ntpkit-drift-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_errors() {
        let dir = scratch("rt");
        let p = dir.join("drift");
        assert_eq!(read(&p).unwrap(), None);
        write(&p, -12.345678).unwrap();
        assert_eq!(read(&p).unwrap(), Some(-12.345678));
        write(&p, 3.5).unwrap();
        assert_eq!(read(&p).unwrap(), Some(3.5));
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::write(&p, "garbage").unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("delete the file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_drift_file_is_named() {
        let dir = scratch("unreadable");
        // A directory where the file should be: reading it fails for a reason other than
        // absence, whoever runs the test.
        let p = dir.join("drift");
        std::fs::create_dir(&p).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        // A link planted under a name derived from the process (what a predictable temporary
        // name would be): the write creates its own file and never follows it.
        std::os::unix::fs::symlink(
            &victim,
            dir.join(format!(".drift.tmp{}", std::process::id())),
        )
        .unwrap();
        write(&dir.join("drift"), 1.25).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(read(&dir.join("drift")).unwrap(), Some(1.25));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
