//! `vmsim`: the simulator's command-line front end.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static ALLOC: sim::alloc_count::Counting = sim::alloc_count::Counting;

/// A CSF-style GPU simulator over gpuva, pagetable and vmbind. Without a subcommand it runs the
/// built-in scenario and prints its report (exit code 1 if any hazard was found).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// The built-in scenario: its knobs and the report's form.
#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    knobs: Knobs,
    #[command(flatten)]
    out: Output,
}

/// Knobs of the built-in scenario.
#[derive(Args, Debug, Clone)]
struct Knobs {
    /// Seed of every random choice (same seed, same report apart from wall-clock figures).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Frames to simulate (4 ms of simulated time each).
    #[arg(long, default_value_t = 600)]
    frames: u32,
    /// Churn VMs besides the game and the compositor.
    #[arg(long, default_value_t = 2)]
    churn_vms: usize,
    /// Physical memory in MiB (smaller means more eviction).
    #[arg(long, default_value_t = 160)]
    mem_mib: u64,
    /// GPU address-space slots (fewer than VMs forces LRU eviction).
    #[arg(long, default_value_t = 3)]
    slots: usize,
}

/// How the report is given.
#[derive(Args, Debug, Clone)]
struct Output {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also draw the run into this SVG file: VA space per VM, page-table occupancy, and a
    /// timeline of bind jobs, GPU jobs and fences (see `sim::svg`).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Simulated milliseconds the SVG timeline covers, from the start.
    #[arg(long, value_name = "MS", default_value_t = 40)]
    svg_window_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the built-in scenario (the default) and print its report.
    Run(RunArgs),
    /// The built-in scenario as a scenario file: `--dump` writes the exact sequence of
    /// commands it executes (docs/scenario-format.md), which `vmsim replay` runs to the same
    /// report.
    Scenario {
        #[command(flatten)]
        knobs: Knobs,
        /// Write the scenario file (to FILE, or standard output without it).
        #[arg(long, required = true)]
        dump: bool,
        /// Where the file goes; `-` or nothing is standard output.
        file: Option<PathBuf>,
    },
    /// Run a scenario file (docs/scenario-format.md) and print the report of the built-in
    /// scenario for it (exit code 1 if any hazard was found).
    Replay {
        /// Scenario file; `-` reads standard input.
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
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

fn params(k: &Knobs) -> sim::scenario::Params {
    sim::scenario::Params {
        seed: k.seed,
        frames: k.frames,
        churn_vms: k.churn_vms,
        mem_mib: k.mem_mib,
        slots: k.slots,
        ..sim::scenario::Params::default()
    }
}

fn scenario(a: &RunArgs) -> Result<bool, String> {
    let p = params(&a.knobs);
    let mut s = sim::scenario::Scenario::new(p.clone()).map_err(|e| e.to_string())?;
    s.world.timeline.window_us = a.out.svg_window_ms.saturating_mul(1000);
    let mut bar = Progress::new(!a.out.json);
    s.run(|done, total| bar.tick(done, total))
        .map_err(|e| e.to_string())?;
    bar.finish();
    let r = sim::report::Report::new(&s, &p);
    report(&r, &s.world, &a.out)
}

/// `vmsim scenario --dump`: runs the built-in scenario recording it, writes the file.
fn dump(k: &Knobs, file: Option<&PathBuf>) -> Result<bool, String> {
    let p = sim::scenario::Params {
        record: true,
        ..params(k)
    };
    let mut s = sim::scenario::Scenario::new(p.clone()).map_err(|e| e.to_string())?;
    s.run(|_, _| {}).map_err(|e| e.to_string())?;
    let script = s.world.take_script()?;
    let header = format!(
        "vmsim scenario --dump: the built-in scenario (seed {}, {} frames, {} churn VMs, {} MiB, {} slots)\n\
         as the exact sequence of commands it executed; `vmsim replay` runs it to the same report.",
        p.seed, p.frames, p.churn_vms, p.mem_mib, p.slots
    );
    let text = sim::script::render(&script, &header);
    match file {
        Some(path) if path.as_os_str() != "-" => write_file(path, &text)?,
        _ => write_out(&text)?,
    }
    Ok(true)
}

/// `vmsim replay FILE`.
fn replay(file: &PathBuf, o: &Output) -> Result<bool, String> {
    let name = if file.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let text = read_input(Some(file))?;
    let script = sim::script::parse(&text).map_err(|e| format!("{name}: {e}"))?;
    let mut run = sim::script::Runner::new(&script);
    run.world.timeline.window_us = o.svg_window_ms.saturating_mul(1000);
    run.run(&script).map_err(|e| format!("{name}: {e}"))?;
    let r = sim::report::Report::of_world(
        &run.world,
        None,
        None,
        format!("scenario file {name}, {} commands", script.cmds.len()),
    );
    report(&r, &run.world, o)
}

fn report(r: &sim::report::Report, w: &sim::world::World, a: &Output) -> Result<bool, String> {
    if let Some(path) = &a.svg {
        write_file(path, &sim::svg::render(w))?;
    }
    let out = if a.json {
        serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n"
    } else {
        r.text()
    };
    write_out(&out)?;
    Ok(r.passed())
}

/// A progress bar on stderr, shown only once a run has taken [`Progress::AFTER`] and only when
/// stdout and stderr are both terminals.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    t0: std::time::Instant,
    enabled: bool,
}

impl Progress {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(2);

    fn new(wanted: bool) -> Self {
        use std::io::IsTerminal as _;
        Self {
            bar: None,
            t0: std::time::Instant::now(),
            enabled: wanted && std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, done: u32, total: u32) {
        if !self.enabled || (self.bar.is_none() && self.t0.elapsed() < Self::AFTER) {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                Some(u64::from(total)),
                indicatif::ProgressDrawTarget::stderr(),
            )
            .with_elapsed(self.t0.elapsed());
            if let Ok(st) = indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:40}] {pos}/{len} frames, eta {eta}",
            ) {
                b.set_style(st.progress_chars("=> "));
            }
            b
        });
        bar.set_position(u64::from(done));
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn write_file(path: &std::path::Path, s: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(s.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_out(s: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

fn run(cli: Cli) -> Result<bool, String> {
    match cli.command {
        None => scenario(&cli.run),
        Some(Command::Run(a)) => scenario(&a),
        Some(Command::Scenario { knobs, file, .. }) => dump(&knobs, file.as_ref()),
        Some(Command::Replay { file, out }) => replay(&file, &out),
        Some(Command::Ops {
            file,
            bench,
            bench_repeat,
            no_links,
        }) => {
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
                write_out(&format!("{}{label}\n", run.line()))?;
            } else {
                let out =
                    sim::ops::replay_with(&trace, links).map_err(|e| format!("{name}: {e}"))?;
                write_out(&out)?;
            }
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vmsim: {e}");
            ExitCode::FAILURE
        }
    }
}
