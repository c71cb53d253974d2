//! Faults below the engine: a `Storage` that wraps another and makes chosen
//! devices misbehave, so the engine sees exactly what it would see from a
//! failing disk. Used by tests for faults that cannot be caused for real on
//! this machine; the engine's production path handles them, unchanged.
//!
//! Per device (by path): reads or writes fail with EIO; writes are torn
//! (only their first bytes reach the device, yet they report success);
//! writes are misdirected (land elsewhere, report success); reads return
//! rotten bytes (one bit flipped). For all devices: the power fails after
//! `n` more writes (every later write fails).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{DevId, Op, Opened, Queue, Storage};
use crate::io::SyncMode;

#[derive(Debug, Default)]
struct Rules {
    fail_writes: Vec<PathBuf>,
    fail_reads: Vec<PathBuf>,
    /// Device writes still allowed before every write fails.
    write_budget: Option<u64>,
    /// Writes keep only their first this many bytes.
    tear: Vec<(PathBuf, u32)>,
    /// Writes land this many bytes further on.
    misdirect: Vec<(PathBuf, u64)>,
    /// Reads come back with a bit flipped in their first byte.
    rot: Vec<PathBuf>,
}

/// What becomes of one op.
enum Fate {
    Pass(Op),
    Fail,
    /// Passes, then its data is rotten (reads).
    Rot(Op),
}

/// A `Storage` wrapper that injects faults (module docs). `new()` wraps the
/// real devices.
#[derive(Debug)]
pub struct FaultInjector {
    id: u64,
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

/// The rules and the devices they name (shared with the queues).
#[derive(Debug, Default)]
struct Faults {
    paths: Mutex<HashMap<u64, PathBuf>>,
    rules: Mutex<Rules>,
}

impl FaultInjector {
    /// Faults over the real devices.
    pub fn new() -> Arc<FaultInjector> {
        Self::over(super::default_storage())
    }

    /// Faults over `inner`.
    pub fn over(inner: Arc<dyn Storage>) -> Arc<FaultInjector> {
        Arc::new(FaultInjector { id: super::next_storage_id(), inner, faults: Arc::new(Faults::default()) })
    }

    /// From now on every write to `path` fails with EIO.
    pub fn fail_writes(&self, path: &Path) {
        self.faults.rules.lock().fail_writes.push(path.to_path_buf());
    }
    /// From now on every read from `path` fails with EIO.
    pub fn fail_reads(&self, path: &Path) {
        self.faults.rules.lock().fail_reads.push(path.to_path_buf());
    }
    /// From now on `n` more device writes (one per member written) succeed,
    /// then every write to every device fails: the power fails at a chosen
    /// point of a multi-write operation.
    pub fn fail_writes_after(&self, n: u64) {
        self.faults.rules.lock().write_budget = Some(n);
    }
    /// From now on writes to `path` keep only their first `keep` bytes (a
    /// torn write) and report success.
    pub fn tear_writes(&self, path: &Path, keep: u32) {
        self.faults.rules.lock().tear.push((path.to_path_buf(), keep));
    }
    /// From now on writes to `path` land `by` bytes further on (a
    /// misdirected write) and report success.
    pub fn misdirect_writes(&self, path: &Path, by: u64) {
        self.faults.rules.lock().misdirect.push((path.to_path_buf(), by));
    }
    /// From now on reads from `path` return their first byte with a bit
    /// flipped (latent corruption), and report success.
    pub fn rot_reads(&self, path: &Path) {
        self.faults.rules.lock().rot.push(path.to_path_buf());
    }
    /// Every fault off.
    pub fn clear(&self) {
        *self.faults.rules.lock() = Rules::default();
    }
}

impl Faults {
    fn fate(&self, op: &Op) -> Fate {
        let path = self.paths.lock().get(&op.dev.0).cloned().unwrap_or_default();
        let mut r = self.rules.lock();
        if op.write {
            if let Some(left) = r.write_budget.as_mut() {
                if *left == 0 {
                    return Fate::Fail;
                }
                *left -= 1;
            }
            if r.fail_writes.contains(&path) {
                return Fate::Fail;
            }
            let mut op = *op;
            if let Some(&(_, keep)) = r.tear.iter().find(|(p, _)| *p == path) {
                op.len = op.len.min(keep);
            }
            if let Some(&(_, by)) = r.misdirect.iter().find(|(p, _)| *p == path) {
                op.offset += by;
            }
            Fate::Pass(op)
        } else if r.fail_reads.contains(&path) {
            Fate::Fail
        } else if r.rot.contains(&path) {
            Fate::Rot(*op)
        } else {
            Fate::Pass(*op)
        }
    }
}

/// An op whose length was cut (a torn write) reports the length asked for.
fn reported(asked: &Op, done: &Op, res: i32) -> i32 {
    if res == done.len as i32 {
        asked.len as i32
    } else {
        res
    }
}

fn rot(op: &Op, res: i32) {
    if res > 0 {
        // SAFETY: the op read `res` bytes into its buffer, which the caller
        // keeps valid until the result is returned (module invariant).
        unsafe { *op.ptr ^= 0x10 };
    }
}

impl Storage for FaultInjector {
    fn storage_id(&self) -> u64 {
        self.id
    }

