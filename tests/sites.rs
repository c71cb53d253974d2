//! Cross-site scrub (issue 14): a record rotted on every mirror of one site
//! (so no local scrub can repair it) is repaired from the other site, on
//! the replica and on the primary; `mirrorlog scrub-sites` on a real pair
//! of daemons over TCP.

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::{pair, Daemon};
use common::*;
use mirrorlog::client::{BlockingClient, ClientConfig};
use mirrorlog::format::DATA_START;
use mirrorlog::protocol::Durability;

/// Flips a byte inside `needle`'s bytes where they are in the device file.
fn rot(dev: &Path, needle: &[u8]) {
    let data = std::fs::read(dev).unwrap();
    let at = data.windows(needle.len()).position(|w| w == needle).expect("record bytes on the device");
    assert!(at as u64 >= DATA_START);
    flip_byte(dev, at as u64 + 7);
}

fn scrub_sites(a: &Daemon, b: &Daemon) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &a.addr, "scrub-sites", "--peer", &b.addr])
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
}

fn read(d: &Daemon, lsn: u64) -> Result<Vec<u8>, String> {
    let mut cfg = ClientConfig::new([d.addr.clone()]);
    cfg.any_role = true;
    let c = BlockingClient::connect(cfg).map_err(|e| e.to_string())?;
    let (recs, _) = c.read("default", lsn, 1, 8192).map_err(|e| e.to_string())?;
    recs.first().map(|r| r.payload.clone()).ok_or_else(|| "no record".to_string())
}

#[test]
fn a_record_rotted_on_every_mirror_of_one_site_is_repaired_from_the_other() {
    let (a, b) = pair("", "", None);
    let c = BlockingClient::connect(ClientConfig::new([a.d.addr.clone()])).unwrap();
    let mut lsns = Vec::new();
    for i in 0..300u64 {
        lsns.push(c.append_batch_with("default", &[&payload(i, 1000)], Durability::RemoteDurable).unwrap());
    }
    let (code, out) = scrub_sites(&a.d, &b.d);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 stretches repaired"), "{out}");

    // Rot on both mirrors of the replica: its local reads fail.
    for dev in b.devices() {
        rot(&dev, &payload(100, 1000)[..64]);
    }
    let e = read(&b.d, lsns[100]).unwrap_err();
    assert!(e.contains("corrupt"), "{e}");
    let (code, out) = scrub_sites(&a.d, &b.d);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("repaired on {}", b.d.addr)), "{out}");
    assert_eq!(read(&b.d, lsns[100]).unwrap(), payload(100, 1000));

    // Rot on both mirrors of the primary, repaired from the replica.
    for dev in a.devices() {
        rot(&dev, &payload(200, 1000)[..64]);
    }
    let e = read(&a.d, lsns[200]).unwrap_err();
    assert!(e.contains("corrupt"), "{e}");
    let (code, out) = scrub_sites(&a.d, &b.d);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("repaired on {}", a.d.addr)), "{out}");
    for (i, lsn) in lsns.iter().enumerate() {
        assert_eq!(read(&a.d, *lsn).unwrap(), payload(i as u64, 1000), "lsn {lsn} on the primary");
        assert_eq!(read(&b.d, *lsn).unwrap(), payload(i as u64, 1000), "lsn {lsn} on the replica");
    }
    // Nothing left to do; the sites agree.
    let (code, out) = scrub_sites(&a.d, &b.d);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 stretches repaired"), "{out}");
}
