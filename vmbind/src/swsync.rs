//! A software implementation of the sync traits (feature `alloc`): fences, binary and timeline
//! syncobjs with chain nodes, and a handle table. Single-threaded (`Rc`/`Cell`): for tests and
//! the simulator, and as the reference a kernel implementation is compared with.
//!
//! * [`SwFence`]: signalled once, with or without an error; clones share it.
//! * [`SwSyncobj`]: binary (one fence, replaced on publish) or timeline (a chain of nodes, one
//!   per published point, newest first). Waiting on point `P` of a timeline resolves to the
//!   earliest node at or after `P`, which completes once the fences of *every* point up to it
//!   have signalled, whatever order they signal in; its error is the newest error among them.
//!   Publishing drops the chain behind a node that has fully signalled without error (it keeps
//!   the point it reached, so waits at or below it resolve to [`Point::Signalled`]).
//! * [`SwSyncs`]: the handle table ([`SyncTable`]).
//!
//! # Allocation: not fallible by guarantee
//!
//! This implementation is for tests and simulators. `Rc` has no fallible constructor on stable
//! Rust (`Rc::try_new` is unstable, and building one by hand needs `unsafe`, which the crate
//! forbids), so [`SwFence::try_new`], [`SwSyncobj::try_new`], [`SwSyncs::new_fence`] and
//! [`SwSyncs::alloc_chain`] only *probe* the allocator with a fallible allocation of the same
//! sizes, report [`SyncError::NoMemory`] if the probe fails, and then call `Rc::new`, which
//! still aborts if the allocation right after the probe fails. An allocation failure therefore
//! becomes an error in practice, not by guarantee, and no test relies on it: the tests that
//! inject allocation failures suspend the injection around these calls and fail the
//! [`SyncTable`] methods through the trait instead.
//!
//! A kernel driver does not use this module: it implements [`Fence`], [`Syncobj`] and
//! [`SyncTable`] over its own dma-fences, syncobjs and chain nodes, allocated through the
//! kernel's fallible API (its `Arc::new` and `KBox::new` return errors), which is what makes
//! `Submit::add` sound there. Nothing here allocates after prepare: `status`, `find`, `publish`
//! and `signal` only move `Rc` clones and cells (publish may free the signalled part of a
//! chain; it runs in process context).

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::sync::{Fence, JobFence, Point, SyncError, SyncTable, Syncobj};
use crate::JobError;

/// A software fence: pending until signalled once, with or without an error. Clones share it.
///
/// A fence found on a timeline is a chain node: it completes once every point up to its own
/// has, and cannot be signalled directly.
#[derive(Clone, Debug, Default)]
pub struct SwFence(Rc<FenceCell>);

#[derive(Debug, Default)]
struct FenceCell {
    state: Cell<Option<Result<(), JobError>>>,
    signals: Cell<u32>,
    link: RefCell<Option<Link>>,
}

/// What makes a fence a timeline chain node.
#[derive(Debug)]
struct Link {
    /// Its point.
    seqno: u64,
    /// The fence published at that point.
    inner: SwFence,
    /// The node of the previous point, unless that part of the chain completed.
    prev: Option<SwFence>,
    /// Every point up to this one is known complete without error.
    floor: u64,
}

/// Probes for `size_of::<T>()` bytes fallibly (see the module docs).
fn probe<T>() -> Result<(), SyncError> {
    let mut v: Vec<T> = Vec::new();
    v.try_reserve_exact(1).map_err(|_| SyncError::NoMemory)
}

impl SwFence {
    /// A pending fence.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A pending fence, allocated after a fallible probe: an error in practice, an abort if the
    /// allocation after a successful probe fails (see the module docs).
    ///
    /// # Errors
    ///
    /// [`SyncError::NoMemory`] if the probe failed.
    pub fn try_new() -> Result<Self, SyncError> {
        probe::<alloc::rc::Rc<FenceCell>>()?;
        probe::<FenceCell>()?;
        Ok(Self::new())
    }

