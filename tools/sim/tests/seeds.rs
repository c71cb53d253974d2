//! The engine simulation over a fixed range of seeds (what CI runs; the
//! `mirrorlog-sim` binary runs longer). Every seed must pass: a failure
//! prints its trace and the command that replays it.

#[test]
fn engine_seeds_pass() {
    let n: u64 = std::env::var("MIRRORLOG_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    match mirrorlog_sim::run_seeds(0, n, 300) {
        Ok(c) => {
            eprintln!("{n} seeds: {c:?}");
            assert!(c.crashes > n / 2 && c.cutbacks > 0 && c.rots > 0 && c.recreates > 0, "coverage: {c:?}");
        }
        Err(f) => panic!("{f}"),
    }
}
