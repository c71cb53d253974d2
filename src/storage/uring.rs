//! The real devices: `O_DIRECT` files and block devices, through io_uring
//! (`run` on the calling thread's ring, a `Queue` on a ring of its own).
//! A device's id is its file descriptor.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use io_uring::IoUring;
use parking_lot::Mutex;

use super::{DevId, Op, Opened, Queue, Storage};
use crate::io::{enter, open_device, sqe, submit_wait, with_ring, Device, IoOp, SyncMode};

/// The devices of this process, by descriptor.
#[derive(Debug)]
pub struct UringStorage {
    id: u64,
    open: Mutex<HashMap<u64, Device>>,
}

impl UringStorage {
    pub fn new() -> UringStorage {
        UringStorage { id: super::next_storage_id(), open: Mutex::new(HashMap::new()) }
    }
}

impl Default for UringStorage {
    fn default() -> Self {
        Self::new()
    }
}

fn io_op(op: &Op) -> IoOp {
    IoOp { fd: op.dev.0 as i32, offset: op.offset, ptr: op.ptr, len: op.len, write: op.write, dsync: op.dsync }
}

impl Storage for UringStorage {
    fn storage_id(&self) -> u64 {
        self.id
    }

    fn open(&self, path: &Path, sync: SyncMode) -> io::Result<Opened> {
        let d = open_device(path, sync)?;
        let fd = d.file.as_raw_fd() as u64;
        let o = Opened { id: DevId(fd), path: d.path.clone(), size: d.size, logical_block: d.logical_block };
        self.open.lock().insert(fd, d);
        Ok(o)
    }

    fn close(&self, dev: DevId) {
        self.open.lock().remove(&dev.0);
    }

    fn run(&self, ops: &[Op], results: &mut [i32]) -> io::Result<()> {
        const INLINE: usize = 16;
        if ops.len() <= INLINE {
            let mut v =
                [IoOp { fd: -1, offset: 0, ptr: std::ptr::null_mut(), len: 0, write: false, dsync: false }; INLINE];
            for (d, s) in v.iter_mut().zip(ops) {
                *d = io_op(s);
            }
            return with_ring(|ring| submit_wait(ring, &v[..ops.len()], results));
        }
        let v: Vec<IoOp> = ops.iter().map(io_op).collect();
        with_ring(|ring| submit_wait(ring, &v, results))
    }

    fn queue(&self, entries: u32) -> io::Result<Box<dyn Queue>> {
        Ok(Box::new(UringQueue { ring: IoUring::new(entries.max(2))?, in_flight: 0 }))
    }
}

/// An io_uring of its own.
struct UringQueue {
    ring: IoUring,
    in_flight: usize,
}

impl Queue for UringQueue {
    unsafe fn push(&mut self, op: &Op, user_data: u64) -> bool {
        let e = sqe(&io_op(op), user_data);
        // SAFETY: the caller keeps the buffer valid until the completion is
        // taken (the trait's contract); Drop waits for every op in flight.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            return false;
        }
        self.in_flight += 1;
        true
    }

    fn unsubmitted(&mut self) -> bool {
        // (The ring itself knows what is queued and not yet submitted, also
        // after an EBUSY or a failed submit left entries in it.)
        !self.ring.submission().is_empty()
    }

    fn submit(&mut self, want: usize) -> io::Result<()> {
        enter(&mut self.ring, want)
    }

    fn complete(&mut self, out: &mut [(u64, i32)]) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion().take(out.len()) {
            out[n] = (cqe.user_data(), cqe.result());
            n += 1;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn register_eventfd(&self, fd: std::os::fd::RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(fd)
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // Never free a buffer the kernel may still write into.
        let n = self.in_flight;
        super::drain_queue(self, n);
    }
}
