//! ActiveMQ Classic 6 on mirrorlog (issue 15): builds the journal-only
//! persistence adapter with Maven (tools/java, from Maven Central) and runs
//! its tests through tools/activemq6/test.sh against this build's
//! mirrorlogd: ActiveMQ 6.3.1's own store tests through their hooks, and
//! ours (two brokers on one journal: the earlier is fenced, nothing lost).
//! Every test class must run; a failure is allowed only where
//! docs/activemq.md lists it as a known limitation (`KNOWN`), and is
//! reported with the per-class table either way.
//!
//! And with real processes: an embedded ActiveMQ 6 broker
//! (tools/activemq6/start-broker.sh) SIGKILLed under load, the appliance
//! SIGKILLed under a running broker, and a site lost with no database; the
//! JMS producer and consumer are ActiveMQ's own client (tools/activemq's
//! tool, which speaks OpenWire to a 6 broker too).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::amq::{
    adapter, check_exactly_once, consume, finish, indices, produce, produce_as, records_once, tempdir, xa_recover,
    BrokerProc,
};
use common::daemon::{pair, Daemon};

/// One JVM build or broker at a time on 2 cores; the Maven build is shared.
static SERIAL: Mutex<()> = Mutex::new(());

const MESSAGES: usize = 10_000;
/// Messages each transacted side load may send (local transactions from
/// index TX_AT, XA from XA_AT, in each phase's range of a million).
const SIDE: u64 = 10_000;
const TX_AT: u64 = 500_000;
const XA_AT: u64 = 700_000;

/// Whether `i` is an index some producer of the phased tests may have sent.
fn attempted(i: u64) -> bool {
    let r = i % 1_000_000;
    i < 4_000_000 && (r < MESSAGES as u64 || (TX_AT..TX_AT + SIDE).contains(&r) || (XA_AT..XA_AT + SIDE).contains(&r))
}

/// The test classes that must have run, with the tests each must hold.
const CLASSES: &[(&str, usize)] = &[
    ("io.mirrorlog.activemq6.MirrorlogPersistenceAdapterTestSupportTest", 2),
    ("io.mirrorlog.activemq6.MirrorlogMessagePriorityTest", 22),
    ("io.mirrorlog.activemq6.MirrorlogStoreOrderTest", 2),
    ("io.mirrorlog.activemq6.MirrorlogDurableSubscriptionTest", 12),
    ("io.mirrorlog.activemq6.MirrorlogXARecoveryBrokerTest", 25),
    ("io.mirrorlog.activemq6.MirrorlogRecoveryBrokerTest", 9),
    ("io.mirrorlog.activemq6.MirrorlogBrokerTest", 127),
    ("io.mirrorlog.activemq6.MirrorlogStoreQueueCursorNoDuplicateTest", 1),
    ("io.mirrorlog.activemq6.MirrorlogJmsDurableTopicTransactionTest", 14),
    ("io.mirrorlog.activemq6.MirrorlogDurableSubscriptionOffline1Test", 12),
    ("io.mirrorlog.activemq6.MirrorlogDurableSubscriptionOffline3Test", 8),
    ("io.mirrorlog.activemq6.FencingTest", 1),
    ("io.mirrorlog.activemq6.WithdrawTest", 3),
    ("io.mirrorlog.activemq6.MirrorlogMessageStoreSizeTest", 1),
    ("io.mirrorlog.activemq6.MirrorlogRedeliveryRestartTest", 4),
    ("io.mirrorlog.activemq6.MirrorlogDurableSubscriptionOfflineTest", 12),
    ("io.mirrorlog.activemq6.MirrorlogDurableSubscriptionOffline2Test", 2),
    ("io.mirrorlog.activemq6.MirrorlogDurableSubscriptionOfflineBrowseRemoveTest", 2),
    ("io.mirrorlog.activemq6.MirrorlogVmConcurrentDispatchTest", 12),
    ("io.mirrorlog.activemq6.LargeTransactionTest", 3),
    ("io.mirrorlog.activemq6.StopTest", 2),
    ("io.mirrorlog.activemq6.UpdateMessageTest", 1),
    ("io.mirrorlog.activemq6.ReclaimTest", 1),
    ("io.mirrorlog.activemq6.MirrorlogFailoverTransactionTest", 11),
    ("io.mirrorlog.activemq6.CodecTest", 3),
    ("io.mirrorlog.activemq6.GroupCommitTest", 1),
];

