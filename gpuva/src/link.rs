//! Object links (drm_gpuvm's vm_bo): one per (VA space, object), finding every mapping of the
//! object without scanning the VA space.
//!
//! ```text
//!   links:        obj 7 -> { mappings: 2, pins: 1, external, data L }
//!   object index: (7, 0x1000) (7, 0x9000) (9, 0x4000) ...   ordered by (object, start)
//!   mappings:     0x1000 -> obj 7 ...   0x4000 -> obj 9 ...   0x9000 -> obj 7 ...
//! ```
//!
//! # Lifecycle
//!
//! * **prepare** (ioctl context, under the VM lock, allocation done before taking it):
//!   [`GpuVm::link_obtain`] finds the object's link or creates it from reserved nodes, and pins
//!   it: a pinned link stays even if every mapping of the object goes away, so the job that holds
//!   the pin can rely on it at run time. Set per-link state (external, driver data) here.
//! * **run**: a map of an object attaches the new mapping to the object's link (which must exist:
//!   a map of an object without a link is refused before anything changes); pieces of a split
//!   stay on the link of the mapping they came from, because the link is the object's. Removing
//!   the last mapping of an unpinned link makes it a *zombie*: still in the tree, invisible to the
//!   iterators, queued for cleanup. Nothing is freed or dropped.
//! * **cleanup**: [`GpuVm::link_put`] drops the pin. Zombies are drained by
//!   [`GpuVm::drain_zombies`], which hands their payloads back; prepare-side calls
//!   ([`GpuVm::reserve`]) and dropping the VA space drain them too, so a driver that forgets
//!   leaks nothing.
//!
//! Eviction state (`evicted`) and external objects are flags of the link; the iterators over
//! evicted and external links walk the links, never the mappings.

use core::fmt;

use crate::error::LinkError;
use crate::node::NodePtr;
use crate::va::{GpuVa, ObjId};
use crate::vm::GpuVm;

/// State bits of a link, kept in the link leaf's tag column.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LinkState(u8);

impl LinkState {
    const EXTERNAL: u8 = 1;
    const EVICTED: u8 = 2;
    /// On the zombie chain (possibly revived since: drain checks).
    const QUEUED: u8 = 4;

    pub(crate) fn queued(self) -> bool {
        self.has(Self::QUEUED)
    }

    pub(crate) fn set_queued(&mut self, on: bool) {
        self.set(Self::QUEUED, on);
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// A `u64` stored as two `u32` halves, so that a record of them and a `u32` packs into 20
/// bytes (align 4) instead of 24: 20 link entries fit one node instead of 17.
#[derive(Clone, Copy, Default)]
pub(crate) struct U64Pair([u32; 2]);

impl U64Pair {
    pub(crate) fn get(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }

    pub(crate) fn new(v: u64) -> Self {
        // The halves of v: truncation is the point.
        #[expect(clippy::cast_possible_truncation, reason = "splitting into halves")]
        Self([v as u32, (v >> 32) as u32])
    }
}

/// What the link tree stores per object (20 bytes with `L = ()`).
pub(crate) struct LinkRec<L> {
    /// Mappings of the object in this VA space.
    maps: U64Pair,
    /// Outstanding [`LinkPin`]s.
    pub(crate) pins: u32,
    /// Next zombie on the chain (raw object id; 0 ends it).
    next_zombie: U64Pair,
    pub(crate) data: L,
}

impl<L> LinkRec<L> {
    pub(crate) fn new(pins: u32, data: L) -> Self {
        Self {
            maps: U64Pair::default(),
            pins,
            next_zombie: U64Pair::default(),
            data,
        }
    }

    pub(crate) fn idle(&self) -> bool {
        self.maps() == 0 && self.pins == 0
    }

    /// Mappings of the object.
    pub(crate) fn maps(&self) -> u64 {
        self.maps.get()
    }

    pub(crate) fn set_maps(&mut self, n: u64) {
        self.maps = U64Pair::new(n);
    }

    pub(crate) fn add_map(&mut self) {
        self.set_maps(self.maps().saturating_add(1));
    }

    pub(crate) fn sub_map(&mut self) {
        self.set_maps(self.maps().saturating_sub(1));
    }

    /// Takes the next-zombie link (leaving 0).
    pub(crate) fn take_next_zombie(&mut self) -> u64 {
        core::mem::take(&mut self.next_zombie).get()
    }

    pub(crate) fn set_next_zombie(&mut self, key: u64) {
        self.next_zombie = U64Pair::new(key);
    }
}

/// A pin on a link, from [`GpuVm::link_obtain`]; give it back with [`GpuVm::link_put`].
///
/// While pinned, the link exists whatever happens to the object's mappings. Dropping a pin
/// without giving it back keeps the link alive until the VA space is dropped (no memory is lost,
/// but the link never becomes a zombie).
#[must_use = "a pin keeps its link alive until it is given back with GpuVm::link_put"]
#[derive(Debug, PartialEq, Eq)]
pub struct LinkPin {
    vm: usize,
    obj: ObjId,
}

impl LinkPin {
    /// The pinned link's object.
    #[must_use]
    pub fn obj(&self) -> ObjId {
        self.obj
    }
}

/// A live link, as seen from outside.
pub struct Link<'a, L> {
    obj: ObjId,
    rec: &'a LinkRec<L>,
    state: LinkState,
}

impl<'a, L> Link<'a, L> {
    /// The object.
    #[must_use]
    pub fn obj(&self) -> ObjId {
        self.obj
    }

