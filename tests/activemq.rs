//! Apache ActiveMQ 5 (Debian's `activemq`) with mirrorlog as its journal:
//! the real broker, the real JMS client, SIGKILL, and site loss with a
//! PostgreSQL long-term store. Skipped, with the reason printed, where Java
//! or the packages are missing (`.ci/run` installs them).
//!
//! `MLOG_AMQ_STOCK=1` runs the broker without the two fixes for stock
//! 5.17.2 (docs/activemq.md), `=mark` or `=seq` without one of them: the
//! crash test then loses messages and fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::amq::*;
use common::daemon::{free_port, pair, Daemon};

const MESSAGES: usize = 10_000;

/// The broker tests run one at a time: each starts a JVM or three on 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Which stock behaviour to keep: `MLOG_AMQ_STOCK=1` both, `mark` or `seq` one.
fn stock(which: &str) -> bool {
    std::env::var("MLOG_AMQ_STOCK").map(|v| v == "1" || v == which).unwrap_or(false)
}

/// A broker started by tools/activemq/start-broker.sh with the mirrorlog config.
fn broker(base: &Path, build: &Path, props: &[String]) -> BrokerProc {
    let mut props = props.to_vec();
    if stock("mark") {
        props.push("-Dmirrorlog.deferMark=false".into());
    }
    if stock("seq") {
        props.push("-Dmirrorlog.jdbcAdapterClass=org.apache.activemq.store.jdbc.JDBCPersistenceAdapter".into());
    }
    let env = vec![
        ("MIRRORLOG_ACTIVEMQ_JAR".to_string(), build.join("mirrorlog-activemq.jar").display().to_string()),
        ("ACTIVEMQ_OPTS".to_string(), "-Xms256M -Xmx512M".to_string()),
    ];
    BrokerProc::start(&tools().join("start-broker.sh"), base, &props, env, ") started")
}

/// The broker is SIGKILLed under load before its first checkpoint, under
/// load after several checkpoints, and after the load with the appliance
/// killed too; every message whose send returned is consumed exactly once.
#[test]
fn broker_killed_before_and_after_checkpoints_loses_and_duplicates_nothing() {
    let Some(build) = adapter() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempdir();
    std::fs::create_dir_all(t.path().join("ml")).expect("dir");
    let mut ml = Daemon::start(&t.path().join("ml"), "");
    let props = vec![format!("-Dmirrorlog.endpoints={}", ml.addr), "-Djournal.checkpointInterval=2000".into()];
    let mut broker = broker(&t.path().join("broker"), &build, &props);
    let acked = t.path().join("acked");
    let mut next_start = 0u64;
    let count_acked = || indices(&acked).len();

    // 1. Killed under load before the first full checkpoint (2 s).
    let p = produce(&build, &broker.url(), MESSAGES, next_start, &acked);
    std::thread::sleep(Duration::from_millis(1200));
    broker.kill9();
    let (_, out) = finish(p);
    eprintln!("phase 1 (kill before a checkpoint): {out}");
    broker.spawn();

    // 2. Killed under load after checkpoints ran during it.
    next_start += 1_000_000;
    let p = produce(&build, &broker.url(), MESSAGES - count_acked(), next_start, &acked);
    std::thread::sleep(Duration::from_millis(3000));
    broker.kill9();
    let (_, out) = finish(p);
    eprintln!("phase 2 (kill after checkpoints): {out}");
    broker.spawn();

    // 3. The rest; then checkpoints run and broker and appliance both die.
    next_start += 1_000_000;
    let p = produce(&build, &broker.url(), MESSAGES - count_acked(), next_start, &acked);
    let (ok, out) = finish(p);
    assert!(ok, "phase 3 producer: {out}\n{}", broker.log());
    std::thread::sleep(Duration::from_millis(3000));
    broker.kill9();
    ml.restart();
    broker.restart();

    let acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES);
    let consumed = consume(&build, &broker.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, |i| i < next_start + MESSAGES as u64, &broker.log());
    assert!(
        broker.log().matches("Journal Recovery Started").count() >= 4,
        "the broker recovered from the journal at each start"
    );
}

