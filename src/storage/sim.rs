//! In-memory devices with crash semantics, for the seeded simulator and
//! tests that must cut the power at an exact point.
//!
//! A device is a sparse array of 512-byte sectors (absent sectors read as
//! zero). `run` applies its ops one after the other; a `Queue`'s ops are
//! applied when their completion is taken. A **crash**:
//! * every op in flight in a queue (submitted, completion not taken) is
//!   applied whole, not at all, or torn: a prefix of its sectors, chosen by
//!   the seeded generator;
//! * `crash_after_writes(n)`: the write that would be the `n + 1`-th from
//!   now is torn the same way, and the crash happens there, inside a group
//!   of `run` (a mirrored write reaches some members and not others);
//! * after it, every op fails (EIO) and nothing changes any more, until the
//!   devices are opened again (`reopen`), as after a reboot.
//!
//! Deterministic: the same seed and the same sequence of calls give the
//! same bytes.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{DevId, Op, Opened, Queue, Storage};
use crate::io::SyncMode;

const SECTOR: usize = 512;

/// Settings of a `SimStorage`.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Logical block size the devices report.
    pub logical_block: u32,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig { seed, logical_block: 512 }
    }
}

#[derive(Debug, Default)]
struct SimDevice {
    size: u64,
    sectors: HashMap<u64, Box<[u8; SECTOR]>>,
    /// The id it is open under, if it is.
    open: Option<u64>,
}

#[derive(Debug)]
struct SimState {
    devices: HashMap<PathBuf, SimDevice>,
    ids: HashMap<u64, PathBuf>,
    next_id: u64,
    rng: u64,
    /// Latency: each time a queue's completions are taken, each of its ops
    /// in flight stays in flight with this probability (percent).
    hold_percent: u64,
    /// Writes left before the power fails (None: no such plan).
    budget: Option<u64>,
    crashed: bool,
    /// Ops in flight in queues: (queue, user data, op).
    in_flight: Vec<(u64, u64, Op)>,
    /// Results decided without applying (the power failed): (queue, user
    /// data, -errno), taken by the queue's next `complete`.
    failed: Vec<(u64, u64, i32)>,
    next_queue: u64,
    logical_block: u32,
    writes: u64,
}

impl SimState {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast, seeded, and the same everywhere.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn device(&mut self, dev: DevId) -> Option<&mut SimDevice> {
        let path = self.ids.get(&dev.0)?;
        let d = self.devices.get_mut(path)?;
        (d.open == Some(dev.0)).then_some(d)
    }

    /// Applies the first `sectors` sectors of `op` (all if None). Returns
    /// bytes moved or -errno.
    fn apply(&mut self, op: &Op, sectors: Option<usize>) -> i32 {
        if self.crashed {
            return -libc::EIO;
        }
        let Some(d) = self.device(op.dev) else { return -libc::EBADF };
        let len = op.len as usize;
        if op.offset % SECTOR as u64 != 0 || len % SECTOR != 0 || op.offset + len as u64 > d.size {
            return -libc::EINVAL;
        }
        let n = sectors.unwrap_or(len / SECTOR).min(len / SECTOR);
        for k in 0..n {
            let s = op.offset / SECTOR as u64 + k as u64;
            // SAFETY: the op's buffer holds `len` bytes and stays valid until
            // its result is returned (module invariant of `storage`).
            let buf = unsafe { std::slice::from_raw_parts_mut(op.ptr.add(k * SECTOR), SECTOR) };
            if op.write {
                if buf.iter().all(|&b| b == 0) {
                    d.sectors.remove(&s);
                } else {
                    let mut b = Box::new([0u8; SECTOR]);
                    b.copy_from_slice(buf);
                    d.sectors.insert(s, b);
                }
            } else {
                match d.sectors.get(&s) {
                    Some(b) => buf.copy_from_slice(&b[..]),
                    None => buf.fill(0),
                }
            }
        }
        len as i32
    }

