//! Commit-wait, as Spanner does it with TrueTime: a transaction takes the latest possible
//! time as its commit timestamp, then waits until that timestamp is certainly in the past
//! before it acknowledges. Any transaction that starts after the acknowledgement, on any
//! machine whose clock ntpkit bounds, then gets a later timestamp: the order of timestamps
//! is the order of commits.
//!
//! ```text
//! cargo run -p ntpkit-clock --example commit_wait [-- /var/run/clockbound/shm0]
//! ```

use ntpkit_clock::Clock;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

fn main() -> ExitCode {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ntpkit_clock::DEFAULT_PATH));
    let clock = match Clock::open(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("commit_wait: {e}");
            return ExitCode::FAILURE;
        }
    };
    match commit(&clock) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("commit_wait: {e}");
            ExitCode::FAILURE
        }
    }
}

fn commit(clock: &Clock) -> Result<(), ntpkit_clock::Error> {
    let start = clock.now()?;
    // The commit timestamp: no clock that is within its bound can read later than this yet.
    let timestamp = start.latest;
    println!(
        "commit timestamp {:.9} (clock bound ±{:?}, {:?})",
        timestamp
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        start.bound(),
        start.status
    );
    let waited = clock.wait_until_past(timestamp)?;
    let done = clock.now()?;
    println!("waited {waited:?}: the timestamp is now certainly in the past");
    // An event after the acknowledgement is certainly ordered after the commit.
    assert!(done.certainly_after(timestamp));
    Ok(())
}
