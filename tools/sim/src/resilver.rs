//! The resilver simulation (`mirrorlog-sim --resilver`, issue 14): a
//! one-site set of 2 or 3 mirrors on simulated devices, the real engine,
//! where members fail (their writes refused below the engine), are replaced
//! by blank devices (a failed member, or a healthy one), re-added, or
//! detached, and are resilvered a few chunks at a time, with appends made
//! between the chunks (inside the resilver's own pacing callback), marks,
//! restarts and the power failing now or at any of the next writes (a
//! resilver's copy, a progress superblock or a membership change included).
//!
//! Checked: after every recovery, every acknowledged record at or above
//! the mark reads back with its bytes, and records past them are only
//! appends that were in flight; opening the set never fails. At the end,
//! once any resilver has finished, every healthy member **alone** (the set
//! opened from that device only) holds every acknowledged record: a
//! resilvered member counts only when it really holds everything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirrorlog::storage::{SimConfig, SimStorage};
use mirrorlog::{Config, FaultInjector, MirrorLog};

use crate::{counters, draw_payload, sim_config, Failure, Rng, DEV_SIZE, JOURNAL};

counters! {
    /// Counts of what a run did (fault coverage).
    pub struct ResilverCounts {
        appends,
        /// Appends made between two chunks of a resilver.
        appends_mid_resilver,
        marks,
        member_failures,
        replaces,
        re_adds,
        detaches,
        resilver_steps,
        resilvers_finished,
        /// Resilvers that resumed from a persisted slot after a restart.
        resumed,
        /// Segments a re-add found whole and skipped.
        segments_skipped,
        restarts,
        crashes,
        crashes_mid_write,
        verified,
        /// Members checked alone at the end.
        alone_checked,
    }
}

struct Sim {
    seed: u64,
    rng: Rng,
    storage: SimStorage,
    fault: Arc<FaultInjector>,
    cfg: Config,
    log: Option<Arc<MirrorLog>>,
    /// Acknowledged records at or above the mark.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Appends in flight when something failed: may be there after recovery.
    maybe: BTreeMap<u64, Vec<u8>>,
    next_dev: u32,
    written: u64,
    counts: ResilverCounts,
    trace: Vec<String>,
    step: u32,
}

type Res = Result<(), String>;

/// One append through `log`'s journal, recorded in the model.
fn append(
    log: &MirrorLog,
    rng: &mut Rng,
    seed: u64,
    written: &mut u64,
    acked: &mut BTreeMap<u64, Vec<u8>>,
    maybe: &mut BTreeMap<u64, Vec<u8>>,
    trace: &mut Vec<String>,
) -> bool {
    let Ok(j) = log.journal(JOURNAL) else { return false };
    *written += 1;
    let p = draw_payload(rng, seed, *written);
    let lsn = j.next_lsn();
    match j.append(&p) {
        Ok(got) => {
            trace.push(format!("  append: lsn {got}"));
            acked.insert(got, p);
            true
        }
        Err(e) => {
            trace.push(format!("  append at lsn {lsn} failed: {e}"));
            // (After a failed write the journal refuses appends unplaced:
            // the first one at an LSN is the one that may be there.)
            maybe.entry(lsn).or_insert(p);
            false
        }
    }
}

impl Sim {
    fn new(seed: u64) -> Result<Sim, String> {
        let storage = SimStorage::new(SimConfig::new(seed ^ 0x5EED));
        let fault = FaultInjector::over(Arc::new(storage.clone()));
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mirrors = 2 + rng.below(2) as usize;
        let devices: Vec<PathBuf> = (0..mirrors).map(|i| PathBuf::from(format!("/sim/m{i}.dev"))).collect();
        for d in &devices {
            storage.create(d, DEV_SIZE);
        }
        let mut cfg = sim_config(devices, &storage);
        cfg.storage = Some(fault.clone());
        let log = MirrorLog::create(&cfg).map_err(|e| format!("create: {e}"))?;
        log.create_journal(JOURNAL).map_err(|e| format!("create journal: {e}"))?;
        Ok(Sim {
            seed,
            rng,
            storage,
            fault,
            cfg,
            log: Some(Arc::new(log)),
            acked: BTreeMap::new(),
            maybe: BTreeMap::new(),
            next_dev: 0,
            written: 0,
            counts: ResilverCounts::default(),
            trace: Vec::new(),
            step: 0,
        })
    }

