//! Time as the code that decides reads it: a monotonic count of
//! milliseconds behind a trait, so the simulator can give each node a
//! clock of its own (running fast or slow, its threads paused) while the
//! decisions run unchanged. Production reads `Mono`: `CLOCK_MONOTONIC`
//! (`Instant`), which does not jump when the wall clock is set.

use std::sync::OnceLock;
use std::time::Instant;

/// A monotonic clock in milliseconds.
pub trait Clock {
    /// Milliseconds since some fixed point of this clock; never decreases.
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock: milliseconds since its first reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mono;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Clock for Mono {
    fn now_ms(&self) -> u64 {
        origin().elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_clock_counts_real_time_and_never_goes_back() {
        let a = Mono.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = Mono.now_ms();
        assert!(b >= a + 20, "{a} then {b}");
    }
}
