//! gpuva against the `BTreeMap` split tree on trace files, timed the way `vmsim ops --bench`
//! times gpuva, interleaved in one process: `gpuva / btree` per trace.
//!
//! Each round replays the whole trace once through each replayer, each on a fresh VA space,
//! alternating which goes first: gpuva through `sim::ops::Driver` (the driver flow: prepare with
//! claim, shortfall allocation and link pin; run; cleanup with release, pin put and spare-cache
//! trim; all timed), and the split tree (`benches::trace_peer`, validation and its
//! `BTreeMap` operations, all timed). It prints the median time per request of each and two
//! ratios: of the medians, and the median of the per-round ratios (robust against a noisy
//! neighbour slowing one whole round).
//!
//! Run: `cargo run --release -p benches --bin trace_ratio -- [--rounds K] [--no-links] FILE...`
//! (`--no-links` adds a third, labelled replayer: gpuva `without_links`; `--only gpuva` or
//! `--only btree` (or `none`: parsing only) replays with one of them alone and prints its line, for profilers).

use std::process::ExitCode;

use benches::trace_peer::SplitTreeReplayer;
use sim::ops::{time_run, BenchRun, Driver, Links};

/// A replayer that does nothing (`--only none`).
struct Nothing;

impl sim::ops::Replayer for Nothing {
    fn replay_request(&mut self, req: sim::trace::Request) -> Result<usize, sim::ops::ReplayError> {
        std::hint::black_box(req);
        Ok(0)
    }

    fn mappings(&self) -> usize {
        0
    }
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    let mut rounds = 7usize;
    let mut no_links = false;
    let mut only: Option<String> = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|k| k.parse().ok())
                    .filter(|&k| k > 0)
                    .ok_or("--rounds takes a positive number")?;
            }
            "--no-links" => no_links = true,
            "--only" => only = Some(args.next().ok_or("--only takes gpuva or btree")?),
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        return Err("usage: trace_ratio [--rounds K] [--no-links] FILE...".into());
    }
    if let Some(which) = only {
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
            let trace = sim::trace::parse(&text).map_err(|e| format!("{f}: {e}"))?;
            let err = |e: sim::ops::ReplayError| format!("{f}: {e}");
            let run = match which.as_str() {
                "gpuva" => time_run(&trace, &mut Driver::new(&trace, Links::On).map_err(err)?),
                "gpuva-nolinks" => {
                    time_run(&trace, &mut Driver::new(&trace, Links::Off).map_err(err)?)
                }
                "btree" => time_run(&trace, &mut SplitTreeReplayer::new(&trace)),
                // Parsing and the loop alone: the baseline a profile subtracts.
                "none" => time_run(&trace, &mut Nothing),
                _ => return Err("--only takes gpuva, gpuva-nolinks, btree or none".into()),
            }
            .map_err(err)?;
            println!("{which} {f}: {}", run.line());
        }
        return Ok(());
    }
    println!(
        "| trace | requests | final mappings | gpuva ns/req | {}btree ns/req | gpuva/btree (medians) | gpuva/btree (median of rounds) |{}",
        if no_links { "gpuva links off ns/req | " } else { "" },
        if no_links { " links off/btree |" } else { "" }
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|{}",
        if no_links { "---:|---:|" } else { "" }
    );
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?;
        let trace = sim::trace::parse(&text).map_err(|e| format!("{f}: {e}"))?;
        let mut g: Vec<BenchRun> = Vec::new();
        let mut off: Vec<BenchRun> = Vec::new();
        let mut b: Vec<BenchRun> = Vec::new();
        let err = |e: sim::ops::ReplayError| format!("{f}: {e}");
        for round in 0..rounds {
            let mut gpuva = || -> Result<(), String> {
                let mut d = Driver::new(&trace, Links::On).map_err(err)?;
                g.push(time_run(&trace, &mut d).map_err(err)?);
                if no_links {
                    let mut d = Driver::new(&trace, Links::Off).map_err(err)?;
                    off.push(time_run(&trace, &mut d).map_err(err)?);
                }
                Ok(())
            };
            let mut btree = || -> Result<(), String> {
                let mut p = SplitTreeReplayer::new(&trace);
                b.push(time_run(&trace, &mut p).map_err(err)?);
                Ok(())
            };
            if round % 2 == 0 {
                gpuva()?;
                btree()?;
            } else {
                btree()?;
                gpuva()?;
            }
        }
        let per_round: Vec<f64> = g
            .iter()
            .zip(&b)
            .map(|(x, y)| x.ns_per_request() / y.ns_per_request())
            .collect();
        let gm = sim::ops::median(g.clone());
        let bm = sim::ops::median(b.clone());
        if gm.final_mappings != bm.final_mappings {
            return Err(format!(
                "{f}: gpuva and btree end with different mapping counts"
            ));
        }
        let name = std::path::Path::new(&f)
            .file_name()
            .map_or_else(|| f.clone(), |n| n.to_string_lossy().into_owned());
        let extra = if no_links {
            let om = sim::ops::median(off);
            (
                format!("{:.0} | ", om.ns_per_request()),
                format!(" {:.2} |", om.ns_per_request() / bm.ns_per_request()),
            )
        } else {
            (String::new(), String::new())
        };
        println!(
            "| {name} | {} | {} | {:.0} | {}{:.0} | {:.2} | {:.2} |{}",
            gm.requests,
            gm.final_mappings,
            gm.ns_per_request(),
            extra.0,
            bm.ns_per_request(),
            gm.ns_per_request() / bm.ns_per_request(),
            median_f(per_round),
            extra.1,
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trace_ratio: {e}");
            ExitCode::FAILURE
        }
    }
}
