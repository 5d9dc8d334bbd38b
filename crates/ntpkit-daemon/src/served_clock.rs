//! The clock and state that server threads serve: either the local clock with a fixed stratum
//! (`ntpkit serve`), or the daemon's disciplined clock and the state its sync core computes,
//! shared through a [`SharedClock`].
//!
//! Server threads never lock per packet: each holds a [`ServedClock`] with a copy of the view
//! and state, and [`ServedClock::refresh`] (once per batch) copies anew only when the version
//! counter says the daemon published something.

use crate::daemon::clock::ClockView;
use ntpkit_core::{ClockTime, ServedState, NANOS_PER_SEC};
use ntpkit_wire::RefId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The daemon's published clock view and served state, and whether the state is the local
/// clock serving itself (its reference time is then "now", kept current by the readers).
#[derive(Debug)]
pub struct SharedClock {
    version: AtomicU64,
    inner: Mutex<(ClockView, ServedState, bool)>,
}

impl SharedClock {
    /// Starts with `view` and `state` (`local`: the local clock is its own reference).
    pub fn new(view: ClockView, state: ServedState, local: bool) -> Self {
        SharedClock {
            version: AtomicU64::new(1),
            inner: Mutex::new((view, state, local)),
        }
    }

    /// Publishes a new view and state.
    pub fn update(&self, view: ClockView, state: ServedState, local: bool) {
        let mut g = self.inner.lock().expect("not poisoned");
        let same = matches!((&*g, &view), ((ClockView::Os, s, l), ClockView::Os) if *s == state && *l == local);
        *g = (view, state, local);
        if !same {
            self.version.fetch_add(1, Ordering::Release);
        }
    }
}

/// What one server thread serves.
#[derive(Clone, Debug)]
pub struct ServedClock {
    view: ClockView,
    state: ServedState,
    /// Refresh the reference time to "now" about once a second (the local clock is its own
    /// reference).
    local: bool,
    shared: Option<(Arc<SharedClock>, u64)>,
}

impl ServedClock {
    /// The local OS clock served at `stratum` with `refid` and `precision`.
    pub fn local(stratum: u8, refid: RefId, precision: i8) -> Self {
        ServedClock {
            view: ClockView::Os,
            state: ServedState::local(stratum, refid, precision, ClockTime(0)),
            local: true,
            shared: None,
        }
    }

    /// The daemon's clock as it is now, for serving from the thread that disciplines it.
    pub fn fixed(view: ClockView, state: ServedState) -> Self {
        ServedClock {
            view,
            state,
            local: false,
            shared: None,
        }
    }

    /// The daemon's clock, as published in `shared` (for serving threads).
    pub fn shared(shared: Arc<SharedClock>) -> Self {
        let (view, state, local) = *shared.inner.lock().expect("not poisoned");
        let version = shared.version.load(Ordering::Acquire);
        ServedClock {
            view,
            state,
            local,
            shared: Some((shared, version)),
        }
    }

    /// Picks up what the daemon published since the last call (cheap when nothing changed).
    #[inline]
    pub fn refresh(&mut self) {
        if let Some((shared, seen)) = &mut self.shared {
            let v = shared.version.load(Ordering::Acquire);
            if v != *seen {
                let (view, state, local) = *shared.inner.lock().expect("not poisoned");
                self.view = view;
                self.state = state;
                self.local = local;
                *seen = v;
            }
        }
    }

    /// The served clock's reading when the OS clock reads `os_ns` (a kernel timestamp or a
    /// fresh clock read).
    #[inline]
    pub fn read_at(&self, os_ns: i64) -> ClockTime {
        self.view.read_at(os_ns)
    }

    /// The state to answer a request received at `now` (served clock time) with.
    #[inline]
    pub fn state_at(&mut self, now: ClockTime) -> &ServedState {
        if self.local {
            let age = now.nanos_since(self.state.reference_time);
            if !(0..NANOS_PER_SEC).contains(&age) {
                self.state.reference_time = now;
            }
        }
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_core::SoftClock;

    #[test]
    fn local_reference_refreshes_each_second() {
        let mut c = ServedClock::local(10, RefId::LOCL, -20);
        let t0 = ClockTime(1_790_000_000 * NANOS_PER_SEC);
        assert_eq!(c.state_at(t0).reference_time, t0);
        assert_eq!(c.state_at(t0.add_nanos(500_000_000)).reference_time, t0);
        let t1 = t0.add_nanos(1_500_000_000);
        assert_eq!(c.state_at(t1).reference_time, t1);
        // A clock stepped backwards resets the reference too.
        assert_eq!(c.state_at(t0).reference_time, t0);
    }

    #[test]
    fn shared_updates_reach_workers() {
        let shared = Arc::new(SharedClock::new(
            ClockView::Os,
            ServedState::unsynchronized(-20),
            false,
        ));
        let mut worker = ServedClock::shared(shared.clone());
        assert_eq!(worker.state_at(ClockTime(0)).stratum, 16);
        let state = ServedState::local(3, RefId([10, 0, 0, 1]), -20, ClockTime(5));
        shared.update(ClockView::Soft(SoftClock::new(0, 1_000, 0.0)), state, false);
        assert_eq!(
            worker.state_at(ClockTime(0)).stratum,
            16,
            "not before refresh"
        );
        worker.refresh();
        assert_eq!(worker.state_at(ClockTime(0)).stratum, 3);
        assert_eq!(worker.read_at(0), ClockTime(1_000));
        assert_eq!(
            worker.state_at(ClockTime(10)).reference_time,
            ClockTime(5),
            "not refreshed locally"
        );
        // The local clock serving itself: the reader keeps its reference time current.
        shared.update(ClockView::Os, state, true);
        worker.refresh();
        let later = ClockTime(5 + 3 * NANOS_PER_SEC);
        assert_eq!(worker.state_at(later).reference_time, later);
    }
}
