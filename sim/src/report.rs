//! The run's report: figures (deterministic for a seed), timings (wall clock), and the text
//! and JSON renderings.

use std::fmt::Write as _;

use comfy_table::Table;
use serde::Serialize;

use crate::mmu::MmuStats;
use crate::phys::{PhysStats, PoolStats};
use crate::scenario::{Params, Scenario, Story};
use crate::usq::UserStats;
use crate::world::World;
use crate::world::{BindRow, Hazards};

/// Everything the report says.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What ran: the built-in scenario or a scenario file.
    pub source: String,
    /// Seed (the built-in scenario's).
    pub seed: Option<u64>,
    /// Simulated time, ms.
    pub simulated_ms: u64,
    /// The built-in scenario director's story (a scenario file has none).
    pub story: Option<Story>,
    /// Bind rows by kind.
    pub binds: Vec<(String, BindRow)>,
    /// GPU jobs run / failed.
    pub gpu_jobs: (u64, u64),
    /// Reads, writes.
    pub accesses: (u64, u64),
    /// Verified accesses.
    pub verified: u64,
    /// Expected faults.
    pub expected_faults: u64,
    /// MMU counters.
    pub mmu: MmuStats,
    /// Physical memory.
    pub phys: PhysStatsJson,
    /// Table frames.
    pub tables: PoolStatsJson,
    /// Live table frames at the end.
    pub tables_live: usize,
    /// Frames reserved by vmbind's job bound for all prepared jobs.
    pub frames_reserved: u64,
    /// Sync binds: frames reserved / left unused.
    pub sync_frames: (u64, u64),
    /// Page-table frames reserved / used / retired, summed from the finished jobs' own
    /// summaries (`vmbind::JobSummary`).
    pub job_frames: (u64, u64, u64),
    /// Binds refused because their VM became unusable after a failed run stage.
    pub refused_unusable: u64,
    /// Binds refused for want of memory or over the VM's in-flight frame cap.
    pub refused_no_room: u64,
    /// Fences created / ok / error.
    pub fences: (u64, u64, u64),
    /// Bind timeouts.
    pub timeouts: u64,
    /// Longest kernel fence wait (µs).
    pub max_fence_wait_us: u64,
    /// Forward-progress bound (µs).
    pub fence_bound_us: u64,
    /// Objects created / handles closed.
    pub bos: (u64, u64),
    /// Evictions / revalidations / objects refused for want of memory.
    pub evictions: (u64, u64, u64),
    /// User submission: user queues, native syncobjs, XGS queue.
    pub user: UserStats,
    /// Sync-bind latency per policy (simulated µs): (policy, count, waited, p50, p99, max).
    pub sync_latency: Vec<(String, usize, u64, u64, u64, u64)>,
    /// Final audit: pages compared, mismatches (MMU walk vs model vs pagetable::translate).
    pub audit: (u64, u64),
    /// Whether the counting allocator watched the run stages.
    pub alloc_counter_armed: bool,
    /// Hazards.
    pub hazards: Hazards,
    /// Sum of hazards.
    pub hazards_total: u64,
    /// Wall-clock figures (not deterministic).
    pub timing: Timing,
}

/// Wall-clock figures.
#[derive(Debug, Serialize, Default)]
pub struct Timing {
    /// Wall time of the simulation, ms.
    pub wall_ms: f64,
    /// Bind jobs run per second of wall time.
    pub binds_per_s: f64,
    /// Bind ops per second.
    pub ops_per_s: f64,
    /// Run-stage latency percentiles, µs: p50, p90, p99, max.
    pub run_us: [f64; 4],
}

/// [`PhysStats`] for JSON.
#[derive(Debug, Serialize)]
pub struct PhysStatsJson {
    /// Frames total.
    pub frames: u64,
    /// Peak in use.
    pub peak: u64,
    /// 2 MiB runs.
    pub runs_2m: u64,
    /// 64 KiB runs.
    pub runs_64k: u64,
    /// 4 KiB frames.
    pub runs_4k: u64,
}

/// [`PoolStats`] for JSON.
#[derive(Debug, Serialize)]
pub struct PoolStatsJson {
    /// Allocated.
    pub allocated: u64,
    /// Retired and freed after invalidation.
    pub retired: u64,
    /// Reserved, never used, given back.
    pub unused: u64,
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index into a short vector"
    )]
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

impl Report {
    /// Builds the report of a finished built-in scenario.
    #[must_use]
    pub fn new(s: &Scenario, p: &Params) -> Self {
        Self::of_world(
            &s.world,
            Some(s.story),
            Some(p.seed),
            format!("built-in scenario, seed {}", p.seed),
        )
    }

