//! `mirrorlogd`, the appliance daemon: configuration, the server loop,
//! idempotence, metrics and systemd notification. The binary is
//! `src/bin/mirrorlogd.rs`; docs/daemon.md is the operator's guide.

pub mod acks;
pub mod config;
pub mod metrics;
pub mod notify;
pub mod producers;
mod server;

pub use server::{Driven, Stream};

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::replication::role::AfterProbe;
use crate::replication::{self, Change, ReplConfig, ReplShared, Role};

pub use config::DaemonConfig;

/// The epoch of this start of a primary: the next start in its term.
fn restart_epoch(log: &crate::MirrorLog) -> Result<u64, String> {
    let now = crate::epoch::Epoch::from_raw(log.epoch());
    now.restart().map(|e| e.raw()).ok_or_else(|| {
        format!("epoch {now}: no start is left in this term; promote this node (a new term) instead of starting it as primary")
    })
}

/// Creates missing device files, opens (or formats) the mirror set, makes
/// the configured journals, binds the listeners and serves until SIGTERM or
/// SIGINT, then drains. Blocks the calling thread.
/// A configured primary that learned at start that a newer primary
/// exists follows it (it never served: every primary starts waiting).
fn follow_at_start(shared: &ReplShared) -> Result<(), String> {
    shared.change(Change::Follow).map(|_| ()).map_err(|now| format!("starting as replica: this node is {}", now.name()))
}

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
    let mut ecfg = cfg.engine();
    let rc = &cfg.replication;
    let role = match rc.role.as_str() {
        "primary" => Role::Primary,
        "replica" => Role::Replica,
        _ => Role::Standalone,
    };
    // The replication listener is bound before anything else, so a replica
    // with empty devices can be bootstrapped by its primary.
    let repl_listener = match rc.listen {
        Some(a) => Some(std::net::TcpListener::bind(a).map_err(|e| format!("replication listen on {a}: {e}"))?),
        None => None,
    };
    let formatted =
        crate::mirror::MirrorSet::any_formatted(&crate::storage::default_storage(), &ecfg.devices, ecfg.sync)
            .map_err(|e| e.to_string())?;
    if role == Role::Replica && !formatted {
        let l = repl_listener.as_ref().ok_or("a replica needs replication.listen")?;
        replication::bootstrap(l, &mut ecfg)?;
    }
    let t0 = std::time::Instant::now();
    let create = cfg.storage.create && role != Role::Replica;
    let log = if create { crate::MirrorLog::open_or_create(&ecfg) } else { crate::MirrorLog::open(&ecfg) }
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
    if role != Role::Replica {
        for j in &cfg.journals {
            log.journal_or_create(&j.name).map_err(|e| format!("journal {:?}: {e}", j.name))?;
        }
    }
    let log = Arc::new(log);
    let shared = ReplShared::new(ReplConfig {
        role,
        peer: rc.peer,
        listen: rc.listen,
        name: cfg.server.name.clone(),
        ack_timeout: rc.ack_timeout,
        backlog_bytes: rc.backlog_bytes as usize,
        connect_timeout: rc.connect_timeout,
        peer_timeout: rc.peer_timeout,
        startup_wait: rc.startup_wait,
        serve_unreachable: rc.unreachable_at_start == "serve",
        socket_buffer: rc.socket_buffer as usize,
    });
    let etcd = rc.etcd.as_ref().map(|e| {
        replication::etcd::Etcd::new(replication::etcd::EtcdConfig {
            endpoints: e.endpoints.clone(),
            prefix: e.prefix.clone(),
            cluster: e.cluster.clone(),
            lease_ttl: e.lease_ttl,
            auto_failover: e.auto_failover,
            endpoint: cfg.server.listen.first().map(|l| l.to_string()).unwrap_or_default(),
        })
    });
    let mut lease = None;
    let incomplete = (role == Role::Primary).then(|| replication::may_lead(&log, false).err()).flatten();
    if let Some(why) = incomplete {
        tracing::error!(
            why,
            "configured primary, but this node lacks records its primary acknowledged: taking no appends until its \
             peer completes it (it follows a newer primary that answers), or an operator forces it (mirrorlog \
             promote --force)"
        );
        // It stays as every primary starts: waiting.
    } else if let (Role::Primary, Some(e)) = (role, &etcd) {
        // etcd decides: hold the primary key, or be the holder's replica.
        let history = log.epoch();
        let epoch = restart_epoch(&log)?;
        match replication::etcd::claim_at_start(
            e,
            &cfg.server.name,
            epoch,
            history,
            rc.startup_wait.max(Duration::from_secs(10)),
        )? {
            replication::etcd::AtStart::Primary(l, sent) => {
                lease = Some((l, sent));
                replication::serve_as_primary(&log, &shared, epoch).map_err(|e| format!("starting as primary: {e}"))?;
            }
            replication::etcd::AtStart::Replica(h) => {
                tracing::error!(holder = %h.name, epoch = h.epoch, "etcd: another node is primary; starting as its replica");
                shared.saw_epoch(h.epoch);
                follow_at_start(&shared)?;
            }
            replication::etcd::AtStart::Stale(served) => {
                tracing::error!(
                    served,
                    history,
                    "etcd: a primary served at a newer epoch than this node's history and holds no key now: \
                     waiting for it (or for an operator: mirrorlog promote) instead of serving an older history"
                );
                shared.saw_epoch(served);
                // It stays as every primary starts: waiting.
            }
        }
    } else if role == Role::Primary {
        // Ask the peer first: a newer primary may exist (we were fenced
        // while down). Only a node that may go on as primary raises its
        // epoch, so no two runs write records of one epoch.
        let probe = replication::sender::probe(&log, &shared, rc.startup_wait);
        match replication::role::after_probe(&probe, shared.cfg.serve_unreachable) {
            AfterProbe::Follow(e) => {
                tracing::error!(epoch = e, "a newer primary exists: starting as its replica");
                shared.saw_epoch(e);
                follow_at_start(&shared)?;
            }
            AfterProbe::Wait => {
                tracing::error!(peer = ?rc.peer, why = ?probe,
                    "peer not reachable at start, or it refuses this node: taking no appends until it answers (it \
                     may have been promoted meanwhile), or until an operator promotes this node (mirrorlog promote; \
                     or start with --force-primary / replication.unreachable_at_start = \"serve\")");
                // It stays as every primary starts: waiting.
            }
            AfterProbe::Serve => {
                if let replication::sender::Probe::Unreachable(why) | replication::sender::Probe::Refused(why) = &probe
                {
                    tracing::warn!(peer = ?rc.peer, why, "peer not reachable at start, or it refuses this node: serving as primary, as configured (unreachable_at_start = \"serve\")");
                }
                let epoch = restart_epoch(&log)?;
                replication::serve_as_primary(&log, &shared, epoch).map_err(|e| format!("starting as primary: {e}"))?;
            }
        }
    }
    if shared.role() == Role::Waiting && etcd.is_none() {
        let (log, shared) = (log.clone(), shared.clone());
        std::thread::Builder::new()
            .name("repl-wait".into())
            .spawn(move || replication::wait_for_peer(&log, &shared))
            .map_err(|e| format!("peer wait thread: {e}"))?;
    }
    if let Some(l) = repl_listener {
        replication::start_receiver(&log, &shared, l).map_err(|e| format!("replication receiver: {e}"))?;
    }
    if let Some(e) = etcd {
        let keeper = replication::failover::Keeper::new(e.keeper_config(&cfg.server.name), lease);
        // Before the server loop can take an append.
        shared.serve_until.store(keeper.serve_until(), std::sync::atomic::Ordering::Release);
        let (log, shared) = (log.clone(), shared.clone());
        std::thread::Builder::new()
            .name("repl-etcd".into())
            .spawn(move || replication::etcd::run(e, log, shared, keeper))
            .map_err(|e| format!("etcd thread: {e}"))?;
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
    let sh = shared.clone();
    let res = tokio_uring::builder().entries(1024).start(async move {
        let srv = server::Srv::new(log, cfg, shared).map_err(|e| e.to_string())?;
        server::serve(srv, bound, notifier).await
    });
    sh.stop.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!("stopped");
    res
}
