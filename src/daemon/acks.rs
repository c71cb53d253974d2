//! The `remote-*` acknowledgement policy, pure (no clock, no I/O: the
//! daemon passes what it knows; the acks simulation drives the same code
//! with simulated time): what to answer for a journal's oldest `remote-*`
//! append once it is durable here (`remote_ack`), and when a journal
//! degraded by `on_replica_loss = "degrade"` stops acknowledging as local
//! (`Degradation`).

use super::config::OnReplicaLoss;
use crate::protocol::Durability;

/// What to do with a journal's oldest `remote-*` append once it is durable
/// here (acks of a journal are answered in placement order, so a `Wait`
/// holds every later one too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAck {
    /// The replica holds what the mode asks (in memory for
    /// `remote-received`, durably for `remote-durable`): answer.
    Confirmed,
    /// Not confirmed, not timed out, the journal not degraded: wait.
    Wait,
    /// Not confirmed, but the journal is degraded: answer as `local`.
    AsLocal,
    /// Timed out on a journal with `on_replica_loss = "degrade"`: it
    /// degrades now, and this append is answered as `local`.
    Degrade,
    /// Timed out on a journal with `on_replica_loss = "block"`: answered
    /// with `replica-timeout` (the records stay durable here and are shipped).
    Fail,
}

/// The replica-ack decision, pure. `need` is one past the append's last
/// LSN; `received` and `durable` are how far the replica confirmed.
///
/// Invariant (asserted by the tests below over a grid of inputs): an
/// append is `Confirmed` only when the replica reported it at the level its
/// mode asks, `remote-durable` is never confirmed by `received` alone, and
/// an unconfirmed append is answered only after the timeout or on a
/// degraded journal (never while the replica may still confirm it in time).
pub fn remote_ack(
    mode: Durability,
    need: u64,
    received: u64,
    durable: u64,
    degraded: bool,
    timed_out: bool,
    on_loss: OnReplicaLoss,
) -> RemoteAck {
    let confirmed = match mode {
        Durability::RemoteReceived => received.max(durable) >= need,
        _ => durable >= need,
    };
    if confirmed {
        RemoteAck::Confirmed
    } else if degraded {
        RemoteAck::AsLocal
    } else if !timed_out {
        RemoteAck::Wait
    } else if on_loss == OnReplicaLoss::Degrade {
        RemoteAck::Degrade
    } else {
        RemoteAck::Fail
    }
}

/// Whether a journal acknowledges `remote-*` appends as local, and since
/// where. Invariant (issue 16, item 4): degradation ends once the replica
/// is connected and durably holds every record up to the durable end here
/// when the journal degraded: a fixed point, so it ends under steady load
/// too (the durable end itself moves on and is never reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Degradation {
    /// The durable end here when the journal degraded.
    at: Option<u64>,
}

impl Degradation {
    pub fn is_degraded(&self) -> bool {
        self.at.is_some()
    }

    /// Where the journal degraded.
    pub fn since(&self) -> Option<u64> {
        self.at
    }

