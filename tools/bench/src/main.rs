//! mirrorlog-bench: durable-append benchmarks, and the checker that crash
//! and failover tests use.
//!
//! * `run --raw`: the physical limit: one aligned O_DIRECT durable write of
//!   `--record-size` to every device per operation.
//! * `run --embedded`: the engine in process.
//! * `engine-vs-raw`: the engine issue's scenarios, raw and journal back to
//!   back in one run, side by side.
//! * `recovery`: tail scan at open against sequential reads.
//! * `check`: reads back every record of an `--ack-log`; exit 1 on any
//!   missing, corrupt or duplicated record.

mod calibrate;
mod check;
mod child;
mod daemon_cmp;
mod embedded;
mod lean;
mod load;
mod peers;
mod raw;
mod remote;
mod repl_cmp;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use mirrorlog::SyncMode;

use crate::embedded::{run_embedded, EmbeddedOpts};
use crate::load::{AckLog, Load, Sizes};
use crate::raw::run_raw;
use crate::report::{plot, print};

#[derive(Parser)]
#[command(name = "mirrorlog-bench", version, about = "Durable append benchmarks for mirrorlog")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One benchmark run.
    Run(RunArgs),
    /// Raw mirrored writes and the journal, back to back, side by side.
    EngineVsRaw(CompareArgs),
    /// The embedded engine, then mirrorlogd on the same devices over
    /// loopback TCP, and a bare TCP ping-pong: QD1 and many-connection runs.
    DaemonVsEmbedded(DaemonCmpArgs),
    /// The replication issue's scenario: a primary and a replica daemon,
    /// every durability mode at QD1 and many connections, catch-up speed,
    /// and a delayed link through the fault proxy.
    Replication(ReplCmpArgs),
    /// Recovery: time the tail scan of a full segment at open, against
    /// sequential O_DIRECT reads of the same bytes.
    Recovery(RecoveryArgs),
    /// Read back every record of an ack log; exit 1 if any is missing,
    /// corrupt or duplicated.
    Check(CheckArgs),
    /// mirrorlog (1 device, 2 mirrors) against raft-engine, okaywal and fio,
    /// back to back: QD1 latency and many-writer records/s.
    Peers(PeersArgs),
    /// Measure the devices (durable write latency by size, bandwidth by
    /// depth) and the link to a peer, and recommend engine settings.
    Calibrate(CalibrateArgs),
    /// The peer side of `calibrate --peer`: answers pings and bandwidth runs.
    Echo(EchoArgs),
}

#[derive(Args, Clone)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub common: Common,
    /// A `mirrorlog-bench echo` listener at the remote site.
    #[arg(long)]
    pub peer: Option<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.5)]
    pub seconds: f64,
    /// Write even over devices that hold a mirrorlog set (destroys it).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Clone)]
pub struct EchoArgs {
    #[arg(long, default_value = "127.0.0.1:7409")]
    pub listen: String,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long)]
    pub seconds: Option<f64>,
}

#[derive(Args, Clone)]
pub struct PeersArgs {
    /// Folder for every peer's files (on the disk under test).
    #[arg(long, default_value = "bench-data/peers")]
    pub dir: PathBuf,
    /// Size of mirrorlog's device files.
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    pub device_size: u64,
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    pub record_size: u64,
    /// Seconds per run.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Writers in the throughput runs.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// QD1 rounds (the peers alternate; medians compared).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long)]
    pub json: bool,
    /// Draw every run's latency percentile curve on one SVG chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Device paths, comma separated; missing ones are created as files.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<PathBuf>,
    /// Size of device files created by the bench (bytes; K, M, G suffixes).
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    pub device_size: u64,
    /// Segment size when the bench formats the devices.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub segment_size: u64,
    /// How writes are made durable: rwf-dsync or o-dsync.
    #[arg(long, default_value = "rwf-dsync", value_parser = parse_sync)]
    pub sync: SyncMode,
    /// Print one JSON object per run instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Raw aligned O_DIRECT writes to every device (no journal).
    #[arg(long, conflicts_with = "embedded")]
    raw: bool,
    /// The engine in process.
    #[arg(long)]
    embedded: bool,
    /// A running daemon (HOST:PORT; several, comma separated, for failover).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["raw", "embedded"])]
    endpoint: Vec<String>,
    /// Durability of each append (endpoint): local, remote-received,
    /// remote-durable; default: the journal's.
    #[arg(long, value_parser = mirrorlog::daemon::config::parse_durability)]
    durability: Option<mirrorlog::protocol::Durability>,
    /// Endpoint: load-generator threads, each an event loop with its share
    /// of the clients.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Endpoint: send GetMark (no disk work) instead of appends, to measure
    /// the protocol and network round trip alone.
    #[arg(long, requires = "endpoint")]
    ping: bool,
    /// Concurrent clients, each waiting for its ack before its next send.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Record size in bytes, or a uniform range MIN-MAX (raw: the size of
    /// each aligned write, one size only).
    #[arg(long, default_value = "1024", value_parser = parse_sizes)]
    record_size: Sizes,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many acknowledged records instead.
    #[arg(long)]
    records: Option<u64>,
    /// Open loop: operations per second over all clients; latency is counted
    /// from each operation's intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Journal name (embedded).
    #[arg(long, default_value = "bench")]
    journal: String,
    /// Group commit: batch byte limit (embedded).
    #[arg(long, value_parser = parse_size)]
    max_batch: Option<u64>,
    /// Group commit: batches in flight (embedded).
    #[arg(long)]
    inflight: Option<usize>,
    /// Format the devices before the run (embedded).
    #[arg(long)]
    format: bool,
    /// Embedded: one OS thread per client, each blocking in `append`
    /// (default: clients multiplexed on event loops with submit/Driver).
    #[arg(long)]
    threads: bool,
    /// Embedded: event-loop threads the clients are spread over.
    #[arg(long, default_value_t = 1)]
    loops: usize,
    /// Write one line per acknowledged record: lsn client seq crc32c.
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Draw the latency percentile curve to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Raw: write even over devices that hold a mirrorlog set (destroys it).
    #[arg(long)]
    force: bool,
    /// The load generator polls instead of sleeping while it waits for acks
    /// (embedded event loops and endpoint clients; see docs/benchmarks.md).
    #[arg(long)]
    poll: bool,
    /// Endpoint: the lean load generator (one epoll loop, raw protocol
    /// frames, no failover) instead of a `mirrorlog::client::Client` per
    /// connection; one endpoint, appends only, closed loop.
    #[arg(long, requires = "endpoint", conflicts_with_all = ["ping", "rate"])]
    lean: bool,
}

