//! Where a journal continues on the replica: the primary's side of a
//! session's negotiation, as a state machine with no I/O (sans-IO). The
//! sender's thread feeds it what the replica answers and carries out the
//! [`Step`]s it returns; tests drive it against a model replica.
//!
//! The rule: the replica goes on from its chain end if that end is in our
//! history (a segment start we hold, or a record whose CRC we have too).
//! Otherwise we ask for the CRCs of records sampled back from its tail
//! (1, 2, 4, … apart), then of records spread over the gap between the
//! newest sample in common and the oldest not, until no record between
//! them is left unasked, and cut it back to the newest record we hold with
//! the same CRC. With none in common (or nothing of ours left at its end),
//! the journal is sent again whole from our oldest segment (a reset).
//!
//! Invariants (asserted by the tests below, the last over random
//! histories against a model replica):
//! - A `Continue` position is a point of our history: the replica's last
//!   record there has our CRC, or it is a segment start we hold.
//! - A cut-back keeps only records we hold with the same CRC: it never
//!   keeps a diverged record, and it is asked only when the replica's end
//!   is not already in our history.
//! - A cut-back keeps every record in common (records acknowledged
//!   `remote-durable` among them): records in common are a prefix (each
//!   record's CRC covers its predecessor's), and the probes leave no record
//!   between the newest in common and the oldest not unasked.
//! - It ends in at most twelve probes, one cut-back and one reset.

use crate::ship::ChainEnd;
use crate::Journal;

/// What the negotiation needs of our journal.
pub trait Retained {
    /// One past our last durable record.
    fn next_lsn(&self) -> u64;
    /// The first LSN of each segment we hold, oldest first.
    fn segment_starts(&self) -> Vec<u64>;
    /// The CRC of record `lsn`, if we hold it and can read it.
    fn record_crc(&self, lsn: u64) -> Option<u32>;
}

impl Retained for Journal {
    fn next_lsn(&self) -> u64 {
        Journal::next_lsn(self)
    }
    fn segment_starts(&self) -> Vec<u64> {
        Journal::segment_starts(self)
    }
    fn record_crc(&self, lsn: u64) -> Option<u32> {
        Journal::record_crc(self, lsn).ok()
    }
}

/// Where the next shipment of a journal starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub lsn: u64,
    /// The CRC of record `lsn - 1` (the chain's link), 0 at a segment start.
    pub crc: u32,
    /// The replica's tail segment and offset, when it goes on in place.
    pub hint: Option<(u64, u64)>,
}

impl Pos {
    /// Where the shipment after `s` starts (in place, right after it).
    pub fn after<B: AsRef<[u8]>>(s: &crate::shipment::Ship<B>) -> Pos {
        Pos { lsn: s.next_lsn, crc: s.end_crc, hint: Some((s.seg_seq, s.seg_off + s.bytes.as_ref().len() as u64)) }
    }
}

/// What the sender does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ship from here: the negotiation is over.
    Continue(Pos),
    /// Ask the replica for the CRCs of these records (`Msg::Probe`), then
    /// call [`Negotiation::on_samples`].
    Probe(Vec<u64>),
    /// Ask the replica to cut back to `keep` (it keeps records up to and
    /// including it: `Msg::Truncate`), then call [`Negotiation::on_ends`].
    Truncate { keep: u64 },
    /// Ask the replica to drop the journal and start it at `next_lsn`
    /// (`Msg::Reset`), then call [`Negotiation::on_ends`].
    Reset { next_lsn: u64, why: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Probed,
    Truncated,
    Reset,
    Done,
}

/// One journal's negotiation. Our side is read once, at [`Negotiation::new`].
#[derive(Debug)]
pub struct Negotiation {
    ours: u64,
    starts: Vec<u64>,
    state: State,
    /// While probing: the lowest record both may hold (`low`), the newest
    /// record known in common (`agree`), the oldest known not in common
    /// (`differ`, exclusive bound), the records last asked for, and the
    /// rounds asked.
    low: u64,
    agree: Option<u64>,
    differ: u64,
    asked: Vec<u64>,
    rounds: u32,
}

/// Samples at most this many records per probe.
const MAX_SAMPLES: usize = 64;
/// Probes at most this many times (64 samples a round narrow the gap 65
/// times: 11 rounds cover any LSN range).
const MAX_ROUNDS: u32 = 12;

