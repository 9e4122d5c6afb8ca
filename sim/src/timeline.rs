//! What happened when: a bounded record of bind jobs, GPU jobs and fence signals for the
//! `--svg` timeline ([`crate::svg`]).
//!
//! Recording is cheap: one push of a small `Copy` record per finished job or signalled fence,
//! and only for the first [`Timeline::window_us`] of simulated time (at most
//! [`Timeline::CAP`] records); past that the calls return at once.

/// Where a span is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Async bind queue `q` of VM `vm`.
    Bind {
        /// VM index.
        vm: usize,
        /// Queue index.
        q: usize,
    },
    /// Synchronous binds of VM `vm`.
    Sync {
        /// VM index.
        vm: usize,
    },
    /// GPU (kernel) queue `q`.
    Gpu {
        /// Queue index.
        q: usize,
    },
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ran and succeeded.
    Done,
    /// Failed (an in-fence error or a failed run stage).
    Failed,
    /// Timed out waiting for its in-fences.
    TimedOut,
}

/// One job: submitted at `submitted`, waited until `start`, ran until `end` (simulated µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Lane.
    pub lane: Lane,
    /// Submission time.
    pub submitted: u64,
    /// When it left the queue (ran or failed).
    pub start: u64,
    /// When its out-fence was seen signalled.
    pub end: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A fence signal point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// When the fence was created.
    pub created: u64,
    /// When its signal was seen.
    pub at: u64,
    /// Signalled with an error.
    pub error: bool,
    /// A GPU fence (else a bind or user-queue fence).
    pub gpu: bool,
}

/// The bounded record.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Record only events before this simulated time (µs).
    pub window_us: u64,
    /// Jobs.
    pub spans: Vec<Span>,
    /// Fence signals.
    pub signals: Vec<Signal>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            window_us: 40_000,
            spans: Vec::new(),
            signals: Vec::new(),
        }
    }
}

impl Timeline {
    /// Most records kept of each kind.
    pub const CAP: usize = 20_000;

    /// Records a job that started (left its queue) at `start`.
    pub fn span(&mut self, s: Span) {
        if s.submitted < self.window_us && self.spans.len() < Self::CAP {
            self.spans.push(s);
        }
    }

    /// Records a fence signal.
    pub fn signal(&mut self, s: Signal) {
        if s.at < self.window_us && self.signals.len() < Self::CAP {
            self.signals.push(s);
        }
    }
}
