//! # mirrorlog
//!
//! A durable append log kept on a RAID-1 style *mirror set* of two or more
//! devices (NVMe namespaces, loop devices or plain files), written with
//! `O_DIRECT` through io_uring.
//!
//! ```no_run
//! use mirrorlog::{Config, MirrorLog};
//! # fn main() -> mirrorlog::Result<()> {
//! let log = MirrorLog::open_or_create(&Config::new(["/data/m0", "/data/m1"]))?;
//! let j = log.create_journal("orders")?;
//! let lsn = j.append(b"hello")?;          // durable on both mirrors
//! assert_eq!(j.read(lsn)?, b"hello");
//! j.set_mark(lsn)?;                        // records below lsn may be reclaimed
//! # Ok(()) }
//! ```
//!
//! * **LSNs** are `u64`, per journal, dense and strictly increasing: the first
//!   record is 1, each next record is the previous plus one.
//! * `append` returns once the record is durable on every healthy mirror.
//!   Concurrent appends share writes (group commit).
//! * Every read checks each record's CRC32C and its place in the chain; a bad
//!   copy is read from another mirror and rewritten (self-heal).
//! * A mirror whose write fails is marked failed (persisted), and writes go on
//!   on the others.
//!
//! The on-disk format is in `docs/format.md`, the pipeline and its invariants
//! in `docs/architecture.md`.

pub mod client;
pub mod clock;
pub mod codes;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod epoch;
pub mod error;
pub mod format;
pub mod frames;
pub mod io;
pub mod journal;
pub mod mirror;
mod pipeline;
pub mod protocol;
pub mod read;
mod recovery;
pub mod replication;
pub mod resilver;
pub mod ship;
pub mod shipment;
pub mod sites;
mod sockread;
pub mod storage;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

pub use config::Config;
pub use driver::Driver;
pub use error::{Error, Result};
pub use format::Tag;
pub use io::SyncMode;
pub use journal::{Journal, JournalCounters, JournalInfo, JournalIter, Lsn, Rec, RecoveryStats, ScrubReport, Ticket};
pub use storage::FaultInjector;

use format::{JournalEntry, MAX_JOURNALS, MAX_JOURNAL_NAME};
use mirror::{hex_id, MirrorSet, SetOptions};
use pipeline::{JournalInner, Recovered, Shared, SlotTable};

/// An open mirror set and its journals.
pub struct MirrorLog {
    shared: Arc<Shared>,
    journals: Mutex<BTreeMap<String, Journal>>,
}

impl std::fmt::Debug for MirrorLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorLog")
            .field("set", &hex_id(&self.shared.set.set_uuid))
            .field("journals", &self.journal_names())
            .finish()
    }
}

/// One mirror's state, in `Status`.
#[derive(Debug, Clone)]
pub struct MirrorStatus {
    pub path: String,
    pub uuid: String,
    pub slot: u16,
    pub healthy: bool,
    /// `healthy`, `failed` or `rebuilding` (written, not yet read from).
    pub state: &'static str,
    /// Durable writes completed since open.
    pub writes: u64,
    /// Mean durable-write latency since open, in microseconds.
    pub mean_write_us: f64,
    /// Since open: failed reads, failed writes, copies that did not verify
    /// where another member's did, and bad copies rewritten from a good one.
    pub read_errors: u64,
    pub write_errors: u64,
    pub checksum_errors: u64,
    pub repaired: u64,
}

/// The state of a mirror set.
#[derive(Debug, Clone)]
pub struct Status {
    pub set_uuid: String,
    pub epoch: u64,
    pub block_size: u32,
    pub segment_size: u64,
    pub segments_total: u64,
    pub segments_free: u64,
    pub mirrors: Vec<MirrorStatus>,
    /// Configured devices left out of the set at open, and why ("path: why").
    pub absent_devices: Vec<String>,
    /// Bad copies rewritten from a good mirror since open.
    pub repairs: u64,
    /// Why promoting this node would lose acknowledged records
    /// (`MirrorLog::incomplete`), if it would.
    pub incomplete: Option<String>,
    pub journals: Vec<JournalInfo>,
}

