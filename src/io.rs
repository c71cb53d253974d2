//! Device layer: O_DIRECT devices, aligned buffers, and io_uring submission.
//!
//! Every device (block device or regular file) is a flat array of blocks
//! opened with `O_DIRECT`. All data I/O goes through io_uring. Each thread
//! that performs I/O owns one ring (thread-local), so the thread that forms a
//! batch also writes it: no hop between threads on the append path.
//!
//! The engine reaches devices through `storage` (the device layer); this
//! module holds the real devices' building blocks it and the tools use.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use io_uring::{opcode, types, IoUring};

/// How a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `RWF_DSYNC` on each io_uring write (the default; see docs/benchmarks.md).
    #[default]
    RwfDsync,
    /// Devices opened with `O_DSYNC`; every write is synchronous.
    ODsync,
}

// ---------------------------------------------------------------------------
// aligned buffers

/// A heap buffer aligned for O_DIRECT. Zeroed on allocation.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    align: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` zeroed bytes aligned to `align` (a power of two).
    /// `cap` is rounded up to a multiple of `align`.
    pub fn new(cap: usize, align: usize) -> AlignedBuf {
        let cap = cap.max(align).div_ceil(align) * align;
        let layout = match Layout::from_size_align(cap, align) {
            Ok(l) => l,
            Err(_) => panic!("invalid buffer layout {cap}/{align}"),
        };
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = match NonNull::new(ptr) {
            Some(p) => p,
            None => alloc::handle_alloc_error(layout),
        };
        AlignedBuf { ptr, cap, align }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap bytes and initialised (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.cap, self.align)) }
    }
}

// ---------------------------------------------------------------------------
// devices

/// An open device.
#[derive(Debug)]
pub struct Device {
    pub path: PathBuf,
    pub file: File,
    /// Logical block size reported by the device (512 or 4096 for block
    /// devices; the filesystem's direct-I/O alignment, or 4096, for files).
    pub logical_block: u32,
    /// Size in bytes.
    pub size: u64,
    pub is_block_device: bool,
}

/// Opens `path` for O_DIRECT reads and writes.
///
/// A device that refuses O_DIRECT (tmpfs, some FUSE filesystems) is rejected
/// with an error that names it.
pub fn open_device(path: &Path, sync: SyncMode) -> io::Result<Device> {
    let mut flags = libc::O_DIRECT;
    if sync == SyncMode::ODsync {
        flags |= libc::O_DSYNC;
    }
    let file = OpenOptions::new().read(true).write(true).custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: the device refuses O_DIRECT (is it on tmpfs?); mirrorlog needs direct I/O",
                    path.display()
                ),
            )
        } else {
            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        }
    })?;
    lock_exclusive(&file, path)?;
    let meta = file.metadata()?;
    let is_block_device = meta.file_type().is_block_device();
    let (logical_block, size) = if is_block_device {
        let mut bs: libc::c_int = 0;
        let mut sz: u64 = 0;
        // SAFETY: BLKSSZGET writes an int, BLKGETSIZE64 a u64, into valid locals.
        unsafe {
            if libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut bs) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut sz) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        (bs as u32, sz)
    } else if meta.file_type().is_file() {
        (file_dio_align(path).unwrap_or(4096), meta.len())
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a block device or regular file", path.display()),
        ));
    };
    // Probe: an aligned direct read must work (some filesystems accept the
    // flag at open and fail at I/O time).
    if size >= 4096 {
        let mut b = AlignedBuf::new(4096, 4096);
        let r = with_ring(|ring| {
            let op = IoOp::read(file.as_raw_fd(), 0, &mut b.as_mut_slice()[..4096]);
            let mut res = [0i32; 1];
            submit_wait(ring, std::slice::from_ref(&op), &mut res).map(|_| res[0])
        })?;
        if r < 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{}: direct read failed: {}", path.display(), io::Error::from_raw_os_error(-r)),
            ));
        }
    }
    Ok(Device { path: path.to_path_buf(), file, logical_block, size, is_block_device })
}

/// How long `open_device` waits for another owner's lock to go away. A
/// killed owner's io_uring is torn down asynchronously by the kernel, and its
/// in-flight requests hold the file (and so the lock) a little past its exit.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Takes an exclusive advisory lock on the device: one owner at a time, since
/// a second process (or a second open in this one) writing the same device
/// would corrupt it. The lock goes with the owner, so a crashed owner never
/// blocks recovery for long.
fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        if start.elapsed() >= LOCK_WAIT {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{}: in use by another process (locked for over {LOCK_WAIT:?})", path.display()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x80081272;

/// The direct-I/O offset alignment of a file, from statx(STATX_DIOALIGN).
fn file_dio_align(path: &Path) -> Option<u32> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statx is a valid value; statx writes into it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_DIOALIGN, &mut stx) };
    if r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align > 0 {
        Some(stx.stx_dio_offset_align)
    } else {
        None
    }
}

