//! A seeded, single-threaded simulation of mirrorlog's engine (the real
//! code) on simulated devices (`mirrorlog::storage::SimStorage`), with
//! faults, checking after every fault that every acknowledged record is
//! there, byte for byte (issue 13, part 2; the engine half: the replication
//! and daemon half needs their sans-IO sessions first).
//!
//! One seed drives everything: the workload, the faults, the devices'
//! torn writes. The same seed gives the same trace; a failing seed prints
//! its trace and the command that replays it.
//!
//! Each step is one of: an append (one record, or several in one batch),
//! a group of submits written by a `Driver`, a read of an acknowledged
//! record, a mark, a cut-back (`truncate_after`, as a replica is cut back
//! to its primary's history), deleting the journal and creating it again
//! with the same id (as a replica takes its primary's), a bit flipped on
//! one mirror, a restart (with another `max_record_size`), or the power
//! failing now or at one of the next writes (in-flight writes whole,
//! torn at any sector, or lost).
//!
//! Checked (the model): LSNs are dense; every acknowledged record at or
//! above the mark reads back with its bytes, before and after every crash
//! and restart; after a crash, records past the acknowledged ones are only
//! appends that were in flight, with their bytes (never invented or stale
//! data); a cut-back keeps every record below its cut point; the mark never
//! goes back; opening the set never fails; no panic.

pub mod acks;
pub mod failover;
pub mod producers;
pub mod repl;
pub mod resilver;
pub mod roles;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use mirrorlog::storage::{SimConfig, SimStorage};
use mirrorlog::{Config, Driver, Error, Journal, MirrorLog};

/// Device size: sparse in memory, so only written sectors cost.
const DEV_SIZE: u64 = 8 << 20;
/// Small segments: a journal spans several, so cut-backs drop several.
const SEGMENT: u64 = 64 << 10;
const JOURNAL: &str = "j";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub steps: u32,
}

/// A struct of `u64` counters that add up over seeds (`Tally`; the runs'
/// fault coverage).
macro_rules! counters {
    ($(#[$doc:meta])* pub struct $name:ident { $( $(#[$fdoc:meta])* $field:ident, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: u64, )*
        }

        impl $crate::Tally for $name {
            fn add(&mut self, o: &$name) {
                $( self.$field += o.$field; )*
            }
        }
    };
}
pub(crate) use counters;

/// Counts that add up over seeds.
pub trait Tally: Default {
    fn add(&mut self, o: &Self);
}

/// Runs seeds `first..first + n` of one simulation; the first failure
/// stops it.
pub fn seeds<C: Tally>(
    first: u64,
    n: u64,
    steps: u32,
    run: impl Fn(u64, u32) -> Result<C, Failure>,
) -> Result<C, Failure> {
    let mut total = C::default();
    for seed in first..first + n {
        total.add(&run(seed, steps)?);
    }
    Ok(total)
}

counters! {
    /// Counts of what a run did (fault coverage).
    pub struct Counts {
        appends,
        records,
        driver_rounds,
        reads,
        marks,
        cutbacks,
        recreates,
        rots,
        restarts,
        crashes,
        /// Crashes that tore a write part-way.
        crashes_mid_write,
        verified,
    }
}

/// A failed run: what broke, and the trace that led there.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: u32,
    pub message: String,
    pub trace: Vec<String>,
    /// The command that replays it.
    pub replay: String,
}