    /// One op now, counting writes against the power budget.
    fn run_one(&mut self, op: &Op) -> i32 {
        if op.write && !self.crashed {
            self.writes += 1;
            if let Some(b) = self.budget.as_mut() {
                if *b == 0 {
                    let sectors = op.len as usize / SECTOR;
                    let keep = (self.next() % (sectors as u64 + 1)) as usize;
                    self.apply(op, Some(keep));
                    self.crash();
                    return -libc::EIO;
                }
                *b -= 1;
            }
        }
        self.apply(op, None)
    }

    fn crash(&mut self) {
        let ops = std::mem::take(&mut self.in_flight);
        for (q, ud, op) in ops {
            if op.write {
                let sectors = op.len as usize / SECTOR;
                let keep = (self.next() % (sectors as u64 + 2)) as usize;
                // sectors + 1 means "whole"; 0 "none"; in between, torn.
                self.apply(&op, Some(keep.min(sectors)));
            }
            // Its owner (about to be thrown away) still gets an answer.
            self.failed.push((q, ud, -libc::EIO));
        }
        self.crashed = true;
        self.budget = None;
    }
}

/// In-memory devices (module docs).
#[derive(Debug, Clone)]
pub struct SimStorage {
    id: u64,
    state: Arc<Mutex<SimState>>,
}

impl SimStorage {
    pub fn new(cfg: SimConfig) -> SimStorage {
        SimStorage {
            id: super::next_storage_id(),
            state: Arc::new(Mutex::new(SimState {
                devices: HashMap::new(),
                ids: HashMap::new(),
                next_id: 1,
                rng: cfg.seed | 1,
                hold_percent: 0,
                budget: None,
                crashed: false,
                in_flight: Vec::new(),
                failed: Vec::new(),
                next_queue: 1,
                logical_block: cfg.logical_block,
                writes: 0,
            })),
        }
    }

    /// Creates a zero-filled device of `size` bytes (if none has this path).
    pub fn create(&self, path: &Path, size: u64) {
        self.state.lock().devices.entry(path.to_path_buf()).or_insert_with(|| SimDevice { size, ..Default::default() });
    }

    /// The power fails now (in-flight ops torn as the module docs say).
    pub fn crash(&self) {
        self.state.lock().crash();
    }

    /// The power fails at the `n + 1`-th write from now (`u64::MAX`:
    /// never; no failure is set to come).
    pub fn crash_after_writes(&self, n: u64) {
        self.state.lock().budget = (n != u64::MAX).then_some(n);
    }

    /// Whether a power failure is set to come (`crash_after_writes`).
    pub fn crash_armed(&self) -> bool {
        self.state.lock().budget.is_some()
    }

    /// Whether the power has failed.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// After a crash: every device closed, ops work again (a reboot).
    pub fn reopen(&self) {
        let mut s = self.state.lock();
        s.crashed = false;
        // (Queues of the engine that crashed are gone by now.)
        s.in_flight.clear();
        s.failed.clear();
        for d in s.devices.values_mut() {
            d.open = None;
        }
        s.ids.clear();
    }

    /// Writes applied since creation (for coverage and choosing crash points).
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    /// Flips one bit of the byte at `offset` of `path` (latent corruption).
    pub fn flip(&self, path: &Path, offset: u64) {
        let mut s = self.state.lock();
        if let Some(d) = s.devices.get_mut(path) {
            let sec = d.sectors.entry(offset / SECTOR as u64).or_insert_with(|| Box::new([0u8; SECTOR]));
            sec[(offset % SECTOR as u64) as usize] ^= 0x10;
        }
    }

    /// Reads bytes of a device directly (for checks), whatever is open.
    pub fn peek(&self, path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let s = self.state.lock();
        let mut out = vec![0u8; len];
        if let Some(d) = s.devices.get(path) {
            for (i, b) in out.iter_mut().enumerate() {
                let at = offset + i as u64;
                if let Some(sec) = d.sectors.get(&(at / SECTOR as u64)) {
                    *b = sec[(at % SECTOR as u64) as usize];
                }
            }
        }
        out
    }

    /// Latency: from now on, each op in flight stays in flight with this
    /// probability (percent, below 100) each time its queue's completions
    /// are taken, so writes complete later and out of order. 0 (the
    /// default) completes every op at the first look, drawing nothing from
    /// the generator.
    pub fn set_latency(&self, hold_percent: u64) {
        assert!(hold_percent < 100, "an op must complete eventually");
        self.state.lock().hold_percent = hold_percent;
    }

