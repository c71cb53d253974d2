//! `mirrorlog`: the command-line client and offline tools.
//!
//! Exit codes: 0 success; 1 the request failed (the error's code and name
//! are printed on stderr); 2 bad usage or arguments; 3 `verify` found a
//! problem, or `health` found the storage degraded or with errors; 4 no
//! endpoint could be reached.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::time::Duration;

use mirrorlog::client::{admin, BlockingClient, ClientConfig, ClientError, Record};
use mirrorlog::daemon::config::{parse_durability, parse_size};
use mirrorlog::protocol::{codes, Durability, Request};

#[derive(Parser, Debug)]
#[command(name = "mirrorlog", version, about = "Client and offline tools for mirrorlog journal appliances")]
struct Args {
    /// Appliance address(es), HOST:PORT; several (comma-separated or
    /// repeated) for failover.
    #[arg(long, short = 'e', global = true, value_delimiter = ',', default_value = "127.0.0.1:7400")]
    endpoint: Vec<String>,
    /// Seconds to wait for an answer (reconnects included).
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Append standard input as one record; prints its LSN.
    Append {
        #[arg(long, short = 'j', default_value = "default")]
        journal: String,
        /// local, remote-received or remote-durable (default: the journal's).
        #[arg(long, value_parser = parse_durability)]
        durability: Option<Durability>,
    },
    /// Print records as JSON lines: {"lsn","epoch","len","crc32c","hex"}.
    Read {
        #[arg(long, short = 'j', default_value = "default")]
        journal: String,
        /// First LSN (0: the first retained).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Records to print (default: up to the durable end).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print records from an LSN as JSON lines and follow the tail.
    Tail {
        #[arg(long, short = 'j', default_value = "default")]
        journal: String,
        /// First LSN (default: the current end, so only new records).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the journal's mark, or set it with --set.
    Mark {
        #[arg(long, short = 'j', default_value = "default")]
        journal: String,
        /// Records below this LSN may be reclaimed.
        #[arg(long)]
        set: Option<u64>,
    },
    /// List journals.
    Journals {
        #[arg(long)]
        json: bool,
    },
    /// Create a journal.
    CreateJournal { name: String },
    /// Delete a journal and free its segments.
    DeleteJournal { name: String },
    /// The appliance's status: role, epoch, mirrors, journals, replication
    /// lag. Asks the first endpoint that answers (primary or replica).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// For scripts and monitoring: exit 0 and print "healthy" when every
    /// mirror member takes writes, no configured device was left out at
    /// start and no member has read, write or checksum errors; otherwise
    /// print one line per problem and exit 3.
    Health,
    /// Scrub every journal on every mirror of the node at --endpoint: each
    /// record read and verified on each mirror, bad copies rewritten from
    /// good ones, in the background at `scrub.rate`. `start`, `status`
    /// (progress, rate, ETA, what it repaired) or `cancel`.
    Scrub {
        #[arg(value_parser = ["start", "status", "cancel"])]
        action: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a mirror member of the node at --endpoint by a new device
    /// (a file or block device at least as large as the set's). The new
    /// device joins at once: every append is written to it, and it is
    /// resilvered in the background from verified copies on the healthy
    /// members (`resilver.rate`, progress in `status`); it is read from and
    /// counts for durability once resilvered. A failed --old leaves the set
    /// at once, a healthy one once the new device is resilvered. Then put
    /// --new in place of --old in `storage.devices` of the configuration.
    Replace {
        /// The member to replace: its device path or UUID (from `status --json`).
        #[arg(long)]
        old: String,
        /// The new device.
        #[arg(long)]
        new: String,
        /// Even if the new device holds another mirror set's superblock.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cross-site scrub: compare the node at --endpoint with the node at
    /// --peer (its replica, or its primary) segment by segment, and repair a
    /// stretch one site lost on every mirror (bit rot, a bad block) from
    /// the other site, whose copy verifies there. Each site first checks
    /// its own mirrors (as a scrub, repairing a bad copy from a good one).
    /// Segments whose chains both verify but differ (a split brain) are
    /// reported, never repaired. Exit 0 when the sites agree (after the
    /// repairs), 3 when something could not be repaired.
    ScrubSites {
        /// The other site's client endpoint.
        #[arg(long)]
        peer: String,
    },
    /// Bring a failed member's device back into the mirror set of the node
    /// at --endpoint (md's `--re-add`), after a transient failure: it is
    /// resilvered like a replacement, but only the segments it does not
    /// provably hold whole are copied (what was written since it failed).
    ReAdd {
        /// The failed member's device.
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Take a failed member, or one being resilvered (which cancels its
    /// resilver), out of the mirror set of the node at --endpoint
    /// (`zpool detach`). A healthy member is refused: replace it.
    Detach {
        /// The member: its device path or UUID.
        member: String,
        #[arg(long)]
        json: bool,
    },
    /// Make the replica at --endpoint the primary (the primary site is
    /// lost): its epoch rises, and an old primary that returns is fenced.
    ///
    /// Refused (`incomplete`) while the replica lacks records its primary
    /// acknowledged (a journal is being sent to it whole): let it catch
    /// up, or give --force to accept losing them.
    Promote {
        #[arg(long)]
        json: bool,
        /// Promote even an incomplete replica (what it lacks is lost).
        #[arg(long)]
        force: bool,
    },
    /// After a split brain was reported at --endpoint (a replica holding
    /// records of a run its primary never followed): let its next session
    /// cut them back, so the primary's history wins. Read them there
    /// first to keep what matters.
    DiscardDiverged {
        #[arg(long)]
        json: bool,
    },
    /// Make the primary at --endpoint a replica (planned). By default it
    /// first waits until its replica is durable at every journal's end.
    Demote {
        /// Step down at once, without waiting for the replica.
        #[arg(long)]
        no_sync: bool,
        /// Seconds to wait for appends in flight and the replica.
        #[arg(long, default_value_t = 30)]
        wait: u64,
        #[arg(long)]
        json: bool,
    },
    /// Planned role swap with no loss: demote the primary at --endpoint
    /// once its replica has everything, then promote the replica at --to.
    Switchover {
        /// The replica's client address (HOST:PORT).
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Offline: format devices as a new, empty mirror set (destroys them).
    Format {
        #[arg(long, value_delimiter = ',', required = true)]
        devices: Vec<PathBuf>,
        /// Create missing device files of this size.
        #[arg(long, value_parser = parse_size, default_value = "1GiB")]
        device_size: u64,
        #[arg(long, value_parser = parse_size, default_value = "64MiB")]
        segment_size: u64,
        /// Journals to create.
        #[arg(long, value_delimiter = ',', default_value = "default")]
        journal: Vec<String>,
        /// Confirm that the devices' contents may be destroyed.
        #[arg(long)]
        yes: bool,
    },
    /// Offline: check every checksum and chain on every mirror and compare
    /// the mirrors block by block; exit 3 on any problem.
    Verify {
        #[arg(long, value_delimiter = ',', required = true)]
        devices: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Offline: print a journal's records as JSON lines (like `read`).
    Dump {
        #[arg(long, value_delimiter = ',', required = true)]
        devices: Vec<PathBuf>,
        #[arg(long, short = 'j', default_value = "default")]
        journal: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

fn json_line(out: &mut impl Write, lsn: u64, epoch: u64, payload: &[u8]) -> std::io::Result<()> {
    writeln!(
        out,
        "{{\"lsn\":{lsn},\"epoch\":{epoch},\"len\":{},\"crc32c\":{},\"hex\":\"{}\"}}",
        payload.len(),
        crc32c::crc32c(payload),
        hex(payload)
    )
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("mirrorlog: {e}");
    if e.code == codes::UNAVAILABLE {
        ExitCode::from(4)
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.cmd {
        Cmd::Format { devices, device_size, segment_size, journal, yes } => {
            return format(devices, *device_size, *segment_size, journal, *yes)
        }
        Cmd::Verify { devices, json } => return verify(devices, *json),
        Cmd::Dump { devices, journal, from } => return dump(devices, journal, *from),
        Cmd::Status { json } => return admin_status(&args.endpoint, *json, args.timeout),
        Cmd::Health => return admin_health(&args.endpoint, args.timeout),
        Cmd::Scrub { action, json } => return admin_scrub(&args.endpoint, action, *json, args.timeout),
        Cmd::ScrubSites { peer } => {
            let Some(first) = args.endpoint.first() else {
                eprintln!("mirrorlog: give --endpoint");
                return ExitCode::from(2);
            };
            return scrub_sites(first, peer, Duration::from_secs(args.timeout.max(1)));
        }
        Cmd::ReAdd { device, json } => {
            let req = Request::Replace { old: device, new: device, force: false, re_add: true };
            return admin_print(&args.endpoint, &req, *json, args.timeout);
        }
        Cmd::Replace { old, new, force, json } => {
            let req = Request::Replace { old, new, force: *force, re_add: false };
            let code = admin_print(&args.endpoint, &req, *json, args.timeout);
            if code == ExitCode::SUCCESS && !*json {
                println!(
                    "\nresilvering {new}: now add it to storage.devices of the configuration (a restart resumes the \
                     resilver), and take {old} out once the resilver finished"
                );
            }
            return code;
        }
        Cmd::Detach { member, json } => {
            return admin_print(&args.endpoint, &Request::Detach { member }, *json, args.timeout);
        }
        Cmd::Promote { json, force } => {
            return admin_print(&args.endpoint, &Request::Promote { force: *force }, *json, args.timeout);
        }
        Cmd::DiscardDiverged { json } => {
            return admin_print(&args.endpoint, &Request::DiscardDiverged, *json, args.timeout);
        }
        Cmd::Demote { no_sync, wait, json } => {
            let req = Request::Demote { sync: !no_sync, timeout_ms: (*wait * 1000).min(u32::MAX as u64) as u32 };
            return admin_print(&args.endpoint, &req, *json, args.timeout.max(*wait + 5));
        }
        Cmd::Switchover { to, wait } => return switchover(&args.endpoint, to, *wait),
        _ => {}
    }
    let mut cfg = ClientConfig::new(args.endpoint.iter().cloned());
    cfg.request_timeout = std::time::Duration::from_secs(args.timeout.max(1));
    // Reads are served by a replica too (up to what it holds durably).
    cfg.any_role =
        matches!(&args.cmd, Cmd::Read { .. } | Cmd::Tail { .. } | Cmd::Mark { set: None, .. } | Cmd::Journals { .. });
    let c = match BlockingClient::connect(cfg) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let res = run(&c, &args.cmd);
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn io_err(e: std::io::Error) -> ClientError {
    ClientError { code: 3, message: e.to_string() }
}

fn run(c: &BlockingClient, cmd: &Cmd) -> Result<(), ClientError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cmd {
        Cmd::Append { journal, durability } => {
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data).map_err(io_err)?;
            let lsn = c.append_batch_with(journal, &[&data], durability.unwrap_or(Durability::Default))?;
            writeln!(out, "{lsn}").map_err(io_err)?;
        }
        Cmd::Read { journal, from, count } => {
            let mut next = *from;
            let mut left = count.unwrap_or(u64::MAX);
            while left > 0 {
                let (recs, n) = c.read(journal, next, left.min(10_000) as u32, 4 << 20)?;
                if recs.is_empty() {
                    break;
                }
                for r in &recs {
                    json_line(&mut out, r.lsn, r.epoch, &r.payload).map_err(io_err)?;
                }
                left = left.saturating_sub(recs.len() as u64);
                next = n;
            }
        }
        Cmd::Tail { journal, from, count } => {
            let from = match from {
                Some(f) => *f,
                None => {
                    let st: serde_json::Value = serde_json::from_str(&c.status()?)
                        .map_err(|e| ClientError { code: 105, message: e.to_string() })?;
                    st["journals"]
                        .as_array()
                        .and_then(|js| js.iter().find(|j| j["name"] == journal.as_str()))
                        .and_then(|j| j["next_lsn"].as_u64())
                        .ok_or_else(|| ClientError { code: 7, message: format!("unknown journal {journal:?}") })?
                }
            };
            let mut left = count.unwrap_or(u64::MAX);
            c.block_on(async {
                let mut sub = c.client().subscribe(journal, from, 1 << 20).await?;
                while left > 0 {
                    let Some(r) = sub.next().await else { break };
                    let r: Record = r?;
                    json_line(&mut out, r.lsn, r.epoch, &r.payload).map_err(io_err)?;
                    out.flush().map_err(io_err)?;
                    left -= 1;
                }
                Ok::<(), ClientError>(())
            })?;
        }
        Cmd::Mark { journal, set } => match set {
            Some(l) => c.set_mark(journal, *l)?,
            None => writeln!(out, "{}", c.get_mark(journal)?).map_err(io_err)?,
        },
        Cmd::Journals { json } => {
            let names = c.journals()?;
            if *json {
                writeln!(out, "{}", serde_json::json!(names)).map_err(io_err)?;
            } else {
                for n in names {
                    writeln!(out, "{n}").map_err(io_err)?;
                }
            }
        }
        Cmd::CreateJournal { name } => c.create_journal(name)?,
        Cmd::DeleteJournal { name } => c.delete_journal(name)?,
        Cmd::Format { .. }
        | Cmd::Verify { .. }
        | Cmd::Dump { .. }
        | Cmd::Status { .. }
        | Cmd::Health
        | Cmd::Scrub { .. }
        | Cmd::Replace { .. }
        | Cmd::Detach { .. }
        | Cmd::ReAdd { .. }
        | Cmd::ScrubSites { .. }
        | Cmd::Promote { .. }
        | Cmd::DiscardDiverged { .. }
        | Cmd::Demote { .. }
        | Cmd::Switchover { .. } => {}
    }
    out.flush().map_err(io_err)
}

fn admin_status(endpoints: &[String], json: bool, timeout: u64) -> ExitCode {
    let mut last = ClientError { code: codes::UNAVAILABLE, message: "no endpoint given".into() };
    for ep in endpoints {
        match admin(ep, &Request::Status, Duration::from_secs(timeout.max(1))) {
            Ok(s) => return show(&s, json),
            Err(e) => last = e,
        }
    }
    fail(&last)
}

fn admin_scrub(endpoints: &[String], action: &str, json: bool, timeout: u64) -> ExitCode {
    use mirrorlog::protocol::ScrubAction;
    let action = match action {
        "start" => ScrubAction::Start,
        "cancel" => ScrubAction::Cancel,
        _ => ScrubAction::Status,
    };
    let v = match ask_first_status(endpoints, &Request::Scrub { action }, timeout) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let sc = &v["scrub"];
    if json {
        println!("{sc}");
        return ExitCode::SUCCESS;
    }
    let n = |k: &str| sc[k].as_u64().unwrap_or(0);
    let state = sc["state"].as_str().unwrap_or("");
    if state.is_empty() {
        println!("scrub: none since the daemon started");
        return ExitCode::SUCCESS;
    }
    let total = n("records_total").max(1);
    println!(
        "scrub: {state}, {} of {} records ({:.0}%), {:.1} MB/s{}, repaired {}",
        n("records_done"),
        n("records_total"),
        100.0 * n("records_done").min(total) as f64 / total as f64,
        sc["bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
        sc["eta_seconds"].as_f64().map(|s| format!(", ETA {s:.0} s")).unwrap_or_default(),
        n("repaired")
    );
    for e in sc["errors"].as_array().into_iter().flatten() {
        println!("error: {}", e.as_str().unwrap_or("?"));
    }
    ExitCode::SUCCESS
}

/// `mirrorlog scrub-sites`: see the command's help.
fn scrub_sites(a: &str, b: &str, timeout: Duration) -> ExitCode {
    use mirrorlog::sites::{plan, Finding, SegmentDigest, SitesRequest, MAX_STRETCH};
    let sites = [a, b];
    let ask = |site: usize, req: &SitesRequest| -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_string(req).map_err(|e| io_err(std::io::Error::other(e)))?;
        let s = admin(sites[site], &Request::Sites { request: &body }, timeout)?;
        serde_json::from_str(&s).map_err(|e| io_err(std::io::Error::other(e)))
    };
    let digests = |site: usize, journal: &str, slot: Option<u64>| -> Result<Vec<SegmentDigest>, ClientError> {
        let v = ask(site, &SitesRequest::Digests { journal: journal.to_string(), slot })?;
        serde_json::from_value(v["segments"].clone()).map_err(|e| io_err(std::io::Error::other(e)))
    };
    let status = match admin(a, &Request::Status, timeout) {
        Ok(s) => serde_json::from_str::<serde_json::Value>(&s).unwrap_or_default(),
        Err(e) => return fail(&e),
    };
    let journals: Vec<String> = status["journals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["name"].as_str().map(String::from))
        .collect();
    let (mut compared, mut repaired, mut problems) = (0usize, 0usize, Vec::new());
    for j in &journals {
        let mut last = Vec::new();
        // Repairing one site may let the other's repair go further: a few passes.
        for _pass in 0..3 {
            let (da, db) = match (digests(0, j, None), digests(1, j, None)) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(e), _) | (_, Err(e)) => {
                    problems.push(format!("journal {j}: {e}"));
                    last.clear();
                    break;
                }
            };
            last = plan(&da, &db);
            let todo: Vec<(usize, SegmentDigest)> = last
                .iter()
                .filter_map(|f| match f {
                    Finding::Repair { to, seg } => Some((*to, *seg)),
                    _ => None,
                })
                .collect();
            if todo.is_empty() {
                break;
            }
            for (to, seg) in todo {
                let from = 1 - to;
                let mut at = seg;
                let first = at.lsn;
                let outcome = loop {
                    let read = SitesRequest::Read {
                        journal: j.clone(),
                        slot: at.slot,
                        off: at.off,
                        lsn: at.lsn,
                        prev_crc: at.prev_crc,
                        max: MAX_STRETCH,
                    };
                    let got = match ask(from, &read) {
                        Ok(v) => v,
                        Err(e) => break Err(e.to_string()),
                    };
                    let repair = SitesRequest::Repair {
                        journal: j.clone(),
                        slot: at.slot,
                        off: at.off,
                        lsn: at.lsn,
                        prev_crc: at.prev_crc,
                        start: got["start"].as_u64().unwrap_or(0),
                        bytes: got["bytes"].as_str().unwrap_or("").to_string(),
                    };
                    if let Err(e) = ask(to, &repair) {
                        break Err(e.to_string());
                    }
                    match digests(to, j, Some(at.slot)).map(|d| d.into_iter().find(|d| d.same_segment(&seg))) {
                        Ok(Some(d)) if d.whole() => break Ok(d.lsn),
                        Ok(Some(d)) if d.lsn > at.lsn => at = d,
                        Ok(_) => break Err(format!("no progress at lsn {}", at.lsn)),
                        Err(e) => break Err(e.to_string()),
                    }
                };
                match outcome {
                    Ok(end) => {
                        repaired += 1;
                        println!(
                            "journal {j}: repaired on {} from {}: slot {}, lsn {first}..{end}",
                            sites[to], sites[from], seg.slot
                        );
                    }
                    Err(e) => problems.push(format!("journal {j}: repairing slot {} on {}: {e}", seg.slot, sites[to])),
                }
            }
        }
        compared += last.len();
        for f in &last {
            match f {
                Finding::Lost(d) => problems.push(format!(
                    "journal {j}: slot {}, lsn {}: bad on every mirror of both sites (or not yet on the other): lost",
                    d.slot, d.lsn
                )),
                Finding::Diverged(x, y) => problems.push(format!(
                    "journal {j}: slot {}: the sites hold different records (chain CRC {:08x} on {a}, {:08x} on {b}): \
                     a split brain, not repaired (docs/replication.md)",
                    x.slot, x.prev_crc, y.prev_crc
                )),
                Finding::Repair { to, seg } => problems
                    .push(format!("journal {j}: slot {}, lsn {}: still broken on {}", seg.slot, seg.lsn, sites[*to])),
                Finding::Same(_) => {}
            }
        }
    }
    println!("{} journals, {compared} segments compared, {repaired} stretches repaired", journals.len());
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

fn admin_health(endpoints: &[String], timeout: u64) -> ExitCode {
    let v = match ask_first_status(endpoints, &Request::Status, timeout) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let problems = health_problems(&v);
    if problems.is_empty() {
        println!("healthy");
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        println!("{p}");
    }
    ExitCode::from(3)
}

/// What makes a status unhealthy, one line each (empty: healthy).
fn health_problems(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in v["mirrors"].as_array().into_iter().flatten() {
        let path = m["path"].as_str().unwrap_or("?");
        match m["state"].as_str() {
            Some("healthy") => {}
            Some("rebuilding") => out.push(format!("RESILVERING: mirror {path}")),
            _ => out.push(format!("DEGRADED: mirror {path} failed")),
        }
        let n = |k: &str| m[k].as_u64().unwrap_or(0);
        let (r, w, c) = (n("read_errors"), n("write_errors"), n("checksum_errors"));
        if r + w + c > 0 {
            out.push(format!("ERRORS: mirror {path}: read {r}, write {w}, checksum {c}, repaired {}", n("repaired")));
        }
    }
    for a in v["absent_devices"].as_array().into_iter().flatten() {
        out.push(format!("DEGRADED: left out at start: {}", a.as_str().unwrap_or("?")));
    }
    for e in v["scrub"]["errors"].as_array().into_iter().flatten() {
        out.push(format!("ERRORS: the last scrub: {}", e.as_str().unwrap_or("?")));
    }
    if v["resilver"]["state"] == "failed" {
        out.push(format!("ERRORS: the last resilver: {}", v["resilver"]["error"].as_str().unwrap_or("?")));
    }
    out
}

fn show(s: &str, json: bool) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let r = if json { writeln!(out, "{s}") } else { print_status(&mut out, s) };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&io_err(e)),
    }
}

/// Sends an admin request to the first endpoint (exactly that node).
fn admin_print(endpoints: &[String], req: &Request<'_>, json: bool, timeout: u64) -> ExitCode {
    match ask_first(endpoints, req, timeout) {
        Ok(s) => show(&s, json),
        Err(code) => code,
    }
}

/// Sends an admin request to the first endpoint (exactly that node): its
/// answer, or the exit code (the error printed).
fn ask_first(endpoints: &[String], req: &Request<'_>, timeout: u64) -> Result<String, ExitCode> {
    let Some(ep) = endpoints.first() else {
        eprintln!("mirrorlog: give --endpoint");
        return Err(ExitCode::from(2));
    };
    admin(ep, req, Duration::from_secs(timeout.max(1))).map_err(|e| fail(&e))
}

/// `ask_first` for a request answered with the status, parsed.
fn ask_first_status(endpoints: &[String], req: &Request<'_>, timeout: u64) -> Result<serde_json::Value, ExitCode> {
    let s = ask_first(endpoints, req, timeout)?;
    serde_json::from_str(&s).map_err(|e| {
        eprintln!("mirrorlog: status is not JSON: {e}");
        ExitCode::from(1)
    })
}

fn switchover(endpoints: &[String], to: &str, wait: u64) -> ExitCode {
    let Some(from) = endpoints.first() else {
        eprintln!("mirrorlog: give --endpoint (the primary)");
        return ExitCode::from(2);
    };
    let t0 = std::time::Instant::now();
    let demote = Request::Demote { sync: true, timeout_ms: (wait * 1000).min(u32::MAX as u64) as u32 };
    if let Err(e) = admin(from, &demote, Duration::from_secs(wait + 5)) {
        eprintln!("mirrorlog: demoting {from}: {e} (nothing changed)");
        return fail(&e);
    }
    match admin(to, &Request::Promote { force: false }, Duration::from_secs(wait + 5)) {
        Ok(s) => {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
            println!(
                "switched over: {to} is primary at epoch {} ({} ms); {from} is its replica",
                v["epoch"],
                t0.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mirrorlog: promoting {to} failed: {e}; {from} is a replica now: promote one of them");
            fail(&e)
        }
    }
}

fn print_status(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(std::io::Error::other)?;
    writeln!(
        out,
        "server {}  role {}  epoch {}  set {}",
        v["server"].as_str().unwrap_or("?"),
        v["role"].as_str().unwrap_or("?"),
        v["epoch"],
        v["set_uuid"].as_str().unwrap_or("?")
    )?;
    writeln!(
        out,
        "segments {} free of {} ({} MiB each)  repairs {}  connections {}",
        v["segments_free"],
        v["segments_total"],
        v["segment_size"].as_u64().unwrap_or(0) >> 20,
        v["repairs"],
        v["connections"]
    )?;
    writeln!(
        out,
        "\n{:<40} {:>8} {:>10} {:>14} {:>6} {:>6} {:>6} {:>9}",
        "MIRROR", "STATE", "WRITES", "MEAN WRITE µs", "READ", "WRITE", "CKSUM", "REPAIRED"
    )?;
    for m in v["mirrors"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<40} {:>8} {:>10} {:>14.1} {:>6} {:>6} {:>6} {:>9}",
            m["path"].as_str().unwrap_or("?"),
            match m["state"].as_str() {
                Some("healthy") => "healthy",
                Some("rebuilding") => "RESILVER",
                _ => "FAILED",
            },
            m["writes"].to_string(),
            m["mean_write_us"].as_f64().unwrap_or(0.0),
            m["read_errors"].to_string(),
            m["write_errors"].to_string(),
            m["checksum_errors"].to_string(),
            m["repaired"].to_string()
        )?;
    }
    for a in v["absent_devices"].as_array().into_iter().flatten() {
        writeln!(out, "left out at start: {}", a.as_str().unwrap_or("?"))?;
    }
    let r = &v["resilver"];
    if let Some(state) = r["state"].as_str().filter(|s| !s.is_empty()) {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        writeln!(
            out,
            "resilver of {}: {state}, {} of {} MiB ({:.0}%), {:.1} MB/s{}{}{}",
            r["device"].as_str().unwrap_or("?"),
            n("bytes_done") >> 20,
            n("bytes_total") >> 20,
            100.0 * n("bytes_done").min(n("bytes_total").max(1)) as f64 / n("bytes_total").max(1) as f64,
            r["bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            r["eta_seconds"].as_f64().map(|s| format!(", ETA {s:.0} s")).unwrap_or_default(),
            if r["resumed"] == true { ", resumed after a restart" } else { "" },
            r["error"].as_str().filter(|e| !e.is_empty()).map(|e| format!(": {e}")).unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "\n{:<24} {:>12} {:>12} {:>12} {:>9} {:>16}",
        "JOURNAL", "FIRST", "NEXT", "MARK", "SEGMENTS", "DURABILITY"
    )?;
    for j in v["journals"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<24} {:>12} {:>12} {:>12} {:>9} {:>16}",
            j["name"].as_str().unwrap_or("?"),
            j["first_lsn"].to_string(),
            j["next_lsn"].to_string(),
            j["mark"].to_string(),
            j["segments"].to_string(),
            j["durability"].as_str().unwrap_or("?")
        )?;
    }
    let r = &v["replication"];
    if r.is_object() && r["role"] != "standalone" {
        writeln!(
            out,
            "\nreplication: peer {} ({})  {}  sessions {}  resyncs {}  cut-backs {}  backlog {} B",
            r["peer"].as_str().unwrap_or("-"),
            r["peer_name"].as_str().unwrap_or(""),
            if r["connected"].as_bool() == Some(true) { "connected" } else { "NOT CONNECTED" },
            r["sessions"],
            r["resyncs"],
            r["truncations"],
            r["backlog_bytes"]
        )?;
        if let Some(e) = r["last_error"].as_str().filter(|e| !e.is_empty()) {
            writeln!(out, "last error: {e}")?;
        }
        if let Some(e) = r["incomplete"].as_str().filter(|e| !e.is_empty()) {
            writeln!(out, "INCOMPLETE (promote refused): {e}")?;
        }
        writeln!(
            out,
            "{:<24} {:>12} {:>12} {:>12} {:>10} {:>12} {:>9}",
            "JOURNAL", "NEXT", "REPLICA RCV", "REPLICA DUR", "LAG RECS", "LAG BYTES", "LAG s"
        )?;
        for j in r["journals"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "{:<24} {:>12} {:>12} {:>12} {:>10} {:>12} {:>9.3}{}",
                j["name"].as_str().unwrap_or("?"),
                j["next_lsn"].to_string(),
                j["replica_received"].to_string(),
                j["replica_durable"].to_string(),
                j["lag_records"].to_string(),
                j["lag_bytes"].to_string(),
                j["lag_seconds"].as_f64().unwrap_or(0.0),
                if j["degraded"].as_bool() == Some(true) { "  DEGRADED" } else { "" }
            )?;
        }
    }
    Ok(())
}

fn format(devices: &[PathBuf], device_size: u64, segment_size: u64, journals: &[String], yes: bool) -> ExitCode {
    if !yes {
        eprintln!("mirrorlog: format destroys what the devices hold; add --yes to confirm");
        return ExitCode::from(2);
    }
    for d in devices {
        if !d.exists() {
            if let Err(e) = mirrorlog::io::create_device_file(d, device_size) {
                eprintln!("mirrorlog: {}: {e}", d.display());
                return ExitCode::from(1);
            }
        }
    }
    let mut cfg = mirrorlog::Config::new(devices.iter().cloned());
    cfg.segment_size = segment_size;
    let log = match mirrorlog::MirrorLog::create(&cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mirrorlog: format: {e} (error {} {})", e.code(), e.code_name());
            return ExitCode::from(1);
        }
    };
    for j in journals {
        if let Err(e) = log.create_journal(j) {
            eprintln!("mirrorlog: journal {j:?}: {e}");
            return ExitCode::from(1);
        }
    }
    println!("formatted {} device(s), set {}", devices.len(), log.status().set_uuid);
    ExitCode::SUCCESS
}

fn verify(devices: &[PathBuf], json: bool) -> ExitCode {
    match mirrorlog::verify::verify(devices, &Default::default()) {
        Ok(r) => {
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{r}");
            }
            if r.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("mirrorlog: verify: {e} (error {} {})", e.code(), e.code_name());
            ExitCode::from(1)
        }
    }
}

fn dump(devices: &[PathBuf], journal: &str, from: u64) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut io_failed = false;
    let res = mirrorlog::verify::dump(devices, journal, from, |r| {
        if json_line(&mut out, r.lsn, r.epoch, r.payload).is_err() {
            io_failed = true;
            return false;
        }
        true
    });
    let _ = out.flush();
    match res {
        Ok(()) if !io_failed => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mirrorlog: dump: {e} (error {} {})", e.code(), e.code_name());
            ExitCode::from(1)
        }
    }
}