    fn open(&self, path: &Path, sync: SyncMode) -> io::Result<Opened> {
        let o = self.inner.open(path, sync)?;
        self.faults.paths.lock().insert(o.id.0, path.to_path_buf());
        Ok(o)
    }

    fn close(&self, dev: DevId) {
        self.faults.paths.lock().remove(&dev.0);
        self.inner.close(dev);
    }

    fn run(&self, ops: &[Op], results: &mut [i32]) -> io::Result<()> {
        let fates: Vec<Fate> = ops.iter().map(|o| self.faults.fate(o)).collect();
        let mut pass = Vec::with_capacity(ops.len());
        let mut at = Vec::with_capacity(ops.len());
        for (i, f) in fates.iter().enumerate() {
            match f {
                Fate::Pass(o) | Fate::Rot(o) => {
                    pass.push(*o);
                    at.push(i);
                }
                Fate::Fail => results[i] = -libc::EIO,
            }
        }
        let mut res = vec![0i32; pass.len()];
        self.inner.run(&pass, &mut res)?;
        for (k, &i) in at.iter().enumerate() {
            results[i] = reported(&ops[i], &pass[k], res[k]);
            if let Fate::Rot(o) = &fates[i] {
                rot(o, res[k]);
            }
        }
        Ok(())
    }

    fn queue(&self, entries: u32) -> io::Result<Box<dyn Queue>> {
        Ok(Box::new(FaultQueue {
            faults: self.faults.clone(),
            inner: self.inner.queue(entries)?,
            ready: Vec::new(),
            passed: HashMap::new(),
        }))
    }
}

/// A queue over the inner storage's, applying each op's fate at push.
struct FaultQueue {
    faults: Arc<Faults>,
    inner: Box<dyn Queue>,
    /// Completions decided at push (failed ops).
    ready: Vec<(u64, i32)>,
    /// Ops passed on, by user data: (asked, done, rot).
    passed: HashMap<u64, (Op, Op, bool)>,
}

impl Queue for FaultQueue {
    unsafe fn push(&mut self, op: &Op, user_data: u64) -> bool {
        let (o, rot) = match self.faults.fate(op) {
            Fate::Fail => {
                self.ready.push((user_data, -libc::EIO));
                return true;
            }
            Fate::Pass(o) => (o, false),
            Fate::Rot(o) => (o, true),
        };
        // SAFETY: passed on under the same contract.
        if !unsafe { self.inner.push(&o, user_data) } {
            return false;
        }
        self.passed.insert(user_data, (*op, o, rot));
        true
    }

    fn unsubmitted(&mut self) -> bool {
        self.inner.unsubmitted()
    }

    fn submit(&mut self, want: usize) -> io::Result<()> {
        self.inner.submit(want.saturating_sub(self.ready.len()))
    }

    fn complete(&mut self, out: &mut [(u64, i32)]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(c) = self.ready.pop() else { break };
            out[n] = c;
            n += 1;
        }
        let m = self.inner.complete(&mut out[n..]);
        for c in &mut out[n..n + m] {
            if let Some((asked, done, rot_it)) = self.passed.remove(&c.0) {
                c.1 = reported(&asked, &done, c.1);
                if rot_it {
                    rot(&done, c.1);
                }
            }
        }
        n + m
    }

    fn register_eventfd(&self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.inner.register_eventfd(fd)
    }
}
