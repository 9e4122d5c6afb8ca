//! The reservation contract: how many nodes a request may take, as a pure function of the
//! request kind and the VA space's geometry, and the claims that set them aside.
//!
//! # The bound, derived
//!
//! A VA space of `S` address units whose requests are aligned to a granule `G` holds at most
//! `M = S / G` mappings, so at most `M` entries in the object index and (see
//! [`GpuVm::link_obtain`]) at most `2M` links. A B+tree whose nodes off its two edge paths are at
//! least half full has height at most `h(M)` (`btree::max_height`; the derivation is in
//! `docs/gpuva-storage.md`). One insert takes at most `h + 1` nodes:
//!
//! ```text
//!   level h   [root, full] ----> split: +1 node, and a new root: +1 node
//!   ...       [branch, full] --> split: +1 node
//!   level 1   [leaf, full] ----> split: +1 node               (h + 1 in all)
//! ```
//!
//! and removals never take nodes (merges give them back). A request's inserts:
//!
//! | request | mapping tree | object index | link tree |
//! |---|---|---|---|
//! | map with an object | 1 (the map, or the map and a split's `next` piece together) | 2 (the map; a split's `next` piece of another object) | 0 (the link exists: pinned in prepare) |
//! | map without object | 1 | 1 (a split's `next` piece) | 0 |
//! | unmap | 1 (a split's `next` piece) | 1 | 0 |
//! | [`GpuVm::link_obtain`] | 0 | 0 | 1 |
//!
//! For a 2^48-byte space at 4 KiB granularity (`M = 2^36`) the heights are 10 (mappings), 11
//! (object index) and 11 (links), so a map with an object reserves 11 + 2 * 12 = 35 nodes, a map
//! without one or an unmap 23, a link 12, and any request of a VA space without links 11
//! (`GpuVm::bounds` reports the figures; the tests check them against adversarial trees).
//!
//! Those are worst cases no request sequence can exceed, and they are paid in node *claims*, not
//! allocations: nodes live in the VA space's spare cache, claims only set them aside. Splits draw
//! from the cache and merges give back to it, so in steady state prepare finds the cache full
//! enough and allocates nothing ([`GpuVm::shortfall`] is 0).

use core::fmt;

use crate::btree::{insert_nodes, max_height};
use crate::node::{NodeBag, NodePtr, BR128, BR64, LINK_LEAF, OBJ_LEAF, VA_LEAF};
use crate::sm::Request;
use crate::vm::GpuVm;

/// Node bounds of one VA space, fixed at creation from its geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Mappings the geometry allows at most (`space length / granule`).
    pub max_mappings: u128,
    /// Height bound of the mapping tree.
    pub va_height: usize,
    /// Height bound of the object index.
    pub obj_height: usize,
    /// Height bound of the link tree.
    pub link_height: usize,
    /// Nodes a map request with an object needs.
    pub map_obj: usize,
    /// Nodes a map request without an object needs.
    pub map_null: usize,
    /// Nodes an unmap request needs.
    pub unmap: usize,
    /// Nodes [`GpuVm::link_obtain`] needs.
    pub link: usize,
}

impl Bounds {
    pub(crate) const fn new(max_mappings: u128, links: bool) -> Self {
        let va_height = max_height(max_mappings, half(VA_LEAF), half(BR64));
        let obj_height = max_height(max_mappings, half(OBJ_LEAF), half(BR128));
        let link_height = max_height(max_mappings.saturating_mul(2), half(LINK_LEAF), half(BR64));
        let va = insert_nodes(va_height);
        let (obj, link) = if links {
            (insert_nodes(obj_height), insert_nodes(link_height))
        } else {
            (0, 0)
        };
        Self {
            max_mappings,
            va_height,
            obj_height,
            link_height,
            map_obj: va + 2 * obj,
            map_null: va + obj,
            unmap: va + obj,
            link,
        }
    }

    /// Nodes `req` needs at most.
    #[must_use]
    pub const fn for_request(&self, req: &Request) -> usize {
        match req {
            Request::Map(m) if m.obj.is_some() => self.map_obj,
            Request::Map(_) => self.map_null,
            Request::Unmap { .. } => self.unmap,
        }
    }
}

const fn half(n: usize) -> u128 {
    (n / 2) as u128
}

/// Nodes set aside in a VA space's spare cache for requests yet to run, from
/// [`GpuVm::reserve`].
///
/// Each request run with the claim uses up its bound ([`Bounds::for_request`]); give what is left
/// back with [`GpuVm::release`]. Claims of one VA space can be combined ([`Claim::absorb`]), so a
/// job of several ops holds one.
#[must_use = "a claim holds nodes aside until it is released with GpuVm::release"]
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub(crate) vm: usize,
    pub(crate) nodes: usize,
}

