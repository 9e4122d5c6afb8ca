//! GPU virtual address space tracking with drm_gpuvm-exact split/merge semantics, on B+trees
//! whose worst case no request sequence can push.
//!
//! # Overview
//!
//! A [`GpuVm`] tracks the mappings of one GPU virtual address space: `[start, end)`, minus an
//! optional kernel-reserved cut-out. A mapping covers `[addr, addr + len)` and is backed by an
//! object at an offset ([`Mapping`]), or by nothing (a sparse/NULL mapping); it carries
//! [`VaFlags`] and a driver payload `D`. Mappings never overlap. Every object mapped in a VA
//! space has one [`Link`] (drm_gpuvm's vm_bo) that finds all of its mappings, carries per-object
//! state (external, evicted) and a driver payload `L`.
//!
//! The crate does what the kernel's drm_gpuvm does for drivers, and nothing about page tables:
//! given a map or unmap request, it computes the split/merge operations the request implies, in
//! exactly drm_gpuvm's order and form, and applies them.
//!
//! # Split and merge
//!
//! See [`sm`] for the rules and one diagram per case (and `docs/semantics.md` in the repository
//! for the whole reference). In short: each existing mapping overlapping the request becomes an
//! `Unmap` or a `Remap` (keeping the parts outside the request as `prev` / `next` pieces), and a
//! map request ends with one `Map`. Requests are validated first: zero size, overflow, leaving the
//! VA space, touching the cut-out or missing the granule are [`RangeError`]s and change nothing.
//!
//! # Storage
//!
//! Three B+trees of fixed-size [`Node`]s (see `btree/`): mappings by start address (stored inline,
//! 16 to a leaf), the object index by `(object, start)`, links by object. Balanced by construction:
//! every operation is O(log n) for every request sequence (no randomness, no seed, no maintenance),
//! a walk over k overlapped mappings is O(log n + k), teardown is iterative.
//!
//! # Locking
//!
//! None inside: mutation takes `&mut GpuVm` (the driver's VM lock).
//!
//! # Allocation
//!
//! gpuva never allocates. Node memory comes from the caller as [`NodePtr`] handles, in
//! [`NodeBag`]s, into the VA space's spare cache:
//!
//! * the nodes a request may need at most are a pure function of the request kind and the VA
//!   space's geometry ([`GpuVm::nodes_for`], [`Bounds`]; the derivation is in `reserve.rs`), so a
//!   queued job can reserve them before anyone knows the tree it will run against;
//! * prepare claims them ([`GpuVm::reserve`], after allocating [`GpuVm::shortfall`] nodes outside
//!   the lock: usually none, because merges refill the cache); run draws from the cache and never
//!   fails for lack of nodes; cleanup releases the claim and may [`GpuVm::trim`] the cache;
//! * removed payloads go back to the step visitor by value ([`SmVisitor::removed`]); idle links
//!   become zombies, drained outside the run stage.
//!
//! The `alloc` feature (default) adds [`BoxNode`], [`OpList`] and [`GpuVm::reserve_boxed`]; every
//! allocation there is fallible. Without it the crate builds against `core` alone.
//!
//! # Examples
//!
//! Record the ops a request implies, then apply it:
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Op};
//!
//! let mut vm = GpuVm::<(), BoxNode<()>>::new(0..1000, 0..0)?.without_links();
//! let (x, y) = (ObjId::new(1), ObjId::new(2));
//! let mut claim = vm.reserve_boxed(2 * vm.bounds().map_obj)?;
//! vm.map(Mapping::new(100, 300, x, 0), &mut claim)?;
//!
//! // Example E5 of docs/semantics.md: a map strictly inside another object's mapping.
//! let ops = vm.sm_map_ops(Mapping::new(200, 100, y, 7))?;
//! assert_eq!(ops.ops(), [
//!     Op::Remap {
//!         unmap: Mapping::new(100, 300, x, 0),
//!         keep: false,
//!         prev: Some(Mapping::new(100, 100, x, 0)),
//!         next: Some(Mapping::new(300, 100, x, 200)),
//!     },
//!     Op::Map(Mapping::new(200, 100, y, 7)),
//! ]);
//! vm.apply_ops(&ops, &mut claim, &mut gpuva::Apply::default())?;
//! assert_eq!(vm.len(), 3);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Without any allocator, nodes can live in a caller array:
//!
//! ```
//! use gpuva::{GpuVm, Mapping, Node, NodeBag, ObjId, RefNode};
//!
//! // The slots outlive every handle to them; `ManuallyDrop` says so to the borrow checker (a
//! // node holds arrays with drop glue, which would otherwise need the borrow at drop time).
//! let mut slots: core::mem::ManuallyDrop<[Node<(), (), RefNode<'_, ()>>; 8]> =
//!     core::mem::ManuallyDrop::new(core::array::from_fn(|_| Node::new()));
//! let mut bag = NodeBag::new();
//! for slot in slots.iter_mut() {
//!     bag.push(RefNode::new(slot));
//! }
//! // A 4 KiB-granular 1 MiB space: at most 256 mappings, so small bounds.
//! let mut vm = GpuVm::with_granule(0..0x10_0000, 0..0, 0x1000)?.without_links();
//! let mut claim = vm.reserve(vm.bounds().map_obj, &mut bag)?;
//! vm.map(Mapping::new(0, 0x1000, ObjId::new(1), 0), &mut claim)?;
//! assert_eq!(vm.lookup(0x800).map(|va| va.range()), Some(0..0x1000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;

mod btree;
/// The design behind the storage: B+trees, the reservation contract and its derivation, object
/// links, memory and stack use (the repository's `docs/gpuva-storage.md`).
#[doc = include_str!("../../docs/gpuva-storage.md")]
pub mod design {}
/// The split/merge semantics reference (the repository's `docs/semantics.md`).
#[doc = include_str!("../../docs/semantics.md")]
pub mod semantics {}
mod error;
mod ext;
mod index;
/// The repository README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "alloc"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
mod link;
mod node;
mod repeat;
mod reserve;
pub mod sm;
mod unmap_obj;
mod va;
mod vm;

pub use error::{ApplyError, LinkError, NewError, OpsError, RangeError, StepError};
pub use link::{Link, LinkPin};
#[cfg(feature = "alloc")]
pub use node::BoxNode;
pub use node::{AllocError, Node, NodeBag, NodePtr, RefNode};
pub use repeat::Repeat;
pub use reserve::{Bounds, Claim, ReserveError};
#[cfg(feature = "alloc")]
pub use sm::OpList;
pub use sm::{
    Apply, Op, OpMap, OpMapped, OpPrefetch, OpPrefetched, OpRemap, OpRemapped, OpUnmap, OpUnmapped,
    Piece, Plan, Record, Request, SmVisitor,
};
pub use va::{GpuVa, Mapping, ObjId, VaFlags};
pub use vm::{GpuVm, VaCursor};
