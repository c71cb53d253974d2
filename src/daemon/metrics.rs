//! The daemon's counters and their Prometheus text rendering (`GET /metrics`).
//! Counters live on the event loop's thread (plain `Cell`s): the loop is the
//! only writer and the metrics endpoint runs on the same loop.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::{JournalCounters, Status};

/// Upper bounds (seconds) of the append latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
];

/// A Prometheus histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [Cell<u64>; LATENCY_BUCKETS.len()],
    count: Cell<u64>,
    sum_ns: Cell<u64>,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].set(self.buckets[i].get() + 1);
                break;
            }
        }
        self.count.set(self.count.get() + 1);
        self.sum_ns.set(self.sum_ns.get() + d.as_nanos() as u64);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += self.buckets[i].get();
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count.get());
        let l = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{l} {}", self.sum_ns.get() as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{l} {}", self.count.get());
    }
}

/// Counters kept by the server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Appends acknowledged (requests, records, payload bytes) per journal.
    pub acked: RefCell<BTreeMap<String, (u64, u64, u64)>>,
    /// Resends answered from the idempotence table.
    pub deduplicated: Cell<u64>,
    /// Error responses by code.
    pub errors: RefCell<BTreeMap<u16, u64>>,
    pub connections: Cell<u64>,
    pub connections_total: Cell<u64>,
    pub connections_rejected: Cell<u64>,
    /// Time from an append's arrival to its acknowledgement.
    pub append_latency: Histogram,
    /// `remote-*` appends acknowledged as `local` (degraded journals).
    pub degraded_acks: Cell<u64>,
}

/// Replication state for `/metrics` and status.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplStatus {
    pub role: String,
    pub peer: Option<String>,
    pub peer_name: String,
    pub connected: bool,
    pub epoch: u64,
    pub seen_epoch: u64,
    pub sessions: u64,
    /// When the current session started (ms since the Unix epoch).
    pub session_started_ms: u64,
    /// Bytes the current session read from the segments to catch up.
    pub catchup_bytes: u64,
    pub resyncs: u64,
    pub truncations: u64,
    pub backlog_bytes: u64,
    pub last_error: String,
    /// A split brain found with the peer (empty: none): records of a run
    /// the other side's history does not hold, kept on both sides until an
    /// operator decides (docs/replication.md).
    pub split_brain: String,
    /// Why this node lacks records its primary acknowledged (empty: it
    /// does not): it refuses promotion (`MirrorLog::incomplete`).
    pub incomplete: String,
    pub journals: Vec<ReplJournal>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplJournal {
    pub name: String,
    pub next_lsn: u64,
    pub replica_received: u64,
    pub replica_durable: u64,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub degraded: bool,
}