impl Failure {
    /// `flag`: the simulation's command-line flag ("" for the engine's).
    fn new(flag: &str, seed: u64, step: u32, message: String, trace: &[String]) -> Failure {
        let flag = if flag.is_empty() { String::new() } else { format!("{flag} ") };
        Failure {
            seed,
            step,
            message,
            trace: trace.to_vec(),
            replay: format!("cargo run --release -p mirrorlog-sim -- {flag}--seed {seed} --steps {}", step + 1),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} failed at step {}: {}", self.seed, self.step, self.message)?;
        let skip = self.trace.len().saturating_sub(40);
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier steps")?;
        }
        for t in &self.trace[skip..] {
            writeln!(f, "  {t}")?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

/// The seed's own generator (the devices have theirs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The engine's configuration in both simulations: small segments and
/// batches, so a journal spans several segments and a step many batches.
fn sim_config(devices: Vec<PathBuf>, storage: &SimStorage) -> Config {
    let mut cfg = Config::new(devices);
    cfg.segment_size = SEGMENT;
    cfg.max_record_size = 8 << 10;
    cfg.max_batch_bytes = 16 << 10;
    cfg.index_stride = 8 << 10;
    cfg.storage = Some(std::sync::Arc::new(storage.clone()));
    cfg
}

/// A one-site set on `storage`: 2 or 3 mirrors (drawn first from `rng`)
/// of `DEV_SIZE`, formatted, with the journal created.
fn one_site(storage: &SimStorage, rng: &mut Rng) -> Result<(Config, MirrorLog, usize), String> {
    let mirrors = 2 + rng.below(2) as usize;
    let devices: Vec<PathBuf> = (0..mirrors).map(|i| PathBuf::from(format!("/sim/m{i}.dev"))).collect();
    for d in &devices {
        storage.create(d, DEV_SIZE);
    }
    let cfg = sim_config(devices, storage);
    let log = MirrorLog::create(&cfg).map_err(|e| format!("create: {e}"))?;
    log.create_journal(JOURNAL).map_err(|e| format!("create journal: {e}"))?;
    Ok((cfg, log, mirrors))
}

/// Honest producer records (tagged, with the bytes `sent` under their
/// producer and sequence) that are on disk more than once, from the oldest
/// retained segment: `(producer, seq, lsn, later lsn)`.
fn tagged_twice(j: &Journal, sent: &HashMap<(u64, u64), Vec<u8>>) -> Result<Vec<(u64, u64, u64, u64)>, String> {
    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    let mut twice = Vec::new();
    let Some(&oldest) = j.segment_starts().first() else { return Ok(twice) };
    j.visit_retained(oldest.max(1), 1 << 20, |r| {
        if let Some(t) = r.tag {
            if sent.get(&(t.producer, t.seq)).is_some_and(|p| p.as_slice() == r.payload) {
                if let Some(&first) = seen.get(&(t.producer, t.seq)) {
                    twice.push((t.producer, t.seq, first, r.lsn));
                }
                seen.insert((t.producer, t.seq), r.lsn);
            }
        }
        true
    })
    .map_err(|e| format!("scan: {e}"))?;
    Ok(twice)
}

/// Flips a bit anywhere (a journal's data, headers, the superblocks) on
/// one mirror of a one-site set, never in a block whose other copy is
/// rotten already (`rotted`: block -> mirror). What it did, if it did.
fn rot_one(rng: &mut Rng, storage: &SimStorage, rotted: &mut HashMap<u64, usize>, mirrors: usize) -> Option<String> {
    let m = rng.below(mirrors as u64) as usize;
    let off = rng.below(DEV_SIZE);
    let block = off / 4096;
    if rotted.get(&block).is_some_and(|&r| r != m) {
        return None;
    }
    rotted.insert(block, m);
    storage.flip(&PathBuf::from(format!("/sim/m{m}.dev")), off);
    Some(format!("flip a bit at {off} of mirror {m}"))
}

/// The next record of a run: empty, small or up to 6 KiB, its bytes
/// deterministic (`payload`).
fn draw_payload(rng: &mut Rng, seed: u64, n: u64) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1..=6 => rng.below(600) as usize,
        _ => rng.below(6 << 10) as usize,
    };
    payload(seed, n, len)
}