    fn note(&mut self, s: String) {
        self.trace.push(format!("{}: {s}", self.step));
    }

    fn log(&self) -> Result<Arc<MirrorLog>, String> {
        self.log.clone().ok_or_else(|| "no log open".to_string())
    }

    /// (path, state) of each member.
    fn members(&self) -> Result<Vec<(PathBuf, &'static str)>, String> {
        Ok(self.log()?.status().mirrors.into_iter().map(|m| (PathBuf::from(m.path), m.state)).collect())
    }

    /// The configuration names the members' devices (and `also`), so the
    /// next open finds them. Once the power failed, what the engine holds
    /// in memory may not be on disk: no device is dropped then.
    fn configure(&mut self, also: Option<&Path>) -> Res {
        let mut devs: Vec<PathBuf> =
            self.members()?.into_iter().map(|(p, _)| p).filter(|p| !p.starts_with("<missing")).collect();
        if self.storage.crashed() {
            for d in &self.cfg.devices {
                if !devs.contains(d) {
                    devs.push(d.clone());
                }
            }
        }
        if let Some(a) = also {
            if !devs.iter().any(|d| d == a) {
                devs.push(a.to_path_buf());
            }
        }
        self.cfg.devices = devs;
        Ok(())
    }

    fn append(&mut self) -> Res {
        let log = self.log()?;
        self.counts.appends += 1;
        if !append(&log, &mut self.rng, self.seed, &mut self.written, &mut self.acked, &mut self.maybe, &mut self.trace)
        {
            self.note("an append failed".into());
            if !self.storage.crashed() {
                return Err("an append failed with the power on".into());
            }
        }
        Ok(())
    }

    fn mark(&mut self) -> Res {
        let Some((&first, _)) = self.acked.iter().next() else { return Ok(()) };
        let last = self.acked.keys().next_back().copied().unwrap_or(first);
        let to = first + self.rng.below(last - first + 1);
        self.note(format!("mark {to}"));
        self.counts.marks += 1;
        let j = self.log()?.journal(JOURNAL).map_err(|e| e.to_string())?;
        if j.set_mark(to).is_ok() {
            self.acked = self.acked.split_off(&to);
        }
        Ok(())
    }

    /// A healthy member's writes fail (below the engine) until the next
    /// append failed it.
    fn fail_member(&mut self) -> Res {
        let healthy: Vec<PathBuf> =
            self.members()?.into_iter().filter(|(_, s)| *s == "healthy").map(|(p, _)| p).collect();
        if healthy.len() < 2 {
            return Ok(());
        }
        let victim = healthy[self.rng.below(healthy.len() as u64) as usize].clone();
        self.note(format!("writes to {} fail", victim.display()));
        self.counts.member_failures += 1;
        self.fault.fail_writes(&victim);
        self.append()?;
        self.fault.clear();
        Ok(())
    }

    fn new_device(&mut self) -> PathBuf {
        self.next_dev += 1;
        let p = PathBuf::from(format!("/sim/r{}.dev", self.next_dev));
        self.storage.create(&p, DEV_SIZE);
        p
    }

