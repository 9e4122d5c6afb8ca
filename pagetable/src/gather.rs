//! The run stage's accumulator of TLB work and retired frames (private; its public face is
//! [`Flush`](crate::Flush)).

use crate::addr::PhysAddr;
use crate::mem::{FrameList, FreeError, TableMemory};

/// `Some((start, end))` hull of the ranges added so far.
pub(crate) type Hull = Option<(u64, u64)>;

pub(crate) fn hull(a: Hull, s: u64, e: u64) -> Hull {
    Some(match a {
        None => (s, e),
        Some((x, y)) => (x.min(s), y.max(e)),
    })
}

/// One job's TLB obligations and retired frames, as the walker adds them.
///
/// * `flush`: the hull of every span whose translation changed or was removed, including the
///   whole span of every retired table (its walk-cache entries may serve any VA in it);
/// * `changed`: the hull of every VA whose translation was written, maps included, retired
///   tables' spans excluded (what a lock region must cover for the update to look atomic);
/// * `walk`: a table was unhooked, so walk-cache entries must go too;
/// * `retired`: unhooked table frames, waiting for the invalidation.
#[derive(Debug, Default)]
pub(crate) struct Gather {
    pub(crate) flush: Hull,
    pub(crate) changed: Hull,
    pub(crate) walk: bool,
    pub(crate) retired: FrameList,
}

impl Gather {
    pub(crate) const fn new() -> Self {
        Self {
            flush: None,
            changed: None,
            walk: false,
            retired: FrameList::new(),
        }
    }

    /// Translations in `[s, e)` changed: invalidate them.
    pub(crate) fn flush(&mut self, s: u64, e: u64) {
        self.flush = hull(self.flush, s, e);
        self.changed = hull(self.changed, s, e);
    }

    /// `[s, e)` was mapped (invalid entries are never cached: nothing to invalidate).
    pub(crate) fn touch(&mut self, s: u64, e: u64) {
        self.changed = hull(self.changed, s, e);
    }

    /// The table `pa`, spanning `span`, was unhooked.
    pub(crate) fn retire<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        span: (u64, u64),
    ) -> Result<(), FreeError> {
        self.retired.push(mem, pa)?;
        self.walk = true;
        self.flush = hull(self.flush, span.0, span.1);
        Ok(())
    }
}