impl Negotiation {
    pub fn new(ours: &impl Retained) -> Negotiation {
        Negotiation {
            ours: ours.next_lsn(),
            starts: ours.segment_starts(),
            state: State::Start,
            low: 0,
            agree: None,
            differ: 0,
            asked: Vec::new(),
            rounds: 0,
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.starts.first().copied()
    }

    /// Where a reset starts: our oldest segment, or our end if we hold none.
    fn restart(&self) -> u64 {
        self.oldest().unwrap_or(self.ours)
    }

    /// We hold record `lsn`.
    fn held(&self, lsn: u64) -> bool {
        self.oldest().is_some_and(|o| lsn >= o) && lsn < self.ours
    }

    /// Where the replica can go on as it is, if its chain end is in our history.
    fn continue_at(&self, ours: &impl Retained, e: &ChainEnd) -> Option<Pos> {
        if e.seg_seq == u64::MAX {
            let ok = self.starts.contains(&e.next_lsn) || (self.oldest().is_none() && e.next_lsn == self.ours);
            return ok.then_some(Pos { lsn: e.next_lsn, crc: 0, hint: None });
        }
        let d = e.next_lsn;
        (d >= 2 && self.held(d - 1) && ours.record_crc(d - 1) == Some(e.last_crc)).then_some(Pos {
            lsn: d,
            crc: e.last_crc,
            hint: Some((e.seg_seq, e.tail_off)),
        })
    }

    fn reset(&mut self, why: &'static str) -> Step {
        self.state = State::Reset;
        Step::Reset { next_lsn: self.restart(), why }
    }

    fn done(&mut self, p: Pos) -> Step {
        self.state = State::Done;
        Step::Continue(p)
    }

    /// The first step, from the chain end the replica reported.
    pub fn begin(&mut self, ours: &impl Retained, end: &ChainEnd) -> Result<Step, String> {
        if self.state != State::Start {
            return Err(format!("negotiation already begun ({:?})", self.state));
        }
        if let Some(p) = self.continue_at(ours, end) {
            return Ok(self.done(p));
        }
        if end.seg_seq == u64::MAX {
            return Ok(self.reset("the replica holds nothing of what is retained here"));
        }
        // Histories differ at the replica's tail (or it is ahead): sample
        // records back from its tail, 1, 2, 4, … apart.
        let low = end.first_lsn.max(self.oldest().unwrap_or(u64::MAX));
        let mut lsns = Vec::new();
        let mut step = 1u64;
        let mut l = end.next_lsn.saturating_sub(1).min(self.ours.saturating_sub(1));
        while l >= low && l >= 1 && lsns.len() < MAX_SAMPLES {
            lsns.push(l);
            if l < step {
                break;
            }
            l -= step;
            step = step.saturating_mul(2);
        }
        let Some(&top) = lsns.first() else {
            return Ok(self.reset("no record in common"));
        };
        self.state = State::Probed;
        (self.low, self.agree, self.differ) = (low, None, top + 1);
        self.asked = lsns.clone();
        self.rounds = 1;
        Ok(Step::Probe(lsns))
    }

    /// The replica's CRCs of the sampled records (those it holds). A
    /// record's CRC covers its predecessor's (the chain), so the records in
    /// common are a prefix: while samples leave a gap between the newest in
    /// common and the oldest not, the gap is probed again, so that the cut
    /// keeps every record in common.
    pub fn on_samples(&mut self, ours: &impl Retained, samples: &[(u64, u32)]) -> Result<Step, String> {
        if self.state != State::Probed {
            return Err(format!("samples that were not asked for ({:?})", self.state));
        }
        let asked = std::mem::take(&mut self.asked);
        let same: Vec<bool> = asked
            .iter()
            .map(|&l| self.held(l) && samples.iter().any(|&(s, crc)| s == l && ours.record_crc(l) == Some(crc)))
            .collect();
        for (&l, _) in asked.iter().zip(&same).filter(|(_, &s)| s) {
            self.agree = self.agree.max(Some(l));
        }
        let floor = self.agree.map_or(self.low, |a| a + 1);
        for (&l, _) in asked.iter().zip(&same).filter(|(_, &s)| !s) {
            if l >= floor {
                self.differ = self.differ.min(l);
            }
        }
        // Between `floor` and `differ`: records not asked yet.
        let gap = self.differ.saturating_sub(floor);
        // (`mutate-sparse-cut` puts back the defect: the cut went to the
        // newest sample in common, cutting records both held.)
        if gap > 0 && self.rounds < MAX_ROUNDS && !cfg!(feature = "mutate-sparse-cut") {
            let n = gap.min(MAX_SAMPLES as u64);
            // `n` records spread over the gap, newest first.
            let lsns: Vec<u64> = (0..n).map(|i| floor + (gap - 1) - i * gap / n).collect();
            debug_assert!(
                lsns.iter().all(|&l| l >= floor && l < self.differ),
                "{lsns:?} outside {floor}..{}",
                self.differ
            );
            self.asked = lsns.clone();
            self.rounds += 1;
            return Ok(Step::Probe(lsns));
        }
        Ok(match self.agree {
            None => self.reset("no record in common"),
            Some(keep) => {
                self.state = State::Truncated;
                Step::Truncate { keep }
            }
        })
    }

    /// The replica's chain end after a cut-back or a reset.
    pub fn on_ends(&mut self, ours: &impl Retained, end: &ChainEnd) -> Result<Step, String> {
        match self.state {
            State::Truncated => Ok(match self.continue_at(ours, end) {
                Some(p) => self.done(p),
                None => self.reset("cut back to a point not in common"),
            }),
            State::Reset => Ok(self.done(Pos { lsn: end.next_lsn, crc: 0, hint: None })),
            s => Err(format!("a chain end that was not asked for ({s:?})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A journal as a list of record CRCs from `first`, split into segments.
    #[derive(Debug, Clone)]
    struct Model {
        first: u64,
        crcs: Vec<u32>,
        seg_records: u64,
    }

    impl Model {
        fn next(&self) -> u64 {
            self.first + self.crcs.len() as u64
        }
        fn crc(&self, lsn: u64) -> Option<u32> {
            (lsn >= self.first && lsn < self.next()).then(|| self.crcs[(lsn - self.first) as usize])
        }
        fn end(&self) -> ChainEnd {
            if self.crcs.is_empty() {
                return ChainEnd {
                    next_lsn: self.first,
                    last_crc: 0,
                    seg_seq: u64::MAX,
                    tail_off: u64::MAX,
                    mark: self.first,
                    first_lsn: self.first,
                };
            }
            ChainEnd {
                next_lsn: self.next(),
                last_crc: self.crcs[self.crcs.len() - 1],
                seg_seq: 1,
                tail_off: 4096,
                mark: self.first,
                first_lsn: self.first,
            }
        }
    }

    impl Retained for Model {
        fn next_lsn(&self) -> u64 {
            self.next()
        }
        fn segment_starts(&self) -> Vec<u64> {
            (self.first..self.next()).step_by(self.seg_records as usize).collect()
        }
        fn record_crc(&self, lsn: u64) -> Option<u32> {
            self.crc(lsn)
        }
    }

    /// Runs a negotiation between `primary` and a model `replica` that
    /// answers probes, cuts back and resets as the receiver does. Returns
    /// the position and the steps taken.
    fn run(primary: &Model, replica: &mut Model) -> (Pos, Vec<Step>) {
        let mut n = Negotiation::new(primary);
        let mut steps = Vec::new();
        let mut step = n.begin(primary, &replica.end()).expect("begin");
        loop {
            steps.push(step.clone());
            assert!(steps.len() <= 15, "too many steps: {steps:?}");
            step = match step {
                Step::Continue(p) => return (p, steps),
                Step::Probe(lsns) => {
                    let samples: Vec<(u64, u32)> =
                        lsns.iter().filter_map(|l| replica.crc(*l).map(|c| (*l, c))).collect();
                    n.on_samples(primary, &samples).expect("samples")
                }
                Step::Truncate { keep } => {
                    assert!(keep >= replica.first && keep < replica.next(), "keep {keep} outside the replica");
                    replica.crcs.truncate((keep + 1 - replica.first) as usize);
                    n.on_ends(primary, &replica.end()).expect("ends")
                }
                Step::Reset { next_lsn, .. } => {
                    *replica = Model { first: next_lsn, crcs: Vec::new(), seg_records: replica.seg_records };
                    n.on_ends(primary, &replica.end()).expect("ends")
                }
            };
        }
    }

    fn model(first: u64, crcs: Vec<u32>) -> Model {
        Model { first, crcs, seg_records: 4 }
    }

    #[test]
    fn a_replica_at_a_point_of_our_history_goes_on_in_place() {
        let p = model(1, (1..=20).collect());
        let mut r = model(1, (1..=12).collect());
        let (pos, steps) = run(&p, &mut r);
        assert_eq!(pos, Pos { lsn: 13, crc: 12, hint: Some((1, 4096)) });
        assert_eq!(steps.len(), 1);
    }

    #[test]
    fn an_empty_replica_at_one_of_our_segment_starts_goes_on_there_else_it_is_reset() {
        let p = model(5, (5..=20).collect());
        let mut r = model(9, vec![]);
        assert_eq!(run(&p, &mut r).0, Pos { lsn: 9, crc: 0, hint: None });
        let mut r = model(10, vec![]);
        let (pos, steps) = run(&p, &mut r);
        assert!(matches!(steps[0], Step::Reset { next_lsn: 5, .. }), "{steps:?}");
        assert_eq!(pos.lsn, 5);
    }

    #[test]
    fn a_diverged_tail_is_cut_back_to_the_last_common_record() {
        let p = model(1, (1..=20).collect());
        // The replica's records from 15 on are another history's.
        let mut r = model(1, (1..=14).chain(1000..1006).collect());
        let (pos, steps) = run(&p, &mut r);
        assert!(matches!(steps[0], Step::Probe(_)));
        let Some(&Step::Truncate { keep }) = steps.iter().find(|s| matches!(s, Step::Truncate { .. })) else {
            panic!("{steps:?}")
        };
        assert_eq!(keep, 14, "cut to the last record in common: {steps:?}");
        assert_eq!(pos.lsn, keep + 1);
        assert_eq!(pos.crc, p.crc(keep).expect("held"));
    }

    /// A replica ahead of us (it received a batch our crash lost) whose
    /// last common record lies between two samples: the cut keeps every
    /// record in common, those acknowledged `remote-durable` among them
    /// (the two-site simulator, seed 302: the cut went to the sample below
    /// and the replica lacked acknowledged records until the catch-up).
    #[test]
    fn a_cut_back_keeps_every_record_in_common() {
        let p = model(1, (1..=48).chain(2000..2012).collect());
        let mut r = model(1, (1..=50).collect());
        let (pos, steps) = run(&p, &mut r);
        assert_eq!(pos.lsn, 49, "cut to the last common record, 48: {steps:?}");
        // The sparse samples may miss the whole common part: still no reset.
        let p = model(1, (1..=30).chain(2000..2100).collect());
        let mut r = model(1, (1..=30).chain(3000..3090).collect());
        let (pos, steps) = run(&p, &mut r);
        assert_eq!(pos.lsn, 31, "{steps:?}");
    }

    #[test]
    fn answers_out_of_turn_are_errors_not_guesses() {
        let p = model(1, (1..=20).collect());
        let mut n = Negotiation::new(&p);
        assert!(n.on_samples(&p, &[(3, 3)]).is_err());
        assert!(n.on_ends(&p, &p.end()).is_err());
        assert!(n.begin(&p, &model(1, (1..=3).collect()).end()).is_ok());
        assert!(n.begin(&p, &p.end()).is_err());
    }

    proptest! {
        /// Any pair of histories that share a prefix: the negotiation ends
        /// with the replica holding a prefix of ours and continuing right
        /// after it; it never keeps a diverged record.
        #[test]
        fn the_replica_ends_on_a_prefix_of_our_history(
            first in 1u64..30,
            ours in 0usize..200,
            common in 0usize..200,
            theirs in 0usize..200,
            replica_first_off in 0u64..10,
            seg_records in 1u64..16,
        ) {
            let common = common.min(ours);
            let p = Model { first, crcs: (0..ours as u32).collect(), seg_records };
            // The replica shares `common` records from `first` (or from a
            // later start), then has `theirs` records of another history.
            let rfirst = (first + replica_first_off).min(first + common as u64);
            let skip = (rfirst - first) as usize;
            let mut crcs: Vec<u32> = (skip as u32..common as u32).collect();
            crcs.extend((0..theirs as u32).map(|i| 1_000_000 + i));
            let mut r = Model { first: rfirst, crcs, seg_records };
            let before = r.clone();
            let (pos, steps) = run(&p, &mut r);
            // The replica now holds only records of our history, and goes on
            // right after them.
            prop_assert_eq!(r.next(), pos.lsn);
            for l in r.first..r.next() {
                prop_assert_eq!(r.crc(l), p.crc(l), "record {} differs after {:?}", l, steps);
            }
            if pos.lsn > r.first {
                prop_assert_eq!(pos.crc, p.crc(pos.lsn - 1).expect("held"));
            }
            // Nothing in common is cut: the replica keeps every record of
            // ours it held (some may be acknowledged `remote-durable`).
            if common > skip {
                prop_assert_eq!(pos.lsn, first + common as u64, "cut records in common: {:?}", steps);
            }
            // A replica whose end was already in our history is not cut.
            if theirs == 0 && before.next() > first && before.next() > rfirst && before.next() <= p.next() {
                prop_assert_eq!(steps.len(), 1, "cut a replica that was in our history: {:?}", steps);
            }
        }
    }
}