impl Claim {
    /// Nodes still claimed.
    #[must_use]
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Adds `other` (of the same VA space) to `self`.
    ///
    /// # Errors
    ///
    /// `other`, unchanged, if it belongs to another VA space.
    pub fn absorb(&mut self, other: Claim) -> Result<(), Claim> {
        if other.vm != self.vm {
            return Err(other);
        }
        self.nodes += other.nodes;
        Ok(())
    }
}

/// Error returned by [`GpuVm::reserve`]; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveError {
    /// The bag held fewer nodes than the spare cache lacks.
    Short {
        /// Nodes the cache lacked.
        needed: usize,
        /// Nodes the bag had.
        available: usize,
    },
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { needed, available } => write!(
                f,
                "reservation needs {needed} more nodes, the bag holds {available}"
            ),
        }
    }
}

impl core::error::Error for ReserveError {}

/// Why a claim cannot pay for a request.
pub(crate) enum ClaimError {
    Foreign,
    Short { needed: usize, available: usize },
}

impl<D, P: NodePtr<D, L>, L> GpuVm<D, P, L> {
    /// The node bounds of this VA space.
    #[must_use]
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Nodes `req` may need at most: a pure function of the request kind and the geometry.
    #[must_use]
    pub fn nodes_for(&self, req: &Request) -> usize {
        self.bounds.for_request(req)
    }

    /// Nodes [`GpuVm::link_obtain`] needs.
    #[must_use]
    pub fn link_nodes(&self) -> usize {
        self.bounds.link
    }

    /// Nodes a caller must bring to [`GpuVm::reserve`] to claim `need` more now (0 when the spare
    /// cache already covers it).
    #[must_use]
    pub fn shortfall(&self, need: usize) -> usize {
        self.claimed
            .saturating_add(need)
            .saturating_sub(self.spare.len())
    }

    /// Claims `need` nodes, moving the [`GpuVm::shortfall`] from `bag` into the spare cache (the
    /// rest of `bag` is left alone). Never allocates: fill `bag` before taking the VM lock.
    /// Also drains zombie links (their payloads are dropped here).
    ///
    /// # Errors
    ///
    /// [`ReserveError::Short`] if `bag` holds fewer nodes than the shortfall; nothing changed.
    pub fn reserve(
        &mut self,
        need: usize,
        bag: &mut NodeBag<D, L, P>,
    ) -> Result<Claim, ReserveError> {
        let short = self.shortfall(need);
        if bag.len() < short {
            return Err(ReserveError::Short {
                needed: short,
                available: bag.len(),
            });
        }
        for _ in 0..short {
            if let Some(n) = bag.pop() {
                self.spare.push(n);
            }
        }
        self.claimed += need;
        self.drain_zombies(|_, _| {});
        Ok(Claim {
            vm: self.id,
            nodes: need,
        })
    }

    /// Gives back what is left of a claim.
    ///
    /// # Errors
    ///
    /// The claim, unchanged, if it belongs to another VA space.
    pub fn release(&mut self, claim: Claim) -> Result<(), Claim> {
        if claim.vm != self.id {
            return Err(claim);
        }
        self.claimed = self.claimed.saturating_sub(claim.nodes);
        Ok(())
    }

    /// Hands out the spare nodes beyond what claims hold and `keep` more, for the caller to free
    /// outside the VM lock.
    pub fn trim(&mut self, keep: usize) -> NodeBag<D, L, P> {
        let mut out = NodeBag::new();
        let floor = self.claimed.saturating_add(keep);
        while self.spare.len() > floor {
            match self.spare.pop() {
                Some(n) => out.push(n),
                None => break,
            }
        }
        out
    }

    /// Nodes in the spare cache.
    #[must_use]
    pub fn spare_nodes(&self) -> usize {
        self.spare.len()
    }

    /// Nodes drawn from the spare cache so far (splits and new roots; moving nodes out with
    /// [`GpuVm::trim`] counts too). Tests use it to check that no request exceeds its bound.
    #[must_use]
    pub fn nodes_taken(&self) -> u64 {
        self.spare.taken()
    }

    /// Nodes claims hold.
    #[must_use]
    pub fn claimed_nodes(&self) -> usize {
        self.claimed
    }

    /// Checks that `claim` belongs here and covers `need`.
    pub(crate) fn check_claim(&self, claim: &Claim, need: usize) -> Result<(), ClaimError> {
        if claim.vm != self.id {
            return Err(ClaimError::Foreign);
        }
        if claim.nodes < need {
            return Err(ClaimError::Short {
                needed: need,
                available: claim.nodes,
            });
        }
        Ok(())
    }

    /// Uses up `need` of `claim` (checked by [`GpuVm::check_claim`]).
    pub(crate) fn consume(&mut self, claim: &mut Claim, need: usize) {
        claim.nodes -= need;
        self.claimed = self.claimed.saturating_sub(need);
    }
}
