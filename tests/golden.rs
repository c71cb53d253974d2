//! Golden frames of protocol v1 and the table of error codes, shared by the
//! Rust side and the Java client.
//!
//! `tests/golden/protocol-v1.txt` is written from the Rust encoders and
//! `mirrorlog::codes` (`MIRRORLOG_BLESS=1 cargo test --test golden`
//! rewrites it after an intended change). This test checks that the file
//! still matches them (a changed byte of the wire format fails here), that
//! every frame in it decodes back to what made it, that docs/api.md and
//! docs/protocol.md list exactly the codes of the table, and then compiles
//! the Java client's `Wire` with `tools/java/client/src/test/.../WireGolden.java`
//! and runs it over the same file: its constants, its request frames and
//! its decoding of answers must agree byte for byte.

use mirrorlog::codes;
use mirrorlog::protocol::{
    decode_frame, Durability, Frame, Op, Request, Response, WireRecord, HEADER_LEN, MAGIC, RESEND, RESPONSE, VERSION,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden_path() -> PathBuf {
    root().join("tests/golden/protocol-v1.txt")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kebab(debug: &str) -> String {
    let mut s = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('-');
        }
        s.push(c.to_ascii_lowercase());
    }
    s
}

const OPS: [Op; 17] = [
    Op::Hello,
    Op::Append,
    Op::Read,
    Op::Subscribe,
    Op::Credit,
    Op::SetMark,
    Op::GetMark,
    Op::CreateJournal,
    Op::DeleteJournal,
    Op::ListJournals,
    Op::Status,
    Op::Promote,
    Op::Demote,
    Op::DiscardDiverged,
    Op::Claim,
    Op::Records,
    Op::Error,
];

const PRODUCER: u64 = 0x0123_4567_89ab_cdef;

/// The requests the Java client sends, with the fields its builders take.
fn requests() -> Vec<(&'static str, u64, String, Request<'static>)> {
    vec![
        (
            "hello",
            0,
            "client=amq-golden".into(),
            Request::Hello { min_version: 1, max_version: 1, client: "amq-golden" },
        ),
        (
            "append",
            7,
            format!("journal=amq durability=3 producer={PRODUCER} seq=5 resend=0 data={}", hex(b"hello")),
            Request::Append {
                journal: "amq",
                durability: Durability::RemoteDurable,
                producer: PRODUCER,
                first_seq: 5,
                resend: false,
                writer: None,
                records: vec![b"hello"],
            },
        ),
        (
            "append",
            8,
            format!("journal=amq durability=1 producer={PRODUCER} seq=6 resend=1 data={}", hex(b"")),
            Request::Append {
                journal: "amq",
                durability: Durability::Local,
                producer: PRODUCER,
                first_seq: 6,
                resend: true,
                writer: None,
                records: vec![b""],
            },
        ),
        (
            "read",
            9,
            "journal=amq from=100 max_count=64 max_bytes=1048576".into(),
            Request::Read { journal: "amq", from: 100, max_count: 64, max_bytes: 1 << 20 },
        ),
        ("get-mark", 10, "journal=amq".into(), Request::GetMark { journal: "amq" }),
        ("set-mark", 11, "journal=amq lsn=42".into(), Request::SetMark { journal: "amq", lsn: 42, writer: None }),
        ("create-journal", 12, "journal=amq".into(), Request::CreateJournal { journal: "amq" }),
        (
            "append-as",
            13,
            format!(
                "journal=amq durability=3 writer={} producer={PRODUCER} seq=9 data={},{}",
                (5u64 << 32) | 2,
                hex(b"add"),
                hex(b"")
            ),
            Request::Append {
                journal: "amq",
                durability: Durability::RemoteDurable,
                producer: PRODUCER,
                first_seq: 9,
                resend: false,
                writer: Some((5 << 32) | 2),
                records: vec![b"add", b""],
            },
        ),
        (
            "claim",
            14,
            format!("journal=amq durability=2 data={}", hex(b"broker-a")),
            Request::Claim { journal: "amq", durability: Durability::RemoteReceived, payload: b"broker-a" },
        ),
        (
            "set-mark-as",
            15,
            format!("journal=amq lsn=42 writer={}", (5u64 << 32) | 2),
            Request::SetMark { journal: "amq", lsn: 42, writer: Some((5 << 32) | 2) },
        ),
    ]
}