    /// Replaces a failed member (or a healthy one) by a blank device, or
    /// re-adds a failed one, or detaches one: whichever applies.
    fn membership(&mut self) -> Res {
        let members = self.members()?;
        if members.iter().any(|(_, s)| *s == "rebuilding") {
            if self.rng.chance(15) {
                let (p, _) = members.iter().find(|(_, s)| *s == "rebuilding").cloned().ok_or("rebuilding")?;
                self.note(format!("detach {} (rebuilding)", p.display()));
                self.counts.detaches += 1;
                let r = self.log()?.detach(&p.display().to_string());
                self.note(format!("  {r:?}"));
                self.refusal(r.err())?;
                return self.configure(None);
            }
            return Ok(());
        }
        let failed: Vec<PathBuf> = members
            .iter()
            .filter(|(p, s)| *s == "failed" && !p.starts_with("<missing"))
            .map(|(p, _)| p.clone())
            .collect();
        let log = self.log()?;
        if let Some(f) = failed.first().cloned() {
            if self.rng.chance(50) {
                self.note(format!("re-add {}", f.display()));
                self.counts.re_adds += 1;
                let r = log.re_add(&f);
                self.note(format!("  {r:?}"));
                self.refusal(r.err())?;
                return self.configure(Some(&f));
            }
            let new = self.new_device();
            self.note(format!("replace {} (failed) by {}", f.display(), new.display()));
            self.counts.replaces += 1;
            let r = log.replace(&f.display().to_string(), &new, false);
            self.note(format!("  {r:?}"));
            self.refusal(r.err())?;
            return self.configure(Some(&new));
        }
        let healthy: Vec<PathBuf> = members.iter().filter(|(_, s)| *s == "healthy").map(|(p, _)| p.clone()).collect();
        if healthy.is_empty() || members.len() >= 4 {
            return Ok(());
        }
        let old = healthy[self.rng.below(healthy.len() as u64) as usize].clone();
        let new = self.new_device();
        self.note(format!("replace {} (healthy) by {}", old.display(), new.display()));
        self.counts.replaces += 1;
        let r = log.replace(&old.display().to_string(), &new, false);
        self.note(format!("  {r:?}"));
        self.refusal(r.err())?;
        self.configure(Some(&new))
    }

    /// A membership change may be refused (`config`: a member that failed
    /// meanwhile, ...); any other error with the power on is a defect.
    fn refusal(&self, e: Option<mirrorlog::Error>) -> Res {
        match e {
            None | Some(mirrorlog::Error::Config(_)) => Ok(()),
            Some(_) if self.storage.crashed() => Ok(()),
            Some(e) => Err(format!("a membership change failed with the power on: {e}")),
        }
    }

    /// A few chunks of the resilver, appends between them; `all`: to the end.
    fn resilver(&mut self, all: bool) -> Res {
        let log = self.log()?;
        let chunks = if all { u64::MAX } else { 1 + self.rng.below(12) };
        let chunk = (4 << 10) << self.rng.below(4);
        let (mut calls, mut mid) = (0u64, 0u64);
        let res = {
            let (rng, seed, written, acked, maybe, trace) =
                (&mut self.rng, self.seed, &mut self.written, &mut self.acked, &mut self.maybe, &mut self.trace);
            log.resilver(chunk, |_| {
                calls += 1;
                if !all && rng.chance(40) {
                    mid += 1;
                    append(&log, rng, seed, written, acked, maybe, trace);
                }
                calls < chunks
            })
        };
        self.counts.appends_mid_resilver += mid;
        match res {
            Ok(None) => {}
            Ok(Some(p)) => {
                self.counts.resilver_steps += 1;
                self.counts.resumed += p.resumed as u64;
                self.counts.segments_skipped += p.slots_skipped;
                if !p.stopped && !p.cancelled {
                    self.counts.resilvers_finished += 1;
                }
                self.note(format!(
                    "resilver {} chunks of {chunk} (+{mid} appends): {} slots, {} bytes{}{}{}",
                    calls,
                    p.slots_done,
                    p.bytes_done,
                    if p.stopped { ", stopped" } else { ", finished" },
                    if p.resumed { ", resumed" } else { "" },
                    if p.slots_skipped > 0 { format!(", {} skipped", p.slots_skipped) } else { String::new() }
                ));
            }
            Err(e) => {
                self.note(format!("resilver: {e} (+{mid} appends)"));
                if !self.storage.crashed() {
                    return Err(format!("the resilver failed with the power on: {e}"));
                }
            }
        }
        self.configure(None)
    }

    /// Drops the engine and opens the set again (after a crash, the devices
    /// as the power failure left them), then checks every record.
    fn recover(&mut self, crashed: bool) -> Res {
        self.configure(None).ok();
        self.log = None;
        if crashed {
            self.counts.crashes += 1;
            self.storage.reopen();
        } else {
            self.counts.restarts += 1;
        }
        self.storage.crash_after_writes(u64::MAX);
        self.fault.clear();
        let log = MirrorLog::open(&self.cfg).map_err(|e| {
            format!("open {:?} after {}: {e}", self.cfg.devices, if crashed { "a crash" } else { "a restart" })
        })?;
        self.log = Some(Arc::new(log));
        self.verify()
    }