/// Creates a regular file of `size` bytes filled with zeroes (written, not
/// fallocated: an unwritten extent would make the first durable write to each
/// block also commit filesystem metadata). Does nothing if it already exists.
pub fn create_device_file(path: &Path, size: u64) -> io::Result<bool> {
    use std::io::Write;
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let tmp = path.with_extension("creating");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// io_uring

/// One read or write.
#[derive(Debug, Clone, Copy)]
pub struct IoOp {
    pub fd: i32,
    pub offset: u64,
    pub ptr: *mut u8,
    pub len: u32,
    pub write: bool,
    pub dsync: bool,
}

impl IoOp {
    pub fn read(fd: i32, offset: u64, buf: &mut [u8]) -> IoOp {
        IoOp { fd, offset, ptr: buf.as_mut_ptr(), len: buf.len() as u32, write: false, dsync: false }
    }
    pub fn write(fd: i32, offset: u64, buf: &[u8], dsync: bool) -> IoOp {
        IoOp { fd, offset, ptr: buf.as_ptr() as *mut u8, len: buf.len() as u32, write: true, dsync }
    }
}

const RING_ENTRIES: u32 = 64;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's io_uring, creating it on first use.
pub fn with_ring<R>(f: impl FnOnce(&mut IoUring) -> io::Result<R>) -> io::Result<R> {
    RING.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| io::Error::other("io_uring ring re-entered on one thread"))?;
        if slot.is_none() {
            *slot = Some(IoUring::new(RING_ENTRIES)?);
        }
        match slot.as_mut() {
            Some(ring) => f(ring),
            None => Err(io::Error::other("io_uring ring missing")),
        }
    })
}

/// The io_uring submission entry of `op`, tagged with `user_data`.
pub fn sqe(op: &IoOp, user_data: u64) -> io_uring::squeue::Entry {
    if op.write {
        let flags = if op.dsync { libc::RWF_DSYNC } else { 0 };
        opcode::Write::new(types::Fd(op.fd), op.ptr as *const u8, op.len).offset(op.offset).rw_flags(flags).build()
    } else {
        opcode::Read::new(types::Fd(op.fd), op.ptr, op.len).offset(op.offset).build()
    }
    .user_data(user_data)
}

/// `submit_and_wait(want)`, entered again after `EINTR`; `EBUSY` (the
/// completion queue is full: reap first) counts as done.
pub fn enter(ring: &mut IoUring, want: usize) -> io::Result<()> {
    loop {
        match ring.submit_and_wait(want) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Submits `ops` in one `io_uring_enter` and waits for all of them.
/// `results[i]` receives op i's result (bytes, or `-errno`).
///
/// The caller keeps every buffer alive until this returns; all submitted ops
/// are always reaped before returning, even on error, so no completion can
/// outlive its buffer.
pub fn submit_wait(ring: &mut IoUring, ops: &[IoOp], results: &mut [i32]) -> io::Result<()> {
    debug_assert_eq!(ops.len(), results.len());
    let mut done = 0usize;
    let mut next = 0usize;
    while done < ops.len() {
        // queue as many as fit
        let mut queued = 0;
        {
            let mut sq = ring.submission();
            while next < ops.len() {
                let entry = sqe(&ops[next], next as u64);
                // SAFETY: the buffer outlives the op: we reap every op before returning.
                if unsafe { sq.push(&entry) }.is_err() {
                    break;
                }
                next += 1;
                queued += 1;
            }
        }
        let inflight = next - done;
        let want = if queued > 0 { inflight } else { 1 };
        if let Err(e) = enter(ring, want.min(inflight)) {
            // Nothing more can be reaped safely without the kernel; wait
            // for what was already submitted before giving up.
            drain(ring, &mut done, results);
            return Err(e);
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            if i < results.len() {
                results[i] = cqe.result();
                done += 1;
            }
        }
    }
    Ok(())
}

fn drain(ring: &mut IoUring, done: &mut usize, results: &mut [i32]) {
    while *done < results.len() {
        if ring.submit_and_wait(1).is_err() {
            // Cannot reap: leaking is safer than freeing a buffer in use.
            std::process::abort();
        }
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            if i < results.len() {
                results[i] = cqe.result();
                *done += 1;
            }
        }
    }
}

/// Reads `buf.len()` bytes at `offset` with one io_uring op (direct I/O,
/// aligned). A short read is an error.
pub fn pread_exact(fd: i32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    let op = IoOp::read(fd, offset, buf);
    let mut res = [0i32];
    with_ring(|ring| submit_wait(ring, std::slice::from_ref(&op), &mut res))?;
    check_full(res[0], len)
}

/// Turns an io_uring result into `Ok` if it moved exactly `len` bytes.
pub fn check_full(res: i32, len: usize) -> io::Result<()> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else if res as usize != len {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short I/O: {res} of {len} bytes")))
    } else {
        Ok(())
    }
}

/// Sends as much of `bytes` as the socket `fd` takes now, without blocking
/// (`send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`). Returns the bytes sent
/// (fewer than asked when the socket buffer is full), or the socket's error.
/// Used by the daemon and the client to answer from the task that has the
/// bytes, instead of waking a writer task for each message.
pub fn send_nonblocking(fd: std::os::fd::RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        // SAFETY: send(2) reads bytes[sent..], a valid borrowed slice.
        let n = unsafe {
            libc::send(
                fd,
                bytes[sent..].as_ptr() as *const libc::c_void,
                bytes.len() - sent,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => break,
            _ if n == 0 => break,
            _ => return Err(e),
        }
    }
    Ok(sent)
}