    /// How many mappings of the object the VA space holds.
    #[must_use]
    pub fn mappings(&self) -> u64 {
        self.rec.maps()
    }

    /// Outstanding pins.
    #[must_use]
    pub fn pins(&self) -> u32 {
        self.rec.pins
    }

    /// Whether the object is external (its reservation is not the VM's: drm_gpuvm's extobj).
    #[must_use]
    pub fn is_external(&self) -> bool {
        self.state.has(LinkState::EXTERNAL)
    }

    /// Whether the object is marked evicted (its mappings need revalidation before use).
    #[must_use]
    pub fn is_evicted(&self) -> bool {
        self.state.has(LinkState::EVICTED)
    }

    /// The driver's per-link data.
    #[must_use]
    pub fn data(&self) -> &'a L {
        &self.rec.data
    }
}

impl<L: fmt::Debug> fmt::Debug for Link<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("obj", &self.obj)
            .field("mappings", &self.rec.maps())
            .field("pins", &self.rec.pins)
            .field("external", &self.is_external())
            .field("evicted", &self.is_evicted())
            .field("data", &self.rec.data)
            .finish()
    }
}

impl<D, P: NodePtr<D, L>, L> GpuVm<D, P, L> {
    /// Finds the link of `obj` or creates it with `make()` as its data, and pins it
    /// (`drm_gpuvm_bo_obtain_prealloc`). A prepare-side call: run it under the VM lock, with a
    /// claim from [`GpuVm::reserve`] covering [`GpuVm::link_nodes`] (taken from the claim whether
    /// or not a link had to be created). `make` is only called to create.
    ///
    /// # Errors
    ///
    /// Nothing changes on any error: [`LinkError::LinksDisabled`] for a VA space made without
    /// links, [`LinkError::Foreign`] for another VA space's claim,
    /// [`LinkError::ReservationTooSmall`], [`LinkError::TooManyLinks`] when the VA space already
    /// holds twice as many links as it can have mappings, [`LinkError::TooManyPins`].
    pub fn link_obtain(
        &mut self,
        obj: ObjId,
        claim: &mut crate::Claim,
        make: impl FnOnce() -> L,
    ) -> Result<LinkPin, LinkError> {
        if !self.links_on {
            return Err(LinkError::LinksDisabled);
        }
        let need = self.bounds.link;
        self.check_claim(claim, need).map_err(|e| match e {
            crate::reserve::ClaimError::Foreign => LinkError::Foreign,
            crate::reserve::ClaimError::Short { needed, available } => {
                LinkError::ReservationTooSmall { needed, available }
            }
        })?;
        let key = obj.get();
        if let Some((rec, _)) = self.links.get_mut(key) {
            if rec.pins == u32::MAX {
                return Err(LinkError::TooManyPins);
            }
            rec.pins += 1;
        } else {
            // Links are created only here, so refusing at 2M keeps every link tree within the
            // 2M entries its height bound counts (M = max_mappings). Zombies count until drained:
            // `reserve` drains them first. (Refusing at M refused valid maps: a map replacing the
            // only mapping of a one-mapping space needs the new object's link while the old one
            // still exists.)
            if self.links.len() as u128 >= self.bounds.max_mappings.saturating_mul(2) {
                return Err(LinkError::TooManyLinks);
            }
            let rec = LinkRec::new(1, make());
            let mut items = crate::btree::Items::new();
            items.push((key, rec, LinkState::default()));
            if self
                .links
                .insert(key, items, None, &mut self.spare)
                .is_err()
            {
                // Unreachable with a valid claim (the spare cache covers it).
                debug_assert!(false, "link insert ran out of reserved nodes");
                return Err(LinkError::ReservationTooSmall {
                    needed: need,
                    available: self.spare.len(),
                });
            }
        }
        self.consume(claim, need);
        Ok(LinkPin { vm: self.id, obj })
    }

