//! `vmsim`: the simulator's command-line front end.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// User-space simulator for GPU VA management.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a VA trace (format v1) and print the split/merge ops and the final state.
    Ops {
        /// Trace file; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Time the trace instead of printing ops: one summary line.
        #[arg(long)]
        bench: bool,
        /// With --bench: run the trace this many times on fresh VA spaces, report the median.
        #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        bench_repeat: u32,
        /// Replay without object links (`GpuVm::without_links`: pure VA bookkeeping); the
        /// `--bench` line then ends with `links off`. The default keeps a link per object, as a
        /// driver does, and its flow (obtain and pin in prepare, put in cleanup) is timed.
        #[arg(long)]
        no_links: bool,
    },
}

fn read_input(file: Option<&PathBuf>) -> Result<String, String> {
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
        }
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("stdin: {e}"))?;
            Ok(s)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Ops {
            file,
            bench,
            bench_repeat,
            no_links,
        } => {
            let links = if no_links {
                sim::ops::Links::Off
            } else {
                sim::ops::Links::On
            };
            let name = file
                .as_ref()
                .map_or_else(|| "<stdin>".to_owned(), |p| p.display().to_string());
            let text = read_input(file.as_ref())?;
            let trace = sim::trace::parse(&text).map_err(|e| format!("{name}: {e}"))?;
            if bench || bench_repeat > 1 {
                let repeat = usize::try_from(bench_repeat).map_err(|e| e.to_string())?;
                let run =
                    sim::ops::bench(&trace, repeat, links).map_err(|e| format!("{name}: {e}"))?;
                let label = if no_links { " links off" } else { "" };
                println!("{}{label}", run.line());
            } else {
                let out =
                    sim::ops::replay_with(&trace, links).map_err(|e| format!("{name}: {e}"))?;
                print!("{out}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmsim: {e}");
            ExitCode::FAILURE
        }
    }
}
