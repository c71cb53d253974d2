//! `check`: reads back every record an ack log says was acknowledged and
//! reports missing, corrupt and duplicated records.

use std::collections::HashMap;
use std::io::BufRead;

use mirrorlog::{Error, MirrorLog};

use crate::embedded::config;
use crate::load::{parse_ack, parse_payload};
use crate::CheckArgs;

/// Problems found; `ok()` when there are none.
#[derive(Debug, Default)]
pub struct Findings {
    pub acks: u64,
    pub missing: Vec<u64>,
    pub corrupt: Vec<u64>,
    /// (writer id, seq, the LSNs holding it).
    pub duplicated: Vec<(u64, u64, Vec<u64>)>,
    pub bad_lines: u64,
    /// Records that could not be read in the duplicate scan.
    pub unreadable: u64,
}

impl Findings {
    /// Records every (client, seq) seen at more than one LSN as duplicated,
    /// and sorts the findings.
    pub fn finish(&mut self, seen: HashMap<(u64, u64), Vec<u64>>) {
        for ((client, seq), lsns) in seen {
            if lsns.len() > 1 {
                self.duplicated.push((client, seq, lsns));
            }
        }
        self.missing.sort_unstable();
        self.corrupt.sort_unstable();
        self.duplicated.sort();
    }

    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty() && self.duplicated.is_empty() && self.bad_lines == 0
    }
}

pub fn check(a: &CheckArgs) -> Result<Findings, String> {
    let f = std::fs::File::open(&a.ack_log).map_err(|e| format!("{}: {e}", a.ack_log.display()))?;
    let mut acks = Vec::new();
    let mut bad_lines = 0;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| e.to_string())?;
        match parse_ack(&line) {
            Some(x) => acks.push(x),
            None if line.trim().is_empty() => {}
            None => bad_lines += 1,
        }
    }
    if !a.endpoint.is_empty() {
        let mut f = crate::remote::check_remote(&a.endpoint, &a.journal, &acks)?;
        f.bad_lines = bad_lines;
        return Ok(f);
    }
    if a.common.devices.is_empty() {
        return Err("check needs --devices or --endpoint".into());
    }
    let log = MirrorLog::open(&config(&a.common)).map_err(|e| e.to_string())?;
    let j = log.journal(&a.journal).map_err(|e| e.to_string())?;
    let mut out = Findings { acks: acks.len() as u64, bad_lines, ..Default::default() };
    for ack in &acks {
        match j.read(ack.lsn) {
            Ok(p) => {
                let who = parse_payload(&p);
                if crc32c::crc32c(&p) != ack.crc || (who.is_some() && who != Some((ack.client, ack.seq))) {
                    out.corrupt.push(ack.lsn);
                }
            }
            Err(Error::NotYetWritten { .. }) | Err(Error::BelowMark { .. }) => out.missing.push(ack.lsn),
            Err(_) => out.corrupt.push(ack.lsn),
        }
    }
    // Every (writer, seq) must be in the journal once, from the first
    // acknowledged record on (writer ids carry the run, so records of
    // other runs, before or after, are never taken for this one's).
    let mut seen: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
    let from = acks.iter().map(|a| a.lsn).min().unwrap_or(1).max(j.info().first_lsn);
    // Unreadable records are skipped here (acknowledged ones were counted above).
    let end = j.next_lsn();
    let mut lsn = from;
    while lsn < end {
        let mut failed = false;
        for r in j.iter(lsn) {
            match r {
                Ok((l, p)) => {
                    if let Some(k) = parse_payload(&p) {
                        seen.entry(k).or_default().push(l);
                    }
                    lsn = l + 1;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            break;
        }
        out.unreadable += 1;
        lsn += 1;
    }
    out.finish(seen);
    Ok(out)
}

pub fn print(f: &Findings, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "acks": f.acks, "missing": f.missing.len(), "corrupt": f.corrupt.len(),
                "duplicated": f.duplicated.len(), "bad_lines": f.bad_lines, "unreadable": f.unreadable, "ok": f.ok(),
                "missing_lsns": f.missing.iter().take(100).collect::<Vec<_>>(),
                "corrupt_lsns": f.corrupt.iter().take(100).collect::<Vec<_>>(),
            })
        );
        return;
    }
    println!(
        "{} acknowledged records checked: {} missing, {} corrupt, {} duplicated, {} unreadable log lines ({} records unreadable in the journal scan)",
        f.acks,
        f.missing.len(),
        f.corrupt.len(),
        f.duplicated.len(),
        f.bad_lines,
        f.unreadable
    );
    for l in f.missing.iter().take(10) {
        println!("  missing lsn {l}");
    }
    for l in f.corrupt.iter().take(10) {
        println!("  corrupt lsn {l}");
    }
    for (w, s, lsns) in f.duplicated.iter().take(10) {
        println!("  run {:08x} client {} seq {s} at lsns {lsns:?}", w >> 32, w & 0xFFFF_FFFF);
    }
}