    /// Gives a pin back. A link left with no mapping and no pin becomes a zombie, drained later.
    ///
    /// # Errors
    ///
    /// [`LinkError::Foreign`] for another VA space's pin (it is handed back inside the error).
    pub fn link_put(&mut self, pin: LinkPin) -> Result<(), (LinkPin, LinkError)> {
        if pin.vm != self.id {
            return Err((pin, LinkError::Foreign));
        }
        let obj = pin.obj;
        let Some((rec, state)) = self.links.get_mut(obj.get()) else {
            return Err((pin, LinkError::NoLink(obj)));
        };
        rec.pins = rec.pins.saturating_sub(1);
        crate::vm::queue_zombie(&mut self.zombies, obj.get(), rec, state);
        Ok(())
    }

    /// The live link of `obj` (zombies are not shown).
    #[must_use]
    pub fn link(&self, obj: ObjId) -> Option<Link<'_, L>> {
        let (rec, state) = self.links.get(obj.get())?;
        (!rec.idle()).then_some(Link { obj, rec, state })
    }

    /// The driver data of the live link of `obj`, mutably.
    pub fn link_data_mut(&mut self, obj: ObjId) -> Option<&mut L> {
        let (rec, _) = self.links.get_mut(obj.get())?;
        (!rec.idle()).then_some(&mut rec.data)
    }

    /// Marks the link of `obj` external or not (`drm_gpuvm_bo_extobj_add`).
    ///
    /// # Errors
    ///
    /// [`LinkError::NoLink`] if `obj` has no live link.
    pub fn set_external(&mut self, obj: ObjId, external: bool) -> Result<(), LinkError> {
        self.set_state(obj, LinkState::EXTERNAL, external)
    }

    /// Marks the object evicted or valid again (`drm_gpuvm_bo_evict`).
    ///
    /// # Errors
    ///
    /// [`LinkError::NoLink`] if `obj` has no live link.
    pub fn set_evicted(&mut self, obj: ObjId, evicted: bool) -> Result<(), LinkError> {
        self.set_state(obj, LinkState::EVICTED, evicted)
    }

    fn set_state(&mut self, obj: ObjId, bit: u8, on: bool) -> Result<(), LinkError> {
        match self.links.get_mut(obj.get()) {
            Some((rec, state)) if !rec.idle() => {
                state.set(bit, on);
                Ok(())
            }
            _ => Err(LinkError::NoLink(obj)),
        }
    }

    /// Every live link, by object id. O(links), never touching mappings.
    pub fn links(&self) -> impl Iterator<Item = Link<'_, L>> + '_ {
        let mut c = self.links.first();
        let mut started = false;
        core::iter::from_fn(move || loop {
            if started && !c.next() {
                return None;
            }
            started = true;
            let (k, rec, state) = c.get()?;
            if rec.idle() {
                continue;
            }
            let obj = ObjId::new(k)?;
            return Some(Link { obj, rec, state });
        })
    }

    /// The live links marked evicted (to revalidate before the next use).
    pub fn evicted_links(&self) -> impl Iterator<Item = Link<'_, L>> + '_ {
        self.links().filter(Link::is_evicted)
    }

    /// The live links of external objects (whose reservations a job must lock).
    pub fn external_links(&self) -> impl Iterator<Item = Link<'_, L>> + '_ {
        self.links().filter(Link::is_external)
    }

    /// The start addresses of the mappings of `obj`, ascending. O(log n + k) for k mappings.
    pub fn link_addrs(&self, obj: ObjId) -> impl Iterator<Item = u64> + '_ {
        let o = obj.get();
        let mut c = self.objs.seek((o, 0));
        let mut started = false;
        core::iter::from_fn(move || {
            if started && !c.next() {
                return None;
            }
            started = true;
            let (k, _, _) = c.get()?;
            (k.0 == o).then_some(k.1)
        })
    }

    /// The mappings of `obj`, in address order (each one a lookup: O(k log n)).
    pub fn link_mappings(&self, obj: ObjId) -> impl Iterator<Item = GpuVa<'_, D>> + '_ {
        self.link_addrs(obj).filter_map(|a| self.lookup(a))
    }

    /// Removes every zombie link, handing its object and payload to `each`. Prepare-side or
    /// cleanup context (it may drop driver data). O(z log n) for z zombies.
    pub fn drain_zombies(&mut self, mut each: impl FnMut(ObjId, L)) {
        let mut key = core::mem::take(&mut self.zombies);
        while key != 0 {
            let Some((rec, state)) = self.links.get_mut(key) else {
                break;
            };
            let next = rec.take_next_zombie();
            state.set(LinkState::QUEUED, false);
            if rec.idle() {
                if let Some((k, rec, _)) = self.links.remove(key, &mut self.spare) {
                    if let Some(obj) = ObjId::new(k) {
                        each(obj, rec.data);
                    }
                }
            }
            key = next;
        }
    }
}