    /// Builds the report of a finished world: the built-in scenario's (with its `story` and
    /// `seed`) or a scenario file's (`source` names it).
    #[must_use]
    pub fn of_world(w: &World, story: Option<Story>, seed: Option<u64>, source: String) -> Self {
        let hazards = w.hazards();
        let mmu = w.gpu.borrow().stats;
        let ph: PhysStats = w.phys.borrow().stats;
        let pool: PoolStats = w.pool_stats();
        let mut sync_latency = Vec::new();
        for (i, name) in ["Fifo", "RangeOrdered"].iter().enumerate() {
            let mut v = w.stats.sync_wait[i].clone();
            sync_latency.push((
                (*name).to_owned(),
                v.len(),
                w.stats.sync_waited[i],
                pct(&mut v, 0.5),
                pct(&mut v, 0.99),
                v.iter().max().copied().unwrap_or(0),
            ));
        }
        let ran: u64 = w.stats.binds.values().map(|r| r.ran).sum();
        let ops: u64 = w.stats.binds.values().map(|r| r.ops).sum();
        let wall = w.stats.wall_ns as f64 / 1e9;
        let mut run = w.stats.run_ns.clone();
        let run_us = [
            pct(&mut run, 0.5) as f64 / 1e3,
            pct(&mut run, 0.9) as f64 / 1e3,
            pct(&mut run, 0.99) as f64 / 1e3,
            run.iter().max().copied().unwrap_or(0) as f64 / 1e3,
        ];
        Self {
            source,
            seed,
            simulated_ms: w.now / 1000,
            story,
            binds: w
                .stats
                .binds
                .iter()
                .map(|(k, r)| (k.label().to_owned(), *r))
                .collect(),
            gpu_jobs: w.stats.gpu_jobs,
            accesses: w.stats.accesses,
            verified: w.stats.verified,
            expected_faults: w.stats.expected_faults,
            mmu,
            phys: PhysStatsJson {
                frames: w.phys.borrow().frames() as u64,
                peak: ph.peak,
                runs_2m: ph.runs_2m,
                runs_64k: ph.runs_64k,
                runs_4k: ph.runs_4k,
            },
            tables: PoolStatsJson {
                allocated: pool.allocated,
                retired: pool.retired,
                unused: pool.unused,
            },
            tables_live: w.table_frames(),
            frames_reserved: w.stats.frames_reserved,
            sync_frames: w.stats.sync_frames,
            job_frames: w.stats.job_frames,
            refused_unusable: w.stats.refused_unusable,
            refused_no_room: w.stats.refused_no_room,
            fences: w.stats.fences,
            timeouts: w.stats.timeouts,
            max_fence_wait_us: w.stats.max_fence_wait,
            fence_bound_us: w.fence_bound,
            bos: w.stats.bos,
            evictions: (w.stats.evictions.0, w.stats.evictions.1, w.stats.no_memory),
            user: w.stats.user,
            sync_latency,
            audit: w.audit_translations(),
            alloc_counter_armed: crate::alloc_count::armed(),
            hazards_total: hazards.total(),
            hazards,
            timing: Timing {
                wall_ms: wall * 1e3,
                binds_per_s: if wall > 0.0 { ran as f64 / wall } else { 0.0 },
                ops_per_s: if wall > 0.0 { ops as f64 / wall } else { 0.0 },
                run_us,
            },
        }
    }