/// A PostgreSQL server in `dir` on a free port, run as the `postgres` user.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Postgres {
    fn start(dir: &Path) -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|p| p.join("initdb").exists());
        let Some(bin) = bin else {
            eprintln!("skipped: PostgreSQL (package postgresql) is not installed");
            return None;
        };
        // The server refuses root; give the postgres user its folder.
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).expect("pg dir");
        let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
        for p in [dir.parent().unwrap_or(dir), dir] {
            ok(Command::new("chmod").arg("755").arg(p));
        }
        assert!(ok(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data)), "chown");
        let as_pg = |prog: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
            c
        };
        let init = as_pg("initdb").args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data).output().expect("initdb");
        assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
        let port = free_port();
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", data.display());
        let st = as_pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(data.join("server.log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(st.success(), "pg_ctl start failed");
        let created =
            as_pg("createdb").args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "activemq"]).status();
        let pg = Postgres { bin, data, port };
        assert!(created.map(|s| s.success()).unwrap_or(false), "createdb");
        Some(pg)
    }

    fn jdbc_props(&self) -> Vec<String> {
        vec![
            "-Djdbc.driver=org.postgresql.Driver".into(),
            format!("-Djdbc.url=jdbc:postgresql://127.0.0.1:{}/activemq", self.port),
            "-Djdbc.user=postgres".into(),
        ]
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

/// Site loss: the broker and the primary appliance are SIGKILLed under
/// `remote-durable` load and the primary's devices deleted; the replica is
/// promoted and a broker at the second site, on the same PostgreSQL store,
/// delivers every message whose send returned, none twice.
#[test]
fn site_loss_broker_restarted_on_the_promoted_replica_loses_nothing() {
    let Some(build) = adapter() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempdir();
    let Some(pg) = Postgres::start(&t.path().join("pg")) else { return };
    // A journal declared on both sites: remote-durable by default, and
    // appends go on (as local) once the promoted site has no replica.
    let (mut a, b) = pair(
        "[[journal]]\nname = \"activemq\"\ndurability = \"remote-durable\"\non_replica_loss = \"degrade\"\n",
        "",
        None,
    );
    let mut props = pg.jdbc_props();
    props.push(format!("-Dmirrorlog.endpoints={},{}", a.d.addr, b.d.addr));
    props.push("-Dmirrorlog.durability=remote-durable".into());
    props.push("-Djournal.checkpointInterval=2000".into());
    let mut site1 = broker(&t.path().join("broker-site1"), &build, &props);
    let acked = t.path().join("acked");

    let p = produce(&build, &site1.url(), MESSAGES, 0, &acked);
    std::thread::sleep(Duration::from_millis(2500));
    // Site 1 is lost: broker, appliance and its devices.
    site1.kill9();
    a.d.kill9();
    for d in a.devices() {
        std::fs::remove_file(d).expect("delete device");
    }
    let (_, out) = finish(p);
    eprintln!("site 1 before the loss: {out}");
    let promote = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &b.d.addr, "promote"])
        .output()
        .expect("promote");
    assert!(promote.status.success(), "promote: {}", String::from_utf8_lossy(&promote.stderr));

    // Site 2: a broker on the promoted replica and the same long-term store.
    let mut props2 = pg.jdbc_props();
    props2.push(format!("-Dmirrorlog.endpoints={}", b.d.addr));
    props2.push("-Dmirrorlog.durability=remote-durable".into());
    props2.push("-Djournal.checkpointInterval=2000".into());
    let site2 = broker(&t.path().join("broker-site2"), &build, &props2);
    let before = indices(&acked).len();
    assert!(before > 0 && before < MESSAGES, "the loss came mid-load ({before} sent)");
    let p = produce(&build, &site2.url(), MESSAGES - before, 1_000_000, &acked);
    let (ok, out) = finish(p);
    assert!(ok, "site 2 producer: {out}\n{}", site2.log());
    let acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES);
    let consumed = consume(&build, &site2.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, |i| i < 2_000_000, &site2.log());
}

/// The appliance is SIGKILLed and restarted twice under a running broker's
/// load: the adapter reconnects and resends what was unanswered with the
/// same producer sequences, so every send returns, every message is
/// consumed once, and the journal holds no record twice.
#[test]
fn appliance_killed_under_a_running_broker_is_followed_without_loss_or_duplicates() {
    let Some(build) = adapter() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempdir();
    std::fs::create_dir_all(t.path().join("ml")).expect("dir");
    let mut ml = Daemon::start(&t.path().join("ml"), "");
    // No checkpoint during the test, so the journal keeps every record.
    let props = vec![format!("-Dmirrorlog.endpoints={}", ml.addr), "-Djournal.checkpointInterval=600000".into()];
    let broker = broker(&t.path().join("broker"), &build, &props);
    let acked = t.path().join("acked");
    let p = produce(&build, &broker.url(), MESSAGES, 0, &acked);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        ml.kill9();
        std::thread::sleep(Duration::from_millis(300));
        ml.spawn();
        ml.wait_ready();
    }
    let (ok, out) = finish(p);
    assert!(ok, "every send returns across the appliance restarts: {out}\n{}", broker.log());
    let acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES);
    let consumed = consume(&build, &broker.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, |i| i < MESSAGES as u64, &broker.log());
    let records = records_once(&ml.addr, "activemq");
    assert!(records >= 2 * MESSAGES, "{records} records: a message and an ack for each");
}

/// A planned switchover of the appliance pair under a running broker's
/// `remote-durable` load: the journal follows the new primary (its client
/// moves on `not-primary` and resends), every send returns, every message
/// is consumed exactly once, and the new primary's journal holds no record
/// twice.
#[test]
fn a_switchover_under_a_running_broker_is_followed_without_loss_or_duplicates() {
    let Some(build) = adapter() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = tempdir();
    let (a, b) = pair("[[journal]]\nname = \"activemq\"\ndurability = \"remote-durable\"\n", "", None);
    let props = vec![
        format!("-Dmirrorlog.endpoints={},{}", a.d.addr, b.d.addr),
        "-Dmirrorlog.durability=remote-durable".into(),
        "-Djournal.checkpointInterval=600000".into(),
    ];
    let broker = broker(&t.path().join("broker"), &build, &props);
    let acked = t.path().join("acked");
    let p = produce(&build, &broker.url(), MESSAGES, 0, &acked);
    std::thread::sleep(Duration::from_millis(2000));
    let sw = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &a.d.addr, "switchover", "--to", &b.d.addr, "--wait", "30"])
        .output()
        .expect("switchover");
    assert!(
        sw.status.success(),
        "switchover: {}{}",
        String::from_utf8_lossy(&sw.stdout),
        String::from_utf8_lossy(&sw.stderr)
    );
    let (ok, out) = finish(p);
    assert!(ok, "every send returns across the switchover: {out}\n{}", broker.log());
    assert!(broker.log().contains(&format!("connected to {}", b.d.addr)), "the journal moved to the new primary");
    let acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES);
    let consumed = consume(&build, &broker.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, |i| i < MESSAGES as u64, &broker.log());
    let records = records_once(&b.d.addr, "activemq");
    assert!(records >= 2 * MESSAGES, "{records} records: a message and an ack for each");
}
