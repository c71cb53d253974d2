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
//!   replaces it; it is never read from or written to.
//! - A rebuilding member (`replace`) is written by every write from the
//!   moment it joins, but never read from and never counted for durability:
//!   a write is done when the healthy members have it, and a rebuilding
//!   member that fails one is failed. It becomes healthy only when the
//!   resilver (`resilver.rs`) has copied everything written before it joined.
//! - A device is closed only when the set is dropped: a write may have
//!   taken a member's device id just before the member left.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::RngCore;

use crate::error::{Error, Result};
use crate::format::{Health, MemberInfo, Superblock, DATA_START, MAX_MEMBERS, SUPERBLOCK_REGION};
use crate::io::{check_full, AlignedBuf, SyncMode};
use crate::storage::{DevId, Op, Opened, Storage};

/// A member bay's state in memory (`Member::state`).
const EMPTY: u8 = 0;
const HEALTHY: u8 = 1;
const FAILED: u8 = 2;
const REBUILDING: u8 = 3;
/// `Member::dev` when the member has no device.
const NO_DEV: u64 = u64::MAX;

/// One member bay of the set: `MirrorSet::members()[i].slot == i`, for
/// `MAX_MEMBERS` bays, of which those in the superblock are not empty.
#[derive(Debug)]
pub struct Member {
    /// The member's slot in the superblock (its bay).
    pub slot: u16,
    state: AtomicU8,
    /// While rebuilding: every segment slot below it was copied.
    next_slot: AtomicU32,
    /// While rebuilding and replacing a healthy member: that member's bay
    /// plus one (0: none); it leaves when this one is resilvered.
    replaces: AtomicU32,
    /// The device's id (`NO_DEV`: missing); read by every write.
    dev: AtomicU64,
    ident: Mutex<Ident>,
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

/// Who is in a bay: changes only when a member is replaced.
#[derive(Debug, Clone)]
struct Ident {
    path: PathBuf,
    uuid: [u8; 16],
    /// The device, as the set's storage opened it (`None`: missing).
    opened: Option<Opened>,
}

impl Member {
    fn empty(slot: u16) -> Member {
        Member {
            slot,
            state: AtomicU8::new(EMPTY),
            next_slot: AtomicU32::new(0),
            replaces: AtomicU32::new(0),
            dev: AtomicU64::new(NO_DEV),
            ident: Mutex::new(Ident { path: PathBuf::new(), uuid: [0; 16], opened: None }),
            writes: AtomicU64::new(0),
            write_ns: AtomicU64::new(0),
            errors: MemberErrors::default(),
        }
    }

    /// Puts a member into this (empty) bay.
    fn fill(&self, path: PathBuf, uuid: [u8; 16], opened: Option<Opened>, health: Health) {
        self.dev.store(opened.as_ref().map_or(NO_DEV, |d| d.id.0), Ordering::Release);
        *self.ident.lock() = Ident { path, uuid, opened };
        self.writes.store(0, Ordering::Relaxed);
        self.write_ns.store(0, Ordering::Relaxed);
        for c in [&self.errors.read, &self.errors.write, &self.errors.checksum, &self.errors.repaired] {
            c.store(0, Ordering::Relaxed);
        }
        let (state, next, replaces) = match health {
            Health::Healthy => (HEALTHY, 0, 0),
            Health::Failed => (FAILED, 0, 0),
            Health::Rebuilding { next_slot, replaces } => (REBUILDING, next_slot, replaces.map_or(0, |b| b as u32 + 1)),
        };
        self.next_slot.store(next, Ordering::Release);
        self.replaces.store(replaces, Ordering::Release);
        self.state.store(state, Ordering::SeqCst);
    }