/// Failures docs/activemq.md explains (ActiveMQ 6: known limitations).
/// The first is a race in the test (it may pass; stock KahaDB failed it in
/// 3 of 6 class runs here): it needs the always-on subscriber, whose
/// connection the broker's stop cuts and which never reconnects, to have
/// received all 20 messages before the stop. The three
/// FailoverTransactionTest ones fail the same way with stock KahaDB on
/// this machine (one always; one depending on the order in which the
/// failover clients reconnect; one on how the broker splits ten messages
/// between two consumers).
const KNOWN: &[&str] = &[
    "MirrorlogDurableSubscriptionOfflineTest.testInactiveSubscribeAfterBrokerRestart",
    "MirrorlogFailoverTransactionTest.testFailoverConsumerAckLost",
    "MirrorlogFailoverTransactionTest.testPoolingNConsumesAfterReconnect",
    "MirrorlogFailoverTransactionTest.testFailoverWithConnectionConsumer",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The value of attribute `name` in an XML start tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let end = tag[at..].find('"')?;
    Some(tag[at..at + end].to_string())
}

struct Suite {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    /// `Class.method` of each failed or erring test case.
    failed: Vec<String>,
}

fn read_suite(path: &Path) -> Suite {
    let xml = std::fs::read_to_string(path).expect("surefire report");
    let head = &xml[xml.find("<testsuite ").expect("testsuite")..];
    let head = &head[..head.find('>').expect("tag end")];
    let num = |n: &str| attr(head, n).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut failed = Vec::new();
    let mut rest = xml.as_str();
    while let Some(at) = rest.find("<testcase ") {
        rest = &rest[at..];
        let tag_end = rest.find('>').expect("testcase tag end");
        let tag = &rest[..tag_end];
        let body_end = if tag.ends_with('/') { tag_end } else { rest.find("</testcase>").unwrap_or(rest.len()) };
        let body = &rest[..body_end];
        if body.contains("<failure") || body.contains("<error") {
            let class = attr(tag, "classname").unwrap_or_default();
            let short = class.rsplit('.').next().unwrap_or("").to_string();
            // Combination tests carry their parameters in the name: keep the method.
            let name = attr(tag, "name").unwrap_or_default();
            let method = name.split_whitespace().next().unwrap_or("").to_string();
            failed.push(format!("{short}.{method}"));
        }
        rest = &rest[tag_end..];
    }
    Suite { tests: num("tests"), failures: num("failures"), errors: num("errors"), skipped: num("skipped"), failed }
}

#[test]
fn activemq6_runs_its_own_store_tests_and_ours_on_mirrorlog() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have("javac", "-version") || !have("mvn", "-v") {
        eprintln!("SKIP activemq6: javac or mvn is not installed (.ci/run installs them)");
        return;
    }
    let reports = root().join("tools/java/activemq6/target/surefire-reports");
    let _ = std::fs::remove_dir_all(&reports);
    let out = Command::new(root().join("tools/activemq6/test.sh"))
        .arg("-Dmaven.test.failure.ignore=true")
        .env("MIRRORLOGD", env!("CARGO_BIN_EXE_mirrorlogd"))
        .output()
        .expect("run tools/activemq6/test.sh");
    assert!(
        out.status.success(),
        "tools/activemq6/test.sh failed (build or Maven):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut table = String::from("class | tests | passed | failed | errors | skipped\n");
    let mut unexpected = Vec::new();
    for (class, want) in CLASSES {
        let path = reports.join(format!("TEST-{class}.xml"));
        assert!(path.exists(), "{class} did not run (no {})", path.display());
        let s = read_suite(&path);
        let passed = s.tests - s.failures - s.errors - s.skipped;
        table.push_str(&format!(
            "{} | {} | {} | {} | {} | {}\n",
            class.rsplit('.').next().unwrap_or(class),
            s.tests,
            passed,
            s.failures,
            s.errors,
            s.skipped
        ));
        assert!(s.tests >= *want, "{class} ran {} tests, expected {want}", s.tests);
        unexpected.extend(s.failed.into_iter().filter(|f| !KNOWN.contains(&f.as_str())));
    }
    eprintln!("{table}");
    assert!(unexpected.is_empty(), "failures not documented as known limitations: {unexpected:?}\n{table}");
}

/// Builds the adapter with Maven once per test binary (false, with the
/// reason printed, where Java or Maven is missing).
fn built() -> bool {
    static BUILT: OnceLock<bool> = OnceLock::new();
    *BUILT.get_or_init(|| {
        if !have("javac", "-version") || !have("mvn", "-v") {
            eprintln!("skipped: javac or mvn is not installed (.ci/run installs them)");
            return false;
        }
        let o = Command::new("mvn")
            .args(["-B", "-q", "-DskipTests", "-f"])
            .arg(root().join("tools/java/pom.xml"))
            .arg("install")
            .output()
            .expect("mvn");
        assert!(o.status.success(), "mvn install failed:\n{}", String::from_utf8_lossy(&o.stdout));
        true
    })
}