/// The answers the Java client decodes.
fn answers() -> Vec<(&'static str, Op, u64, String, Response<'static>)> {
    let recs = vec![
        WireRecord { lsn: 100, epoch: (1 << 32) | 2, crc32c: crc32c::crc32c(b"hello"), payload: b"hello" },
        WireRecord { lsn: 101, epoch: (1 << 32) | 2, crc32c: crc32c::crc32c(b""), payload: b"" },
    ];
    vec![
        (
            "hello",
            Op::Hello,
            0,
            "version=1 server=mirrorlogd epoch=4294967298 primary=1".into(),
            Response::Hello { version: 1, server: "mirrorlogd", epoch: (1 << 32) | 2, primary: true },
        ),
        ("append", Op::Append, 7, "first_lsn=42 count=1".into(), Response::Appended { first_lsn: 42, count: 1 }),
        (
            "read",
            Op::Read,
            9,
            format!("next_lsn=102 records=100:4294967298:{},101:4294967298:", hex(b"hello")),
            Response::Records { records: recs, next_lsn: 102 },
        ),
        ("get-mark", Op::GetMark, 10, "lsn=17".into(), Response::Mark { lsn: 17 }),
        ("create-journal", Op::CreateJournal, 12, String::new(), Response::Ok),
        (
            "claim",
            Op::Claim,
            14,
            format!("writer={} lsn=77", (5u64 << 32) | 2),
            Response::Claimed { writer: (5 << 32) | 2, lsn: 77 },
        ),
        (
            "error",
            Op::Append,
            8,
            format!("code={} message=a-newer-primary-exists", codes::FENCED),
            Response::Error { code: codes::FENCED, message: "a-newer-primary-exists" },
        ),
    ]
}

