//! `mirrorlog-sim`: runs the engine simulation over many seeds (or one, to
//! replay a failure) and reports seeds per second and fault coverage.
//!
//!   mirrorlog-sim --seeds 1000 [--first 0] [--steps 400]
//!   mirrorlog-sim --minutes 10
//!   mirrorlog-sim --seed 1234 --steps 87        # replay, with the trace
//!   mirrorlog-sim --two-sites --seeds 500       # the two-site simulation
//!   mirrorlog-sim --producers --seeds 500       # the daemon's idempotence rules

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "A seeded simulation of the mirrorlog engine with crashes and disk faults")]
struct Args {
    /// Run this one seed and print its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Seeds to run (from --first).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Steps per seed.
    #[arg(long, default_value_t = 400)]
    steps: u32,
    /// Run seeds until this many minutes passed (instead of --seeds).
    #[arg(long)]
    minutes: Option<f64>,
    /// The two-site simulation (a primary, a replica and the link between
    /// them) instead of the one-site engine simulation.
    #[arg(long)]
    two_sites: bool,
    /// The producers simulation (the daemon's idempotence rules: resends,
    /// lost answers, a second writer, a small table, crashes, restarts).
    #[arg(long, conflicts_with = "two_sites")]
    producers: bool,
}

/// One seed of the chosen simulation; its counts as text.
fn one(a: &Args, seed: u64) -> Result<String, mirrorlog_sim::Failure> {
    if a.two_sites {
        mirrorlog_sim::repl::run(seed, a.steps).map(|c| format!("{c:?}"))
    } else if a.producers {
        mirrorlog_sim::producers::run(seed, a.steps).map(|c| format!("{c:?}"))
    } else {
        mirrorlog_sim::run(&mirrorlog_sim::Options { seed, steps: a.steps }).map(|c| format!("{c:?}"))
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(seed) = a.seed {
        // RUST_LOG=info shows what the engine logs (recovery, repairs) on replay.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
        }
        return match one(&a, seed) {
            Ok(c) => {
                println!("seed {seed}: ok, {c}");
                ExitCode::SUCCESS
            }
            Err(f) => {
                println!("{f}");
                ExitCode::FAILURE
            }
        };
    }
    let t0 = Instant::now();
    let until = a.minutes.map(|m| t0 + Duration::from_secs_f64(m * 60.0));
    let mut total = mirrorlog_sim::Counts::default();
    let mut total2 = mirrorlog_sim::repl::ReplCounts::default();
    let mut total3 = mirrorlog_sim::producers::ProducerCounts::default();
    let mut n = 0u64;
    let mut seed = a.first;
    loop {
        if until.map_or(n >= a.seeds, |u| Instant::now() >= u) {
            break;
        }
        let res = if a.two_sites {
            mirrorlog_sim::repl::run(seed, a.steps).map(|c| total2.add(&c))
        } else if a.producers {
            mirrorlog_sim::producers::run(seed, a.steps).map(|c| total3.add(&c))
        } else {
            mirrorlog_sim::run(&mirrorlog_sim::Options { seed, steps: a.steps }).map(|c| total.add(&c))
        };
        match res {
            Ok(()) => {}
            Err(f) => {
                println!("{f}");
                return ExitCode::FAILURE;
            }
        }
        n += 1;
        seed += 1;
    }
    let s = t0.elapsed().as_secs_f64();
    let counts = if a.two_sites {
        format!("{total2:#?}")
    } else if a.producers {
        format!("{total3:#?}")
    } else {
        format!("{total:#?}")
    };
    println!(
        "{n} seeds ({}..{}) x {} steps: ok in {s:.1} s, {:.1} seeds/s\n{counts}",
        a.first,
        seed,
        a.steps,
        n as f64 / s.max(1e-9)
    );
    ExitCode::SUCCESS
}
