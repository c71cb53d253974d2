//! The mirror set: 1 to 8 devices holding identical bytes, RAID-1 style.
//!
//! Invariants enforced here:
//! - A write is reported done only when it completed durably on every member
//!   that is healthy when the write finishes. A member whose write fails is
//!   marked failed, and that is persisted in the survivors' superblocks before
//!   the write is reported done; with no survivor the write fails.
//! - Superblock generation `g` goes to copy `g % 2`, so the previous
//!   generation survives a torn superblock write.
//! - A failed member stays failed (in memory and on disk) until an operator
//!   brings it back; it is never read from or written to.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::RngCore;

use crate::error::{Error, Result};
use crate::format::{Health, MemberInfo, Superblock, DATA_START, MAX_MEMBERS, SUPERBLOCK_REGION};
use crate::io::{check_full, AlignedBuf, SyncMode};
use crate::storage::{DevId, Op, Opened, Storage};

/// One member of the set.
#[derive(Debug)]
pub struct Member {
    pub path: PathBuf,
    /// The device, as the set's storage opened it (`None`: missing).
    dev: Option<Opened>,
    pub uuid: [u8; 16],
    pub slot: u16,
    healthy: AtomicBool,
    /// Durable writes completed, and their summed latency in ns (for metrics).
    pub writes: AtomicU64,
    pub write_ns: AtomicU64,
    /// What went wrong on this member since open (`zpool status`'s READ,
    /// WRITE, CKSUM, and the copies rewritten from a good member).
    pub errors: MemberErrors,
}

/// Errors seen on one member since the set was opened.
#[derive(Debug, Default)]
pub struct MemberErrors {
    /// Reads that failed (EIO, short).
    pub read: AtomicU64,
    /// Writes that failed (the member is then failed).
    pub write: AtomicU64,
    /// Copies read from it that did not verify where another member's did
    /// (a record's CRC32C, a header, the chain).
    pub checksum: AtomicU64,
    /// Bad copies on it rewritten from a good member.
    pub repaired: AtomicU64,
}