    /// A number from the storage's seeded generator (for simulators that
    /// share its seed).
    pub fn random(&self) -> u64 {
        self.state.lock().next()
    }
}

impl Storage for SimStorage {
    fn storage_id(&self) -> u64 {
        self.id
    }

    fn open(&self, path: &Path, _sync: SyncMode) -> io::Result<Opened> {
        let mut s = self.state.lock();
        let id = s.next_id;
        let logical_block = s.logical_block;
        let d = s
            .devices
            .get_mut(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: no such device", path.display())))?;
        if d.open.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{}: in use by another process (simulated)", path.display()),
            ));
        }
        d.open = Some(id);
        let size = d.size;
        s.next_id += 1;
        s.ids.insert(id, path.to_path_buf());
        Ok(Opened { id: DevId(id), path: path.to_path_buf(), size, logical_block })
    }

    fn close(&self, dev: DevId) {
        let mut s = self.state.lock();
        if let Some(p) = s.ids.remove(&dev.0) {
            if let Some(d) = s.devices.get_mut(&p) {
                if d.open == Some(dev.0) {
                    d.open = None;
                }
            }
        }
    }

    fn run(&self, ops: &[Op], results: &mut [i32]) -> io::Result<()> {
        let mut s = self.state.lock();
        for (op, r) in ops.iter().zip(results.iter_mut()) {
            *r = s.run_one(op);
        }
        Ok(())
    }

    fn queue(&self, _entries: u32) -> io::Result<Box<dyn Queue>> {
        let mut s = self.state.lock();
        let id = s.next_queue;
        s.next_queue += 1;
        Ok(Box::new(SimQueue { id, state: self.state.clone(), pushed: Vec::new() }))
    }
}

/// A queue whose ops are applied when their completion is taken.
struct SimQueue {
    id: u64,
    state: Arc<Mutex<SimState>>,
    pushed: Vec<(u64, Op)>,
}

impl Queue for SimQueue {
    unsafe fn push(&mut self, op: &Op, user_data: u64) -> bool {
        self.pushed.push((user_data, *op));
        true
    }

    fn unsubmitted(&mut self) -> bool {
        !self.pushed.is_empty()
    }

    fn submit(&mut self, _want: usize) -> io::Result<()> {
        let mut s = self.state.lock();
        for (ud, op) in self.pushed.drain(..) {
            s.in_flight.push((self.id, ud, op));
        }
        Ok(())
    }

    fn complete(&mut self, out: &mut [(u64, i32)]) -> usize {
        let mut s = self.state.lock();
        let mut n = 0;
        while n < out.len() {
            let Some(i) = s.failed.iter().position(|(q, _, _)| *q == self.id) else { break };
            let (_, ud, r) = s.failed.remove(i);
            out[n] = (ud, r);
            n += 1;
        }
        let mut i = 0;
        while n < out.len() && i < s.in_flight.len() {
            if s.in_flight[i].0 != self.id || (s.hold_percent > 0 && s.next() % 100 < s.hold_percent) {
                i += 1;
                continue;
            }
            let (_, ud, op) = s.in_flight.remove(i);
            let r = s.run_one(&op);
            out[n] = (ud, r);
            n += 1;
        }
        n
    }

    fn register_eventfd(&self, _fd: std::os::fd::RawFd) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "simulated devices complete only when polled"))
    }
}

impl Drop for SimQueue {
    fn drop(&mut self) {
        // Ops still pushed or in flight complete (or are lost in a crash);
        // with latency, over several looks.
        loop {
            let n = {
                let s = self.state.lock();
                self.pushed.len()
                    + s.in_flight.iter().filter(|(q, _, _)| *q == self.id).count()
                    + s.failed.iter().filter(|(q, _, _)| *q == self.id).count()
            };
            if n == 0 {
                break;
            }
            let _ = self.submit(0);
            let mut out = vec![(0, 0); n];
            self.complete(&mut out);
        }
    }
}
