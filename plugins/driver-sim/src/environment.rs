//! Time, sleeping, progress and randomness: everything the simulator needs from its
//! surroundings, behind a trait so unit tests can run on a fake clock without sleeping.

use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Environment {
    /// Wall-clock time in milliseconds since the Unix epoch: the simulator's transitions are
    /// stored as absolute times, shared by every instance of the component.
    fn now_ms(&self) -> u64;
    fn sleep(&self, duration: Duration);
    fn report_progress(&self, fraction: f32, message: &str);
    /// A uniformly distributed number in [0, 1), for failure injection.
    fn random_fraction(&self) -> f64;
}

/// The real thing: the wasi clocks (or the OS's, natively), the host's progress import and the
/// randomness `std` seeds its hash maps with.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn now_ms(&self) -> u64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }

    fn sleep(&self, duration: Duration) {
        // On wasip2 this blocks on a wasi monotonic-clock pollable; the host is async, so only
        // this call waits.
        std::thread::sleep(duration);
    }

    fn report_progress(&self, fraction: f32, message: &str) {
        hyperplane_guest::progress::report(fraction, message);
    }

    fn random_fraction(&self) -> f64 {
        // Every `RandomState` gets fresh keys from the platform's randomness (wasi:random on
        // wasip2); that is plenty for failure injection and needs no extra crate.
        let bits = std::collections::hash_map::RandomState::new().hash_one(0_u8);
        (bits >> 11) as f64 / (1_u64 << 53) as f64
    }
}
