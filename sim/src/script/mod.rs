//! Scenario files: a text format for what the simulator's world is asked to do (the format is
//! `docs/scenario-format.md` in the repository).
//!
//! A scenario file sets the machine up (memory, address-space slots, timeouts, VMs with their
//! sync-bind policy, bind and GPU queues, buffer objects, native syncobjs, user queues), then
//! drives it: bind jobs (sync or async, several ops, in-fences and a timeline out-point), GPU
//! jobs, user-queue commands and kicks, cross-group-sync operations, host signals, evictions,
//! time steps. [`parse`] turns the text into a [`Script`] (or a line-numbered [`ParseError`]),
//! [`Runner`] executes it on a fresh [`World`](crate::world::World), and
//! [`Report::of_world`](crate::report::Report::of_world) reports it like the built-in scenario.
//! [`render`] prints a script back; [`World::record`](crate::world::World::record) records
//! the calls made on a world as a script (that is how `vmsim scenario --dump` writes the
//! built-in scenario).
//!
//! ```
//! let text = "\
//! vm game fifo
//! gpu-queue gq
//! bo tex 2M huge
//! bind-async game -> mapped {
//!   map 0x100000000 2M tex 0
//! }
//! gpu gq game wait=mapped {
//!   write 0x100000008 7
//!   read 0x100000008
//! }
//! drain
//! ";
//! let script = sim::script::parse(text)?;
//! let mut run = sim::script::Runner::new(&script);
//! run.run(&script)?;
//! let report = sim::report::Report::of_world(&run.world, None, None, "example".into());
//! assert_eq!(report.hazards_total, 0);
//! assert_eq!(report.verified, 2);
//! assert_eq!(sim::script::parse(&sim::script::render(&script, ""))?, script);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod parse;
mod record;
mod render;
mod run;

pub use parse::{parse, ParseError, ParseErrorKind};
pub(crate) use record::Recorder;
pub use render::render;
pub use run::{Limits, RunError, RunErrorKind, Runner};

use vmbind::queue::Policy;
use vmbind::MapFlags;

use crate::usq::{Cond, SyncOp, UserCmd};
use crate::world::{Access, BindKind, Contiguity};

/// The machine a script runs on: `memory` and `slots` (before any other command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// GPU address-space slots.
    pub slots: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            memory_mib: 160,
            slots: 3,
        }
    }
}

/// The names a script gives, per kind, in order of definition (the index is what commands use).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// VMs (the index is the world's VM index).
    pub vms: Vec<String>,
    /// Bind queues per VM.
    pub vm_queues: Vec<usize>,
    /// GPU queues.
    pub gpu_queues: Vec<String>,
    /// Buffer objects.
    pub bos: Vec<String>,
    /// Native syncobjs.
    pub natives: Vec<String>,
    /// User queues.
    pub user_queues: Vec<String>,
    /// Fences bound by `-> name` (a name may be bound again; each binding is a new index).
    pub fences: Vec<String>,
}

/// A fence a command waits on or signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceRef {
    /// A fence bound by `-> name` (index into [`Names::fences`]).
    Named(usize),
    /// The fence installed at a syncobj timeline point `handle@point`.
    Point(u32, u64),
}

/// Which timeout a `timeout` line sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Bind queues' in-fence timeout (queues of VMs added later).
    Bind,
    /// GPU jobs' in-fence timeout (jobs submitted later).
    Gpu,
    /// Cross-group-sync waits' timeout (waits submitted later).
    Xgs,
    /// The forward-progress bound on kernel fences.
    Bound,
}

/// One op of a bind job, naming its object by script index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `map <va> <len> <bo> <offset> [ro] [noexec] [uncached]`.
    Map {
        /// GPU address.
        va: u64,
        /// Length.
        len: u64,
        /// Object (index into [`Names::bos`]).
        bo: usize,
        /// Offset in the object.
        offset: u64,
        /// Flags.
        flags: MapFlags,
    },
    /// `unmap <va> <len>`.
    Unmap {
        /// GPU address.
        va: u64,
        /// Length.
        len: u64,
    },
    /// `sync-only`.
    SyncOnly,
}