    /// The report without wall-clock figures, as JSON (equal for equal seeds).
    ///
    /// A scenario file dumped from the built-in scenario (`vmsim scenario --dump`) replays to
    /// the same JSON apart from `source`, `seed` and `story`; see [`Report::world_json`].
    #[must_use]
    pub fn deterministic_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("timing");
        }
        v.to_string()
    }

    /// [`Report::deterministic_json`] without what only the built-in scenario knows (`source`,
    /// `seed`, `story`): what the world did, equal for a built-in run and the replay of its
    /// dump.
    #[must_use]
    pub fn world_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["timing", "source", "seed", "story"] {
                o.remove(k);
            }
        }
        v.to_string()
    }

    fn story_text(&self, o: &mut String, st: &Story) {
        let _ = writeln!(
            o,
            "vmsim: built-in scenario, seed {}, {} frames = {} ms simulated",
            self.seed.unwrap_or(0),
            st.frames,
            self.simulated_ms
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "What happened: a game VM streamed a 1 GiB sparse texture in 64 KiB tiles ({} bound, {} unbound,\n\
             at most {} resident) with one async bind job per frame, each waiting on the previous frame's\n\
             sampling job and signalling a timeline syncobj the next sampling job waits on. {} buffers\n\
             (4 KiB-scattered and 2 MiB-block backed) were created and {} retired across the VMs, {} 64 KiB\n\
             holes were punched into mapped buffers, {} binds were blocked on late host fences while\n\
             synchronous binds went on beside them, and one bind timed out on a fence nobody signals.\n\
             Under memory pressure the shrinker evicted {} objects through their links and {} were\n\
             revalidated before their next use. A 4 MiB object was shared by the game and the compositor.",
            st.tiles.0, st.tiles.1, st.peak_resident, st.buffers.0, st.buffers.1, st.holes, st.blocked, st.evicted, st.revalidated
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "User submission: in {} frames a producer user queue (game VM) and a consumer (compositor VM)\n\
             were filled by userspace and kicked, paced through native syncobjs in a shared page. The\n\
             cross-group-sync queue set a syncobj after each residency bind (kernel to user) and turned\n\
             the producer's per-frame syncobj into the fence the frame's tile-unbind job waits on (user\n\
             to kernel): tiles leave residency only once the user-queue job reading them is done.\n\
             {} times a 64 KiB tile of the producer's block-backed stream buffer was unbound while its job\n\
             read the other half of the block ({} stream buffers): the split must stall that job.",
            st.user_frames, st.stream_holes, st.stream_buffers
        );
        let _ = writeln!(o);
    }

    /// The human-readable report.
    #[must_use]
    pub fn text(&self) -> String {
        let mut o = String::new();
        let binds_total: u64 = self.binds.iter().map(|(_, r)| r.jobs).sum();
        let ops_total: u64 = self.binds.iter().map(|(_, r)| r.ops).sum();
        match &self.story {
            Some(st) => self.story_text(&mut o, st),
            None => {
                let _ = writeln!(
                    o,
                    "vmsim: {}, {} ms simulated",
                    self.source, self.simulated_ms
                );
                let _ = writeln!(o);
            }
        }
        let mut t = Table::new();
        t.force_no_tty();
        t.set_header(vec![
            "bind jobs",
            "submitted",
            "sync",
            "ops",
            "ran",
            "failed",
        ]);
        for (k, r) in &self.binds {
            t.add_row(vec![
                k.clone(),
                r.jobs.to_string(),
                r.sync.to_string(),
                r.ops.to_string(),
                r.ran.to_string(),
                r.failed.to_string(),
            ]);
        }
        let _ = writeln!(o, "{t}");
        let tm = &self.timing;
        let _ = writeln!(
            o,
            "{binds_total} bind jobs, {ops_total} ops; {:.0} jobs/s and {:.0} ops/s of wall time; run stage p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, max {:.1} us",
            tm.binds_per_s, tm.ops_per_s, tm.run_us[0], tm.run_us[1], tm.run_us[2], tm.run_us[3]
        );
        let mut t = Table::new();
        t.force_no_tty();
        t.set_header(vec![
            "sync binds",
            "count",
            "had to wait",
            "p50 us",
            "p99 us",
            "max us",
        ]);
        for (n, c, w, p50, p99, m) in &self.sync_latency {
            t.add_row(vec![
                n.clone(),
                c.to_string(),
                w.to_string(),
                p50.to_string(),
                p99.to_string(),
                m.to_string(),
            ]);
        }
        let _ = writeln!(o, "{t}");
        let u = &self.user;
        let mut t = Table::new();
        t.force_no_tty();
        t.set_header(vec!["user submission", "count"]);
        for (k, v) in [
            ("user queues", u.queues.to_string()),
            (
                "commands written / completed / kicks",
                format!("{} / {} / {}", u.pushed, u.executed, u.kicks),
            ),
            ("ring full (userspace waited)", u.ring_full.to_string()),
            (
                "native waits passed / had to block",
                format!("{} / {}", u.waits.0, u.waits.1),
            ),
            ("native set/add", u.sync_ops.to_string()),
            ("GPU jobs from user queues", u.runs.to_string()),
            ("XGS waits / signals", format!("{} / {}", u.xgs.0, u.xgs.1)),
            (
                "XGS timeouts / errors signalled",
                format!("{} / {}", u.xgs_timeouts, u.xgs_errors),
            ),
            (
                "queues faulted / commands dropped",
                format!("{} / {}", u.faulted.0, u.faulted.1),
            ),
        ] {
            t.add_row(vec![k.to_owned(), v]);
        }
        let _ = writeln!(o, "{t}");
        let m = &self.mmu;
        let mut t = Table::new();
        t.force_no_tty();
        t.set_header(vec!["GPU and MMU", "count"]);
        let over = if m.lock_needed_bytes > 0 {
            m.locked_bytes as f64 / m.lock_needed_bytes as f64
        } else {
            0.0
        };
        for (k, v) in [
            (
                "GPU jobs run / failed",
                format!("{} / {}", self.gpu_jobs.0, self.gpu_jobs.1),
            ),
            (
                "accesses: reads / writes",
                format!("{} / {}", self.accesses.0, self.accesses.1),
            ),
            ("verified against the model", self.verified.to_string()),
            (
                "faults: expected by the model / unexpected",
                format!(
                    "{} / {}",
                    self.expected_faults, self.hazards.unexpected_fault
                ),
            ),
            (
                "TLB hits / misses",
                format!("{} / {}", m.tlb_hits, m.tlb_misses),
            ),
            ("walks from the walk cache", m.walk_cache_hits.to_string()),
            (
                "TLB fills 4 KiB / 2 MiB",
                format!("{} / {}", m.fills_4k, m.fills_2m),
            ),
            (
                "invalidations (bound AS / with walk cache)",
                format!(
                    "{} ({} / {})",
                    m.invalidations, m.invalidations_bound, m.invalidations_walk
                ),
            ),
            ("TLB entries dropped", m.entries_dropped.to_string()),
            ("block splits (break-before-make)", m.splits.to_string()),
            (
                "splits under GPU work, stalled by the lock",
                m.lock_stalls.to_string(),
            ),
            (
                "lock regions, over-lock mean / max",
                format!("{}, {:.2}x / {:.1}x", m.locks, over, m.max_over_lock),
            ),
            (
                "AS binds / LRU evictions",
                format!("{} / {}", m.as_binds, m.as_evictions),
            ),
            ("signalling sections", m.sections.to_string()),
        ] {
            t.add_row(vec![k.to_owned(), v]);
        }
        let _ = writeln!(o, "{t}");
        let mut t = Table::new();
        t.force_no_tty();
        t.set_header(vec!["memory", "count"]);
        for (k, v) in [
            (
                "physical frames (4 KiB): total / peak used",
                format!("{} / {}", self.phys.frames, self.phys.peak),
            ),
            (
                "runs handed out: 2 MiB / 64 KiB / 4 KiB",
                format!(
                    "{} / {} / {}",
                    self.phys.runs_2m, self.phys.runs_64k, self.phys.runs_4k
                ),
            ),
            (
                "objects created / handles closed",
                format!("{} / {}", self.bos.0, self.bos.1),
            ),
            (
                "table frames reserved / used / retired (job summaries)",
                format!(
                    "{} / {} / {}",
                    self.job_frames.0, self.job_frames.1, self.job_frames.2
                ),
            ),
            (
                "binds refused: VM unusable after a failed run",
                self.refused_unusable.to_string(),
            ),
            (
                "binds refused: out of memory / frame cap",
                self.refused_no_room.to_string(),
            ),
            (
                "table frames allocated / retired / returned unused",
                format!(
                    "{} / {} / {}",
                    self.tables.allocated, self.tables.retired, self.tables.unused
                ),
            ),
            ("table frames live at the end", self.tables_live.to_string()),
            (
                "sync binds: reserved / left unused",
                format!("{} / {}", self.sync_frames.0, self.sync_frames.1),
            ),
            (
                "fences created / ok / error",
                format!("{} / {} / {}", self.fences.0, self.fences.1, self.fences.2),
            ),
            ("bind timeouts", self.timeouts.to_string()),
            (
                "longest fence wait / bound (us)",
                format!("{} / {}", self.max_fence_wait_us, self.fence_bound_us),
            ),
            (
                "evictions / revalidations / OOM skips",
                format!(
                    "{} / {} / {}",
                    self.evictions.0, self.evictions.1, self.evictions.2
                ),
            ),
            (
                "final audit: pages, mismatches",
                format!("{} pages, {} mismatches", self.audit.0, self.audit.1),
            ),
        ] {
            t.add_row(vec![k.to_owned(), v]);
        }
        let _ = writeln!(o, "{t}");
        let mut t = Table::new();
        t.force_no_tty();
        t.set_header(vec!["hazard check", "what it catches", "count"]);
        for (n, what, c) in self.hazards.rows() {
            t.add_row(vec![n.to_owned(), what.to_owned(), c.to_string()]);
        }
        let _ = writeln!(o, "{t}");
        if !self.alloc_counter_armed {
            let _ = writeln!(o, "note: the counting allocator is not installed; run-stage allocations were not watched");
        }
        let verdict = if self.hazards_total == 0 && self.audit.1 == 0 {
            "OK"
        } else {
            "FAILED"
        };
        let _ = writeln!(
            o,
            "hazards: {} -> {verdict} (wall {:.0} ms)",
            self.hazards_total, tm.wall_ms
        );
        o
    }

    /// Whether the run passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.hazards_total == 0 && self.audit.1 == 0
    }
}
