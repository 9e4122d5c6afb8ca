//! GPU virtual address space tracking with drm_gpuvm-exact split/merge semantics.
//!
//! # Overview
//!
//! A [`GpuVm`] tracks the mappings of one GPU virtual address space: `[start, end)`, minus an
//! optional kernel-reserved cut-out. A mapping ([`GpuVa`]) covers `[addr, addr + len)` and is backed
//! by an object at an offset ([`Mapping`]), or by nothing (a sparse/NULL mapping); it carries
//! [`VaFlags`] and a driver payload `D`. Mappings never overlap.
//!
//! The crate does what the kernel's drm_gpuvm does for drivers, and nothing about page tables: given
//! a map or unmap request, it computes the split/merge operations the request implies, in exactly
//! drm_gpuvm's order and form, and applies them to the tree.
//!
//! # Split and merge
//!
//! See [`sm`] for the rules and one diagram per case. In short: each existing mapping overlapping
//! the request becomes an `Unmap` or a `Remap` (keeping the parts outside the request as `prev` /
//! `next` pieces), and a map request ends with one `Map`. Requests are validated first: zero size,
//! overflow, leaving the VA space or touching the cut-out are [`RangeError`]s and change nothing.
//!
//! # Locking
//!
//! None inside: mutation takes `&mut GpuVm` (the driver's VM lock). Node reservations are separate
//! values, so prepare can reserve while a job runs.
//!
//! # Allocation
//!
//! gpuva never allocates. Node memory comes from the caller as [`NodePtr`] handles:
//!
//! * a map request needs at most [`MAX_MAP_NODES`] = 3 new nodes (the mapping, `prev`, `next`);
//! * an unmap request needs at most [`MAX_UNMAP_NODES`] = 2 (`prev` and `next`: unmapping the middle
//!   of a mapping; panthor once reserved 1 and crashed);
//! * these bounds are pure functions of the request kind, so a queued job can reserve them before
//!   anyone knows the tree it will run against;
//! * removed nodes are retired to a [`RetiredList`] (chained through their own links, so retiring
//!   never allocates), unused reserved nodes stay in the [`NodeReserve`].
//!
//! The tree is a directory of address buckets, each holding a treap of the mappings that start in
//! it (see `forest.rs` and `tree.rs`). The directory is caller memory too: [`GpuVm::new`] uses a
//! single bucket (no memory, one treap), [`GpuVm::with_buckets`] takes any slice-like storage, and
//! [`GpuVm::with_capacity`] (feature `alloc`) allocates about one bucket per two expected mappings.
//! At a million mappings that makes a random lookup about 15x faster than a single treap. Growing
//! the directory ([`GpuVm::rebucket`]) moves nodes and never allocates.
//!
//! Memory per live mapping: a node is 56 bytes on 64-bit targets (with `D = ()`), plus 8 bytes per
//! bucket, so about 60 bytes with [`GpuVm::with_capacity`]; drm_gpuva alone is about 120.
//!
//! The `alloc` feature (default) adds [`BoxNode`], a `Vec` node pool, [`OpList`] and the boxed
//! directory; every allocation there is fallible. Without it the crate builds against `core` alone.
//!
//! # Examples
//!
//! Record the ops a request implies, then apply it:
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use gpuva::{BoxNode, GpuVm, Mapping, NodeReserve, ObjId, Op, RetiredList};
//!
//! let mut vm = GpuVm::<(), BoxNode<()>>::new(0..1000, 0..0)?;
//! let mut retired = RetiredList::new();
//! let (x, y) = (ObjId::new(1), ObjId::new(2));
//! vm.map(Mapping::new(100, 300, x, 0), &mut NodeReserve::try_alloc(3)?, &mut retired)?;
//!
//! // gpuvm-semantics.md example E5: a map strictly inside another object's mapping.
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
//! vm.apply_ops(&ops, &mut NodeReserve::try_alloc(3)?, &mut retired, &mut gpuva::Apply::default())?;
//! assert_eq!(vm.len(), 3);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Without any allocator, nodes can live in a caller array:
//!
//! ```
//! use gpuva::{GpuVa, GpuVm, Mapping, NodeReserve, ObjId, RefNode, RetiredList};
//!
//! let mut slots: [GpuVa<(), RefNode<'_, ()>>; 3] = core::array::from_fn(|_| GpuVa::new(()));
//! let mut pool = NodeReserve::<RefNode<'_, ()>>::new();
//! for slot in &mut slots {
//!     pool.push(RefNode::new(slot)).ok();
//! }
//! let mut vm = GpuVm::new(0..0x1000, 0..0)?;
//! let mut retired = RetiredList::new();
//! vm.map(Mapping::new(0, 0x1000, ObjId::new(1), 0), &mut pool, &mut retired)?;
//! assert_eq!(vm.lookup(0x800).map(|va| va.range()), Some(0..0x1000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;

mod error;
mod forest;
mod node;
pub mod sm;
mod tree;
mod va;
mod vm;

pub use error::{ApplyError, MapError, NewError, OpsError, RangeError, UnmapError};
pub use forest::OneBucket;
#[cfg(feature = "alloc")]
pub use node::BoxNode;
pub use node::{
    AllocError, GpuVaRemoved, NodePool, NodePtr, NodeReserve, RefNode, ReserveError, RetiredList,
    MAX_MAP_NODES, MAX_UNMAP_NODES,
};
#[cfg(feature = "alloc")]
pub use sm::OpList;
pub use sm::{
    Apply, Op, OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, Piece, Record, Request,
    SmVisitor,
};
pub use va::{GpuVa, Mapping, ObjId, VaFlags};
#[cfg(feature = "alloc")]
pub use vm::alloc_buckets;
pub use vm::GpuVm;