/// One command of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// `timeout <kind> <duration>`.
    Timeout {
        /// Which.
        kind: TimeoutKind,
        /// Simulated µs.
        us: u64,
    },
    /// `vm <name> fifo|range-ordered [lock-region] [queues=<n>]` (the VM is the next index).
    Vm {
        /// Sync-bind ordering policy.
        policy: Policy,
        /// Bind jobs take an MMU lock region.
        lock_region: bool,
        /// Bind queues.
        queues: usize,
    },
    /// `gpu-queue <name>`.
    GpuQueue,
    /// `bo <name> <size> huge|tiles|scattered`.
    Bo {
        /// Object index.
        bo: usize,
        /// Bytes.
        size: u64,
        /// Physical layout.
        how: Contiguity,
    },
    /// `close <bo> [evicted]`.
    Close {
        /// Object index.
        bo: usize,
        /// Counted as an eviction (the shrinker closes it after unmapping it).
        evicted: bool,
    },
    /// `swap-in <bo> <size> huge|tiles|scattered`: new pages for an evicted object, its
    /// contents copied back (a revalidation).
    SwapIn {
        /// Object index.
        bo: usize,
        /// Bytes.
        size: u64,
        /// Physical layout.
        how: Contiguity,
    },
    /// `cleanup`: every VM's deferred cleanups.
    Cleanup,
    /// `host-fence <handle>@<point> [-> <fence>]`.
    HostFence {
        /// Syncobj handle.
        handle: u32,
        /// Timeline point.
        point: u64,
        /// Bound name.
        out: Option<usize>,
    },
    /// `signal <fence> [error=<errno>]` (a host fence).
    Signal {
        /// The fence.
        fence: FenceRef,
        /// `None`: success; else the in-fence error code.
        error: Option<i32>,
    },
    /// `bind-sync <vm> [kind=<kind>] { ops }`.
    BindSync {
        /// VM index.
        vm: usize,
        /// Report row.
        kind: BindKind,
        /// Ops.
        ops: Vec<Op>,
    },
    /// `bind-async <vm> [queue=<n>] [wait=..] [out=<h>@<p>] [kind=<kind>] [-> <fence>] { ops }`.
    BindAsync {
        /// VM index.
        vm: usize,
        /// Bind queue of the VM.
        queue: usize,
        /// In-fences.
        waits: Vec<FenceRef>,
        /// Timeline point the out-fence is installed at.
        out_point: Option<(u32, u64)>,
        /// Report row.
        kind: BindKind,
        /// Ops.
        ops: Vec<Op>,
        /// Bound name of the out-fence.
        out: Option<usize>,
    },
    /// `gpu <queue> <vm> [wait=..] [-> <fence>] { accesses }`.
    Gpu {
        /// GPU queue index.
        queue: usize,
        /// VM index.
        vm: usize,
        /// In-fences.
        waits: Vec<FenceRef>,
        /// Reads and writes.
        accesses: Vec<Access>,
        /// Bound name of its fence.
        out: Option<usize>,
    },
    /// `native <name> <bo> <offset> 32|64 [<vm>@<va> ...]`.
    Native {
        /// Object index.
        bo: usize,
        /// Offset of the value word.
        off: u64,
        /// 64-bit.
        wide: bool,
        /// (VM index, GPU address) of each view.
        views: Vec<(usize, u64)>,
    },
    /// `user-queue <name> <vm> <capacity>`.
    UserQueue {
        /// VM index.
        vm: usize,
        /// Ring capacity.
        cap: usize,
    },
    /// `push <uq> ...`: userspace writes a command into the ring (refused and counted if full).
    Push {
        /// User queue index.
        uq: usize,
        /// The command (native syncobjs by index).
        cmd: UserCmd,
    },
    /// `kick <uq>`.
    Kick {
        /// User queue index.
        uq: usize,
    },
    /// `xgs-wait <native> gt|le <v> [-> <fence>]`.
    XgsWait {
        /// Native syncobj index.
        native: usize,
        /// Condition.
        cond: Cond,
        /// Bound name.
        out: Option<usize>,
    },
    /// `xgs-signal <native> set|add <v> [wait=..] [-> <fence>]`.
    XgsSignal {
        /// Fences to wait for.
        waits: Vec<FenceRef>,
        /// Native syncobj index.
        native: usize,
        /// Update.
        op: SyncOp,
        /// Bound name.
        out: Option<usize>,
    },
    /// `step <duration> [<count>]`: `count` world steps of `dt` µs.
    Step {
        /// µs per step.
        dt: u64,
        /// Steps.
        count: u64,
    },
    /// `drain [<dt> [<limit>]]`: steps until idle (at most `limit` µs), then the final fence
    /// check past the forward-progress bound.
    Drain {
        /// µs per step.
        dt: u64,
        /// Longest drain, µs.
        limit: u64,
    },
}

/// A parsed (or recorded) scenario file.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The machine.
    pub setup: Setup,
    /// The names.
    pub names: Names,
    /// The commands, in order.
    pub cmds: Vec<Cmd>,
    /// The line each command starts on (1-based; 0 for recorded commands).
    pub lines: Vec<usize>,
}

/// Scripts are equal when they say the same (setup, names, commands), wherever the lines are.
impl PartialEq for Script {
    fn eq(&self, other: &Self) -> bool {
        self.setup == other.setup && self.names == other.names && self.cmds == other.cmds
    }
}

impl Eq for Script {}

/// A bind job's report row name in the file.
#[must_use]
pub const fn kind_word(k: BindKind) -> &'static str {
    match k {
        BindKind::Sparse => "sparse",
        BindKind::Churn => "churn",
        BindKind::Blocked => "blocked",
        BindKind::Evict => "evict",
        BindKind::Revalidate => "revalidate",
    }
}

/// A contiguity's name in the file.
#[must_use]
pub const fn contiguity_word(c: Contiguity) -> &'static str {
    match c {
        Contiguity::Huge => "huge",
        Contiguity::Tiles => "tiles",
        Contiguity::Scattered => "scattered",
    }
}