/// Deterministic bytes for record `n` of a run (every byte depends on it).
fn payload(seed: u64, n: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut v = Vec::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// What the simulation knows must be in the journal.
#[derive(Default)]
struct Model {
    /// Acknowledged records at or above the mark.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Acknowledged records that fell below the mark: a cut-back below the
    /// mark brings the mark down, and them back into view.
    below: BTreeMap<u64, Vec<u8>>,
    /// Appends that were in flight when the power failed (or that failed):
    /// they may be in the journal after recovery, with these bytes.
    maybe: BTreeMap<u64, Vec<u8>>,
    /// LSNs known to end a write batch (cut-backs cut at batch ends).
    batch_ends: BTreeSet<u64>,
    next_lsn: u64,
    mark: u64,
}

impl Model {
    fn new() -> Model {
        Model { next_lsn: 1, ..Default::default() }
    }

    /// Records below `mark` leave the acknowledged set (kept aside).
    fn drop_below(&mut self, mark: u64) {
        let keep = self.acked.split_off(&mark);
        self.below.append(&mut std::mem::replace(&mut self.acked, keep));
    }
}

struct Sim {
    seed: u64,
    rng: Rng,
    storage: SimStorage,
    cfg: Config,
    log: Option<MirrorLog>,
    model: Model,
    /// Blocks rotted so far, and on which mirror: one mirror at a time.
    rotted: HashMap<u64, usize>,
    mirrors: usize,
    /// A delete-and-create that the power cut short: (the model before it,
    /// the journal's id). Recovery finds the old journal, none, or the new.
    recreating: Option<(Model, u64)>,
    written: u64,
    counts: Counts,
    trace: Vec<String>,
    step: u32,
}

type Res = Result<(), String>;

impl Sim {
    fn new(seed: u64) -> Result<Sim, String> {
        let storage = SimStorage::new(SimConfig::new(seed));
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let (cfg, log, mirrors) = one_site(&storage, &mut rng)?;
        Ok(Sim {
            seed,
            rng,
            storage,
            cfg,
            log: Some(log),
            model: Model::new(),
            rotted: HashMap::new(),
            mirrors,
            recreating: None,
            written: 0,
            counts: Counts::default(),
            trace: Vec::new(),
            step: 0,
        })
    }

    fn journal(&self) -> Result<Journal, String> {
        let log = self.log.as_ref().ok_or("no log open")?;
        log.journal(JOURNAL).map_err(|e| format!("journal: {e}"))
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{}: {s}", self.step));
    }

    fn next_payload(&mut self) -> Vec<u8> {
        self.written += 1;
        draw_payload(&mut self.rng, self.seed, self.written)
    }

    /// An engine error: the power failed (recover), an expected refusal,
    /// or a defect.
    fn engine_error(&mut self, what: &str, e: &Error, attempted: &[(u64, Vec<u8>)]) -> Res {
        if self.storage.crashed() {
            for (lsn, p) in attempted {
                self.model.maybe.insert(*lsn, p.clone());
            }
            self.note(format!("{what}: power failed ({e})"));
            return self.recover(true);
        }
        match e {
            Error::Full => {
                // Make room: a consumer marks most of what is there.
                let to = self.model.next_lsn.saturating_sub(20).max(self.model.mark);
                self.note(format!("{what}: full; mark to {to}"));
                self.set_mark(to)
            }
            Error::RecordTooLarge { .. } | Error::AppendTooLarge { .. } => {
                self.note(format!("{what}: refused ({e})"));
                Ok(())
            }
            _ => Err(format!("{what}: unexpected error {e} (code {})", e.code())),
        }
    }

    fn append(&mut self) -> Res {
        let n = 1 + self.rng.below(4);
        let recs: Vec<Vec<u8>> = (0..n).map(|_| self.next_payload()).collect();
        let first = self.model.next_lsn;
        let attempted: Vec<(u64, Vec<u8>)> =
            recs.iter().enumerate().map(|(i, p)| (first + i as u64, p.clone())).collect();
        let j = self.journal()?;
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_slice()).collect();
        let res = if n == 1 { j.append(refs[0]) } else { j.append_batch(&refs) };
        self.counts.appends += 1;
        match res {
            Ok(lsn) => {
                if lsn != first {
                    return Err(format!("append got lsn {lsn}, expected {first} (LSNs must be dense)"));
                }
                for (l, p) in attempted {
                    self.model.acked.insert(l, p);
                }
                self.model.next_lsn = first + n;
                self.model.batch_ends.insert(first + n - 1);
                self.counts.records += n;
                self.note(format!("append {n} at {first}: ok"));
                Ok(())
            }
            Err(e) => self.engine_error(&format!("append {n} at {first}"), &e, &attempted),
        }
    }

    fn driver_round(&mut self) -> Res {
        let k = 1 + self.rng.below(12);
        let log = self.log.as_ref().ok_or("no log open")?;
        let j = self.journal()?;
        let mut driver = Driver::for_log(log).map_err(|e| format!("driver: {e}"))?;
        let mut tickets = Vec::new();
        let mut attempted = Vec::new();
        let mut failed = None;
        for _ in 0..k {
            let p = self.next_payload();
            let t = loop {
                match j.submit(&p) {
                    Err(Error::Backpressure) => {
                        if let Err(e) = driver.pump(&[&j], true) {
                            break Err(e);
                        }
                    }
                    other => break other,
                }
            };
            match t {
                Ok(t) => {
                    attempted.push((t.lsn, p));
                    tickets.push(t);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Write until every ticket is settled (also after a refused
        // submit: what was placed is written), unless the power failed.
        let mut guard = 0;
        while tickets.iter().any(|t| matches!(j.poll(t), Ok(false))) && !self.storage.crashed() {
            if let Err(e) = driver.pump(&[&j], true) {
                failed = Some(e);
                break;
            }
            guard += 1;
            if guard > 10_000 {
                return Err("a driver round did not finish".into());
            }
        }
        drop(driver);
        self.counts.driver_rounds += 1;
        let mut ok = 0;
        for (t, (lsn, p)) in tickets.iter().zip(attempted.iter()) {
            match j.poll(t) {
                Ok(true) => {
                    if *lsn != self.model.next_lsn {
                        return Err(format!("submit got lsn {lsn}, expected {}", self.model.next_lsn));
                    }
                    self.model.acked.insert(*lsn, p.clone());
                    self.model.next_lsn += 1;
                    ok += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if ok > 0 && ok == attempted.len() {
            self.model.batch_ends.insert(self.model.next_lsn - 1);
        }
        self.note(format!("driver round of {k}: {ok} acknowledged, up to {}", self.model.next_lsn - 1));
        self.counts.records += ok as u64;
        match failed {
            None => Ok(()),
            Some(e) => {
                let rest: Vec<(u64, Vec<u8>)> = attempted.into_iter().skip(ok).collect();
                self.engine_error(&format!("driver round of {k}"), &e, &rest)
            }
        }
    }

    fn read(&mut self) -> Res {
        if self.model.acked.is_empty() {
            return Ok(());
        }
        let i = self.rng.below(self.model.acked.len() as u64) as usize;
        let (lsn, want) = self.model.acked.iter().nth(i).map(|(l, p)| (*l, p.clone())).ok_or("model")?;
        let j = self.journal()?;
        self.counts.reads += 1;
        match j.read(lsn) {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(format!(
                "read of acknowledged lsn {lsn}: {} bytes differ from the {} written",
                got.len(),
                want.len()
            )),
            Err(e) if self.storage.crashed() => self.engine_error(&format!("read {lsn}"), &e, &[]),
            Err(e) => Err(format!("read of acknowledged lsn {lsn}: {e}")),
        }
    }

    fn set_mark(&mut self, to: u64) -> Res {
        let j = self.journal()?;
        self.counts.marks += 1;
        match j.set_mark(to) {
            Ok(()) => {
                self.model.mark = to;
                self.model.drop_below(to);
                Ok(())
            }
            Err(e) => self.engine_error(&format!("mark {to}"), &e, &[]),
        }
    }

    fn mark(&mut self) -> Res {
        let span = self.model.next_lsn - self.model.mark;
        let to = self.model.mark + self.rng.below(span + 1);
        self.note(format!("mark {to}"));
        self.set_mark(to)
    }

    /// A cut-back to `keep`, as a replica takes its primary's history: the
    /// records after the last batch end at or below it go.
    fn cutback(&mut self) -> Res {
        if self.model.next_lsn <= self.model.mark + 1 {
            return Ok(());
        }
        let keep = self.model.mark + self.rng.below(self.model.next_lsn - self.model.mark);
        // Possibly with the power failing part-way through its writes.
        if self.rng.chance(30) {
            let n = self.rng.below(6);
            self.storage.crash_after_writes(n);
            self.note(format!("cut back to {keep}, the power failing at its write {}", n + 1));
        } else {
            self.note(format!("cut back to {keep}"));
        }
        let j = self.journal()?;
        self.counts.cutbacks += 1;
        // What must survive even if it is interrupted: up to the last known
        // batch end at or below `keep`.
        // (It may go below the mark: the mark then comes down with it.)
        let safe = self.model.batch_ends.range(..=keep).next_back().map(|e| e + 1).unwrap_or(1);
        match j.truncate_after(keep) {
            Ok(end) => {
                self.storage_budget_off();
                if end.next_lsn < safe {
                    return Err(format!("cut back to {keep} ended at {}, below the batch end {safe}", end.next_lsn));
                }
                self.note(format!("cut back to {keep}: the journal continues at {}, mark {}", end.next_lsn, end.mark));
                self.cut_model(end.next_lsn);
                Ok(())
            }
            Err(e) => {
                // Whatever is past `safe` may or may not be there now.
                let tail: Vec<(u64, Vec<u8>)> = self
                    .model
                    .acked
                    .range(safe..)
                    .chain(self.model.below.range(safe..))
                    .map(|(l, p)| (*l, p.clone()))
                    .collect();
                // (Batch ends stay: recovery drops those past the end.)
                let ends = self.model.batch_ends.clone();
                self.cut_model(safe);
                self.model.batch_ends = ends;
                self.engine_error(&format!("cut back to {keep}"), &e, &tail)
            }
        }
    }

    fn cut_model(&mut self, next: u64) {
        self.model.acked.split_off(&next);
        self.model.below.split_off(&next);
        self.model.batch_ends.split_off(&next);
        self.model.next_lsn = next;
        self.model.mark = self.model.mark.min(next);
    }

    fn storage_budget_off(&mut self) {
        // A crash planned for a later write that did not come: drop the plan
        // (a restart clears it anyway).
        if !self.storage.crashed() {
            self.storage.crash_after_writes(u64::MAX);
        }
    }

    /// The journal deleted and created again with its id (a replica taking
    /// its primary's journals).
    fn recreate(&mut self) -> Res {
        let id = self.journal()?.id();
        self.note(format!("delete the journal and create it again with id {id}"));
        self.counts.recreates += 1;
        let res = {
            let log = self.log.as_ref().ok_or("no log open")?;
            log.delete_journal(JOURNAL).and_then(|()| log.create_journal_with_id(JOURNAL, id).map(|_| ()))
        };
        let before = std::mem::replace(&mut self.model, Model::new());
        if let Err(e) = res {
            self.recreating = Some((before, id));
            return self.engine_error("delete and create with id", &e, &[]);
        }
        Ok(())
    }

    fn rot(&mut self) -> Res {
        if let Some(what) = rot_one(&mut self.rng, &self.storage, &mut self.rotted, self.mirrors) {
            self.note(what);
            self.counts.rots += 1;
        }
        Ok(())
    }

    /// Drops the engine and opens the set again (after a crash, the devices
    /// as the power failure left them), then checks everything.
    fn recover(&mut self, crashed: bool) -> Res {
        self.log = None;
        if crashed {
            self.counts.crashes += 1;
            self.storage.reopen();
        } else {
            self.counts.restarts += 1;
        }
        self.storage.crash_after_writes(u64::MAX);
        // A restart may come with another record size limit (issue 16,
        // item 1: never a reason to cut records).
        self.cfg.max_record_size = if self.rng.chance(50) { 2 << 10 } else { 8 << 10 };
        let log = MirrorLog::open(&self.cfg)
            .map_err(|e| format!("open after {}: {e}", if crashed { "a crash" } else { "a restart" }))?;
        if let Some((old, id)) = self.recreating.take() {
            // Cut short: the old journal is still there, or none, or the new.
            match log.journal(JOURNAL) {
                Err(_) => {
                    log.create_journal_with_id(JOURNAL, id)
                        .map_err(|e| format!("create with id after a crash: {e}"))?;
                }
                Ok(j) if j.next_lsn() == 1 && j.mark() == 0 => {}
                Ok(_) => self.model = old,
            }
        }
        self.log = Some(log);
        self.verify()
    }

    /// Every acknowledged record is there with its bytes; what lies past
    /// them is only appends that were in flight.
    fn verify(&mut self) -> Res {
        let j = self.journal()?;
        // (Marks 0 and 1 both mean "nothing below": no record is below 1.)
        let mark = j.mark().max(1);
        if mark < self.model.mark.max(1) {
            return Err(format!("the mark went back from {} to {mark}", self.model.mark));
        }
        // A mark set just before a crash may have been persisted.
        self.model.mark = mark;
        self.model.drop_below(mark);
        for (lsn, want) in &self.model.acked {
            match j.read(*lsn) {
                Ok(got) if got == *want => {}
                Ok(got) => {
                    return Err(format!("acknowledged lsn {lsn} holds other bytes ({} for {})", got.len(), want.len()))
                }
                Err(e) => return Err(format!("acknowledged lsn {lsn} is lost: {e}")),
            }
        }
        let next = j.next_lsn();
        let acked_end = self.model.acked.keys().next_back().map(|l| l + 1).unwrap_or(self.model.next_lsn.min(next));
        if next < acked_end {
            return Err(format!("the journal ends at {next}, before acknowledged records (up to {})", acked_end - 1));
        }
        // Records past the acknowledged ones: appends that were in flight.
        for lsn in acked_end.max(mark)..next {
            let got = j.read(lsn).map_err(|e| format!("lsn {lsn} (past the acknowledged end) unreadable: {e}"))?;
            match self.model.maybe.get(&lsn).or_else(|| self.model.below.get(&lsn)) {
                Some(p) if *p == got => {
                    self.model.acked.insert(lsn, got);
                }
                Some(_) => return Err(format!("lsn {lsn} holds bytes other than the append in flight there")),
                None => {
                    return Err(format!(
                        "lsn {lsn} holds a record that was never appended (next {next}; acknowledged {:?}..{:?}, in flight {:?}..{:?}, below the mark {:?}..{:?}, mark {mark})",
                        self.model.acked.keys().next(),
                        self.model.acked.keys().next_back(),
                        self.model.maybe.keys().next(),
                        self.model.maybe.keys().next_back(),
                        self.model.below.keys().next(),
                        self.model.below.keys().next_back()
                    ))
                }
            }
        }
        // In-flight records below the mark may still be there, below it: a
        // later cut-back that lowers the mark brings them back into view.
        let maybe = std::mem::take(&mut self.model.maybe);
        for (lsn, p) in maybe.range(..mark.min(next)) {
            self.model.below.insert(*lsn, p.clone());
        }
        self.note(format!("recovered: next {next}, mark {mark}"));
        self.model.next_lsn = next;
        self.model.batch_ends.split_off(&next);
        self.model.batch_ends.insert(next.saturating_sub(1));
        self.counts.verified += 1;
        Ok(())
    }

    fn step(&mut self) -> Res {
        let pick = self.rng.below(100);
        match pick {
            0..=39 => self.append(),
            40..=51 => self.driver_round(),
            52..=61 => self.read(),
            62..=66 => self.mark(),
            67..=71 => self.cutback(),
            72..=73 => self.recreate(),
            74..=80 => self.rot(),
            81..=85 => {
                self.note("restart".into());
                self.recover(false)
            }
            86..=91 => {
                self.note("the power fails".into());
                self.storage.crash();
                self.recover(true)
            }
            _ => {
                let n = self.rng.below(8);
                self.note(format!("the power will fail at write {} from now", n + 1));
                self.storage.crash_after_writes(n);
                self.counts.crashes_mid_write += 1;
                Ok(())
            }
        }
    }
}

/// Runs one seed.
pub fn run(o: &Options) -> Result<Counts, Failure> {
    let fail = |sim: Option<&Sim>, step: u32, message: String| {
        Failure::new("", o.seed, step, message, sim.map_or(&[][..], |s| &s.trace))
    };
    let mut sim = Sim::new(o.seed).map_err(|m| fail(None, 0, m))?;
    for step in 0..o.steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            return Err(fail(Some(&sim), step, m));
        }
    }
    // The end: the power fails, and everything must be there.
    sim.step = o.steps;
    sim.note("the power fails (end)".into());
    sim.storage.crash();
    if let Err(m) = sim.recover(true) {
        return Err(fail(Some(&sim), o.steps, m));
    }
    Ok(sim.counts)
}

/// Runs seeds `first..first + n`; the first failure stops it.
pub fn run_seeds(first: u64, n: u64, steps: u32) -> Result<Counts, Failure> {
    seeds(first, n, steps, |seed, steps| run(&Options { seed, steps }))
}
