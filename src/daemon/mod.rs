//! `mirrorlogd`, the appliance daemon: configuration, the server loop,
//! idempotence, metrics and systemd notification. The binary is
//! `src/bin/mirrorlogd.rs`; docs/daemon.md is the operator's guide.

pub mod config;
pub mod metrics;
pub mod notify;
pub mod producers;
mod server;

use std::rc::Rc;

pub use config::DaemonConfig;

/// Creates missing device files, opens (or formats) the mirror set, makes
/// the configured journals, binds the listeners and serves until SIGTERM or
/// SIGINT, then drains. Blocks the calling thread.
pub fn run(cfg: DaemonConfig) -> Result<(), String> {
    for d in &cfg.storage.devices {
        if !d.exists() {
            if let Some(parent) = d.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            tracing::info!(device = %d.display(), bytes = cfg.storage.device_size, "creating device file");
            crate::io::create_device_file(d, cfg.storage.device_size).map_err(|e| format!("{}: {e}", d.display()))?;
        }
    }
    let ecfg = cfg.engine();
    let t0 = std::time::Instant::now();
    let log = if cfg.storage.create { crate::MirrorLog::open_or_create(&ecfg) } else { crate::MirrorLog::open(&ecfg) }
        .map_err(|e| format!("opening the mirror set: {e} (error code {})", e.code()))?;
    let st = log.status();
    tracing::info!(
        set = %st.set_uuid,
        epoch = st.epoch,
        mirrors = st.mirrors.len(),
        healthy = st.mirrors.iter().filter(|m| m.healthy).count(),
        seconds = t0.elapsed().as_secs_f64(),
        "mirror set open (recovered)"
    );
    if st.mirrors.len() == 1 {
        tracing::warn!("one device: nothing is mirrored");
    }
    for j in &cfg.journals {
        log.journal_or_create(&j.name).map_err(|e| format!("journal {:?}: {e}", j.name))?;
    }
    let bound = server::bind(&cfg)?;
    for l in &cfg.server.listen {
        tracing::info!(listen = %l, "clients");
    }
    if let Some(m) = cfg.metrics.listen {
        tracing::info!(listen = %m, "metrics at /metrics");
    }
    let notifier = Rc::new(notify::Notifier::from_env());
    // Not IORING_SETUP_COOP_TASKRUN: it raised many-connection throughput
    // here but deferred wake-ups of an idle loop by ~90 µs (docs/benchmarks.md).
    let res = tokio_uring::builder().entries(1024).start(async move {
        let srv = server::Srv::new(log, cfg).map_err(|e| e.to_string())?;
        server::serve(srv, bound, notifier).await
    });
    tracing::info!("stopped");
    res
}