impl MemberErrors {
    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(read, write, checksum, repaired)`.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (g(&self.read), g(&self.write), g(&self.checksum), g(&self.repaired))
    }
}

impl Member {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
    fn dev(&self) -> Option<DevId> {
        self.dev.as_ref().map(|d| d.id)
    }
}

/// Everything needed to open or format a set.
#[derive(Debug, Clone)]
pub struct SetOptions {
    pub devices: Vec<PathBuf>,
    pub block_size: u32,
    pub segment_size: u64,
    pub sync: SyncMode,
    pub inflight_window: u64,
    /// The device layer (real devices, faults over them, or simulated).
    pub storage: Arc<dyn Storage>,
    /// Format with this set UUID (a replica takes its primary's) instead of a random one.
    pub set_uuid: Option<[u8; 16]>,
    /// Format as a replica not yet given its primary's journals.
    pub unsynced_replica: bool,
    /// Open without members that the newest superblock present lists as
    /// healthy (the operator says they hold nothing newer: `open`).
    pub start_degraded: bool,
}

/// Members that failed a write: a fixed-size set, so the write path does
/// not allocate.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Failed {
    ids: [usize; MAX_MEMBERS],
    n: usize,
}

impl Failed {
    pub fn push(&mut self, i: usize) {
        if self.n < MAX_MEMBERS {
            self.ids[self.n] = i;
            self.n += 1;
        }
    }
    pub fn as_slice(&self) -> &[usize] {
        &self.ids[..self.n]
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Where one write goes (see `MirrorSet::write_targets`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Targets {
    /// `(member index, device)` of each member to write.
    pub go: [(usize, DevId); MAX_MEMBERS],
    pub n_go: usize,
    /// Healthy members that count as having failed already (no device).
    pub failed: Failed,
}

impl Targets {
    /// Members the write is attempted on (written, or failed at once).
    pub fn attempted(&self) -> usize {
        self.n_go + self.failed.n
    }
}

/// An open mirror set.
pub struct MirrorSet {
    members: Vec<Member>,
    pub block_size: u32,
    pub segment_size: u64,
    pub slot_count: u64,
    pub set_uuid: [u8; 16],
    sync: SyncMode,
    storage: Arc<dyn Storage>,
    /// The current superblock (its `member_uuid` is filled in per member on write).
    sb: Mutex<Superblock>,
    /// Configured devices that are not in the set, and why (`open`).
    absent: Vec<(PathBuf, String)>,
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// Lower-case hex of a UUID-like id.
pub fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Devices opened and not yet owned by a set: closed on drop (an open that
/// fails part-way must not leave the others locked).
struct Opening {
    storage: Arc<dyn Storage>,
    devs: Vec<Opened>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        for d in self.devs.drain(..) {
            self.storage.close(d.id);
        }
    }
}

fn open_all(opts: &SetOptions) -> Result<Opening> {
    check_device_count(opts)?;
    let mut devs = Opening { storage: opts.storage.clone(), devs: Vec::new() };
    for p in &opts.devices {
        let d = opts.storage.open(p, opts.sync).map_err(|e| Error::Device(p.clone(), e))?;
        devs.devs.push(d.clone());
        check_logical_block(opts, &d)?;
    }
    Ok(devs)
}

/// A device whose logical block does not divide the set's block size
/// cannot take its O_DIRECT writes.
fn check_logical_block(opts: &SetOptions, d: &Opened) -> Result<()> {
    if opts.block_size % d.logical_block != 0 {
        return Err(Error::Config(format!(
            "{}: logical block size {} does not divide the block size {}",
            d.path.display(),
            d.logical_block,
            opts.block_size
        )));
    }
    Ok(())
}

/// Opens every configured device and reads its superblock: the devices
/// that hold one (opened, owned by the returned `Opening`), and the others
/// with why (not opened, or opened and closed). Refuses when no device
/// holds a superblock, with the error a whole-set open gave before.
#[allow(clippy::type_complexity)]
fn probe_all(opts: &SetOptions) -> Result<(Opening, Vec<(Opened, Superblock)>, Vec<(PathBuf, String)>)> {
    check_device_count(opts)?;
    let mut opening = Opening { storage: opts.storage.clone(), devs: Vec::new() };
    let mut found = Vec::new();
    let mut absent = Vec::new();
    let mut first_err = None;
    for p in &opts.devices {
        let d = match opts.storage.open(p, opts.sync) {
            Ok(d) => d,
            // Another process holds it: never start around it.
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => return Err(Error::Device(p.clone(), e)),
            Err(e) => {
                absent.push((p.clone(), format!("cannot be opened: {e}")));
                first_err.get_or_insert(Error::Device(p.clone(), e));
                continue;
            }
        };
        if let Err(e) = check_logical_block(opts, &d) {
            opts.storage.close(d.id);
            return Err(e);
        }
        match read_best_superblock(&*opts.storage, &d) {
            Ok(sb) => {
                opening.devs.push(d.clone());
                found.push((d, sb));
            }
            Err(e) => {
                opts.storage.close(d.id);
                absent.push((p.clone(), e.to_string()));
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if found.is_empty() => Err(e),
        _ => Ok((opening, found, absent)),
    }
}

fn check_device_count(opts: &SetOptions) -> Result<()> {
    if opts.devices.is_empty() {
        return Err(Error::Config("no devices configured".into()));
    }
    if opts.devices.len() > crate::format::MAX_MEMBERS {
        return Err(Error::Config(format!(
            "{} devices configured; at most {} are supported",
            opts.devices.len(),
            crate::format::MAX_MEMBERS
        )));
    }
    Ok(())
}

impl MirrorSet {
    /// Formats the devices as a new, empty mirror set. Destroys their contents.
    pub fn format(opts: &SetOptions) -> Result<MirrorSet> {
        let mut devs = open_all(opts)?;
        if devs.devs.len() == 1 {
            tracing::warn!("mirror set has a single device: nothing is mirrored");
        }
        let bs = opts.block_size as u64;
        if !opts.block_size.is_power_of_two() || opts.block_size < 512 {
            return Err(Error::Config(format!("block size {} must be a power of two >= 512", bs)));
        }
        if opts.segment_size % bs != 0 || opts.segment_size < 4 * bs {
            return Err(Error::Config(format!(
                "segment size {} must be a multiple of the block size {} and at least 4 blocks",
                opts.segment_size, bs
            )));
        }
        let size = devs.devs.iter().map(|d| d.size).min().unwrap_or(0);
        let set_uuid = opts.set_uuid.unwrap_or_else(random16);
        let members: Vec<Member> = devs
            .devs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, d)| Member {
                path: d.path.clone(),
                dev: Some(d),
                uuid: random16(),
                slot: i as u16,
                healthy: AtomicBool::new(true),
                writes: AtomicU64::new(0),
                write_ns: AtomicU64::new(0),
                errors: MemberErrors::default(),
            })
            .collect();
        let sb = Superblock {
            block_size: opts.block_size,
            generation: 0,
            set_uuid,
            member_uuid: [0; 16],
            segment_size: opts.segment_size,
            epoch: 1,
            device_size: size,
            next_journal_id: 1,
            inflight_window: opts.inflight_window,
            history: crate::epoch::History::of(crate::epoch::Epoch::from_raw(1)),
            unsynced: opts.unsynced_replica,
            members: members
                .iter()
                .map(|m| MemberInfo { uuid: m.uuid, slot: m.slot, health: Health::Healthy })
                .collect(),
            journals: Vec::new(),
        };
        if sb.slot_count() < 2 {
            return Err(Error::Config(format!(
                "devices of {size} bytes hold fewer than 2 segments of {} bytes",
                opts.segment_size
            )));
        }
        devs.devs.clear(); // owned by the members (and the set's drop) now
        let set = MirrorSet {
            members,
            block_size: opts.block_size,
            segment_size: opts.segment_size,
            slot_count: sb.slot_count(),
            set_uuid,
            sync: opts.sync,
            storage: opts.storage.clone(),
            sb: Mutex::new(sb),
            absent: Vec::new(),
        };
        // Zero both superblock copies and the header block of every slot, so
        // nothing from an earlier format can be mistaken for ours.
        let zero = AlignedBuf::new(2 * SUPERBLOCK_REGION as usize, set.block_size as usize);
        set.write_all(0, zero.as_slice())?;
        let zb = AlignedBuf::new(set.block_size as usize, set.block_size as usize);
        for s in 0..set.slot_count {
            set.write_all(crate::format::slot_offset(s, set.segment_size), zb.as_slice())?;
        }
        // Two generations, one in each copy.
        set.update_superblock(|_| Ok(()))?;
        set.update_superblock(|_| Ok(()))?;
        Ok(set)
    }

    /// Opens an existing set: checks that the devices belong together, picks
    /// the newest valid superblock, and rewrites it on every healthy member.
    ///
    /// Degraded, as md assembles: a configured device that cannot be opened
    /// or holds no valid superblock is reported and left out, and the set's
    /// members not among the devices present are failed. A missing member
    /// that the newest superblock present still lists as healthy refuses
    /// the open unless `start_degraded`: it may have gone on taking writes
    /// after the present members failed (a transient error), and then they
    /// lack records it acknowledged. A member failed while the set ran is
    /// marked so on the others, which then open without it.
    pub fn open(opts: &SetOptions) -> Result<MirrorSet> {
        let (mut opening, found, absent) = probe_all(opts)?;
        for (path, why) in &absent {
            tracing::error!(device = %path.display(), why = %why, "configured device left out of the mirror set");
        }
        // From here the members own the devices (MirrorSet's drop closes
        // them); a refusal below closes them through `opening`.
        let set_uuid = found[0].1.set_uuid;
        for (d, sb) in &found {
            if sb.set_uuid != set_uuid {
                return Err(Error::Config(format!(
                    "{} belongs to mirror set {}, {} to {}: the devices do not belong together",
                    d.path.display(),
                    hex_id(&sb.set_uuid),
                    found[0].0.path.display(),
                    hex_id(&set_uuid)
                )));
            }
        }
        let newest = found
            .iter()
            .map(|(_, sb)| sb.clone())
            .max_by_key(|sb| sb.generation)
            .ok_or_else(|| Error::Config("no devices".into()))?;
        let mut members = Vec::new();
        let mut devs: Vec<Option<Opened>> = Vec::new();
        let mut sbs = Vec::new();
        for (d, sb) in found {
            devs.push(Some(d));
            sbs.push(sb);
        }
        let mut sb = newest;
        let mut unproven = Vec::new();
        for info in sb.members.iter_mut() {
            let pos = sbs.iter().position(|s| s.member_uuid == info.uuid);
            let dev = pos.and_then(|p| devs[p].take());
            let mut health = info.health;
            let path = match &dev {
                Some(d) => d.path.clone(),
                None => {
                    if health == Health::Healthy {
                        unproven.push(hex_id(&info.uuid));
                        tracing::error!(
                            member = %hex_id(&info.uuid),
                            "mirror member listed healthy is not among the devices present: starting degraded without it"
                        );
                    }
                    health = Health::Failed;
                    PathBuf::from(format!("<missing member {}>", hex_id(&info.uuid)))
                }
            };
            if health == Health::Failed && dev.is_some() {
                tracing::warn!(device = %path.display(), "mirror member is marked failed; it stays out of the set");
            }
            info.health = health;
            members.push(Member {
                path,
                dev,
                uuid: info.uuid,
                slot: info.slot,
                healthy: AtomicBool::new(health == Health::Healthy),
                writes: AtomicU64::new(0),
                write_ns: AtomicU64::new(0),
                errors: MemberErrors::default(),
            });
        }
        if let Some(d) = devs.into_iter().flatten().next() {
            return Err(Error::Config(format!(
                "{} carries this set's id but is not one of its members",
                d.path.display()
            )));
        }
        if !unproven.is_empty() && !opts.start_degraded {
            let why: Vec<String> = absent.iter().map(|(p, w)| format!("{}: {w}", p.display())).collect();
            return Err(Error::Config(format!(
                "mirror member(s) {} missing ({}), and the newest superblock present (generation {}) lists them \
                 healthy: the members present cannot show that they hold every acknowledged record (a missing \
                 one may have gone on without them). Bring the device back, or start degraded knowingly \
                 (mirrorlogd --start-degraded, or storage.start_degraded = true): the missing members are then \
                 marked failed",
                unproven.join(", "),
                if why.is_empty() { "not configured".to_string() } else { why.join("; ") },
                sb.generation
            )));
        }
        if !members.iter().any(|m| m.is_healthy()) {
            return Err(Error::NoHealthyMirror);
        }
        for m in &members {
            if let Some(d) = &m.dev {
                if d.size < sb.device_size {
                    return Err(Error::Config(format!(
                        "{} is {} bytes, smaller than the set's {}",
                        m.path.display(),
                        d.size,
                        sb.device_size
                    )));
                }
            }
        }
        if members.iter().filter(|m| m.is_healthy()).count() == 1 && members.len() == 1 {
            tracing::warn!("mirror set has a single device: nothing is mirrored");
        }
        sb.inflight_window = sb.inflight_window.max(opts.inflight_window);
        // The members own their devices now; the others are closed.
        opening.devs.retain(|d| !members.iter().any(|m| m.dev.as_ref().is_some_and(|md| md.id == d.id)));
        drop(opening);
        let set = MirrorSet {
            block_size: sb.block_size,
            segment_size: sb.segment_size,
            slot_count: sb.slot_count(),
            set_uuid,
            members,
            sync: opts.sync,
            storage: opts.storage.clone(),
            sb: Mutex::new(sb),
            absent,
        };
        // Write both copies, so a copy torn before this open is replaced.
        set.update_superblock(|_| Ok(()))?;
        set.update_superblock(|_| Ok(()))?;
        Ok(set)
    }

    /// Bad copies rewritten from a good mirror since open, on all members.
    pub fn repairs(&self) -> u64 {
        self.members.iter().map(|m| m.errors.repaired.load(Ordering::Relaxed)).sum()
    }

    /// Configured devices that are not in the set, and why (left out at
    /// open: they could not be opened or hold no valid superblock).
    pub fn absent(&self) -> &[(PathBuf, String)] {
        &self.absent
    }

    /// Whether any of `paths` holds a valid mirrorlog superblock. A device
    /// that cannot be opened counts only when no other holds one: then the
    /// error (a set is never formatted over a device that was not read).
    pub fn any_formatted(storage: &Arc<dyn Storage>, paths: &[PathBuf], sync: SyncMode) -> Result<bool> {
        let mut err = None;
        for p in paths {
            match Self::is_formatted(storage, p, sync) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        err.map_or(Ok(false), Err)
    }

    /// Whether `path` holds a valid mirrorlog superblock.
    pub fn is_formatted(storage: &Arc<dyn Storage>, path: &Path, sync: SyncMode) -> Result<bool> {
        let d = storage.open(path, sync).map_err(|e| Error::Device(path.to_path_buf(), e))?;
        let ok = read_best_superblock(&**storage, &d).is_ok();
        storage.close(d.id);
        Ok(ok)
    }

    /// The device layer this set reads and writes through.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A copy of the current superblock.
    pub fn superblock(&self) -> Superblock {
        self.sb.lock().clone()
    }

    pub fn healthy_count(&self) -> usize {
        self.members.iter().filter(|m| m.is_healthy()).count()
    }

    fn dsync(&self) -> bool {
        self.sync == SyncMode::RwfDsync
    }

    /// Applies `f` to the superblock and writes the next generation durably to
    /// every healthy member. A member that fails the write is marked failed and
    /// the write is retried on the rest.
    pub fn update_superblock(&self, f: impl FnOnce(&mut Superblock) -> Result<()>) -> Result<()> {
        let mut sb = self.sb.lock();
        let mut next = sb.clone();
        f(&mut next)?;
        loop {
            next.generation = sb.generation.max(next.generation) + 1;
            for info in next.members.iter_mut() {
                if let Some(m) = self.members.iter().find(|m| m.uuid == info.uuid) {
                    info.health = if m.is_healthy() { Health::Healthy } else { Health::Failed };
                }
            }
            let healthy: Vec<&Member> = self.members.iter().filter(|m| m.is_healthy()).collect();
            if healthy.is_empty() {
                return Err(Error::NoHealthyMirror);
            }
            let bs = self.block_size as usize;
            let len = crate::format::align_up(next.encoded_len() as u64, bs as u64) as usize;
            let mut bufs = Vec::with_capacity(healthy.len());
            for m in &healthy {
                let mut b = AlignedBuf::new(len, bs);
                next.member_uuid = m.uuid;
                next.encode(b.as_mut_slice()).map_err(|e| Error::Corrupt(format!("superblock: {e}")))?;
                bufs.push(b);
            }
            let off = Superblock::copy_offset(next.generation);
            let ops: Vec<(usize, &[u8])> =
                healthy.iter().enumerate().map(|(i, m)| (self.member_index(m), &bufs[i].as_slice()[..len])).collect();
            let failed = self.write_members(off, &ops)?;
            if failed.is_empty() {
                next.member_uuid = [0; 16];
                *sb = next;
                return Ok(());
            }
            for &i in failed.as_slice() {
                self.fail_member_in_memory(i);
            }
            // Retry with the failed members excluded (and recorded as failed).
        }
    }

    fn member_index(&self, m: &Member) -> usize {
        self.members.iter().position(|x| std::ptr::eq(x, m)).unwrap_or(usize::MAX)
    }

    fn fail_member_in_memory(&self, i: usize) {
        if let Some(m) = self.members.get(i) {
            if m.healthy.swap(false, Ordering::AcqRel) {
                tracing::error!(device = %m.path.display(), "mirror member failed; continuing on the survivors");
            }
        }
    }

    /// Writes each `(member index, bytes)` at `off` in one submission and
    /// returns the members whose write failed.
    fn write_members(&self, off: u64, ops: &[(usize, &[u8])]) -> Result<Failed> {
        let mut failed = Failed::default();
        let mut io_ops = [Op::write(DevId(0), 0, &[], false); MAX_MEMBERS];
        let mut which = [0usize; MAX_MEMBERS];
        let mut n = 0;
        for &(i, bytes) in ops.iter().take(MAX_MEMBERS) {
            match self.members[i].dev() {
                Some(dev) => {
                    io_ops[n] = Op::write(dev, off, bytes, self.dsync());
                    which[n] = i;
                    n += 1;
                }
                None => failed.push(i),
            }
        }
        let mut res = [0i32; MAX_MEMBERS];
        let t0 = std::time::Instant::now();
        self.storage.run(&io_ops[..n], &mut res[..n]).map_err(Error::Io)?;
        let ns = t0.elapsed().as_nanos() as u64;
        for k in 0..n {
            if !self.write_done(which[k], off, res[k], io_ops[k].len as usize, ns) {
                failed.push(which[k]);
            }
        }
        Ok(failed)
    }

    /// The members a write should go to now: every healthy member, split
    /// into those to write (`go`) and those that count as failed at once.
    pub(crate) fn write_targets(&self) -> Targets {
        let mut t = Targets { go: [(0, DevId(0)); MAX_MEMBERS], n_go: 0, failed: Failed::default() };
        for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.is_healthy()) {
            match m.dev() {
                Some(dev) => {
                    t.go[t.n_go] = (i, dev);
                    t.n_go += 1;
                }
                None => t.failed.push(i),
            }
        }
        t
    }

    /// One member's write of `len` bytes at `off` completed with `res`
    /// (bytes or `-errno`) after `ns`: counts it, or logs the failure.
    /// Returns whether it wrote everything.
    pub(crate) fn write_done(&self, i: usize, off: u64, res: i32, len: usize, ns: u64) -> bool {
        let Some(m) = self.members.get(i) else { return false };
        match check_full(res, len) {
            Ok(()) => {
                m.writes.fetch_add(1, Ordering::Relaxed);
                m.write_ns.fetch_add(ns, Ordering::Relaxed);
                true
            }
            Err(e) => {
                MemberErrors::count(&m.errors.write);
                tracing::error!(device = %m.path.display(), offset = off, error = %e, "mirror write failed");
                false
            }
        }
    }

    /// Bookkeeping after a write to `attempted` members of which `failed`
    /// failed: marks them failed and persists that in the survivors'
    /// superblocks. `Err` if no member took the write.
    pub(crate) fn settle_write(&self, attempted: usize, failed: &[usize]) -> Result<()> {
        if attempted == 0 {
            return Err(Error::NoHealthyMirror);
        }
        if failed.is_empty() {
            return Ok(());
        }
        for &i in failed {
            self.fail_member_in_memory(i);
        }
        if failed.len() >= attempted {
            // Nothing took this write. Record what we can and fail it.
            let _ = self.update_superblock(|_| Ok(()));
            return Err(Error::NoHealthyMirror);
        }
        self.update_superblock(|_| Ok(()))
    }

    pub(crate) fn dsync_writes(&self) -> bool {
        self.dsync()
    }

    /// Writes `buf` at `off` to every healthy member in parallel (one
    /// submission, one write each) and returns when all completed durably.
    /// Members whose write failed are marked failed and that is persisted
    /// before returning. Fails only if no member took the write.
    pub fn write_all(&self, off: u64, buf: &[u8]) -> Result<()> {
        let mut ops: [(usize, &[u8]); MAX_MEMBERS] = [(0, &[]); MAX_MEMBERS];
        let mut n = 0;
        for (i, _) in self.members.iter().enumerate().filter(|(_, m)| m.is_healthy()).take(MAX_MEMBERS) {
            ops[n] = (i, buf);
            n += 1;
        }
        let failed = self.write_members(off, &ops[..n])?;
        self.settle_write(n, failed.as_slice())
    }

    /// Writes `buf` at `off` to member `i` only (self-heal). Best effort: a
    /// failure here is logged and the member is marked failed.
    pub fn repair(&self, i: usize, off: u64, buf: &[u8]) -> Result<()> {
        let failed = self.write_members(off, &[(i, buf)])?;
        if failed.is_empty() {
            MemberErrors::count(&self.members[i].errors.repaired);
            tracing::warn!(device = %self.members[i].path.display(), offset = off, len = buf.len(), "repaired a bad copy from a good mirror");
            Ok(())
        } else {
            self.fail_member_in_memory(i);
            self.update_superblock(|_| Ok(()))
        }
    }

    /// Reads `buf.len()` bytes at `off` from member `i`.
    pub fn read_member(&self, i: usize, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let m = &self.members[i];
        if !m.is_healthy() {
            return Err(io::Error::other("member is failed"));
        }
        let dev = m.dev().ok_or_else(|| io::Error::other("member has no device"))?;
        let r = crate::storage::read_exact(&*self.storage, dev, off, buf);
        if r.is_err() {
            MemberErrors::count(&m.errors.read);
        }
        r
    }

    /// Counts a copy on member `i` that did not verify where another
    /// member's did (the read path's self-heal finds them).
    pub(crate) fn note_checksum_error(&self, i: usize) {
        if let Some(m) = self.members.get(i) {
            MemberErrors::count(&m.errors.checksum);
        }
    }

    /// Reads one block at each of `offsets` from member `i` into consecutive
    /// blocks of `buf`, up to 32 reads per io_uring submission. Returns which
    /// reads succeeded.
    pub(crate) fn read_blocks(&self, i: usize, offsets: &[u64], buf: &mut AlignedBuf) -> io::Result<Vec<bool>> {
        let bs = self.block_size as usize;
        let m = &self.members[i];
        if !m.is_healthy() {
            return Ok(vec![false; offsets.len()]);
        }
        let dev = m.dev().ok_or_else(|| io::Error::other("member has no device"))?;
        let mut ok = Vec::with_capacity(offsets.len());
        let mut res = [0i32; 32];
        for (g, group) in offsets.chunks(32).enumerate() {
            let base = g * 32 * bs;
            let slice = &mut buf.as_mut_slice()[base..base + group.len() * bs];
            let ops: Vec<Op> = slice.chunks_mut(bs).zip(group).map(|(b, &off)| Op::read(dev, off, b)).collect();
            self.storage.run(&ops, &mut res[..ops.len()])?;
            for &r in &res[..ops.len()] {
                let good = check_full(r, bs).is_ok();
                if !good {
                    MemberErrors::count(&m.errors.read);
                }
                ok.push(good);
            }
        }
        Ok(ok)
    }

    /// The device of member `i`, if it has one.
    pub(crate) fn member_dev(&self, i: usize) -> Option<DevId> {
        self.members.get(i).and_then(|m| m.dev())
    }

    /// Indexes of the healthy members, in slot order.
    pub fn healthy_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().enumerate().filter(|(_, m)| m.is_healthy()).map(|(i, _)| i)
    }

    pub fn first_byte_of_data(&self) -> u64 {
        DATA_START
    }

    pub fn member_path(&self, i: usize) -> &Path {
        &self.members[i].path
    }
}

impl Drop for MirrorSet {
    fn drop(&mut self) {
        for m in &self.members {
            if let Some(d) = m.dev() {
                self.storage.close(d);
            }
        }
    }
}

/// Reads both superblock copies of a device and returns the valid one with
/// the highest generation.
fn read_best_superblock(storage: &dyn Storage, d: &Opened) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut buf = AlignedBuf::new(SUPERBLOCK_REGION as usize, 4096);
    let mut errs = Vec::new();
    for copy in 0..2u64 {
        let r = crate::storage::read_exact(storage, d.id, copy * SUPERBLOCK_REGION, buf.as_mut_slice());
        match r {
            Ok(()) => match Superblock::decode(buf.as_slice()) {
                Ok(sb) => {
                    if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                        best = Some(sb);
                    }
                }
                Err(e) => errs.push(format!("copy {copy}: {e}")),
            },
            Err(e) => errs.push(format!("copy {copy}: {e}")),
        }
    }
    best.ok_or_else(|| {
        Error::Config(format!(
            "{}: no valid mirrorlog superblock ({}); format it first",
            d.path.display(),
            errs.join("; ")
        ))
    })
}