    /// `remote_ack` for the journal's oldest waiting append; a `Degrade`
    /// answer degrades the journal from `local_end()` (its durable end
    /// here, asked for only then: it takes the journal's lock).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        mode: Durability,
        need: u64,
        received: u64,
        durable: u64,
        timed_out: bool,
        on_loss: OnReplicaLoss,
        local_end: impl FnOnce() -> u64,
    ) -> RemoteAck {
        let d = remote_ack(mode, need, received, durable, self.is_degraded(), timed_out, on_loss);
        if d == RemoteAck::Degrade {
            self.at = Some(local_end());
        }
        d
    }

    /// After a turn of the loop: ends the degradation if the replica, now
    /// connected, durably holds everything up to where it began. Returns
    /// the point it ended at, if it did. (`local_end` is asked for only by
    /// the mutation that puts issue 16's item 4 back.)
    pub fn end_if_caught_up(&mut self, connected: bool, durable: u64, local_end: impl FnOnce() -> u64) -> Option<u64> {
        let at = self.at?;
        // The defect of issue 16, item 4, for the acks simulation to find:
        // wait for the moving end.
        let target = if cfg!(feature = "mutate-degraded-until-end") { local_end() } else { at };
        if connected && durable >= target {
            self.at = None;
            return Some(at);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_ack_decision_keeps_the_mode_s_promise() {
        use Durability::{RemoteDurable as D, RemoteReceived as R};
        use OnReplicaLoss::{Block, Degrade};
        use RemoteAck::{AsLocal, Confirmed, Fail, Wait};
        // (mode, need, received, durable, degraded, timed out, on loss) -> decision
        let cases = [
            // Confirmed at the mode's level, whatever else holds.
            (R, 5, 5, 0, false, false, Block, Confirmed),
            (R, 5, 0, 5, true, true, Degrade, Confirmed),
            (D, 5, 9, 5, false, true, Block, Confirmed),
            // remote-durable is not confirmed by a replica that only received it.
            (D, 5, 9, 4, false, false, Block, Wait),
            (D, 5, 9, 4, false, true, Block, Fail),
            (D, 5, 9, 4, false, true, Degrade, RemoteAck::Degrade),
            (D, 5, 9, 4, true, false, Block, AsLocal),
            // Not confirmed: wait until the timeout, unless degraded.
            (R, 5, 4, 4, false, false, Degrade, Wait),
            (R, 5, 4, 4, true, false, Block, AsLocal),
            (R, 5, 4, 4, false, true, Block, Fail),
            (R, 5, 4, 4, false, true, Degrade, RemoteAck::Degrade),
        ];
        for (mode, need, received, durable, degraded, timed_out, on_loss, want) in cases {
            let got = remote_ack(mode, need, received, durable, degraded, timed_out, on_loss);
            assert_eq!(got, want, "{:?}", (mode, need, received, durable, degraded, timed_out, on_loss));
        }
        // Over a grid: Confirmed exactly when the replica holds it at the
        // mode's level, and never an answer before the timeout unless confirmed
        // or degraded.
        for mode in [R, D] {
            for (need, received, durable) in
                (1..4u64).flat_map(|n| (0..5).flat_map(move |r| (0..5).map(move |d| (n, r, d))))
            {
                for (degraded, timed_out) in [(false, false), (false, true), (true, false), (true, true)] {
                    for on_loss in [Block, Degrade] {
                        let got = remote_ack(mode, need, received, durable, degraded, timed_out, on_loss);
                        let held = durable >= need || (mode == R && received >= need);
                        assert_eq!(got == Confirmed, held);
                        if !held && !degraded && !timed_out {
                            assert_eq!(got, Wait);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn degradation_ends_at_the_fixed_point_where_it_began() {
        let mut d = Degradation::default();
        let (dur, deg) = (Durability::RemoteDurable, OnReplicaLoss::Degrade);
        assert_eq!(d.decide(dur, 10, 5, 5, false, deg, || 12), RemoteAck::Wait);
        assert_eq!(d.decide(dur, 10, 5, 5, true, deg, || 12), RemoteAck::Degrade);
        assert_eq!(d.since(), Some(12));
        assert_eq!(d.decide(dur, 14, 5, 5, false, deg, || 20), RemoteAck::AsLocal);
        // Not while disconnected, nor before the point.
        assert_eq!(d.end_if_caught_up(false, 30, || 40), None);
        assert_eq!(d.end_if_caught_up(true, 11, || 40), None);
        // Caught up to it while the end moved on: ends.
        assert_eq!(d.end_if_caught_up(true, 12, || 40), Some(12));
        assert!(!d.is_degraded());
        assert_eq!(d.decide(dur, 41, 30, 30, false, deg, || 45), RemoteAck::Wait);
    }
}
