//! The three trees of a VA space and how each lays out its nodes (see [`crate::btree`]).
//!
//! ```text
//!   mappings      start address      -> length, offset, object, payload D   (+ flags as tag)
//!   object index  (object, start)    -> ()                                  (links' mappings)
//!   links         object             -> mapping count, pins, payload L      (+ state as tag)
//! ```

use crate::btree::{Kind, Tree};
use crate::link::{LinkRec, LinkState};
use crate::node::{Body, Br128, Br64, LinkLeaf, ObjKey, ObjLeaf, VaLeaf};
use crate::va::{Tag, VaVal};

/// The mapping tree.
pub(crate) struct VaKind;
/// The object index.
pub(crate) struct ObjKind;
/// The link tree.
pub(crate) struct LinkKind;

pub(crate) type VaTree<D, L, P> = Tree<D, L, P, VaKind>;
pub(crate) type ObjTree<D, L, P> = Tree<D, L, P, ObjKind>;
pub(crate) type LinkTree<D, L, P> = Tree<D, L, P, LinkKind>;

impl<D, L, P> Kind<D, L, P> for VaKind {
    type K = u64;
    type V = VaVal<D>;
    type T = Tag;
    type Lf = VaLeaf<D>;
    type Br = Br64<P>;
    fn leaf(b: &Body<D, L, P>) -> Option<&Self::Lf> {
        match b {
            Body::VaLeaf(l) => Some(l),
            _ => None,
        }
    }
    fn leaf_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Lf> {
        match b {
            Body::VaLeaf(l) => Some(l),
            _ => None,
        }
    }
    fn branch(b: &Body<D, L, P>) -> Option<&Self::Br> {
        match b {
            Body::Br64(x) => Some(x),
            _ => None,
        }
    }
    fn branch_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Br> {
        match b {
            Body::Br64(x) => Some(x),
            _ => None,
        }
    }
    fn new_leaf() -> Body<D, L, P> {
        Body::VaLeaf(VaLeaf::new())
    }
    fn new_branch() -> Body<D, L, P> {
        Body::Br64(Br64::new())
    }
}

impl<D, L, P> Kind<D, L, P> for ObjKind {
    type K = ObjKey;
    type V = ();
    type T = ();
    type Lf = ObjLeaf;
    type Br = Br128<P>;
    fn leaf(b: &Body<D, L, P>) -> Option<&Self::Lf> {
        match b {
            Body::ObjLeaf(l) => Some(l),
            _ => None,
        }
    }
    fn leaf_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Lf> {
        match b {
            Body::ObjLeaf(l) => Some(l),
            _ => None,
        }
    }
    fn branch(b: &Body<D, L, P>) -> Option<&Self::Br> {
        match b {
            Body::Br128(x) => Some(x),
            _ => None,
        }
    }
    fn branch_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Br> {
        match b {
            Body::Br128(x) => Some(x),
            _ => None,
        }
    }
    fn new_leaf() -> Body<D, L, P> {
        Body::ObjLeaf(ObjLeaf::new())
    }
    fn new_branch() -> Body<D, L, P> {
        Body::Br128(Br128::new())
    }
}

impl<D, L, P> Kind<D, L, P> for LinkKind {
    type K = u64;
    type V = LinkRec<L>;
    type T = LinkState;
    type Lf = LinkLeaf<L>;
    type Br = Br64<P>;
    fn leaf(b: &Body<D, L, P>) -> Option<&Self::Lf> {
        match b {
            Body::LinkLeaf(l) => Some(l),
            _ => None,
        }
    }
    fn leaf_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Lf> {
        match b {
            Body::LinkLeaf(l) => Some(l),
            _ => None,
        }
    }
    fn branch(b: &Body<D, L, P>) -> Option<&Self::Br> {
        match b {
            Body::Br64(x) => Some(x),
            _ => None,
        }
    }
    fn branch_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Br> {
        match b {
            Body::Br64(x) => Some(x),
            _ => None,
        }
    }
    fn new_leaf() -> Body<D, L, P> {
        Body::LinkLeaf(LinkLeaf::new())
    }
    fn new_branch() -> Body<D, L, P> {
        Body::Br64(Br64::new())
    }
}
