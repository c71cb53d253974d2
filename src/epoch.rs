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
//! * A node's history ([`History`]) holds, per term, the starts it ran or
//!   followed, with the nonce drawn when the term began; nothing else.
//!   Records on a replica of a run its primary's history does not hold
//!   were written by a primary it never followed (a split brain), and are
//!   never cut back automatically.

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
        let term = self.max(seen).term();
        // The defect of issue 16, item 9, for the roles simulation to find:
        // the next term wraps to 0.
        let next = if cfg!(feature = "mutate-epoch-wrap") { Some(term.wrapping_add(1)) } else { term.checked_add(1) };
        next.map(|t| Epoch((t as u64) << 32))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (term {}, start {})", self.0, self.term(), self.start())
    }
}

/// One term of a history: the highest start of it the history holds, and
/// the nonce drawn when the term began (two nodes promoted to the same term
/// number independently hold different terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Run {
    pub term: u32,
    pub max_start: u32,
    pub nonce: u32,
}

/// The runs a node's history holds (its lineage): for each of its newest
/// `MAX_TERMS` terms, up to which start, and every term below `floor`.
/// A node's own starts and promotions add to it; a replica takes its
/// primary's once it follows it (its chain is then a prefix of the
/// primary's).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    /// Every term below this one is held (older than what is kept).
    floor: u32,
    /// Sorted by term, at most `MAX_TERMS`.
    runs: Vec<Run>,
}

impl History {
    /// Terms kept; older ones are folded into `floor`.
    pub const MAX_TERMS: usize = 16;

    /// The history of a node that knows only its own runs up to `current`,
    /// and trusts every earlier term (a set from before histories were
    /// kept; a new set at its first epoch).
    pub fn of(current: Epoch) -> History {
        History {
            floor: current.term(),
            runs: vec![Run { term: current.term(), max_start: current.start(), nonce: 0 }],
        }
    }

