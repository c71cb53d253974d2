//! `--raw`: the physical limit. Each operation is one aligned O_DIRECT write
//! of the record size to every device in parallel (one io_uring submission),
//! durable with RWF_DSYNC (or O_DSYNC), no journal.

use std::os::fd::AsRawFd;

use mirrorlog::io::{create_device_file, open_device, submit_wait, with_ring, AlignedBuf, IoOp};
use mirrorlog::SyncMode;

use crate::load::{drive_threads, Load};
use crate::report::Report;
use crate::Common;

/// Creates missing device files (zero-filled, so no unwritten extents).
pub fn ensure_devices(c: &Common) -> Result<(), String> {
    if c.devices.is_empty() {
        return Err("--devices is required".into());
    }
    for d in &c.devices {
        if !d.exists() {
            eprintln!("creating {} ({} bytes, zero-filled)", d.display(), c.device_size);
            create_device_file(d, c.device_size).map_err(|e| format!("{}: {e}", d.display()))?;
        }
    }
    Ok(())
}

/// Errs (unless `force`) if a device holds a mirrorlog set: raw writes
/// would destroy it.
pub fn refuse_mirror_sets(c: &Common, force: bool) -> Result<(), String> {
    if force {
        return Ok(());
    }
    for d in c.devices.iter().filter(|d| d.exists()) {
        if mirrorlog::mirror::MirrorSet::is_formatted(&mirrorlog::storage::default_storage(), d, c.sync)
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "{} holds a mirrorlog mirror set; raw writes would destroy it (pass --force to overwrite)",
                d.display()
            ));
        }
    }
    Ok(())
}

/// Each client writes `size` bytes to every device per operation, in its own
/// region of the devices; an operation counts as `records_per_op` records.
/// Refuses devices that hold a mirror set unless `force`.
pub fn run_raw(
    c: &Common,
    load: &Load,
    size: u64,
    label: String,
    records_per_op: u64,
    force: bool,
) -> Result<Report, String> {
    ensure_devices(c)?;
    refuse_mirror_sets(c, force)?;
    let devs: Vec<_> = c
        .devices
        .iter()
        .map(|p| open_device(p, c.sync).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;
    let dev_size = devs.iter().map(|d| d.size).min().unwrap_or(0);
    let size = size.div_ceil(4096) * 4096;
    let base = 1u64 << 20;
    let region = (dev_size.saturating_sub(base) / load.clients.max(1) as u64) / size * size;
    if region < size {
        return Err("devices too small for this many clients".into());
    }
    let fds: Vec<i32> = devs.iter().map(|d| d.file.as_raw_fd()).collect();
    let dsync = c.sync == SyncMode::RwfDsync;
    let bufs: Vec<AlignedBuf> = (0..load.clients)
        .map(|i| {
            let mut b = AlignedBuf::new(size as usize, 4096);
            b.as_mut_slice().fill(i as u8 | 1);
            b
        })
        .collect();
    Ok(drive_threads(label, load, size / records_per_op.max(1), |client, seq| {
        let off = base + client as u64 * region + (seq * size) % region;
        let buf = &bufs[client].as_slice()[..size as usize];
        let ops: Vec<IoOp> = fds.iter().map(|&fd| IoOp::write(fd, off, buf, dsync)).collect();
        let mut res = vec![0i32; ops.len()];
        with_ring(|ring| submit_wait(ring, &ops, &mut res)).map_err(|e| e.to_string())?;
        for r in res {
            if r as u64 != size {
                return Err(format!("raw write returned {r}"));
            }
        }
        Ok(records_per_op)
    }))
}