    /// Every acknowledged record reads back; past them, only appends that
    /// were in flight.
    fn verify(&mut self) -> Res {
        let log = self.log()?;
        let j = log.journal(JOURNAL).map_err(|e| e.to_string())?;
        let mark = j.mark().max(1);
        self.acked = self.acked.split_off(&mark);
        check(&j, &self.acked)?;
        let next = j.next_lsn();
        let end = self.acked.keys().next_back().map_or(mark, |l| l + 1);
        if next < end {
            return Err(format!("the journal ends at {next}, before acknowledged records (up to {})", end - 1));
        }
        for lsn in end.max(mark)..next {
            let got = j.read(lsn).map_err(|e| format!("lsn {lsn} past the acknowledged end unreadable: {e}"))?;
            match self.maybe.get(&lsn) {
                Some(p) if *p == got => {
                    self.acked.insert(lsn, got);
                }
                _ => return Err(format!("lsn {lsn} holds a record that was never appended there")),
            }
        }
        self.maybe.clear();
        self.note(format!("recovered: next {next}, mark {mark}, members {:?}", self.members()?));
        self.counts.verified += 1;
        Ok(())
    }

    fn step(&mut self) -> Res {
        self.op()?;
        // Once the power failed, what comes next is the recovery.
        if self.storage.crashed() {
            self.note("the power failed".into());
            return self.recover(true);
        }
        Ok(())
    }

    fn op(&mut self) -> Res {
        match self.rng.below(100) {
            0..=34 => self.append(),
            35..=39 => self.mark(),
            40..=45 => self.fail_member(),
            46..=53 => self.membership(),
            54..=77 => self.resilver(false),
            78..=82 => {
                self.note("restart".into());
                self.recover(false)
            }
            83..=89 => {
                self.note("the power fails".into());
                self.storage.crash();
                self.recover(true)
            }
            _ => {
                let n = self.rng.below(12);
                self.note(format!("the power will fail at write {} from now", n + 1));
                self.storage.crash_after_writes(n);
                self.counts.crashes_mid_write += 1;
                Ok(())
            }
        }
    }

    /// The end: the power fails; after recovery any resilver runs to its
    /// end; then every healthy member alone holds every acknowledged record.
    fn finish(&mut self) -> Res {
        self.note("the power fails (end)".into());
        self.storage.crash();
        self.recover(true)?;
        self.resilver(true)?;
        let members = self.members()?;
        if members.iter().any(|(_, s)| *s == "rebuilding") {
            return Err(format!("a resilver did not finish: {members:?}"));
        }
        self.log = None;
        for (p, state) in members {
            if state != "healthy" {
                continue;
            }
            let mut cfg = self.cfg.clone();
            cfg.devices = vec![p.clone()];
            cfg.start_degraded = true;
            let log = MirrorLog::open(&cfg).map_err(|e| format!("open {} alone: {e}", p.display()))?;
            let j = log.journal(JOURNAL).map_err(|e| e.to_string())?;
            check(&j, &self.acked).map_err(|e| format!("{} alone: {e}", p.display()))?;
            self.note(format!("{} alone holds every acknowledged record", p.display()));
            self.counts.alone_checked += 1;
        }
        Ok(())
    }
}

/// Every record of `acked` reads back from `j` with its bytes.
fn check(j: &mirrorlog::Journal, acked: &BTreeMap<u64, Vec<u8>>) -> Res {
    for (lsn, want) in acked {
        match j.read(*lsn) {
            Ok(got) if got == *want => {}
            Ok(_) => return Err(format!("acknowledged lsn {lsn} holds other bytes")),
            Err(e) => return Err(format!("acknowledged lsn {lsn} is lost: {e}")),
        }
    }
    Ok(())
}

/// Runs one seed.
pub fn run(seed: u64, steps: u32) -> Result<ResilverCounts, Failure> {
    let fail = |sim: Option<&Sim>, step: u32, m: String| {
        Failure::new("--resilver", seed, step, m, sim.map_or(&[][..], |s| &s.trace))
    };
    let mut sim = Sim::new(seed).map_err(|m| fail(None, 0, m))?;
    for step in 0..steps {
        sim.step = step;
        if let Err(m) = sim.step() {
            return Err(fail(Some(&sim), step, m));
        }
    }
    sim.step = steps;
    if let Err(m) = sim.finish() {
        return Err(fail(Some(&sim), steps, m));
    }
    Ok(sim.counts)
}
