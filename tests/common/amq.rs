//! Helpers of the broker tests (tests/activemq.rs, tests/activemq6.rs):
//! the ActiveMQ 5 tool build (its JMS producer and consumer, which speak
//! OpenWire to ActiveMQ 5 and 6 alike), producing with an acknowledgement
//! log, consuming, and the exactly-once check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/activemq")
}

/// Builds the adapter once per test binary; `None` (with the reason printed) when it cannot run here.
pub fn adapter() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        if !Path::new("/usr/share/activemq/bin/activemq.jar").exists() {
            return Err("the activemq package is not installed".into());
        }
        if Command::new("javac").arg("-version").output().map(|o| !o.status.success()).unwrap_or(true) {
            return Err("javac is not installed".into());
        }
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("activemq");
        let o = Command::new(tools().join("build.sh")).arg(&out).output().map_err(|e| format!("build.sh: {e}"))?;
        if !o.status.success() {
            // Java is there but the adapter does not build: that is a failure, not a skip.
            panic!("tools/activemq/build.sh failed:\n{}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(out)
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

pub fn amqtool(build: &Path, args: &[String]) -> Command {
    let mut c = Command::new(tools().join("amqtool.sh"));
    c.args(args).env("MIRRORLOG_AMQTOOL_JAR", build.join("mirrorlog-amqtool.jar"));
    c
}

/// Starts producers of `count` messages numbered from `start`; the index
/// of every send that returned is appended to `acked`.
pub fn produce(build: &Path, url: &str, count: usize, start: u64, acked: &Path) -> Child {
    produce_as(build, url, count, start, acked, &[])
}

/// As [`produce`], with more of the tool's options: `--mode tx` (local
/// transactions of 4 sends), `--mode xa` (XA: start, end, prepare, commit),
/// `--mode xa-prepare --prepared FILE` (left prepared), `--producers N`.
pub fn produce_as(build: &Path, url: &str, count: usize, start: u64, acked: &Path, more: &[&str]) -> Child {
    let mut args = [
        "produce",
        "--url",
        url,
        "--queue",
        "orders",
        "--count",
        &count.to_string(),
        "--start",
        &start.to_string(),
        "--producers",
        "8",
        "--size",
        "1024",
        "--acked",
        &acked.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    for pair in more.chunks(2) {
        if let Some(at) = args.iter().position(|a| a == pair[0]) {
            args[at + 1] = pair[1].to_string();
        } else {
            args.extend(pair.iter().map(|s| s.to_string()));
        }
    }
    amqtool(build, &args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("amqtool produce")
}

pub fn finish(p: Child) -> (bool, String) {
    let o = p.wait_with_output().expect("producer");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn indices(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| l.trim().parse().expect("index")).collect()
}

/// Consumes the queue until it stays empty for 5 s; every body is checked by the tool.
pub fn consume(build: &Path, url: &str, out: &Path) -> Vec<u64> {
    let args = ["consume", "--url", url, "--queue", "orders", "--idle-ms", "5000", "--out", &out.display().to_string()]
        .map(String::from);
    let o = amqtool(build, &args).output().expect("amqtool consume");
    assert!(
        o.status.success(),
        "consumer: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    indices(out)
}

/// The broker's prepared XA transactions (their GTRIDs), committed first when `commit`.
pub fn xa_recover(build: &Path, url: &str, out: &Path, commit: bool) -> Vec<String> {
    let args = ["xa-recover", "--url", url, "--out", &out.display().to_string(), "--commit", &commit.to_string()]
        .map(String::from);
    let o = amqtool(build, &args).output().expect("amqtool xa-recover");
    assert!(o.status.success(), "xa-recover: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Every acknowledged send is consumed exactly once; a send that did not
/// return (in flight at a kill) at most once; nothing else appears.
pub fn check_exactly_once(acked: &[u64], consumed: &[u64], attempted: impl Fn(u64) -> bool, log: &str) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for &i in consumed {
        *seen.entry(i).or_default() += 1;
    }
    let missing: Vec<u64> = acked.iter().copied().filter(|i| !seen.contains_key(i)).collect();
    let twice: Vec<u64> = seen.iter().filter(|(_, &n)| n > 1).map(|(&i, _)| i).collect();
    let unknown: Vec<u64> = seen.keys().copied().filter(|&i| !attempted(i)).collect();
    let warnings = log.lines().filter(|l| l.contains(" WARN ") && l.contains("replay")).count();
    assert!(
        missing.is_empty() && twice.is_empty() && unknown.is_empty(),
        "{} acknowledged sends, {} consumed: {} lost (first {:?}), {} consumed twice ({:?}), {} never sent ({:?}); \
         {} replay warnings in the broker log",
        acked.len(),
        consumed.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        twice.len(),
        &twice[..twice.len().min(10)],
        unknown.len(),
        &unknown[..unknown.len().min(10)],
        warnings
    );
}

/// Reads the broker's whole journal from the appliance at `addr` and checks
/// that no record repeats another (each holds a unique message id, ack or
/// trace: a resend written twice would show as two equal payloads); returns
/// how many records it holds.
pub fn records_once(addr: &str, journal: &str) -> usize {
    let o = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["--endpoint", addr, "read", "--journal", journal, "--from", "0"])
        .output()
        .expect("mirrorlog read");
    assert!(o.status.success(), "read: {}", String::from_utf8_lossy(&o.stderr));
    let mut seen = HashMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let hex = v["hex"].as_str().expect("hex").to_string();
        if let Some(lsn) = seen.insert(hex, v["lsn"].clone()) {
            panic!("record at LSN {} repeats the one at {lsn}", v["lsn"]);
        }
    }
    seen.len()
}

pub fn tempdir() -> tempfile::TempDir {
    let mut t = tempfile::tempdir().expect("tmp");
    if std::env::var_os("MLOG_KEEP").is_some() {
        eprintln!("test folder {}", t.path().display());
        t.disable_cleanup(true);
    }
    t
}

/// A broker process run by a start script in the foreground (`SCRIPT BASE
/// -Dactivemq.port=P PROPS…`), its output appended to BASE/broker.log,
/// which prints `started` once per start.
pub struct BrokerProc {
    child: Option<Child>,
    pub base: PathBuf,
    pub port: u16,
    script: PathBuf,
    props: Vec<String>,
    env: Vec<(String, String)>,
    started: &'static str,
    starts: usize,
}

impl BrokerProc {
    pub fn start(
        script: &Path,
        base: &Path,
        props: &[String],
        env: Vec<(String, String)>,
        started: &'static str,
    ) -> BrokerProc {
        let mut b = BrokerProc {
            child: None,
            base: base.to_path_buf(),
            port: crate::common::daemon::free_port(),
            script: script.to_path_buf(),
            props: props.to_vec(),
            env,
            started,
            starts: 0,
        };
        b.spawn();
        b
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("broker.log")).unwrap_or_default()
    }

    /// Starts the broker and waits until it printed `started` once more and listens.
    pub fn spawn(&mut self) {
        std::fs::create_dir_all(&self.base).expect("broker dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("broker.log"))
            .expect("broker log");
        let child = Command::new(&self.script)
            .arg(&self.base)
            .arg(format!("-Dactivemq.port={}", self.port))
            .args(&self.props)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start-broker.sh");
        self.child = Some(child);
        self.starts += 1;
        let t0 = Instant::now();
        loop {
            let started = self.log().matches(self.started).count();
            if started >= self.starts && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("broker exited with {st} during start:\n{}", self.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "broker not started:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
