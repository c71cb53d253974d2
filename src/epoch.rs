//! Epochs: which run of which primary wrote a record.
//!
//! An epoch is `term << 32 | start`. A promotion starts a new term (start
//! 0) above every epoch the node has seen; every start of a primary raises
//! `start` within its term. Every record carries the epoch of the run that
//! wrote it, so equal CRCs at an LSN mean equal histories, and a node can
//! tell which runs its history holds.
//!
//! Invariants (asserted by the tests below):
//! * Arithmetic is checked: a term or start that would overflow is an
//!   error, never a wrap to a smaller epoch (which `set_epoch` would ignore,
//!   letting two runs share an epoch).
//! * A primary's history ([`History`]) holds the runs it followed as a
//!   replica before its promotion (every epoch up to its `base`) and the
//!   runs of its own term up to its current epoch; nothing else. Records of
//!   any other run on its replica were written by a primary it never
//!   followed (a split brain), and are never cut back automatically.

use std::fmt;

/// An epoch (`term << 32 | start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Epoch(u64);

impl Epoch {
    pub const fn from_raw(raw: u64) -> Epoch {
        Epoch(raw)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn term(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub const fn start(self) -> u32 {
        self.0 as u32
    }

    /// The epoch of this primary's next start (its term, the next start);
    /// `None` when the term has no start left.
    pub fn restart(self) -> Option<Epoch> {
        self.start().checked_add(1).map(|s| Epoch(((self.term() as u64) << 32) | s as u64))
    }

    /// The first epoch of the term after both `self` and `seen` (a
    /// promotion); `None` when no term is left.
    pub fn promotion(self, seen: Epoch) -> Option<Epoch> {
        self.max(seen).term().checked_add(1).map(|t| Epoch((t as u64) << 32))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (term {}, start {})", self.0, self.term(), self.start())
    }
}

/// The runs a primary's history holds: those it followed before it was
/// promoted (up to `base`) and its own term's up to `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// The epoch this node followed last before its promotion (0 for a
    /// node never promoted: its history is its own).
    pub base: Epoch,
    pub current: Epoch,
}

impl History {
    /// Whether a record of epoch `e` belongs to a run this history holds.
    pub fn holds(&self, e: Epoch) -> bool {
        e <= self.base || (e.term() == self.current.term() && e <= self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_TERM: u64 = 0xFFFF_FFFF << 32;

    #[test]
    fn restart_and_promotion_never_wrap() {
        assert_eq!(Epoch(7).restart(), Some(Epoch(8)));
        assert_eq!(Epoch((3 << 32) | 5).restart(), Some(Epoch((3 << 32) | 6)));
        assert_eq!(Epoch((3 << 32) | 0xFFFF_FFFF).restart(), None, "a start past the term's last");
        assert_eq!(Epoch(5).promotion(Epoch(0)), Some(Epoch(1 << 32)));
        assert_eq!(Epoch(5).promotion(Epoch((4 << 32) | 9)), Some(Epoch(5 << 32)), "above what was seen");
        // The old rule, ((max >> 32) + 1) << 32, gave 0 here.
        assert_eq!(Epoch(MAX_TERM).promotion(Epoch(0)), None);
        assert_eq!(Epoch(1).promotion(Epoch(MAX_TERM | 3)), None);
        assert_eq!(Epoch(u64::MAX).restart(), None);
    }

    #[test]
    fn a_history_holds_what_it_followed_and_its_own_term() {
        // Promoted to term 2 after following term 1, start 3.
        let h = History { base: Epoch((1 << 32) | 3), current: Epoch((2 << 32) | 1) };
        assert!(h.holds(Epoch(0)));
        assert!(h.holds(Epoch((1 << 32) | 3)), "the run it followed: its unshipped tail is the old primary's");
        assert!(!h.holds(Epoch((1 << 32) | 4)), "the old primary restarted after the promotion: split brain");
        assert!(h.holds(Epoch(2 << 32)));
        assert!(h.holds(Epoch((2 << 32) | 1)));
        assert!(!h.holds(Epoch((2 << 32) | 2)), "a run of its term it never made");
        assert!(!h.holds(Epoch(3 << 32)));
        // A node never promoted: its own history, from the start.
        let h = History { base: Epoch(0), current: Epoch(4) };
        assert!(h.holds(Epoch(1)) && h.holds(Epoch(4)) && !h.holds(Epoch(5)));
    }
}