    /// Holds every acknowledged record: read from, counted for durability.
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Acquire) == HEALTHY
    }
    /// Being resilvered: written, not read, not counted.
    pub fn is_rebuilding(&self) -> bool {
        self.state.load(Ordering::Acquire) == REBUILDING
    }
    /// In the set (healthy, rebuilding or failed), not an empty bay.
    pub fn is_present(&self) -> bool {
        self.state.load(Ordering::Acquire) != EMPTY
    }
    /// Takes every write: healthy or rebuilding.
    fn is_writable(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), HEALTHY | REBUILDING)
    }
    /// The state as the superblock records it (`None`: an empty bay).
    pub fn health(&self) -> Option<Health> {
        match self.state.load(Ordering::Acquire) {
            HEALTHY => Some(Health::Healthy),
            FAILED => Some(Health::Failed),
            REBUILDING => Some(Health::Rebuilding {
                next_slot: self.next_slot.load(Ordering::Acquire),
                replaces: match self.replaces.load(Ordering::Acquire) {
                    0 => None,
                    b => Some(b as u16 - 1),
                },
            }),
            _ => None,
        }
    }
    pub fn path(&self) -> PathBuf {
        self.ident.lock().path.clone()
    }
    pub fn uuid(&self) -> [u8; 16] {
        self.ident.lock().uuid
    }
    fn dev(&self) -> Option<DevId> {
        match self.dev.load(Ordering::Acquire) {
            NO_DEV => None,
            d => Some(DevId(d)),
        }
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
    /// Members that count as having failed already (no device).
    pub failed: Failed,
    /// The healthy members among them (bit `i`: member `i`): the write is
    /// durable when one of these took it (rebuilding members are written
    /// but not counted).
    pub counted: u8,
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
    /// The current superblock (its `member_uuid` is filled in per member
    /// on write; its members are those of the bays, set on each write).
    sb: Mutex<Superblock>,
    /// Configured devices that are not in the set, and why (`open`).
    absent: Vec<(PathBuf, String)>,
    /// Devices of members that left the set: closed on drop.
    retired: Mutex<Vec<Opened>>,
    /// Held while the members change (replace, resilvered, removed).
    membership: Mutex<()>,
    /// A re-added member's bay and the header CRC of each slot on its
    /// device when it joined (`re_add`; in memory: a restart's resilver
    /// copies every segment).
    rebuild_hint: Mutex<Option<(usize, HeaderCrcs)>>,
}

