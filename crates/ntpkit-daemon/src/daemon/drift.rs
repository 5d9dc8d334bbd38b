//! The drift file: the clock's frequency error estimate (ppm), kept across restarts.
//!
//! Written atomically: to a temporary file beside it, flushed to disk, then renamed over the
//! old one, so a crash leaves either the old value or the new one, never a torn file.

use std::io::{self, Write};
use std::path::Path;

/// Reads a drift file: one number, ppm. None if the file does not exist.
pub fn read(path: &Path) -> io::Result<Option<f64>> {
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
        Err(e) => Err(e),
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
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{ppm:.6}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("ntpkit-drift-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
}