/// One appliance (in DIR/ml) and a broker on its journal `amq6`.
fn one_site(dir: &Path) -> (Daemon, BrokerProc) {
    std::fs::create_dir_all(dir.join("ml")).expect("dir");
    let ml = Daemon::start(&dir.join("ml"), "");
    let props = vec![format!("-Dmirrorlog.endpoints={}", ml.addr), "-Dmirrorlog.journal=amq6".to_string()];
    let broker = broker6(&dir.join("broker"), &props);
    (ml, broker)
}

/// An ActiveMQ 6 broker process on the mirrorlog adapter.
fn broker6(base: &Path, props: &[String]) -> BrokerProc {
    let env = vec![("ACTIVEMQ_OPTS".to_string(), "-Xms256M -Xmx512M".to_string())];
    BrokerProc::start(&root().join("tools/activemq6/start-broker.sh"), base, props, env, " started, writer epoch ")
}

/// The broker is SIGKILLed under load (8 producers, persistent 1 KiB
/// messages, with 2 more sending in local transactions of 4 and 2 in XA
/// transactions of 4), then under load together with the appliance, then
/// once more after the load with the appliance: every send that returned
/// (every message whose commit returned) is consumed exactly once, and the
/// journal holds no record twice.
#[test]
fn activemq6_broker_killed_under_load_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(tool) = adapter() else { return };
    if !built() {
        return;
    }
    let t = tempdir();
    let (mut ml, mut broker) = one_site(t.path());
    let acked = t.path().join("acked");
    let count_acked = || indices(&acked).len();
    let mut next_start = 0u64;
    // Phase 2 kills the appliance with the broker: a send acknowledged
    // before its record was durable would be lost there (a broker alone
    // dying still hands the appliance what its socket held).
    let (acked_tx, acked_xa) = (t.path().join("acked-tx"), t.path().join("acked-xa"));
    for (phase, wait_ms, with_appliance) in [(1, 1200u64, false), (2, 1200, true)] {
        let p = produce(&tool, &broker.url(), MESSAGES - count_acked(), next_start, &acked);
        let side = |at: u64, file: &Path, mode: &str| {
            produce_as(
                &tool,
                &broker.url(),
                SIDE as usize,
                next_start + at,
                file,
                &["--mode", mode, "--producers", "2"],
            )
        };
        let (ptx, pxa) = (side(TX_AT, &acked_tx, "tx"), side(XA_AT, &acked_xa, "xa"));
        std::thread::sleep(Duration::from_millis(wait_ms));
        if with_appliance {
            ml.kill9();
        }
        broker.kill9();
        let (_, out) = finish(p);
        let ((_, tx), (_, xa)) = (finish(ptx), finish(pxa));
        eprintln!(
            "phase {phase} (broker{} SIGKILLed under load): {}; local transactions: {}; XA: {}",
            if with_appliance { " and appliance" } else { "" },
            out.trim(),
            tx.trim(),
            xa.trim()
        );
        assert!(count_acked() < MESSAGES, "phase {phase}: the kill came after the load");
        if with_appliance {
            ml.spawn();
            ml.wait_ready();
        }
        broker.spawn();
        next_start += 1_000_000;
    }
    let p = produce(&tool, &broker.url(), MESSAGES - count_acked(), next_start, &acked);
    let (ok, out) = finish(p);
    assert!(ok, "phase 3 producer: {out}\n{}", broker.log());
    broker.kill9();
    ml.restart();
    broker.restart();
    let mut acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES);
    let (tx, xa) = (indices(&acked_tx), indices(&acked_xa));
    assert!(!tx.is_empty() && !xa.is_empty(), "the transacted loads committed ({} local, {} XA)", tx.len(), xa.len());
    acked_list.extend(tx.iter().chain(&xa));
    let consumed = consume(&tool, &broker.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, attempted, &broker.log());
    assert!(broker.log().matches(" started, writer epoch ").count() >= 4, "the broker restarted each time");
    // The broker moves the mark as it reclaims: stopped, the journal holds still.
    drop(broker);
    records_once(&ml.addr, "amq6");
}

/// The appliance is SIGKILLed and restarted twice under a running
/// broker's load: the adapter's client reconnects and resends what was
/// unanswered with its producer sequences, so every send returns, every
/// message is consumed once, and the journal holds no record twice.
#[test]
fn activemq6_appliance_killed_under_a_running_broker_is_followed_without_loss_or_duplicates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(tool) = adapter() else { return };
    if !built() {
        return;
    }
    let t = tempdir();
    let (mut ml, broker) = one_site(t.path());
    let acked = t.path().join("acked");
    let p = produce(&tool, &broker.url(), MESSAGES, 0, &acked);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        ml.kill9();
        std::thread::sleep(Duration::from_millis(300));
        ml.spawn();
        ml.wait_ready();
    }
    let (ok, out) = finish(p);
    assert!(ok, "producer: {out}\n{}", broker.log());
    let acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES, "every send returned");
    let consumed = consume(&tool, &broker.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, |i| i < MESSAGES as u64, &broker.log());
    // The broker moves the mark as it reclaims: stopped, the journal holds still.
    drop(broker);
    records_once(&ml.addr, "amq6");
}