    /// `None` while pending, else how it signalled (for a chain node: once every point up to
    /// it has, with the newest error among them).
    #[must_use]
    pub fn status(&self) -> Option<Result<(), JobError>> {
        let mut err: Option<JobError> = None;
        let mut cur = self.clone();
        loop {
            let next = {
                let link = cur.0.link.borrow();
                let (own, next) = match &*link {
                    None => (cur.0.state.get(), None),
                    Some(l) => (l.inner.0.state.get(), l.prev.clone()),
                };
                match own {
                    None => return None,
                    Some(Err(e)) => {
                        err = err.or(Some(e));
                    }
                    Some(Ok(())) => {}
                }
                next
            };
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        Some(err.map_or(Ok(()), Err))
    }

    /// How many times it was signalled (a correct pipeline signals exactly once).
    #[must_use]
    pub fn signal_count(&self) -> u32 {
        self.0.signals.get()
    }

    /// Whether both are the same fence.
    #[must_use]
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    fn seqno(&self) -> u64 {
        self.0.link.borrow().as_ref().map_or(0, |l| l.seqno)
    }
}

impl JobFence for SwFence {
    fn signal(&mut self, result: Result<(), JobError>) {
        self.0.signals.set(self.0.signals.get().saturating_add(1));
        if self.0.link.borrow().is_some() {
            return;
        }
        if self.0.state.get().is_none() {
            self.0.state.set(Some(result));
        }
    }
}

impl Fence for SwFence {
    fn status(&self) -> Option<Result<(), i32>> {
        SwFence::status(self).map(|r| r.map_err(JobError::errno))
    }
}

/// A preallocated timeline chain node.
#[derive(Debug)]
pub struct SwChain(SwFence);

/// A reference to a software syncobj. Clones share it.
#[derive(Clone, Debug)]
pub struct SwSyncobj(Rc<SyncobjCell>);

#[derive(Debug)]
struct SyncobjCell {
    timeline: bool,
    head: RefCell<Option<SwFence>>,
}

impl SwSyncobj {
    /// A syncobj without a fence, allocated after a fallible probe (not fallible by guarantee:
    /// see the module docs).
    ///
    /// # Errors
    ///
    /// [`SyncError::NoMemory`].
    pub fn try_new(timeline: bool) -> Result<Self, SyncError> {
        probe::<SyncobjCell>()?;
        Ok(Self(Rc::new(SyncobjCell {
            timeline,
            head: RefCell::new(None),
        })))
    }

    /// The current fence (a timeline: its newest chain node).
    #[must_use]
    pub fn fence(&self) -> Option<SwFence> {
        self.0.head.borrow().clone()
    }

    /// The timeline's last point (0 for a binary syncobj or an empty timeline).
    #[must_use]
    pub fn last_point(&self) -> u64 {
        self.0.head.borrow().as_ref().map_or(0, SwFence::seqno)
    }

    /// Chain nodes kept (a binary syncobj: 0 or 1).
    #[must_use]
    pub fn chain_len(&self) -> usize {
        let mut n = 0;
        let mut cur = self.fence();
        while let Some(f) = cur {
            n += 1;
            cur = f.0.link.borrow().as_ref().and_then(|l| l.prev.clone());
        }
        n
    }

    /// Host signal (`DRM_IOCTL_SYNCOBJ_(TIMELINE_)SIGNAL`): publishes an already-signalled
    /// fence at `point` (0 for binary).
    ///
    /// # Errors
    ///
    /// [`SyncError::NoMemory`].
    pub fn host_signal(&self, point: u64) -> Result<(), SyncError> {
        let mut f = SwFence::try_new()?;
        f.signal(Ok(()));
        let chain = if self.0.timeline {
            Some(SwChain(SwFence::try_new()?))
        } else {
            None
        };
        self.publish(point, chain, &f);
        Ok(())
    }
}

impl Syncobj for SwSyncobj {
    type Fence = SwFence;
    type Chain = SwChain;

    fn is_timeline(&self) -> bool {
        self.0.timeline
    }

    fn find(&self, point: u64) -> Point<SwFence> {
        let Some(head) = self.fence() else {
            return Point::NotSubmitted;
        };
        if !self.0.timeline || point == 0 {
            return Point::Fence(head);
        }
        if head.seqno() < point {
            return Point::NotSubmitted;
        }
        let mut best = head;
        loop {
            let (prev, floor) = {
                let link = best.0.link.borrow();
                match &*link {
                    Some(l) => (l.prev.clone(), l.floor),
                    None => (None, 0),
                }
            };
            match prev {
                Some(p) if p.seqno() >= point => best = p,
                Some(_) => return Point::Fence(best),
                None if floor >= point => return Point::Signalled,
                None => return Point::Fence(best),
            }
        }
    }

    fn publish(&self, point: u64, chain: Option<SwChain>, fence: &SwFence) {
        let mut head = self.0.head.borrow_mut();
        let Some(SwChain(node)) = chain.filter(|_| self.0.timeline) else {
            debug_assert!(
                !self.0.timeline,
                "timeline point published without a chain node"
            );
            *head = Some(fence.clone());
            return;
        };
        let prev = head.take();
        let prev_seqno = prev.as_ref().map_or(0, SwFence::seqno);
        // A point below the last one joins at the last one (the kernel warns and does the same).
        let seqno = point.max(prev_seqno);
        let (prev, floor) = match prev {
            Some(p) if p.status() == Some(Ok(())) => (None, prev_seqno),
            Some(p) => (Some(p), 0),
            None => (None, 0),
        };
        *node.0.link.borrow_mut() = Some(Link {
            seqno,
            inner: fence.clone(),
            prev,
            floor,
        });
        *head = Some(node);
    }
}

/// A software syncobj table: handles `1..` in creation order.
#[derive(Debug, Default)]
pub struct SwSyncs {
    objs: Vec<Option<SwSyncobj>>,
}

impl SwSyncs {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a syncobj (`DRM_IOCTL_SYNCOBJ_CREATE`) and returns its handle.
    ///
    /// # Errors
    ///
    /// [`SyncError::NoMemory`].
    pub fn create(&mut self, timeline: bool) -> Result<u32, SyncError> {
        let handle = u32::try_from(self.objs.len() + 1).map_err(|_| SyncError::NoMemory)?;
        self.objs.try_reserve(1).map_err(|_| SyncError::NoMemory)?;
        let obj = SwSyncobj::try_new(timeline)?;
        #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
        self.objs.push(Some(obj));
        Ok(handle)
    }

