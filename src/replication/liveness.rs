//! The timers of one side of a replication session, sans-IO: when a
//! heartbeat is due (nothing sent for a while) and when the peer has been
//! silent too long (nothing heard within the peer timeout). Time is
//! monotonic milliseconds passed in: `clock::Mono` in the threads, the
//! step in the simulator.

/// Send something at least this often, so the peer hears the session is
/// alive (the replica's acks, the primary's `Ping`).
pub const HEARTBEAT_MS: u64 = 1000;

/// One side's timers.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    timeout_ms: u64,
    /// When this side last sent, and last heard from its peer. Never
    /// moved back (a clock that steps back cannot make a peer look alive
    /// longer, or a heartbeat come later, than the time it last showed).
    sent: u64,
    heard: u64,
}

impl Liveness {
    /// Timers for a session that begins at `now_ms` (the peer was just
    /// heard); `timeout_ms`: the peer timeout.
    pub fn new(now_ms: u64, timeout_ms: u64) -> Liveness {
        Liveness { timeout_ms, sent: now_ms, heard: now_ms }
    }

    pub fn sent(&mut self, now_ms: u64) {
        self.sent = self.sent.max(now_ms);
    }

    pub fn heard(&mut self, now_ms: u64) {
        self.heard = self.heard.max(now_ms);
    }

    /// Nothing sent for `HEARTBEAT_MS`.
    pub fn heartbeat_due(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.sent) >= HEARTBEAT_MS
    }

    /// Nothing heard for longer than the peer timeout: end the session.
    pub fn peer_silent(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heard) > self.timeout_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_fall_due_and_silence_ends_only_past_the_timeout() {
        let mut l = Liveness::new(10_000, 3_000);
        assert!(!l.heartbeat_due(10_999));
        assert!(l.heartbeat_due(11_000));
        l.sent(11_000);
        assert!(!l.heartbeat_due(11_500));
        assert!(!l.peer_silent(13_000), "exactly the timeout is not past it");
        assert!(l.peer_silent(13_001));
        l.heard(13_001);
        assert!(!l.peer_silent(16_001));
        assert!(l.peer_silent(16_002));
    }

    #[test]
    fn a_clock_stepping_back_moves_nothing_back() {
        let mut l = Liveness::new(5_000, 3_000);
        l.heard(9_000);
        l.heard(2_000);
        l.sent(9_000);
        l.sent(1_000);
        assert!(!l.peer_silent(12_000));
        assert!(l.peer_silent(12_001));
        assert!(!l.heartbeat_due(9_999));
        // An earlier reading than the last one counts as no time passed.
        assert!(!l.peer_silent(100) && !l.heartbeat_due(100));
    }
}