#[derive(Args, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds per run.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// QD1 rounds (raw and journal alternate).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Draw every run's latency percentile curve on one SVG chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// What the daemon scenarios share: the daemon, the run length, the load.
#[derive(Args, Clone)]
pub struct DaemonRunArgs {
    /// The mirrorlogd binary to start.
    #[arg(long, default_value = "target/release/mirrorlogd")]
    pub daemon: PathBuf,
    /// Seconds per run.
    #[arg(long, default_value_t = 6.0)]
    pub duration: f64,
    /// Appenders / connections in the throughput runs.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Load-generator threads for the daemon's clients, each an event loop
    /// with its share of them (1: one thread).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// The daemon's append runs use the lean load generator (raw frames on
    /// one epoll loop) instead of a `mirrorlog::client::Client` per
    /// connection (see docs/benchmarks.md).
    #[arg(long)]
    pub lean: bool,
    /// The load generator polls instead of sleeping while it waits for acks
    /// (the embedded event loop and the daemon's clients alike).
    #[arg(long)]
    pub poll: bool,
    /// Draw the runs' latency percentile curves on one SVG chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl DaemonRunArgs {
    /// A closed-loop load of `clients` for `duration`, as these flags say.
    pub fn load(&self, clients: usize, json: bool) -> load::Load {
        load::Load { clients, secs: self.duration, records: None, rate: None, progress: !json, poll: self.poll }
    }
}

#[derive(Args, Clone)]
pub struct DaemonCmpArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub run: DaemonRunArgs,
}

#[derive(Args, Clone)]
pub struct ReplCmpArgs {
    #[command(flatten)]
    pub common: Common,
    /// The primary site's devices (recreated as files).
    #[arg(long, value_delimiter = ',', required = true)]
    pub primary_devices: Vec<PathBuf>,
    /// The replica site's devices (recreated as files).
    #[arg(long, value_delimiter = ',', required = true)]
    pub replica_devices: Vec<PathBuf>,
    #[command(flatten)]
    pub run: DaemonRunArgs,
    /// Bytes appended while the replica is down, for the catch-up run.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub catchup: u64,
    /// Only the catch-up run.
    #[arg(long)]
    pub catchup_only: bool,
    /// `[limits]` lines for both daemons (e.g. "max_inflight_batches = 4").
    #[arg(long, default_value = "")]
    pub limits: String,
    /// Delay added by the fault proxy in each direction, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub delay_ms: f64,
}

#[derive(Args, Clone)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Record size used to fill the segment.
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    pub record_size: u64,
    /// Bytes to fill the tail segment with (at most the segment size).
    #[arg(long, default_value = "60M", value_parser = parse_size)]
    pub fill: u64,
}

#[derive(Args, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: Common,
    /// The ack log written by `run --ack-log`.
    #[arg(long)]
    pub ack_log: PathBuf,
    /// Read back through a running daemon instead of the devices.
    #[arg(long, value_delimiter = ',')]
    pub endpoint: Vec<String>,
    /// Journal name.
    #[arg(long, default_value = "bench")]
    pub journal: String,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().map(|n| n * mul).map_err(|e| format!("bad size {s:?}: {e}"))
}

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (min, max) = (parse_size(a)?, parse_size(b)?);
            if min > max {
                return Err(format!("bad size range {s:?}: min above max"));
            }
            Ok(Sizes { min, max })
        }
        None => parse_size(s).map(Sizes::fixed),
    }
}

fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "rwf-dsync" => Ok(SyncMode::RwfDsync),
        "o-dsync" => Ok(SyncMode::ODsync),
        _ => Err(format!("unknown sync mode {s:?} (rwf-dsync, o-dsync)")),
    }
}

fn run(r: &RunArgs) -> Result<(), String> {
    let targets = r.raw as u8 + r.embedded as u8 + !r.endpoint.is_empty() as u8;
    if targets != 1 {
        return Err("choose one target: --raw, --embedded or --endpoint".into());
    }
    if (r.raw || r.embedded) && r.common.devices.is_empty() {
        return Err("--raw and --embedded need --devices".into());
    }
    if r.durability.is_some() && r.endpoint.is_empty() {
        return Err("--durability needs --endpoint (the embedded engine is local only)".into());
    }
    if r.rate.is_some_and(|x| x <= 0.0) {
        return Err("--rate must be positive".into());
    }
    let load = Load {
        clients: r.clients.max(1),
        secs: r.duration,
        records: r.records,
        rate: r.rate,
        progress: !r.common.json,
        poll: r.poll,
    };
    let n = r.common.devices.len();
    let mode = match r.rate {
        Some(x) => format!(", open loop {x:.0}/s"),
        None => String::new(),
    };
    let report = if !r.endpoint.is_empty() {
        let ack_log = match &r.ack_log {
            Some(p) => Some(Arc::new(AckLog::create(p).map_err(|e| format!("{}: {e}", p.display()))?)),
            None => None,
        };
        let d = r.durability.unwrap_or(mirrorlog::protocol::Durability::Default);
        let o = remote::RemoteOpts {
            endpoints: r.endpoint.clone(),
            journal: r.journal.clone(),
            durability: d,
            record_size: r.record_size,
            ack_log,
            threads: r.client_threads,
            ping: r.ping,
        };
        let dname = match d {
            mirrorlog::protocol::Durability::Default => "default",
            mirrorlog::protocol::Durability::Local => "local",
            mirrorlog::protocol::Durability::RemoteReceived => "remote-received",
            mirrorlog::protocol::Durability::RemoteDurable => "remote-durable",
        };
        let what = if r.ping { "ping (GetMark)".to_string() } else { format!("{} {dname}", r.record_size) };
        let label = format!("daemon {} {what}, {} connections{mode}", r.endpoint.join(","), r.clients);
        remote::run_appends(&load, &o, label, r.lean)?
    } else if r.raw {
        if r.ack_log.is_some() {
            return Err("--ack-log needs --embedded: raw writes have no LSNs".into());
        }
        if !r.record_size.is_fixed() {
            return Err("--raw takes one --record-size, not a range".into());
        }
        let label = format!("raw {} x{n} devices, {} clients{mode}", r.record_size, r.clients);
        run_raw(&r.common, &load, r.record_size.min, label, 1, r.force)?
    } else {
        let ack_log = match &r.ack_log {
            Some(p) => Some(Arc::new(AckLog::create(p).map_err(|e| format!("{}: {e}", p.display()))?)),
            None => None,
        };
        let o = EmbeddedOpts {
            threads: r.threads,
            loops: r.loops,
            record_size: r.record_size,
            journal: r.journal.clone(),
            max_batch: r.max_batch,
            inflight: r.inflight,
            format: r.format,
            ack_log,
        };
        let label = format!("journal {}, {} appenders, {n} mirrors{mode}", r.record_size, r.clients);
        run_embedded(&r.common, &load, &o, label)?
    };
    print(std::slice::from_ref(&report), r.common.json);
    if let Some(p) = &r.plot {
        plot(p, "latency by percentile", std::slice::from_ref(&report)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if report.records == 0 {
        return Err("no record was acknowledged".into());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(r) => run(&r),
        Cmd::EngineVsRaw(a) => scenarios::compare(&a),
        Cmd::DaemonVsEmbedded(a) => daemon_cmp::daemon_vs_embedded(&a),
        Cmd::Replication(a) => repl_cmp::replication(&a),
        Cmd::Recovery(a) => scenarios::recovery(&a),
        Cmd::Peers(a) => peers::peers(&a),
        Cmd::Calibrate(a) => calibrate::calibrate(&a),
        Cmd::Echo(a) => calibrate::echo(&a),
        Cmd::Check(a) => match check::check(&a) {
            Ok(f) => {
                check::print(&f, a.common.json);
                if f.ok() {
                    Ok(())
                } else {
                    std::process::exit(1);
                }
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = res {
        eprintln!("mirrorlog-bench: {e}");
        std::process::exit(2);
    }
}
