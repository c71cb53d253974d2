//! `mirrorlog-sim`: runs the engine simulation over many seeds (or one, to
//! replay a failure) and reports seeds per second and fault coverage.
//!
//!   mirrorlog-sim --seeds 1000 [--first 0] [--steps 400]
//!   mirrorlog-sim --minutes 10
//!   mirrorlog-sim --seed 1234 --steps 87        # replay, with the trace
//!   mirrorlog-sim --two-sites --seeds 500       # the two-site simulation
//!   mirrorlog-sim --producers --seeds 500       # the daemon's idempotence rules
//!   mirrorlog-sim --acks --seeds 5000           # the daemon's remote-* ack policy
//!   mirrorlog-sim --wire --seeds 500            # the daemon's server over simulated wires
//!   mirrorlog-sim --roles --seeds 5000          # roles, epochs, fencing, start-up
//!   mirrorlog-sim --failover --seeds 5000       # etcd leases, pauses, lying clocks
//!   mirrorlog-sim --resilver --seeds 500        # members failed, replaced, re-added, resilvered

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mirrorlog_sim::{acks, failover, producers, repl, resilver, roles, wire, Failure, Tally};

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
    #[arg(long, group = "kind")]
    two_sites: bool,
    /// The producers simulation (the daemon's idempotence rules: resends,
    /// lost answers, a second writer, crashes, restarts).
    #[arg(long, group = "kind")]
    producers: bool,
    /// The acks simulation (the daemon's `remote-*` ack policy: timeouts,
    /// degraded mode, outages, under steady load and simulated time).
    #[arg(long, group = "kind")]
    acks: bool,
    /// The roles simulation (two nodes' roles and epochs: crashes, link
    /// cuts, start-up probes, promotions, demotions, fencing).
    #[arg(long, group = "kind")]
    roles: bool,
    /// The failover simulation (etcd leases, the failover rules and the
    /// rule for taking an append, under pauses, stalls, cut-offs, crashes
    /// and clocks that run fast, slow or jump).
    #[arg(long, group = "kind")]
    failover: bool,
    /// The wire simulation (the daemon's server code serving clients over
    /// simulated wires: partial frames, resets, slow readers, bad and
    /// unfinished frames, resends, replica timeouts, drains, crashes).
    #[arg(long, group = "kind")]
    wire: bool,
    /// The resilver simulation (members failed, replaced by blank devices,
    /// re-added, detached and resilvered a few chunks at a time between
    /// appends, marks, restarts and the power failing at any write; at the
    /// end every healthy member alone holds every acknowledged record).
    #[arg(long, group = "kind")]
    resilver: bool,
}

/// The counts of every simulation, summed over the seeds run.
#[derive(Default)]
struct Totals {
    engine: mirrorlog_sim::Counts,
    two_sites: repl::ReplCounts,
    producers: producers::ProducerCounts,
    acks: acks::AckCounts,
    roles: roles::RoleCounts,
    failover: failover::FailoverCounts,
    wire: wire::WireCounts,
    resilver: resilver::ResilverCounts,
}

impl Totals {
    /// Runs one seed of the chosen simulation and adds its counts; returns
    /// them as text.
    fn run(&mut self, a: &Args, seed: u64) -> Result<String, Failure> {
        let steps = a.steps;
        Ok(if a.two_sites {
            let c = repl::run(seed, steps)?;
            self.two_sites.add(&c);
            format!("{c:?}")
        } else if a.producers {
            let c = producers::run(seed, steps)?;
            self.producers.add(&c);
            format!("{c:?}")
        } else if a.acks {
            let c = acks::run(seed, steps)?;
            self.acks.add(&c);
            format!("{c:?}")
        } else if a.roles {
            let c = roles::run(seed, steps)?;
            self.roles.add(&c);
            format!("{c:?}")
        } else if a.wire {
            let c = wire::run(seed, steps)?;
            self.wire.add(&c);
            format!("{c:?}")
        } else if a.failover {
            let c = failover::run(seed, steps)?;
            self.failover.add(&c);
            format!("{c:?}")
        } else if a.resilver {
            let c = resilver::run(seed, steps)?;
            self.resilver.add(&c);
            format!("{c:?}")
        } else {
            let c = mirrorlog_sim::run(&mirrorlog_sim::Options { seed, steps })?;
            self.engine.add(&c);
            format!("{c:?}")
        })
    }

    fn report(&self, a: &Args) -> String {
        if a.two_sites {
            format!("{:#?}", self.two_sites)
        } else if a.producers {
            format!("{:#?}", self.producers)
        } else if a.acks {
            format!("{:#?}", self.acks)
        } else if a.roles {
            format!("{:#?}", self.roles)
        } else if a.failover {
            format!("{:#?}", self.failover)
        } else if a.wire {
            format!("{:#?}", self.wire)
        } else if a.resilver {
            format!("{:#?}", self.resilver)
        } else {
            format!("{:#?}", self.engine)
        }
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let mut totals = Totals::default();
    if let Some(seed) = a.seed {
        // RUST_LOG=info shows what the engine logs (recovery, repairs) on replay.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
        }
        return match totals.run(&a, seed) {
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
    let mut n = 0u64;
    let mut seed = a.first;
    loop {
        if until.map_or(n >= a.seeds, |u| Instant::now() >= u) {
            break;
        }
        if let Err(f) = totals.run(&a, seed) {
            println!("{f}");
            return ExitCode::FAILURE;
        }
        n += 1;
        seed += 1;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{n} seeds ({}..{}) x {} steps: ok in {s:.1} s, {:.1} seeds/s\n{}",
        a.first,
        seed,
        a.steps,
        n as f64 / s.max(1e-9),
        totals.report(&a)
    );
    ExitCode::SUCCESS
}