fn render() -> String {
    let mut s = String::new();
    s.push_str(
        "# mirrorlog protocol v1: error codes, opcodes, constants and golden frames.\n\
         # Written by tests/golden.rs from src/codes.rs and src/protocol.rs;\n\
         # `MIRRORLOG_BLESS=1 cargo test --test golden` rewrites it after an intended change.\n\
         # The Java client is checked against it (tools/java/client/src/test/java/io/mirrorlog/client/WireGolden.java).\n",
    );
    for (c, n) in codes::ALL {
        let _ = writeln!(s, "code {c} {n}");
    }
    let f: Vec<String> = codes::ALL.iter().filter(|(c, _)| codes::fails_over(*c)).map(|(c, _)| c.to_string()).collect();
    let _ = writeln!(s, "failover {}", f.join(" "));
    for op in OPS {
        let _ = writeln!(s, "op {} {}", kebab(&format!("{op:?}")), op as u8);
    }
    let _ = writeln!(s, "const MAGIC {MAGIC}");
    let _ = writeln!(s, "const VERSION {VERSION}");
    let _ = writeln!(s, "const HEADER {HEADER_LEN}");
    let _ = writeln!(s, "const RESPONSE {RESPONSE}");
    let _ = writeln!(s, "const RESEND {RESEND}");
    for (name, rid, fields, req) in requests() {
        let mut out = Vec::new();
        req.encode(rid, &mut out);
        let _ = writeln!(s, "request {name} rid={rid} {fields} {}", hex(&out));
    }
    for (name, op, rid, fields, resp) in answers() {
        let mut out = Vec::new();
        resp.encode(op, rid, &mut out);
        let sep = if fields.is_empty() { "" } else { " " };
        let _ = writeln!(s, "answer {name} rid={rid}{sep}{fields} {}", hex(&out));
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn frame(bytes: &[u8]) -> Frame<'_> {
    let (f, used) = decode_frame(bytes, 1 << 20).expect("decodes").expect("whole");
    assert_eq!(used, bytes.len());
    f
}

#[test]
fn the_golden_file_matches_the_rust_encoders() {
    let want = render();
    if std::env::var_os("MIRRORLOG_BLESS").is_some() {
        std::fs::create_dir_all(golden_path().parent().expect("dir")).expect("mkdir");
        std::fs::write(golden_path(), &want).expect("write golden");
    }
    let have = std::fs::read_to_string(golden_path()).expect("tests/golden/protocol-v1.txt");
    for (i, (a, b)) in have.lines().zip(want.lines()).enumerate() {
        assert_eq!(a, b, "line {} of the golden file differs from the Rust encoders", i + 1);
    }
    assert_eq!(have, want, "the golden file has a different number of lines");
}

#[test]
fn golden_frames_decode_to_what_made_them() {
    let text = render();
    let frames: Vec<Vec<u8>> = text
        .lines()
        .filter(|l| l.starts_with("request ") || l.starts_with("answer "))
        .map(|l| unhex(l.rsplit(' ').next().expect("hex")))
        .collect();
    let reqs = requests();
    let answers = answers();
    assert_eq!(frames.len(), reqs.len() + answers.len());
    for ((_, rid, _, req), bytes) in reqs.iter().zip(&frames) {
        let f = frame(bytes);
        assert_eq!(f.request_id, *rid);
        assert_eq!(&Request::decode(&f, 1024).expect("request decodes"), req);
    }
    for ((_, op, rid, _, resp), bytes) in answers.iter().zip(&frames[reqs.len()..]) {
        let f = frame(bytes);
        assert_eq!(f.request_id, *rid);
        assert_eq!(&Response::decode(&f, *op).expect("answer decodes"), resp);
    }
}

/// `| N | \`name\` |` rows of a markdown table.
fn doc_codes(path: &Path) -> Vec<(u16, String)> {
    let text = std::fs::read_to_string(path).expect("doc");
    text.lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let n: u16 = cells.next()?.parse().ok()?;
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((n, name.to_string()))
        })
        .collect()
}

#[test]
fn the_docs_list_exactly_the_codes_of_the_table() {
    let mut documented = doc_codes(&root().join("docs/api.md"));
    documented.extend(doc_codes(&root().join("docs/protocol.md")));
    documented.sort();
    let table: Vec<(u16, String)> = codes::ALL.iter().map(|(c, n)| (*c, n.to_string())).collect();
    assert_eq!(documented, table, "docs/api.md (1-17) and docs/protocol.md (100s, 200s) against src/codes.rs");
}

/// Compiles the Java client's `Wire` with the golden checker and runs it
/// over the golden file. Skips (with the reason printed) without a JDK.
#[test]
fn the_java_client_agrees_with_the_golden_file() {
    let have_javac = Command::new("javac").arg("-version").output().map(|o| o.status.success()).unwrap_or(false);
    if !have_javac {
        eprintln!("SKIP the_java_client_agrees_with_the_golden_file: javac is not installed");
        return;
    }
    let src = root().join("tools/java/client/src/main/java/io/mirrorlog/client");
    let test = root().join("tools/java/client/src/test/java/io/mirrorlog/client/WireGolden.java");
    let out = tempfile::tempdir().expect("tempdir");
    let javac = Command::new("javac")
        .args(["--release", "11", "-Xlint:all", "-Werror", "-d"])
        .arg(out.path())
        .arg(src.join("Wire.java"))
        .arg(src.join("MirrorlogException.java"))
        .arg(&test)
        .output()
        .expect("javac runs");
    assert!(javac.status.success(), "javac: {}", String::from_utf8_lossy(&javac.stderr));
    let run = Command::new("java")
        .arg("-cp")
        .arg(out.path())
        .arg("io.mirrorlog.client.WireGolden")
        .arg(golden_path())
        .output()
        .expect("java runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "WireGolden failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("golden: ok"), "{stdout}");
}
