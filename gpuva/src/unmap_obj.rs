//! [`Request::UnmapObject`](crate::Request::UnmapObject) in one walk.
//!
//! With links, the object index lists the object's mappings in address order. One range walk of
//! the index visits them; for each, one descent of the mapping tree hands the `Unmap` step to the
//! visitor and removes the entry in its leaf (rebalancing on the way back up), and the index walk
//! removes the index entry in place. That is one mapping-tree descent per mapping and an amortised
//! O(1) index step, where a loop of one `Unmap` request per mapping pays a mapping-tree descent
//! plus an index descent per mapping (and re-seeking both trees per step, as the first version of
//! this request did, two more).
//!
//! ```text
//!   object index  (X,100) (X,350) (X,500) (Y,200)     walk_range [(X,0), (X,MAX)): remove each
//!                    |       |       |
//!   mapping tree    100     350     500  ...          local(addr): step_unmap, remove in the leaf
//! ```

use core::marker::PhantomData;

use crate::btree::{Act, Local, RangeVisit};
use crate::index::{LinkTree, VaTree};
use crate::node::{NodeBag, NodePtr, ObjKey};
use crate::sm::{OpUnmap, Pending, SmVisitor};
use crate::va::{GpuVa, Mapping, ObjId};
use crate::vm::{queue_zombie, GpuVm};

/// Hands `m` (payload `data`) to the visitor as an `Unmap { keep: false }` step; whether the
/// visitor applied it (it always does when it returns `Ok`: the token proves it).
fn ask<D, V: SmVisitor<D>>(visitor: &mut V, m: Mapping, data: &D) -> Result<bool, V::Error> {
    let mut pending = Pending::None;
    visitor
        .step_unmap(OpUnmap {
            pending: &mut pending,
            node: GpuVa::new(m, data),
            keep: false,
            _inv: PhantomData,
        })
        .map(drop)?;
    Ok(matches!(pending, Pending::Unmap))
}

/// The index walk's visitor: removes each visited mapping from the mapping tree.
struct Each<'a, D, L, P: NodePtr<D, L>, V: SmVisitor<D>> {
    vas: &'a mut VaTree<D, L, P>,
    spare: &'a mut NodeBag<D, L, P>,
    links: &'a mut LinkTree<D, L, P>,
    zombies: &'a mut u64,
    visitor: &'a mut V,
    err: Option<V::Error>,
    changed: bool,
}

impl<D, L, P: NodePtr<D, L>, V: SmVisitor<D>> Each<'_, D, L, P, V> {
    /// The step for the mapping at `addr`; the removed mapping and payload, if it was applied.
    fn unmap_at(&mut self, addr: u64) -> Option<(Mapping, D)> {
        let visitor = &mut *self.visitor;
        let mut out = None;
        let mut err = None;
        let mut called = false;
        // One descent: step and removal in the leaf. `local` declines before calling the closure
        // when the spare cache holds fewer nodes than an insert could take (this request claims
        // none); then a lookup and a removal do the same in two descents.
        self.vas.local(
            addr,
            |leaf, _| {
                called = true;
                let i = leaf.lower_bound(addr);
                let none = Local::Done {
                    removed: 0,
                    insert: None,
                    bump: None,
                };
                if leaf.key(i) != Some(addr) {
                    debug_assert!(false, "object index names a missing mapping");
                    return none;
                }
                let Some((v, t)) = leaf.entry_mut(i) else {
                    return none;
                };
                let m = v.mapping(addr, *t);
                match ask(visitor, m, &v.data) {
                    Err(e) => {
                        err = Some(e);
                        none
                    }
                    Ok(false) => none,
                    Ok(true) => match leaf.remove(i) {
                        Some((_, v, _)) => {
                            out = Some((m, v.data));
                            Local::Done {
                                removed: 1,
                                insert: None,
                                bump: None,
                            }
                        }
                        None => none,
                    },
                }
            },
            self.spare,
        );
        if !called {
            let (v, t) = self.vas.get_mut(addr)?;
            let m = v.mapping(addr, *t);
            match ask(self.visitor, m, &v.data) {
                Err(e) => err = Some(e),
                Ok(false) => {}
                Ok(true) => {
                    out = self
                        .vas
                        .remove(addr, self.spare)
                        .map(|(_, v, _)| (m, v.data))
                }
            }
        }
        if let Some(e) = err {
            self.err = Some(e);
        }
        out
    }
}

impl<D, L, P: NodePtr<D, L>, V: SmVisitor<D>> RangeVisit<ObjKey, (), ()> for Each<'_, D, L, P, V> {
    fn visit(&mut self, k: ObjKey, _: &mut (), _: &mut ()) -> Act<ObjKey> {
        if self.err.is_some() {
            return Act::Stop;
        }
        let Some((m, data)) = self.unmap_at(k.1) else {
            return Act::Stop;
        };
        self.changed = true;
        if let Some((rec, state)) = self.links.get_mut(k.0) {
            rec.sub_map();
            queue_zombie(self.zombies, k.0, rec, state);
        }
        self.visitor.removed(m, data);
        Act::Remove
    }

    fn removed(&mut self, _: ObjKey, (): (), (): ()) {}
}

impl<D, P: NodePtr<D, L>, L> GpuVm<D, P, L> {
    /// Runs an unmap of every mapping of `obj` in one walk of the object index (links on), or one
    /// scan of the mapping tree (links off). The claim was checked (it needs no nodes).
    pub(crate) fn unmap_object_walk<V: SmVisitor<D>>(
        &mut self,
        obj: ObjId,
        visitor: &mut V,
    ) -> Result<(), V::Error> {
        if !self.links_on {
            let mut from = 0;
            loop {
                let next = self
                    .starting_in(from, u64::MAX)
                    .find(|v| v.obj() == Some(obj))
                    .map(|v| v.mapping());
                let Some(m) = next else { break };
                from = m.end();
                self.walk_apply(&crate::sm::Walker::unmap(m.addr, m.end()), None, visitor)?;
            }
            return Ok(());
        }
        let o = obj.get();
        let mut each = Each {
            vas: &mut self.vas,
            spare: &mut self.spare,
            links: &mut self.links,
            zombies: &mut self.zombies,
            visitor,
            err: None,
            changed: false,
        };
        // The index walk's own merges go to `retired`: the spare cache is lent to the mapping
        // tree's removals meanwhile.
        let mut retired = NodeBag::new();
        // No mapping starts at u64::MAX (it would end past 2^64), so the exclusive end is safe.
        self.objs
            .walk_range((o, 0), (o, u64::MAX), &mut each, &mut retired);
        let Each { err, changed, .. } = each;
        self.spare.append(&mut retired);
        if changed {
            self.bump_generation();
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