fn set_options(cfg: &Config) -> SetOptions {
    SetOptions {
        devices: cfg.devices.clone(),
        block_size: cfg.block_size,
        segment_size: cfg.segment_size,
        sync: cfg.sync,
        inflight_window: cfg.inflight_window(cfg.block_size),
        storage: cfg.storage.clone().unwrap_or_else(storage::default_storage),
        set_uuid: cfg.set_uuid,
        unsynced_replica: cfg.unsynced_replica,
        start_degraded: cfg.start_degraded,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_JOURNAL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl MirrorLog {
    /// Formats the configured devices as a new, empty mirror set (destroying
    /// what they held) and opens it.
    pub fn create(cfg: &Config) -> Result<MirrorLog> {
        cfg.validate(cfg.block_size, cfg.segment_size)?;
        let set = MirrorSet::format(&set_options(cfg))?;
        Self::start(set, cfg)
    }

    /// Opens an existing mirror set and recovers every journal.
    pub fn open(cfg: &Config) -> Result<MirrorLog> {
        let set = MirrorSet::open(&set_options(cfg))?;
        Self::start(set, cfg)
    }

    /// Opens the set, or formats it if none of the devices holds a
    /// mirrorlog superblock. Never formats a device that holds one.
    pub fn open_or_create(cfg: &Config) -> Result<MirrorLog> {
        if MirrorSet::any_formatted(&set_options(cfg).storage, &cfg.devices, cfg.sync)? {
            Self::open(cfg)
        } else {
            Self::create(cfg)
        }
    }

    fn start(set: MirrorSet, cfg: &Config) -> Result<MirrorLog> {
        cfg.validate(set.block_size, set.segment_size)?;
        let sb = set.superblock();
        let shared = Arc::new(Shared {
            slots: Mutex::new(SlotTable::new(set.slot_count as usize)),
            set,
            cfg: cfg.clone(),
            sink: parking_lot::RwLock::new(None),
        });
        let recovered = recovery::recover(&shared, &sb)?;
        let mut journals = BTreeMap::new();
        for (entry, rec) in recovered {
            let j = Journal { inner: Arc::new(JournalInner::new(shared.clone(), entry.id, entry.name.clone(), rec)) };
            journals.insert(entry.name, j);
        }
        Ok(MirrorLog { shared, journals: Mutex::new(journals) })
    }

    /// Creates a journal. Names are 1 to 64 bytes of `[A-Za-z0-9._-]`.
    pub fn create_journal(&self, name: &str) -> Result<Journal> {
        self.create_journal_as(name, None, false)
    }

    /// Replica: creates a journal with the id its primary gave it (ids are
    /// equal on both sites; they are in every segment header).
    pub fn create_journal_with_id(&self, name: &str, id: u64) -> Result<Journal> {
        self.create_journal_as(name, Some(id), false)
    }

    /// Replica: creates, marked incomplete in the same superblock write, a
    /// journal its primary listed with records this node does not hold
    /// (`JournalEntry::incomplete`).
    pub fn create_incomplete_journal(&self, name: &str, id: u64) -> Result<Journal> {
        self.create_journal_as(name, Some(id), true)
    }

    fn create_journal_as(&self, name: &str, want_id: Option<u64>, incomplete: bool) -> Result<Journal> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.to_string()));
        }
        let mut journals = self.journals.lock();
        if journals.contains_key(name) {
            return Err(Error::JournalExists(name.to_string()));
        }
        if journals.len() >= MAX_JOURNALS {
            return Err(Error::TooManyJournals(MAX_JOURNALS));
        }
        let reused = want_id.filter(|&id| id < self.shared.set.superblock().next_journal_id);
        if let Some(id) = reused.filter(|_| !cfg!(feature = "mutate-reused-id")) {
            self.forget_segments_of(id)?;
        }
        let mut id = 0;
        self.shared.set.update_superblock(|sb| {
            id = want_id.unwrap_or(sb.next_journal_id);
            if sb.journals.iter().any(|j| j.id == id) {
                return Err(Error::JournalExists(format!("{name} (id {id})")));
            }
            sb.next_journal_id = sb.next_journal_id.max(id + 1);
            sb.journals.push(JournalEntry { id, mark: 0, name: name.to_string(), incomplete, writer: 0 });
            Ok(())
        })?;
        if let Some(sink) = self.shared.sink() {
            sink.created(id, name);
        }
        let rec = Recovered {
            stats: Default::default(),
            segs: Default::default(),
            next_lsn: 1,
            last_crc: 0,
            tail_off: 0,
            next_seg_seq: 0,
            mark: 0,
            writer: 0,
            epoch: self.shared.set.superblock().epoch,
        };
        let j = Journal { inner: Arc::new(JournalInner::new(self.shared.clone(), id, name.to_string(), rec)) };
        journals.insert(name.to_string(), j.clone());
        Ok(j)
    }

    /// Before journal id `id` is used again (a replica creating its
    /// primary's journal under an id it may have used for a journal it
    /// deleted): zeroes, on every mirror, the header of every free slot
    /// that still names `id`, so recovery can never give the new journal
    /// the old one's segments. Each slot is held (owned) while its header
    /// is zeroed, so no journal takes it meanwhile. A crash part-way is
    /// harmless: no journal with this id exists yet.
    fn forget_segments_of(&self, id: u64) -> Result<()> {
        let shared = &self.shared;
        let bs = shared.set.block_size as usize;
        let zero = crate::io::AlignedBuf::new(bs, bs);
        for c in recovery::read_headers(shared)?.iter().filter(|c| c.header.journal_id == id) {
            let slot = c.slot as usize;
            {
                let mut t = shared.slots.lock();
                match t.owner.get(slot) {
                    Some(None) => t.owner[slot] = Some(id),
                    _ => continue, // a live segment of another journal
                }
            }
            let res = shared.set.write_all(format::slot_offset(c.slot, shared.set.segment_size), zero.as_slice());
            shared.release_slot(c.slot);
            res?;
            tracing::info!(
                slot,
                journal_id = id,
                "zeroed a deleted journal's segment header before its id is used again"
            );
        }
        Ok(())
    }

    /// The journal of this name.
    pub fn journal(&self, name: &str) -> Result<Journal> {
        self.journals.lock().get(name).cloned().ok_or_else(|| Error::UnknownJournal(name.to_string()))
    }

    /// The journal of this name, created if it does not exist.
    pub fn journal_or_create(&self, name: &str) -> Result<Journal> {
        match self.journal(name) {
            Ok(j) => Ok(j),
            Err(Error::UnknownJournal(_)) => self.create_journal(name),
            Err(e) => Err(e),
        }
    }

    /// Names of all journals, sorted.
    pub fn journal_names(&self) -> Vec<String> {
        self.journals.lock().keys().cloned().collect()
    }

    /// Deletes a journal and frees its segments. Appends in progress on it
    /// fail with `unknown-journal`.
    pub fn delete_journal(&self, name: &str) -> Result<()> {
        let mut journals = self.journals.lock();
        let j = journals.get(name).cloned().ok_or_else(|| Error::UnknownJournal(name.to_string()))?;
        let id = j.inner.id;
        self.shared.set.update_superblock(|sb| {
            sb.journals.retain(|e| e.id != id);
            Ok(())
        })?;
        // Shut first: no batch can be claimed (and shipped) after the
        // replica is told of the delete; shipped before the slots are freed.
        let slots = j.inner.shut();
        if let Some(sink) = self.shared.sink() {
            sink.deleted(id);
        }
        for s in slots {
            self.shared.release_slot(s);
        }
        journals.remove(name);
        Ok(())
    }

    /// The set's current epoch (raised by promotion; every record carries it).
    pub fn epoch(&self) -> u64 {
        self.shared.set.superblock().epoch
    }

    /// Persists a new epoch in the superblock; records placed from now on
    /// carry it. Never lowers the epoch.
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        if epoch <= self.epoch() {
            return Ok(());
        }
        self.shared.set.update_superblock(|sb| {
            sb.epoch = sb.epoch.max(epoch);
            Ok(())
        })?;
        self.set_journal_epochs(epoch);
        Ok(())
    }

    /// The runs this set's history holds (`epoch::History`).
    pub fn history(&self) -> epoch::History {
        self.shared.set.superblock().history
    }

    /// A new run of this node as primary (a start, or a promotion to a new
    /// term): persists `epoch`, above the current one, and adds it to the
    /// history (a new term gets a random nonce), in one superblock write.
    pub fn begin_run(&self, epoch: u64) -> Result<()> {
        let cur = self.epoch();
        if epoch <= cur {
            return Err(Error::Config(format!("a new run at epoch {epoch} is not above the current {cur}")));
        }
        self.shared.set.update_superblock(|sb| {
            sb.epoch = epoch;
            sb.history.add(epoch::Epoch::from_raw(epoch), rand::random::<u32>);
            Ok(())
        })?;
        self.set_journal_epochs(epoch);
        Ok(())
    }

    /// A replica follows a primary at `epoch` whose history is `history`:
    /// its chain is now a prefix of the primary's, so it takes both.
    pub fn follow(&self, epoch: u64, history: &epoch::History) -> Result<()> {
        let epoch = epoch.max(self.epoch());
        self.shared.set.update_superblock(|sb| {
            sb.epoch = epoch;
            sb.history = history.clone();
            Ok(())
        })?;
        self.set_journal_epochs(epoch);
        Ok(())
    }

    fn set_journal_epochs(&self, epoch: u64) {
        for j in self.journals.lock().values() {
            j.inner.st.lock().epoch = epoch;
        }
    }

    /// Replica: marks journal `id` incomplete or complete
    /// (`JournalEntry::incomplete`), persisted before this returns; nothing
    /// is written if it already is.
    pub fn set_incomplete(&self, id: u64, incomplete: bool) -> Result<()> {
        let sb = self.shared.set.superblock();
        if !sb.journals.iter().any(|e| e.id == id && e.incomplete != incomplete) {
            return Ok(());
        }
        self.shared.set.update_superblock(|sb| {
            for e in sb.journals.iter_mut().filter(|e| e.id == id) {
                e.incomplete = incomplete;
            }
            Ok(())
        })
    }

    /// Whether journal `id` is marked incomplete.
    pub fn is_incomplete(&self, id: u64) -> bool {
        self.shared.set.superblock().journals.iter().any(|e| e.id == id && e.incomplete)
    }

    /// Replica: its primary's journals are listed here now (created,
    /// marked incomplete where this node lacks records); clears the flag a
    /// replica formatted by `replication::bootstrap` starts with.
    pub fn set_synced(&self) -> Result<()> {
        if !self.shared.set.superblock().unsynced {
            return Ok(());
        }
        self.shared.set.update_superblock(|sb| {
            sb.unsynced = false;
            Ok(())
        })
    }

    /// `None` if this node holds every record its primary acknowledged
    /// `remote-*` (as far as it knows); else why not, for an operator: a
    /// node that answers `Some` must not be promoted, or its primary's
    /// acknowledged records are lost (docs/replication.md).
    pub fn incomplete(&self) -> Option<String> {
        let sb = self.shared.set.superblock();
        if sb.unsynced {
            return Some("it was formatted as a replica and has not yet been given its primary's journals".into());
        }
        let names: Vec<&str> = sb.journals.iter().filter(|e| e.incomplete).map(|e| e.name.as_str()).collect();
        (!names.is_empty()).then(|| {
            format!(
                "journal{} {} {} being sent to it whole and {} not caught up yet (it lacks records its primary acknowledged)",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" },
                if names.len() == 1 { "has" } else { "have" },
            )
        })
    }

    /// The set's identity, the same on a primary and its replicas.
    pub fn set_uuid(&self) -> [u8; 16] {
        self.shared.set.set_uuid
    }

    /// The device layer the set reads and writes through.
    pub fn storage(&self) -> &Arc<dyn storage::Storage> {
        self.shared.set.storage()
    }

    /// (block size, segment size, slot count, batch buffer bytes).
    pub fn geometry(&self) -> (u32, u64, u64, u64) {
        let s = &self.shared.set;
        (s.block_size, s.segment_size, s.slot_count, self.shared.cfg.batch_buf_bytes(s.block_size) as u64)
    }

    /// Every journal with its id, by name.
    pub fn journals(&self) -> Vec<Journal> {
        self.journals.lock().values().cloned().collect()
    }

    /// The journal with this id.
    pub fn journal_by_id(&self, id: u64) -> Option<Journal> {
        self.journals.lock().values().find(|j| j.inner.id == id).cloned()
    }

    /// Ships every batch claimed from now on, every mark and every journal
    /// change to `sink` (a primary's replication outbox); `None` stops it.
    pub fn set_ship_sink(&self, sink: Option<Arc<dyn ship::ShipSink>>) {
        ship::set_sink(&self.shared, sink);
    }

    /// Replaces the member `old` names (its device path or UUID) with the
    /// device at `new`, which joins rebuilding (`MirrorSet::replace`);
    /// `resilver` then copies the log onto it. Returns the new member's
    /// slot.
    pub fn replace(&self, old: &str, new: &std::path::Path, force: bool) -> Result<usize> {
        let set = &self.shared.set;
        let i = set.find_member(old).ok_or_else(|| Error::Config(format!("{old}: no such member of the set")))?;
        set.replace(i, new, force)
    }

    /// Re-adds the device at `path`, a failed member of the set, resilvering
    /// only the segments it does not provably hold whole
    /// (`MirrorSet::re_add`). Returns its new slot.
    pub fn re_add(&self, path: &std::path::Path) -> Result<usize> {
        self.shared.set.re_add(path)
    }

    /// Takes a failed or rebuilding member out of the set, by its device
    /// path or UUID (`MirrorSet::detach`).
    pub fn detach(&self, who: &str) -> Result<()> {
        let set = &self.shared.set;
        let i = set.find_member(who).ok_or_else(|| Error::Config(format!("{who}: no such member of the set")))?;
        set.detach(i)
    }

    /// Batches written over every journal since open: a background task
    /// (scrub, resilver) that yields to appends watches it move. Its own
    /// writes (repairs, copies, the superblock's progress) do not count.
    pub fn batches_written(&self) -> u64 {
        self.journals.lock().values().map(|j| j.counters().batches).sum()
    }

    /// Health, sizes and every journal's LSN range.
    pub fn status(&self) -> Status {
        let set = &self.shared.set;
        let sb = set.superblock();
        let free = self.shared.slots.lock().free_count() as u64;
        let mirrors = set
            .members()
            .iter()
            .filter_map(|m| Some((m, m.health()?)))
            .map(|(m, health)| {
                let w = m.writes.load(Ordering::Relaxed);
                let ns = m.write_ns.load(Ordering::Relaxed);
                let (read_errors, write_errors, checksum_errors, repaired) = m.errors.snapshot();
                MirrorStatus {
                    path: m.path().display().to_string(),
                    uuid: hex_id(&m.uuid()),
                    slot: m.slot,
                    healthy: m.is_healthy(),
                    state: health.name(),
                    writes: w,
                    mean_write_us: if w == 0 { 0.0 } else { ns as f64 / w as f64 / 1000.0 },
                    read_errors,
                    write_errors,
                    checksum_errors,
                    repaired,
                }
            })
            .collect();
        Status {
            set_uuid: hex_id(&sb.set_uuid),
            epoch: sb.epoch,
            block_size: sb.block_size,
            segment_size: sb.segment_size,
            segments_total: set.slot_count,
            segments_free: free,
            mirrors,
            absent_devices: set.absent().iter().map(|(p, why)| format!("{}: {why}", p.display())).collect(),
            repairs: set.repairs(),
            incomplete: self.incomplete(),
            journals: self.journals.lock().values().map(|j| j.info()).collect(),
        }
    }
}
