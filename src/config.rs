//! Engine configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{align_up, RECORD_HEADER_LEN};
use crate::io::SyncMode;

/// How to open or create a mirror set. `Config::new(devices)` gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Member devices: block devices or regular files (1 to 8; 2 or more to mirror).
    pub devices: Vec<PathBuf>,
    /// Block size in bytes (default 4096). Must be a multiple of every
    /// device's logical block size. Only used when formatting.
    pub block_size: u32,
    /// Segment slot size in bytes (default 64 MiB). Only used when formatting.
    pub segment_size: u64,
    /// Largest record payload accepted (default 1 MiB).
    pub max_record_size: u32,
    /// Group commit: a batch closes when it holds this many bytes (default 1 MiB).
    pub max_batch_bytes: usize,
    /// Group commit: batches written at once per journal (default 2).
    pub max_inflight_batches: usize,
    /// Group commit: how long a batch may wait for more appends before it is
    /// written (default 0: written as soon as a writer is free).
    pub group_commit_wait: Duration,
    /// RWF_DSYNC per write (default) or O_DSYNC devices.
    pub sync: SyncMode,
    /// Read index granularity: one index entry per this many bytes of a
    /// segment (default 64 KiB). Smaller is faster reads, more memory.
    pub index_stride: u32,
    /// Format with this set UUID instead of a random one (a replica takes
    /// its primary's). Only used when formatting.
    pub set_uuid: Option<[u8; 16]>,
    /// Format as a replica not yet given its primary's journals
    /// (`replication::bootstrap`): it refuses promotion until it has them.
    /// Only used when formatting.
    pub unsynced_replica: bool,
    /// Open without members that the newest superblock present lists as
    /// healthy: the operator says they hold nothing newer than the members
    /// present (`MirrorSet::open`). They are then marked failed.
    pub start_degraded: bool,
    /// The device layer (`None`: the real devices, `storage::default_storage`).
    /// Tests put faults below the engine here (`storage::FaultInjector`),
    /// the simulator its in-memory devices (`storage::SimStorage`).
    pub storage: Option<Arc<dyn crate::storage::Storage>>,
}

impl Config {
    /// Defaults for the given devices.
    pub fn new<P: Into<PathBuf>>(devices: impl IntoIterator<Item = P>) -> Config {
        Config {
            devices: devices.into_iter().map(Into::into).collect(),
            block_size: 4096,
            segment_size: 64 << 20,
            max_record_size: 1 << 20,
            max_batch_bytes: 1 << 20,
            max_inflight_batches: 2,
            group_commit_wait: Duration::ZERO,
            sync: SyncMode::RwfDsync,
            index_stride: 64 << 10,
            set_uuid: None,
            unsynced_replica: false,
            start_degraded: false,
            storage: None,
        }
    }

    /// Bytes of one batch buffer: a segment header block, the batch, and its padding.
    pub(crate) fn batch_buf_bytes(&self, block: u32) -> usize {
        let b = block as u64;
        let body = (self.max_batch_bytes as u64)
            .max((RECORD_HEADER_LEN + crate::format::TAG_LEN) as u64 + self.max_record_size as u64);
        (b + align_up(body, b) + b) as usize
    }

    /// Batch buffers per journal: the batches being written, one sealed
    /// waiting for a writer, and the open one.
    pub(crate) fn batch_buffers(&self) -> usize {
        self.max_inflight_batches + 2
    }

    /// Upper bound on bytes written past the durable tail at any moment:
    /// every batch buffer may hold a batch that is written but not yet retired.
    pub(crate) fn inflight_window(&self, block: u32) -> u64 {
        self.batch_buf_bytes(block) as u64 * self.batch_buffers() as u64
    }

    /// Checks the values against each other and against the set's geometry.
    pub(crate) fn validate(&self, block: u32, segment_size: u64) -> Result<()> {
        if self.max_record_size == 0 || self.max_record_size > 256 << 20 {
            return Err(Error::Config(format!(
                "max_record_size {} must be between 1 and 256 MiB",
                self.max_record_size
            )));
        }
        if self.max_inflight_batches == 0 || self.max_inflight_batches > 64 {
            return Err(Error::Config(format!(
                "max_inflight_batches {} must be between 1 and 64",
                self.max_inflight_batches
            )));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > 64 << 20 {
            return Err(Error::Config(format!(
                "max_batch_bytes {} must be between 1 and 64 MiB",
                self.max_batch_bytes
            )));
        }
        if self.index_stride < block {
            return Err(Error::Config(format!(
                "index_stride {} must be at least the block size {block}",
                self.index_stride
            )));
        }
        let need = self.batch_buf_bytes(block) as u64 + block as u64;
        if segment_size < need {
            return Err(Error::Config(format!(
                "segment size {segment_size} is too small for batches of {} bytes and records of {} bytes (needs at least {need})",
                self.max_batch_bytes, self.max_record_size
            )));
        }
        Ok(())
    }
}