/// Site loss with no database: the broker and the primary appliance are
/// SIGKILLed under remote-durable load (plain sends and local
/// transactions), with XA transactions left prepared before it, and the
/// primary's devices deleted; the replica is promoted and a new broker
/// starts at site B with only mirrorlog endpoints: every prepared XA
/// transaction is still prepared there (and its messages appear once it
/// is committed), every acknowledged send is consumed once.
#[test]
fn activemq6_site_loss_with_no_database_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(tool) = adapter() else { return };
    if !built() {
        return;
    }
    let t = tempdir();
    let (mut a, b) = pair("[[journal]]\nname = \"amq6\"\non_replica_loss = \"degrade\"\n", "", None);
    let props = vec![
        format!("-Dmirrorlog.endpoints={},{}", a.d.addr, b.d.addr),
        "-Dmirrorlog.journal=amq6".to_string(),
        "-Dmirrorlog.durability=remote-durable".to_string(),
    ];
    let mut site1 = broker6(&t.path().join("broker-site1"), &props);
    let acked = t.path().join("acked");
    let (prepared, acked_tx) = (t.path().join("prepared"), t.path().join("acked-tx"));
    let xa = produce_as(
        &tool,
        &site1.url(),
        40,
        3_000_000,
        &t.path().join("none"),
        &["--mode", "xa-prepare", "--prepared", &prepared.display().to_string(), "--producers", "2"],
    );
    let (ok, out) = finish(xa);
    assert!(ok, "XA prepares: {out}\n{}", site1.log());
    let p = produce(&tool, &site1.url(), MESSAGES, 0, &acked);
    let ptx = produce_as(&tool, &site1.url(), SIDE as usize, TX_AT, &acked_tx, &["--mode", "tx", "--producers", "2"]);
    std::thread::sleep(Duration::from_millis(2500));
    site1.kill9();
    a.d.kill9();
    for d in a.devices() {
        std::fs::remove_file(d).expect("delete device");
    }
    let (_, out) = finish(p);
    let (_, tx) = finish(ptx);
    eprintln!("site 1 before the loss: {}; local transactions: {}", out.trim(), tx.trim());
    let promote = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", &b.d.addr, "promote"])
        .output()
        .expect("promote");
    assert!(promote.status.success(), "promote: {}", String::from_utf8_lossy(&promote.stderr));
    let props2 = vec![
        format!("-Dmirrorlog.endpoints={}", b.d.addr),
        "-Dmirrorlog.journal=amq6".to_string(),
        "-Dmirrorlog.durability=local".to_string(),
    ];
    let site2 = broker6(&t.path().join("broker-site2"), &props2);
    // Every transaction prepared at site 1 is prepared at site 2; committed, its messages appear.
    let lines = std::fs::read_to_string(&prepared).expect("prepared list");
    let mut want: Vec<String> = lines.lines().map(|l| l.split(' ').next().unwrap_or("").to_string()).collect();
    want.sort();
    assert_eq!(want.len(), 10, "10 XA transactions of 4 prepared at site 1");
    let mut got = xa_recover(&tool, &site2.url(), &t.path().join("recovered"), false);
    got.sort();
    assert_eq!(got, want, "the prepared XA transactions at site 2");
    xa_recover(&tool, &site2.url(), &t.path().join("committed"), true);
    assert!(xa_recover(&tool, &site2.url(), &t.path().join("left"), false).is_empty(), "all committed");
    let prepared_msgs: Vec<u64> = lines
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .flat_map(|l| l.split(',').map(|i| i.parse::<u64>().expect("index")))
        .collect();
    assert_eq!(prepared_msgs.len(), 40);
    let before = indices(&acked).len();
    assert!(before > 0 && before < MESSAGES, "the loss came mid-load ({before} sent)");
    let p = produce(&tool, &site2.url(), MESSAGES - before, 1_000_000, &acked);
    let (ok, out) = finish(p);
    assert!(ok, "site 2 producer: {out}\n{}", site2.log());
    let mut acked_list = indices(&acked);
    assert_eq!(acked_list.len(), MESSAGES);
    let tx = indices(&acked_tx);
    assert!(!tx.is_empty(), "local transactions committed at site 1");
    acked_list.extend(tx.iter().chain(&prepared_msgs));
    let consumed = consume(&tool, &site2.url(), &t.path().join("consumed"));
    check_exactly_once(&acked_list, &consumed, attempted, &site2.log());
}
