//! The driver's buffer objects, as the pipeline sees them.

use gpuva::ObjId;
use pagetable::Chunk;

/// A counted reference to a buffer object whose pages are pinned while the reference lives
/// (a GEM object reference with its shmem pages and sg table, in kernel terms).
///
/// Cloning must not allocate or fail (a reference-count increment); dropping gives the
/// reference back. The pipeline only clones in prepare, and only drops in cleanup (the run
/// stage neither clones nor drops).
pub trait ObjRef: Clone {
    /// The object's size in bytes (a multiple of the VM page size).
    fn size(&self) -> u64;

    /// The object's physical backing, in object-offset order: chunks of physically contiguous,
    /// page-aligned memory whose lengths add up to [`ObjRef::size`].
    fn backing(&self) -> &[Chunk];
}

/// Where prepare looks objects up (the per-file GEM handle table, in kernel terms).
pub trait ObjectRegistry {
    /// The reference type.
    type Ref: ObjRef;
    /// Why a lookup failed (no such object, pinning failed, out of memory).
    type Error;

    /// Looks `obj` up and returns a new reference to it, with its pages pinned. Prepare only:
    /// may allocate, sleep and fail.
    ///
    /// # Errors
    ///
    /// Whatever the driver's lookup fails with; the pipeline then changes nothing.
    fn get(&mut self, obj: ObjId) -> Result<Self::Ref, Self::Error>;
}