    /// Checked: terms strictly increasing, at most `MAX_TERMS`, all at or
    /// above `floor`.
    pub fn from_parts(floor: u32, runs: Vec<Run>) -> Result<History, &'static str> {
        if runs.len() > Self::MAX_TERMS {
            return Err("too many terms");
        }
        if runs.windows(2).any(|w| w[0].term >= w[1].term) || runs.first().is_some_and(|r| r.term < floor) {
            return Err("terms out of order");
        }
        Ok(History { floor, runs })
    }

    pub fn floor(&self) -> u32 {
        self.floor
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    fn run(&self, term: u32) -> Option<&Run> {
        self.runs.iter().find(|r| r.term == term)
    }

    /// `e` is a run of this history: a start of a term it knows (drawing
    /// a nonce for a new term with `nonce`). The oldest terms past
    /// `MAX_TERMS` fold into the floor.
    pub fn add(&mut self, e: Epoch, nonce: impl FnOnce() -> u32) {
        match self.runs.iter_mut().find(|r| r.term == e.term()) {
            Some(r) => r.max_start = r.max_start.max(e.start()),
            None => {
                let at = self.runs.partition_point(|r| r.term < e.term());
                self.runs.insert(at, Run { term: e.term(), max_start: e.start(), nonce: nonce() });
            }
        }
        while self.runs.len() > Self::MAX_TERMS {
            let old = self.runs.remove(0);
            self.floor = self.floor.max(old.term + 1);
        }
    }

    /// Whether a record of epoch `e` belongs to a run this history holds.
    pub fn holds(&self, e: Epoch) -> bool {
        self.held_up_to(e).is_some()
    }

    /// If `e` is held: the highest epoch of the span of held runs it is in
    /// (a record after it with a higher epoch may be outside the history).
    pub fn held_up_to(&self, e: Epoch) -> Option<Epoch> {
        if let Some(r) = self.run(e.term()) {
            return (e.start() <= r.max_start).then_some(Epoch(((r.term as u64) << 32) | r.max_start as u64));
        }
        // Below the floor: held up to the floor's first epoch (or the
        // lowest kept term's), whichever comes first.
        (e.term() < self.floor).then(|| {
            let next = self.runs.iter().map(|r| r.term).find(|&t| t > e.term()).unwrap_or(self.floor);
            Epoch(((next.min(self.floor) as u64) << 32).saturating_sub(1))
        })
    }

    /// Whether the records of `mine` (this node's history) in term `term`
    /// belong to the same term as `self`'s: the same nonce where both know
    /// the term. Two nodes promoted to one term number independently wrote
    /// different histories under it.
    pub fn same_term(&self, mine: &History, term: u32) -> bool {
        match (self.run(term), mine.run(term)) {
            (Some(a), Some(b)) => a.nonce == b.nonce,
            _ => true,
        }
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.floor > 0 {
            write!(f, "terms below {}", self.floor)?;
        }
        for (i, r) in self.runs.iter().enumerate() {
            let sep = if i == 0 && self.floor == 0 { "" } else { ", " };
            write!(f, "{sep}term {} up to start {}", r.term, r.max_start)?;
        }
        Ok(())
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

    fn e(term: u32, start: u32) -> Epoch {
        Epoch(((term as u64) << 32) | start as u64)
    }

    #[test]
    fn a_history_holds_the_runs_it_ran_or_followed() {
        // A at (0,5) is followed by B; B is promoted to term 1.
        let mut b = History::of(e(0, 5));
        b.add(e(1, 0), || 7);
        assert!(b.holds(e(0, 0)) && b.holds(e(0, 5)), "the runs it followed");
        assert!(!b.holds(e(0, 6)), "A restarted after the promotion: a split brain");
        assert!(b.holds(e(1, 0)));
        assert!(!b.holds(e(1, 1)), "a start of its term it never made");
        assert!(!b.holds(e(2, 0)));
        // Issue 16 review: B promoted again (out of waiting-for-peer). The
        // old two-epoch rule (everything up to the base) then held (0,6).
        b.add(e(2, 0), || 9);
        assert!(!b.holds(e(0, 6)), "still not followed");
        assert!(b.holds(e(0, 5)) && b.holds(e(1, 0)) && b.holds(e(2, 0)));
        assert_eq!(b.held_up_to(e(0, 2)), Some(e(0, 5)));
        assert_eq!(
            b.to_string(),
            "terms below 0, term 0 up to start 5, term 1 up to start 0, term 2 up to start 0"
                .replace("terms below 0, ", "")
        );
    }

    #[test]
    fn two_promotions_to_one_term_number_are_different_terms() {
        let mut a = History::of(e(0, 5));
        let mut b = a.clone();
        a.add(e(1, 0), || 1);
        b.add(e(1, 0), || 2);
        b.add(e(1, 1), || 99); // a restart keeps the term's nonce
        assert!(b.holds(e(1, 0)), "by number");
        assert!(!b.same_term(&a, 1), "but not the same term");
        assert!(b.same_term(&a, 0));
        assert_eq!(b.runs()[1].nonce, 2);
    }

    #[test]
    fn old_terms_fold_into_the_floor() {
        let mut h = History::of(e(0, 1));
        for t in 1..=20 {
            h.add(e(t, 0), || t);
        }
        assert_eq!(h.runs().len(), History::MAX_TERMS);
        assert_eq!(h.floor(), 5);
        assert!(h.holds(e(3, 77)), "below the floor: trusted");
        assert!(h.holds(e(20, 0)) && !h.holds(e(20, 1)) && !h.holds(e(21, 0)));
        assert_eq!(h.held_up_to(e(3, 77)), Some(Epoch((5u64 << 32) - 1)));
        assert!(History::from_parts(
            0,
            vec![Run { term: 2, ..Default::default() }, Run { term: 1, ..Default::default() }]
        )
        .is_err());
    }
}
