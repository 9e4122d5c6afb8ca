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

/// Implements [`Kind`] for one tree: its key, value and tag types, and which [`Body`] variants
/// hold its leaves and branches (the projections are the same match for every tree).
macro_rules! kind {
    ($kind:ident: K = $k:ty, V = $v:ty, T = $t:ty, $leaf:ident $(<$lp:ident>)?, $branch:ident) => {
        impl<D, L, P> Kind<D, L, P> for $kind {
            type K = $k;
            type V = $v;
            type T = $t;
            type Lf = $leaf $(<$lp>)?;
            type Br = $branch<P>;
            fn leaf(b: &Body<D, L, P>) -> Option<&Self::Lf> {
                match b {
                    Body::$leaf(l) => Some(l),
                    _ => None,
                }
            }
            fn leaf_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Lf> {
                match b {
                    Body::$leaf(l) => Some(l),
                    _ => None,
                }
            }
            fn branch(b: &Body<D, L, P>) -> Option<&Self::Br> {
                match b {
                    Body::$branch(x) => Some(x),
                    _ => None,
                }
            }
            fn branch_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Br> {
                match b {
                    Body::$branch(x) => Some(x),
                    _ => None,
                }
            }
            fn new_leaf() -> Body<D, L, P> {
                Body::$leaf($leaf::new())
            }
            fn new_branch() -> Body<D, L, P> {
                Body::$branch($branch::new())
            }
        }
    };
}

kind!(VaKind: K = u64, V = VaVal<D>, T = Tag, VaLeaf<D>, Br64);
kind!(ObjKind: K = ObjKey, V = (), T = (), ObjLeaf, Br128);
kind!(LinkKind: K = u64, V = LinkRec<L>, T = LinkState, LinkLeaf<L>, Br64);
