//! The device layer: everything the engine reads from and writes to a
//! member device goes through a [`Storage`], the one seam below the engine
//! (raft-engine's `env::FileSystem`, TigerBeetle's `Storage(IO)`).
//!
//! * [`UringStorage`]: the real devices, `O_DIRECT` through io_uring (the
//!   default; a process-wide instance, [`default_storage`]).
//! * [`FaultInjector`]: a wrapper that makes a chosen device fail, or the
//!   power fail after a number of writes, below the engine, which runs
//!   unchanged.
//! * [`SimStorage`]: in-memory devices with crash semantics, for the
//!   seeded simulator.
//!
//! Two ways in, used by every read and write of the engine:
//! * [`Storage::run`]: a group of ops submitted at once (a mirrored write
//!   goes to every member in one submission), waited for;
//! * [`Storage::queue`]: an asynchronous [`Queue`] (the `Driver`'s batch
//!   writes, the recovery scan's read-ahead), polled by its owner.
//!
//! Invariant (every implementation): a buffer handed to an op stays valid
//! until that op's result is returned (`run`) or taken (`Queue::complete`);
//! an implementation never touches it after that, and a `Queue` dropped with
//! ops in flight waits for them first.

mod fault;
mod sim;
mod uring;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use fault::FaultInjector;
pub use sim::{SimConfig, SimStorage};
pub use uring::UringStorage;

use crate::io::SyncMode;

/// A device opened through a `Storage`: the storage's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevId(pub u64);

/// What opening a device found.
#[derive(Debug, Clone)]
pub struct Opened {
    pub id: DevId,
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The device's logical block size (512 or 4096; for files, their
    /// direct-I/O alignment).
    pub logical_block: u32,
}

/// One read or write of whole blocks.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub dev: DevId,
    pub offset: u64,
    pub ptr: *mut u8,
    pub len: u32,
    pub write: bool,
    /// Durable when it completes (RWF_DSYNC).
    pub dsync: bool,
}

// SAFETY: an Op is a description; the buffer it points to is owned by the
// caller, who keeps it valid until the op's result is returned (module
// invariant). Ops cross threads only inside `run`, which waits for them.
unsafe impl Send for Op {}

impl Op {
    pub fn read(dev: DevId, offset: u64, buf: &mut [u8]) -> Op {
        Op { dev, offset, ptr: buf.as_mut_ptr(), len: buf.len() as u32, write: false, dsync: false }
    }
    pub fn write(dev: DevId, offset: u64, buf: &[u8], dsync: bool) -> Op {
        Op { dev, offset, ptr: buf.as_ptr() as *mut u8, len: buf.len() as u32, write: true, dsync }
    }
}

/// The device layer (module docs).
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Distinguishes storages (a `Queue` serves one storage's devices).
    fn storage_id(&self) -> u64;
    /// Opens a device for reads and writes, exclusively: a second open of
    /// it (here or by another process) fails until it is closed.
    fn open(&self, path: &Path, sync: SyncMode) -> io::Result<Opened>;
    /// Closes a device opened here.
    fn close(&self, dev: DevId);
    /// Submits `ops` at once and waits for all of them: `results[i]` is op
    /// `i`'s bytes moved, or `-errno`. `Err` only if the submission itself
    /// failed (then no op is in flight any more).
    fn run(&self, ops: &[Op], results: &mut [i32]) -> io::Result<()>;
    /// An asynchronous queue of at least `entries` ops.
    fn queue(&self, entries: u32) -> io::Result<Box<dyn Queue>>;
}

/// An asynchronous op queue on one thread (not `Send`).
pub trait Queue {
    /// Queues `op`, to be started by the next `submit`; `false` if the
    /// queue is full.
    ///
    /// # Safety
    /// The op's buffer must stay valid until its completion is taken.
    unsafe fn push(&mut self, op: &Op, user_data: u64) -> bool;
    /// Whether ops were pushed and not yet submitted.
    fn unsubmitted(&mut self) -> bool;
    /// Starts what is queued; with `want > 0`, waits until that many
    /// completions are ready (or an error).
    fn submit(&mut self, want: usize) -> io::Result<()>;
    /// Takes up to `out.len()` completions: (user data, bytes or -errno).
    fn complete(&mut self, out: &mut [(u64, i32)]) -> usize;
    /// Has `fd` (an eventfd) signalled whenever an op completes, so an
    /// event loop can sleep until then. Storages that complete ops only
    /// when polled answer `Unsupported`.
    fn register_eventfd(&self, fd: std::os::fd::RawFd) -> io::Result<()>;
}

/// A new storage id (each storage instance has its own).
pub(crate) fn next_storage_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The process's real devices (one `UringStorage`, shared).
pub fn default_storage() -> Arc<dyn Storage> {
    static S: std::sync::OnceLock<Arc<UringStorage>> = std::sync::OnceLock::new();
    S.get_or_init(|| Arc::new(UringStorage::new())).clone()
}

/// Reads `buf.len()` bytes at `offset` of `dev`; a short read is an error.
pub fn read_exact(storage: &dyn Storage, dev: DevId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    let mut res = [0i32];
    storage.run(&[Op::read(dev, offset, buf)], &mut res)?;
    crate::io::check_full(res[0], len)
}

/// Blocks until every op pushed on `q` is complete (a queue's drop), taking
/// and discarding the results. Aborts the process if the queue cannot wait:
/// leaking is safer than freeing a buffer the device may still write into.
pub(crate) fn drain_queue(q: &mut dyn Queue, mut in_flight: usize) {
    let mut out = [(0u64, 0i32); 16];
    while in_flight > 0 {
        if q.submit(1).is_err() {
            std::process::abort();
        }
        in_flight = in_flight.saturating_sub(q.complete(&mut out));
    }
}