/// Renders the replication metrics.
/// A metric's HELP and TYPE lines.
fn h(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The running or last resilver.
pub fn render_resilver(o: &mut String, running: bool, done: u64, total: u64) {
    h(o, "mirrorlog_resilver_running", "gauge", "1 while a new mirror member is being resilvered.");
    let _ = writeln!(o, "mirrorlog_resilver_running {}", running as u8);
    h(o, "mirrorlog_resilver_bytes_done", "gauge", "Bytes the running or last resilver copied.");
    let _ = writeln!(o, "mirrorlog_resilver_bytes_done {done}");
    h(
        o,
        "mirrorlog_resilver_bytes_total",
        "gauge",
        "Bytes the running or last resilver has to copy (estimated at its start).",
    );
    let _ = writeln!(o, "mirrorlog_resilver_bytes_total {total}");
}

/// The running or last scrub.
pub fn render_scrub(o: &mut String, running: bool, records: u64, repaired: u64, errors: usize) {
    h(o, "mirrorlog_scrub_running", "gauge", "1 while a scrub runs.");
    let _ = writeln!(o, "mirrorlog_scrub_running {}", running as u8);
    h(o, "mirrorlog_scrub_records", "gauge", "Records the running or last scrub verified (summed over mirrors).");
    let _ = writeln!(o, "mirrorlog_scrub_records {records}");
    h(o, "mirrorlog_scrub_repaired", "gauge", "Bad copies the running or last scrub rewrote.");
    let _ = writeln!(o, "mirrorlog_scrub_repaired {repaired}");
    h(
        o,
        "mirrorlog_scrub_errors",
        "gauge",
        "Journals the running or last scrub could not scrub through (a record bad on every mirror).",
    );
    let _ = writeln!(o, "mirrorlog_scrub_errors {errors}");
}

pub fn render_repl(o: &mut String, m: &Metrics, r: &ReplStatus) {
    h(o, "mirrorlog_replication_role", "gauge", "1 for this node's current role.");
    let _ = writeln!(o, "mirrorlog_replication_role{{role=\"{}\"}} 1", esc(&r.role));
    h(o, "mirrorlog_replication_connected", "gauge", "1 while a replication session streams.");
    let _ = writeln!(o, "mirrorlog_replication_connected {}", r.connected as u8);
    h(o, "mirrorlog_replication_sessions_total", "counter", "Replication sessions started.");
    let _ = writeln!(o, "mirrorlog_replication_sessions_total {}", r.sessions);
    h(o, "mirrorlog_replication_resyncs_total", "counter", "Replica journals sent again whole.");
    let _ = writeln!(o, "mirrorlog_replication_resyncs_total {}", r.resyncs);
    h(o, "mirrorlog_replication_truncations_total", "counter", "Replica journals cut back to this primary's history.");
    let _ = writeln!(o, "mirrorlog_replication_truncations_total {}", r.truncations);
    h(
        o,
        "mirrorlog_replication_split_brain",
        "gauge",
        "1 while a split brain with the peer is reported (both histories kept; an operator must decide).",
    );
    let _ = writeln!(o, "mirrorlog_replication_split_brain {}", (!r.split_brain.is_empty()) as u8);
    h(
        o,
        "mirrorlog_replication_incomplete",
        "gauge",
        "1 while this node lacks records its primary acknowledged (a journal being sent to it whole): it refuses promotion.",
    );
    let _ = writeln!(o, "mirrorlog_replication_incomplete {}", (!r.incomplete.is_empty()) as u8);
    h(o, "mirrorlog_replication_backlog_bytes", "gauge", "Bytes shipped but not yet sent to the replica.");
    let _ = writeln!(o, "mirrorlog_replication_backlog_bytes {}", r.backlog_bytes);
    h(o, "mirrorlog_replication_degraded_acks_total", "counter", "remote-* appends acknowledged as local.");
    let _ = writeln!(o, "mirrorlog_replication_degraded_acks_total {}", m.degraded_acks.get());
    for (name, help, f) in [
        (
            "mirrorlog_replication_replica_durable_lsn",
            "The replica's durable next LSN.",
            (|j: &ReplJournal| j.replica_durable as f64) as fn(&ReplJournal) -> f64,
        ),
        ("mirrorlog_replication_lag_records", "Records durable here but not on the replica.", |j| j.lag_records as f64),
        ("mirrorlog_replication_lag_bytes", "Bytes written here but not durable on the replica.", |j| {
            j.lag_bytes as f64
        }),
        ("mirrorlog_replication_lag_seconds", "Seconds since the replica last held everything durable here.", |j| {
            j.lag_seconds
        }),
    ] {
        h(o, name, "gauge", help);
        for j in &r.journals {
            let _ = writeln!(o, "{name}{{journal=\"{}\"}} {}", esc(&j.name), f(j));
        }
    }
}

impl Metrics {
    pub fn error(&self, code: u16) {
        *self.errors.borrow_mut().entry(code).or_default() += 1;
    }

    pub fn acked(&self, journal: &str, records: u64, bytes: u64) {
        let mut m = self.acked.borrow_mut();
        let e = m.entry(journal.to_string()).or_default();
        e.0 += 1;
        e.1 += records;
        e.2 += bytes;
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders everything in the Prometheus text format (version 0.0.4).
pub fn render(m: &Metrics, status: &Status, counters: &[(String, JournalCounters)]) -> String {
    let mut o = String::with_capacity(8192);
    h(&mut o, "mirrorlog_appends_total", "counter", "Append requests acknowledged.");
    for (j, (reqs, _, _)) in m.acked.borrow().iter() {
        let _ = writeln!(o, "mirrorlog_appends_total{{journal=\"{}\"}} {reqs}", esc(j));
    }
    h(&mut o, "mirrorlog_append_records_total", "counter", "Records acknowledged.");
    for (j, (_, recs, _)) in m.acked.borrow().iter() {
        let _ = writeln!(o, "mirrorlog_append_records_total{{journal=\"{}\"}} {recs}", esc(j));
    }
    h(&mut o, "mirrorlog_append_bytes_total", "counter", "Payload bytes acknowledged.");
    for (j, (_, _, bytes)) in m.acked.borrow().iter() {
        let _ = writeln!(o, "mirrorlog_append_bytes_total{{journal=\"{}\"}} {bytes}", esc(j));
    }
    h(&mut o, "mirrorlog_append_latency_seconds", "histogram", "From an append's arrival to its acknowledgement.");
    m.append_latency.render(&mut o, "mirrorlog_append_latency_seconds", "");
    h(&mut o, "mirrorlog_deduplicated_total", "counter", "Resent appends answered with their original LSN.");
    let _ = writeln!(o, "mirrorlog_deduplicated_total {}", m.deduplicated.get());

    h(&mut o, "mirrorlog_journal_records_written_total", "counter", "Records written by the engine since start.");
    for (j, c) in counters {
        let _ = writeln!(o, "mirrorlog_journal_records_written_total{{journal=\"{}\"}} {}", esc(j), c.appends);
    }
    h(&mut o, "mirrorlog_journal_batches_total", "counter", "Write batches (group commits) since start.");
    for (j, c) in counters {
        let _ = writeln!(o, "mirrorlog_journal_batches_total{{journal=\"{}\"}} {}", esc(j), c.batches);
    }
    h(&mut o, "mirrorlog_journal_batch_records", "gauge", "Mean records per write batch since start.");
    for (j, c) in counters {
        let mean = if c.batches == 0 { 0.0 } else { c.appends as f64 / c.batches as f64 };
        let _ = writeln!(o, "mirrorlog_journal_batch_records{{journal=\"{}\"}} {mean}", esc(j));
    }
    for (name, help, f) in [
        (
            "mirrorlog_journal_first_lsn",
            "Lowest readable LSN.",
            (|i: &crate::JournalInfo| i.first_lsn) as fn(&_) -> u64,
        ),
        ("mirrorlog_journal_next_lsn", "One past the last durable record.", |i| i.next_lsn),
        ("mirrorlog_journal_mark", "The journal's mark (0: none).", |i| i.mark),
        ("mirrorlog_journal_bytes", "Bytes of segment slots the journal holds.", |i| i.bytes),
        ("mirrorlog_journal_segments", "Segments the journal holds.", |i| i.segments as u64),
        (
            "mirrorlog_journal_missing_segments",
            "Segments found missing on every mirror at open (their records cannot be read; alert on > 0).",
            |i| i.missing_segments,
        ),
    ] {
        h(&mut o, name, "gauge", help);
        for i in &status.journals {
            let _ = writeln!(o, "{name}{{journal=\"{}\"}} {}", esc(&i.name), f(i));
        }
    }

    h(
        &mut o,
        "mirrorlog_mirror_healthy",
        "gauge",
        "1 if the mirror holds every acknowledged record (read from, counted for durability), 0 if it failed or is being resilvered.",
    );
    for mi in &status.mirrors {
        let _ = writeln!(o, "mirrorlog_mirror_healthy{{device=\"{}\"}} {}", esc(&mi.path), mi.healthy as u8);
    }
    h(
        &mut o,
        "mirrorlog_mirror_rebuilding",
        "gauge",
        "1 while the mirror is being resilvered (it takes writes, is not read).",
    );
    for mi in &status.mirrors {
        let _ = writeln!(
            o,
            "mirrorlog_mirror_rebuilding{{device=\"{}\"}} {}",
            esc(&mi.path),
            (mi.state == "rebuilding") as u8
        );
    }
    h(
        &mut o,
        "mirrorlog_mirror_errors_total",
        "counter",
        "Errors on the mirror since start: failed reads, failed writes, copies that did not verify (checksum).",
    );
    for mi in &status.mirrors {
        for (kind, n) in [("read", mi.read_errors), ("write", mi.write_errors), ("checksum", mi.checksum_errors)] {
            let _ = writeln!(o, "mirrorlog_mirror_errors_total{{device=\"{}\",kind=\"{kind}\"}} {n}", esc(&mi.path));
        }
    }
    h(&mut o, "mirrorlog_mirror_repaired_total", "counter", "Bad copies on the mirror rewritten from a good one.");
    for mi in &status.mirrors {
        let _ = writeln!(o, "mirrorlog_mirror_repaired_total{{device=\"{}\"}} {}", esc(&mi.path), mi.repaired);
    }
    h(&mut o, "mirrorlog_devices_absent", "gauge", "Configured devices left out of the mirror set at start.");
    let _ = writeln!(o, "mirrorlog_devices_absent {}", status.absent_devices.len());
    h(&mut o, "mirrorlog_mirror_writes_total", "counter", "Durable writes completed on the mirror.");
    for mi in &status.mirrors {
        let _ = writeln!(o, "mirrorlog_mirror_writes_total{{device=\"{}\"}} {}", esc(&mi.path), mi.writes);
    }
    h(
        &mut o,
        "mirrorlog_mirror_write_seconds_total",
        "counter",
        "Time spent in durable writes on the mirror (divide by writes for the mean).",
    );
    for mi in &status.mirrors {
        let total = mi.mean_write_us * mi.writes as f64 / 1e6;
        let _ = writeln!(o, "mirrorlog_mirror_write_seconds_total{{device=\"{}\"}} {total}", esc(&mi.path));
    }
    h(&mut o, "mirrorlog_repairs_total", "counter", "Bad copies rewritten from a good mirror (self-heal).");
    let _ = writeln!(o, "mirrorlog_repairs_total {}", status.repairs);
    h(&mut o, "mirrorlog_segments_free", "gauge", "Free segment slots.");
    let _ = writeln!(o, "mirrorlog_segments_free {}", status.segments_free);
    h(&mut o, "mirrorlog_segments_total", "gauge", "Segment slots in the mirror set.");
    let _ = writeln!(o, "mirrorlog_segments_total {}", status.segments_total);
    h(&mut o, "mirrorlog_epoch", "gauge", "The mirror set's epoch.");
    let _ = writeln!(o, "mirrorlog_epoch {}", status.epoch);

    h(&mut o, "mirrorlog_connections", "gauge", "Open client connections.");
    let _ = writeln!(o, "mirrorlog_connections {}", m.connections.get());
    h(&mut o, "mirrorlog_connections_total", "counter", "Client connections accepted.");
    let _ = writeln!(o, "mirrorlog_connections_total {}", m.connections_total.get());
    h(&mut o, "mirrorlog_connections_rejected_total", "counter", "Connections refused at the connection limit.");
    let _ = writeln!(o, "mirrorlog_connections_rejected_total {}", m.connections_rejected.get());
    h(&mut o, "mirrorlog_errors_total", "counter", "Error responses by code.");
    for (code, n) in m.errors.borrow().iter() {
        let _ = writeln!(
            o,
            "mirrorlog_errors_total{{code=\"{code}\",name=\"{}\"}} {n}",
            crate::protocol::codes::name(*code)
        );
    }
    o
}