/// The header CRC found in each segment slot of a device (`None`: no
/// valid header of this set).
type HeaderCrcs = Arc<Vec<Option<u32>>>;

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
        let members = bays();
        for (m, d) in members.iter().zip(devs.devs.iter().cloned()) {
            m.fill(d.path.clone(), random16(), Some(d), Health::Healthy);
        }
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
            members: Vec::new(), // the bays' (update_superblock)
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
            retired: Mutex::new(Vec::new()),
            membership: Mutex::new(()),
            rebuild_hint: Mutex::new(None),
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
        let (mut opening, found, mut absent) = probe_all(opts)?;
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
        let mut devs: Vec<Option<Opened>> = Vec::new();
        let mut sbs = Vec::new();
        for (d, sb) in found {
            devs.push(Some(d));
            sbs.push(sb);
        }
        let sb = newest;
        let members = bays();
        let mut unproven = Vec::new();
        for info in &sb.members {
            let Some(bay) = members.get(info.slot as usize).filter(|b| !b.is_present()) else {
                return Err(Error::Corrupt(format!(
                    "superblock generation {}: member {} has slot {}, outside the set or taken twice",
                    sb.generation,
                    hex_id(&info.uuid),
                    info.slot
                )));
            };
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
                    } else if matches!(health, Health::Rebuilding { .. }) {
                        tracing::error!(member = %hex_id(&info.uuid), "mirror member being resilvered is missing: it is failed");
                    }
                    health = Health::Failed;
                    PathBuf::from(format!("<missing member {}>", hex_id(&info.uuid)))
                }
            };
            if health == Health::Failed && dev.is_some() {
                tracing::warn!(device = %path.display(), "mirror member is marked failed; it stays out of the set");
            }
            bay.fill(path, info.uuid, dev, health);
        }
        for (d, sb_of) in devs.into_iter().zip(&sbs).filter_map(|(d, s)| Some((d?, s))) {
            if sb.members.iter().any(|m| m.uuid == sb_of.member_uuid) {
                // A second device naming a member (a copy of it).
                return Err(Error::Config(format!(
                    "{} carries this set's id and names member {}, which another device holds: the devices \
                     do not belong together",
                    d.path.display(),
                    hex_id(&sb_of.member_uuid)
                )));
            }
            // A member that left the set (replaced): never read again.
            tracing::warn!(device = %d.path.display(), "a former member of this set (replaced): left out");
            absent.push((d.path.clone(), "a former member of this set (replaced): left out".into()));
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
            if let Some(d) = &m.ident.lock().opened {
                if d.size < sb.device_size {
                    return Err(Error::Config(format!(
                        "{} is {} bytes, smaller than the set's {}",
                        d.path.display(),
                        d.size,
                        sb.device_size
                    )));
                }
            }
        }
        if members.iter().filter(|m| m.is_present()).count() == 1 {
            tracing::warn!("mirror set has a single device: nothing is mirrored");
        }
        let mut sb = sb;
        sb.inflight_window = sb.inflight_window.max(opts.inflight_window);
        // The members own their devices now; the others are closed.
        opening.devs.retain(|d| !members.iter().any(|m| m.dev() == Some(d.id)));
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
            retired: Mutex::new(Vec::new()),
            membership: Mutex::new(()),
            rebuild_hint: Mutex::new(None),
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

    /// The member bays (`MAX_MEMBERS`, indexed by slot; the empty ones
    /// are not `is_present`).
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
            // The bays say who is in the set and how they are.
            next.members = self
                .members
                .iter()
                .filter_map(|m| m.health().map(|health| MemberInfo { uuid: m.uuid(), slot: m.slot, health }))
                .collect();
            if !self.members.iter().any(|m| m.is_healthy()) {
                return Err(Error::NoHealthyMirror);
            }
            // Rebuilding members get it too: they must be known as such
            // after a restart.
            let writable: Vec<&Member> = self.members.iter().filter(|m| m.is_writable()).collect();
            let bs = self.block_size as usize;
            let len = crate::format::align_up(next.encoded_len() as u64, bs as u64) as usize;
            let mut bufs = Vec::with_capacity(writable.len());
            for m in &writable {
                let mut b = AlignedBuf::new(len, bs);
                next.member_uuid = m.uuid();
                next.encode(b.as_mut_slice()).map_err(|e| Error::Corrupt(format!("superblock: {e}")))?;
                bufs.push(b);
            }
            let off = Superblock::copy_offset(next.generation);
            let ops: Vec<(usize, &[u8])> =
                writable.iter().enumerate().map(|(i, m)| (m.slot as usize, &bufs[i].as_slice()[..len])).collect();
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

    fn fail_member_in_memory(&self, i: usize) {
        let Some(m) = self.members.get(i) else { return };
        for (from, what) in [(HEALTHY, "continuing on the survivors"), (REBUILDING, "its resilver stops")] {
            if m.state.compare_exchange(from, FAILED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                tracing::error!(device = %m.path().display(), "mirror member failed; {what}");
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

    /// The members a write should go to now: every healthy or rebuilding
    /// member, split into those to write (`go`) and those that count as
    /// failed at once; `counted` says which are healthy.
    pub(crate) fn write_targets(&self) -> Targets {
        let mut t = Targets { go: [(0, DevId(0)); MAX_MEMBERS], n_go: 0, failed: Failed::default(), counted: 0 };
        for (i, m) in self.members.iter().enumerate() {
            match m.state.load(Ordering::Acquire) {
                HEALTHY => t.counted |= 1 << i,
                REBUILDING => {}
                _ => continue,
            }
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
                tracing::error!(device = %m.path().display(), offset = off, error = %e, "mirror write failed");
                false
            }
        }
    }

    /// Bookkeeping after a write to members of which `failed` failed:
    /// marks them failed and persists that in the survivors' superblocks.
    /// `Err` if none of the members `counted` (healthy when the write
    /// began; bit `i` for member `i`) took the write.
    pub(crate) fn settle_write(&self, counted: u8, failed: &[usize]) -> Result<()> {
        if counted == 0 {
            return Err(Error::NoHealthyMirror);
        }
        if failed.is_empty() {
            return Ok(());
        }
        let mut took = counted;
        for &i in failed {
            self.fail_member_in_memory(i);
            took &= !(1u8 << i);
        }
        if took == 0 {
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
        let t = self.write_targets();
        let mut ops: [(usize, &[u8]); MAX_MEMBERS] = [(0, &[]); MAX_MEMBERS];
        for (k, &(i, _)) in t.go[..t.n_go].iter().enumerate() {
            ops[k] = (i, buf);
        }
        let mut failed = self.write_members(off, &ops[..t.n_go])?;
        for &i in t.failed.as_slice() {
            failed.push(i);
        }
        self.settle_write(t.counted, failed.as_slice())
    }

    /// Writes `buf` at `off` to member `i` only (self-heal). Best effort: a
    /// failure here is logged and the member is marked failed.
    pub fn repair(&self, i: usize, off: u64, buf: &[u8]) -> Result<()> {
        let failed = self.write_members(off, &[(i, buf)])?;
        if failed.is_empty() {
            MemberErrors::count(&self.members[i].errors.repaired);
            tracing::warn!(device = %self.members[i].path().display(), offset = off, len = buf.len(), "repaired a bad copy from a good mirror");
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

    /// The member `who` names: its device path, or its UUID in hex.
    pub fn find_member(&self, who: &str) -> Option<usize> {
        let who_lc = who.to_ascii_lowercase();
        self.members.iter().position(|m| m.is_present() && (m.path() == Path::new(who) || hex_id(&m.uuid()) == who_lc))
    }

    /// The member being resilvered, if any (one at a time).
    pub fn rebuilding(&self) -> Option<usize> {
        self.members.iter().position(|m| m.is_rebuilding())
    }

    /// Replaces member `old` with the device at `path` (`mirrorlog
    /// replace`), which joins as a rebuilding member: from now on every
    /// write goes to it too, but it is read from and counted for
    /// durability only once `resilver` has copied what came before. A
    /// failed (or rebuilding) `old` leaves the set at once; a healthy one
    /// stays until the new member is resilvered (md's `--replace`). The
    /// device's superblock copies are zeroed first. Refused: a device
    /// already in the set, one smaller than the set's devices, one holding
    /// another set's superblock (unless `force`), a second resilver.
    /// Returns the new member's index.
    pub fn replace(&self, old: usize, path: &Path, force: bool) -> Result<usize> {
        let _changing = self.membership.lock();
        self.check_replacing(old)?;
        if self.members.iter().any(|m| m.is_present() && m.path() == path) {
            return Err(Error::Config(format!("{} is a member of the set already", path.display())));
        }
        let d = self.storage.open(path, self.sync).map_err(|e| Error::Device(path.to_path_buf(), e))?;
        // Closed on any refusal below; the bay owns it once it joins.
        let closing = Opening { storage: self.storage.clone(), devs: vec![d.clone()] };
        self.check_device(&d)?;
        if let Ok(other) = read_best_superblock(&*self.storage, &d) {
            if other.set_uuid != self.set_uuid && !force {
                return Err(Error::Config(format!(
                    "{} holds a superblock of mirror set {} (generation {}): pass force to overwrite it",
                    path.display(),
                    hex_id(&other.set_uuid),
                    other.generation
                )));
            }
        }
        *self.rebuild_hint.lock() = None;
        self.join(old, d, closing)
    }

    /// Re-adds a failed member's device (`mirrorlog re-add`, md's
    /// `--re-add`): it joins rebuilding like a replacement of itself, and
    /// the resilver skips each segment the device provably holds whole
    /// (`rebuild_hint`): the same segment header (its CRC covers a nonce
    /// drawn for each use of a slot) and the header of the journal's next
    /// segment, which is written only after every batch of the one before
    /// completed on every member then writable. Trusted only when the
    /// device's own superblock shows it healthy when it stopped being
    /// written (a member that failed while rebuilding holds gaps).
    /// Refused: a device that is not a failed member of this set.
    pub fn re_add(&self, path: &Path) -> Result<usize> {
        let _changing = self.membership.lock();
        let held = self.members.iter().position(|m| m.is_present() && m.path() == path);
        let (d, closing) = match held {
            Some(i) if self.members[i].is_writable() => {
                return Err(Error::Config(format!("{} is a {} member: nothing to re-add", path.display(), {
                    if self.members[i].is_healthy() {
                        "healthy"
                    } else {
                        "rebuilding"
                    }
                })));
            }
            // The failed member's own device, open since the start.
            Some(i) => match self.members[i].ident.lock().opened.clone() {
                Some(d) => (d, None),
                None => return Err(Error::Config(format!("{}: the member has no device", path.display()))),
            },
            None => {
                let d = self.storage.open(path, self.sync).map_err(|e| Error::Device(path.to_path_buf(), e))?;
                (d.clone(), Some(Opening { storage: self.storage.clone(), devs: vec![d] }))
            }
        };
        let theirs = read_best_superblock(&*self.storage, &d).ok().filter(|sb| sb.set_uuid == self.set_uuid);
        let Some(theirs) = theirs else {
            return Err(Error::Config(format!("{} holds no superblock of this set: replace with it", path.display())));
        };
        let Some(old) =
            self.members.iter().position(|m| m.is_present() && !m.is_writable() && m.uuid() == theirs.member_uuid)
        else {
            return Err(Error::Config(format!(
                "{} was member {}, which is not a failed member of the set now: replace with it",
                path.display(),
                hex_id(&theirs.member_uuid)
            )));
        };
        if held.is_some_and(|i| i != old) {
            return Err(Error::Config(format!("{} names another member than the one it is", path.display())));
        }
        self.check_replacing(old)?;
        self.check_device(&d)?;
        let trusted = theirs.members.iter().any(|m| m.uuid == theirs.member_uuid && m.health == Health::Healthy);
        let headers = if trusted { self.header_crcs(&d) } else { vec![None; self.slot_count as usize] };
        // The device moves from the failed member's bay to the new one.
        if held.is_some() {
            self.members[old].ident.lock().opened = None;
        }
        let closing = closing.unwrap_or(Opening { storage: self.storage.clone(), devs: Vec::new() });
        let bay = self.join(old, d, closing)?;
        *self.rebuild_hint.lock() = Some((bay, Arc::new(headers)));
        Ok(bay)
    }

    /// For the resilver of member `bay`: the header CRC found on each slot
    /// of its device when it was re-added (`re_add`).
    pub(crate) fn rebuild_hint(&self, bay: usize) -> Option<HeaderCrcs> {
        self.rebuild_hint.lock().as_ref().filter(|(b, _)| *b == bay).map(|(_, h)| h.clone())
    }

    /// The header CRC of each slot of device `d` (`None`: no valid header
    /// of this set).
    fn header_crcs(&self, d: &Opened) -> Vec<Option<u32>> {
        let bs = self.block_size as usize;
        let mut out = Vec::with_capacity(self.slot_count as usize);
        let mut buf = AlignedBuf::new(32 * bs, bs);
        let mut res = [0i32; 32];
        for first in (0..self.slot_count).step_by(32) {
            let n = (self.slot_count - first).min(32) as usize;
            let ops: Vec<Op> = buf.as_mut_slice()[..n * bs]
                .chunks_mut(bs)
                .enumerate()
                .map(|(k, b)| Op::read(d.id, crate::format::slot_offset(first + k as u64, self.segment_size), b))
                .collect();
            let ran = self.storage.run(&ops, &mut res[..n]).is_ok();
            drop(ops);
            for (b, &r) in buf.as_slice()[..n * bs].chunks(bs).zip(&res[..n]) {
                let crc = (ran && check_full(r, bs).is_ok())
                    .then(|| crate::format::SegmentHeader::decode(b).ok())
                    .flatten()
                    .filter(|(h, _)| h.set_uuid == self.set_uuid)
                    .map(|(_, crc)| crc);
                out.push(crc);
            }
        }
        out
    }

    /// Member `old` may be replaced now (one replacement at a time).
    fn check_replacing(&self, old: usize) -> Result<()> {
        if !self.members.get(old).is_some_and(|m| m.is_present()) {
            return Err(Error::Config(format!("no member {old}")));
        }
        if let Some(r) = self.rebuilding().filter(|&r| r != old) {
            return Err(Error::Config(format!(
                "{} is being resilvered: one replacement at a time",
                self.members[r].path().display()
            )));
        }
        Ok(())
    }

    /// A device may hold this set: large enough, its block dividing ours.
    fn check_device(&self, d: &Opened) -> Result<()> {
        let device_size = self.sb.lock().device_size;
        if self.block_size % d.logical_block != 0 || d.size < device_size {
            return Err(Error::Config(format!(
                "{}: {} bytes with logical block {}; the set needs {} bytes and a block dividing {}",
                d.path.display(),
                d.size,
                d.logical_block,
                device_size,
                self.block_size
            )));
        }
        Ok(())
    }

    /// Device `d` joins as a rebuilding member in place of `old` (which
    /// leaves now if it is not healthy): its superblock copies zeroed, a
    /// bay, the superblocks written. `closing` closes `d` on a refusal.
    fn join(&self, old: usize, d: Opened, mut closing: Opening) -> Result<usize> {
        let path = d.path.clone();
        // Nothing of an earlier life of the device may be taken for ours.
        let zero = AlignedBuf::new(2 * SUPERBLOCK_REGION as usize, self.block_size as usize);
        let mut res = [0i32];
        self.storage.run(&[Op::write(d.id, 0, zero.as_slice(), self.dsync())], &mut res).map_err(Error::Io)?;
        check_full(res[0], zero.as_slice().len()).map_err(|e| Error::Device(path.clone(), e))?;
        let old_m = &self.members[old];
        let replaces = if old_m.is_healthy() {
            Some(old as u16)
        } else {
            self.leave(old);
            None
        };
        // Another bay than the one just left when there is one: a write
        // that took the old member's device may still complete on it.
        let bay = self
            .members
            .iter()
            .position(|m| !m.is_present() && m.slot as usize != old)
            .or_else(|| self.members.iter().position(|m| !m.is_present()))
            .ok_or_else(|| Error::Config(format!("the set has {MAX_MEMBERS} members already")))?;
        closing.devs.clear();
        self.members[bay].fill(path.clone(), random16(), Some(d), Health::Rebuilding { next_slot: 0, replaces });
        tracing::warn!(device = %path.display(), replaces = %old_m.path().display(), "new mirror member: resilvering");
        self.update_superblock(|_| Ok(()))?;
        Ok(bay)
    }

    /// Takes member `i` out of the set (`mirrorlog detach`, ZFS's
    /// `zpool detach`): a failed member, or a rebuilding one (which
    /// cancels its resilver). A healthy member is refused: a write in
    /// flight may count it as the copy that makes it durable (replace it
    /// instead).
    pub fn detach(&self, i: usize) -> Result<()> {
        let _changing = self.membership.lock();
        let m =
            self.members.get(i).filter(|m| m.is_present()).ok_or_else(|| Error::Config(format!("no member {i}")))?;
        if m.is_healthy() {
            return Err(Error::Config(format!(
                "{} is healthy: a healthy member is not detached (it holds acknowledged records); replace it",
                m.path().display()
            )));
        }
        tracing::warn!(device = %m.path().display(), "mirror member detached");
        self.leave(i);
        *self.rebuild_hint.lock() = None;
        self.update_superblock(|_| Ok(()))
    }

    /// Empties bay `i`; its device is closed when the set is dropped.
    fn leave(&self, i: usize) {
        let m = &self.members[i];
        m.state.store(EMPTY, Ordering::SeqCst);
        m.dev.store(NO_DEV, Ordering::Release);
        if let Some(d) = m.ident.lock().opened.take() {
            self.retired.lock().push(d);
        }
    }

    /// Records that rebuilding member `i` holds every slot below
    /// `next_slot` (persisted: a restart resumes there).
    pub(crate) fn set_rebuilt(&self, i: usize, next_slot: u64) -> Result<()> {
        let m = &self.members[i];
        if !m.is_rebuilding() {
            return Err(not_rebuilding(m));
        }
        m.next_slot.store(next_slot.min(u32::MAX as u64) as u32, Ordering::Release);
        self.update_superblock(|_| Ok(()))
    }

    /// Rebuilding member `i` holds everything: it becomes healthy (and the
    /// member it replaces leaves). Persisted before it returns.
    pub(crate) fn finish_rebuild(&self, i: usize) -> Result<()> {
        let _changing = self.membership.lock();
        let m = &self.members[i];
        let replaces = m.replaces.load(Ordering::Acquire);
        if m.state.compare_exchange(REBUILDING, HEALTHY, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(Error::Config(format!("{} failed during its resilver", m.path().display())));
        }
        m.next_slot.store(0, Ordering::Release);
        m.replaces.store(0, Ordering::Release);
        *self.rebuild_hint.lock() = None;
        if let Some(r) = (replaces as usize).checked_sub(1) {
            if self.members.get(r).is_some_and(|o| o.is_present()) {
                tracing::warn!(device = %self.members[r].path().display(), "replaced mirror member leaves the set");
                self.leave(r);
            }
        }
        tracing::warn!(device = %m.path().display(), "mirror member resilvered: healthy");
        self.update_superblock(|_| Ok(()))
    }

    /// Writes `buf` at `off` to rebuilding member `i` (a resilver's copy).
    /// A failed write fails the member.
    pub(crate) fn write_member(&self, i: usize, off: u64, buf: &[u8]) -> Result<()> {
        let m = &self.members[i];
        if !m.is_rebuilding() {
            return Err(not_rebuilding(m));
        }
        let failed = self.write_members(off, &[(i, buf)])?;
        if failed.is_empty() {
            return Ok(());
        }
        Err(self.rebuild_write_failed(i))
    }

    /// Rebuilding member `i` failed a resilver's write: it is failed (and
    /// that persisted); the error that stops the resilver.
    fn rebuild_write_failed(&self, i: usize) -> Error {
        self.fail_member_in_memory(i);
        if let Err(e) = self.update_superblock(|_| Ok(())) {
            return e;
        }
        Error::Io(io::Error::other(format!("{}: write failed; the resilver stops", self.members[i].path().display())))
    }

    /// A resilver's step: writes `wbuf` at `woff` to rebuilding member
    /// `bay` (as `write_member`: a failure fails it) and reads `rbuf` at
    /// `roff` from healthy member `src`, in one submission. Whether the
    /// read got every byte.
    pub(crate) fn copy_step(
        &self,
        bay: usize,
        woff: u64,
        wbuf: &[u8],
        src: usize,
        roff: u64,
        rbuf: &mut [u8],
    ) -> Result<bool> {
        let m = &self.members[bay];
        let (Some(wdev), Some(rdev)) = (m.dev().filter(|_| m.is_rebuilding()), self.members[src].dev()) else {
            // Not rebuilding (or no source device): the plain write says why.
            self.write_member(bay, woff, wbuf)?;
            return Ok(false);
        };
        let rlen = rbuf.len();
        let ops = [Op::write(wdev, woff, wbuf, self.dsync()), Op::read(rdev, roff, rbuf)];
        let mut res = [0i32; 2];
        let t0 = std::time::Instant::now();
        self.storage.run(&ops, &mut res).map_err(Error::Io)?;
        if !self.write_done(bay, woff, res[0], wbuf.len(), t0.elapsed().as_nanos() as u64) {
            return Err(self.rebuild_write_failed(bay));
        }
        let read = check_full(res[1], rlen).is_ok();
        if !read {
            MemberErrors::count(&self.members[src].errors.read);
        }
        Ok(read)
    }

    /// Indexes of the healthy members, in slot order.
    pub fn healthy_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().enumerate().filter(|(_, m)| m.is_healthy()).map(|(i, _)| i)
    }

    pub fn first_byte_of_data(&self) -> u64 {
        DATA_START
    }

    pub fn member_path(&self, i: usize) -> PathBuf {
        self.members.get(i).map(|m| m.path()).unwrap_or_default()
    }
}

/// What a resilver of a member meets when the member left or failed.
fn not_rebuilding(m: &Member) -> Error {
    Error::Config(format!("{} is no longer being resilvered (detached or failed)", m.path().display()))
}

/// `MAX_MEMBERS` empty bays.
fn bays() -> Vec<Member> {
    (0..MAX_MEMBERS).map(|i| Member::empty(i as u16)).collect()
}

impl Drop for MirrorSet {
    fn drop(&mut self) {
        for m in &self.members {
            if let Some(d) = m.ident.lock().opened.take() {
                self.storage.close(d.id);
            }
        }
        for d in self.retired.lock().drain(..) {
            self.storage.close(d.id);
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