    /// Destroys `handle` (references held by jobs stay valid).
    pub fn destroy(&mut self, handle: u32) -> Option<SwSyncobj> {
        let i = usize::try_from(handle).ok()?.checked_sub(1)?;
        self.objs.get_mut(i)?.take()
    }

    /// The syncobj of `handle`.
    #[must_use]
    pub fn get(&self, handle: u32) -> Option<&SwSyncobj> {
        let i = usize::try_from(handle).ok()?.checked_sub(1)?;
        self.objs.get(i)?.as_ref()
    }
}

impl SyncTable for SwSyncs {
    type Fence = SwFence;
    type Syncobj = SwSyncobj;

    fn lookup(&mut self, handle: u32) -> Result<SwSyncobj, SyncError> {
        self.get(handle).cloned().ok_or(SyncError::NoSuchHandle)
    }

    fn new_fence(&mut self) -> Result<SwFence, SyncError> {
        SwFence::try_new()
    }

    fn alloc_chain(&mut self) -> Result<SwChain, SyncError> {
        SwFence::try_new().map(SwChain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signalled(r: Result<(), JobError>) -> SwFence {
        let mut f = SwFence::new();
        f.signal(r);
        f
    }

    #[test]
    fn timeline_points_complete_in_order_whatever_order_fences_signal() {
        let t = SwSyncobj::try_new(true).unwrap();
        let fs: [SwFence; 3] = [SwFence::new(), SwFence::new(), SwFence::new()];
        for (i, f) in fs.iter().enumerate() {
            t.publish(2 * i as u64 + 1, Some(SwChain(SwFence::new())), f);
        }
        assert_eq!(t.last_point(), 5);
        assert!(matches!(t.find(6), Point::NotSubmitted));
        let Point::Fence(p2) = t.find(2) else {
            panic!("point 2 resolves to the node of point 3")
        };
        let Point::Fence(p5) = t.find(5) else {
            panic!()
        };
        let mut fs = fs;
        fs[2].signal(Ok(()));
        assert_eq!(p5.status(), None, "point 5 waits for points 1 and 3");
        fs[1].signal(Err(JobError::InFence(-7)));
        assert_eq!(p2.status(), None, "point 3 waits for point 1");
        fs[0].signal(Ok(()));
        assert_eq!(p2.status(), Some(Err(JobError::InFence(-7))));
        assert_eq!(p5.status(), Some(Err(JobError::InFence(-7))));
        assert_eq!(t.chain_len(), 3, "a failed point keeps its chain");
    }

    #[test]
    fn publish_trims_a_completed_chain_and_remembers_the_point() {
        let t = SwSyncobj::try_new(true).unwrap();
        t.publish(4, Some(SwChain(SwFence::new())), &signalled(Ok(())));
        t.publish(9, Some(SwChain(SwFence::new())), &SwFence::new());
        assert_eq!(t.chain_len(), 1);
        assert!(matches!(t.find(3), Point::Signalled));
        assert!(matches!(t.find(4), Point::Signalled));
        assert!(matches!(t.find(5), Point::Fence(f) if f.status().is_none()));
        // A lower point joins at the last one.
        t.publish(2, Some(SwChain(SwFence::new())), &SwFence::new());
        assert_eq!(t.last_point(), 9);
    }

    #[test]
    fn binary_replaces_and_chain_nodes_ignore_signals() {
        let b = SwSyncobj::try_new(false).unwrap();
        assert!(matches!(b.find(0), Point::NotSubmitted));
        let f = SwFence::new();
        b.publish(0, None, &f);
        assert!(matches!(b.find(0), Point::Fence(g) if g.ptr_eq(&f)));
        let t = SwSyncobj::try_new(true).unwrap();
        t.publish(1, Some(SwChain(SwFence::new())), &f);
        let Point::Fence(mut node) = t.find(1) else {
            panic!()
        };
        node.signal(Ok(()));
        assert_eq!(
            node.status(),
            None,
            "a chain node completes only through its fence"
        );
        assert_eq!(
            Fence::status(&signalled(Err(JobError::Timeout))),
            Some(Err(-110))
        );
    }
}
