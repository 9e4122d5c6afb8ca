//! The tree against a `BTreeSet` model: random and adversarial operation sequences, every
//! structural invariant checked after each step, and the node bound of every insert.

#![allow(clippy::disallowed_methods, reason = "tests may allocate infallibly")]

extern crate alloc;
extern crate std;

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use super::{insert_nodes, max_height, Act, Items, RangeVisit, Tree};
use crate::index::VaKind;
use crate::node::{NodeBag, BR64, VA_LEAF};
use crate::va::{Tag, VaVal};
use crate::BoxNode;

type N = BoxNode<(), ()>;
type T = Tree<(), (), N, VaKind>;

fn v(len: u64) -> VaVal<()> {
    VaVal {
        len,
        offset: 0,
        obj: None,
        data: (),
    }
}

/// A spare cache holding exactly one insert's bound, refilled before each insert; returns the
/// nodes the insert took.
fn insert(
    t: &mut T,
    spare: &mut NodeBag<(), (), N>,
    route: u64,
    keys: &[u64],
    bump: Option<u64>,
) -> usize {
    let want = insert_nodes(t.height());
    while spare.len() < want {
        spare.push(BoxNode::try_new().expect("memory"));
    }
    let before = spare.len();
    let mut items = Items::new();
    for &k in keys {
        items.push((k, v(1), Tag::default()));
    }
    assert!(
        t.insert(route, items, bump, spare).is_ok(),
        "insert refused"
    );
    before - spare.len()
}

fn keys(t: &T) -> Vec<u64> {
    let mut out = Vec::new();
    let mut c = t.first();
    let mut ok = c.get().is_some();
    while ok {
        out.push(c.key().expect("entry"));
        ok = c.next();
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Removes every key in the range, re-keying none.
struct RemoveAll(Vec<u64>);
impl RangeVisit<u64, VaVal<()>, Tag> for RemoveAll {
    fn visit(&mut self, _: u64, _: &mut VaVal<()>, _: &mut Tag) -> Act<u64> {
        Act::Remove
    }
    fn removed(&mut self, k: u64, _: VaVal<()>, _: Tag) {
        self.0.push(k);
    }
}

/// Removes keys in range but re-keys the last one below `hi` to `hi` (as a `next` piece does).
struct RemoveThenRekey {
    last: u64,
    to: u64,
    removed: Vec<u64>,
}
impl RangeVisit<u64, VaVal<()>, Tag> for RemoveThenRekey {
    fn visit(&mut self, k: u64, _: &mut VaVal<()>, _: &mut Tag) -> Act<u64> {
        if k == self.last {
            Act::Rekey(self.to)
        } else {
            Act::Remove
        }
    }
    fn removed(&mut self, k: u64, _: VaVal<()>, _: Tag) {
        self.removed.push(k);
    }
}

#[test]
fn max_height_follows_the_smallest_trees() {
    // With edge paths exempt from the half-full rule, the smallest tree of height h has two edge
    // subtrees under the root; an edge subtree of height k holds an edge subtree of height k - 1
    // and a smallest regular subtree of height k - 1 (8 * 16^(k - 2) entries).
    let (l, b) = ((VA_LEAF / 2) as u128, (BR64 / 2) as u128);
    assert_eq!(max_height(0, l, b), 0);
    assert_eq!(max_height(1, l, b), 1);
    // Edge subtrees: 1, 1 + 8 = 9, 9 + 128 = 137, 137 + 2048 = 2185.
    assert_eq!(max_height(17, l, b), 2);
    assert_eq!(max_height(18, l, b), 3);
    assert_eq!(max_height(273, l, b), 3);
    assert_eq!(max_height(274, l, b), 4);
    assert_eq!(max_height(4370, l, b), 5);
    assert_eq!(max_height(1 << 36, l, b), 10);
    let mut last = 0;
    for e in [1u128, 10, 100, 1000, 1 << 20, 1 << 40, u128::from(u64::MAX)] {
        let h = max_height(e, l, b);
        assert!(h >= last, "monotonic");
        last = h;
    }
}

/// Random inserts, removals, range walks and re-keys against the model.
#[test]
fn random_sequences_match_the_model() {
    for seed in 1..=6u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut t = T::new();
        let mut spare = NodeBag::new();
        let mut model = BTreeSet::new();
        let space = 4000;
        for step in 0..6000 {
            match r.below(10) {
                0..=4 => {
                    // Keys are multiples of 4, so the gaps leave room for re-keys and pairs.
                    let k = r.below(space) * 4;
                    if model.contains(&k) {
                        continue;
                    }
                    let used = insert(&mut t, &mut spare, k, &[k], None);
                    assert!(used <= insert_nodes(t.height()), "insert took {used} nodes");
                    model.insert(k);
                }
                5 => {
                    // A pair right after an anchor, as a split inside one mapping inserts it.
                    let Some(&anchor) = model
                        .iter()
                        .nth(usize::try_from(r.below(model.len().max(1) as u64)).unwrap_or(0))
                    else {
                        continue;
                    };
                    let succ = model.range(anchor + 1..).next().copied();
                    if succ.is_some_and(|s| s <= anchor + 3) {
                        continue;
                    }
                    let h = t.height();
                    let used = insert(
                        &mut t,
                        &mut spare,
                        anchor,
                        &[anchor + 1, anchor + 2],
                        Some(anchor + 3),
                    );
                    assert!(used <= insert_nodes(h) + 1, "pair insert took {used}");
                    model.insert(anchor + 1);
                    model.insert(anchor + 2);
                }
                6 | 7 => {
                    let k = r.below(space) * 4;
                    let got = t.remove(k, &mut spare).map(|e| e.0);
                    assert_eq!(got, model.take(&k), "remove {k}");
                }
                8 => {
                    // Mostly short walks; now and then one over a large part of the tree.
                    let lo = r.below(space * 4);
                    let hi = lo
                        + if r.below(8) == 0 {
                            r.below(space * 2)
                        } else {
                            r.below(64)
                        };
                    let mut w = RemoveAll(Vec::new());
                    t.walk_range(lo, hi, &mut w, &mut spare);
                    let want: Vec<u64> = model.range(lo..hi).copied().collect();
                    for k in &want {
                        model.remove(k);
                    }
                    assert_eq!(w.0, want, "range walk {lo}..{hi}");
                }
                _ => {
                    // Remove a range's keys except the last, which moves up inside its gap.
                    let lo = r.below(space * 4);
                    let hi = lo + 1 + r.below(64);
                    let inside: Vec<u64> = model.range(lo..hi).copied().collect();
                    let Some(&last) = inside.last() else { continue };
                    let gap_end = model.range(last + 1..).next().copied().unwrap_or(u64::MAX);
                    let to = hi.max(last + 1);
                    if to >= gap_end {
                        continue;
                    }
                    let mut w = RemoveThenRekey {
                        last,
                        to,
                        removed: Vec::new(),
                    };
                    t.walk_range(lo, hi, &mut w, &mut spare);
                    for k in &inside {
                        model.remove(k);
                    }
                    model.insert(to);
                    assert_eq!(w.removed, inside[..inside.len() - 1], "walk removals");
                    // The re-keyed entry must be found again through the pivots.
                    assert!(
                        t.get(to).is_some(),
                        "re-keyed {last} -> {to} not found (step {step})"
                    );
                }
            }
            if let Err(e) = t.check() {
                panic!("seed {seed} step {step}: {e}");
            }
            assert_eq!(t.len(), model.len());
            if step % 500 == 0 {
                assert_eq!(keys(&t), model.iter().copied().collect::<Vec<_>>());
            }
        }
        assert_eq!(keys(&t), model.iter().copied().collect::<Vec<_>>());
        // Cursor steps backwards agree too.
        let mut c = t.seek(u64::MAX);
        let mut back = Vec::new();
        while c.prev() {
            back.push(c.key().expect("entry"));
        }
        back.reverse();
        assert_eq!(back, model.iter().copied().collect::<Vec<_>>());
        for &k in model.iter().step_by(7) {
            assert_eq!(t.floor_entry(k).map(|e| e.0), Some(k));
            if !model.contains(&(k + 1)) {
                assert_eq!(t.floor_entry(k + 1).map(|e| e.0), Some(k));
            }
        }
    }
}

/// Ascending, descending and alternating-end insert orders stay balanced, and every insert stays
/// within its bound; teardown is iterative and hands every node back.
#[test]
fn adversarial_orders_stay_within_the_height_bound() {
    let n: u64 = 50_000;
    let orders: [&dyn Fn(u64) -> u64; 3] = [&|i| i, &|i| n - 1 - i, &|i| {
        if i % 2 == 0 {
            i / 2
        } else {
            n - 1 - i / 2
        }
    }];
    for (which, order) in orders.into_iter().enumerate() {
        let mut t = T::new();
        let mut spare = NodeBag::new();
        let mut nodes = 0;
        for i in 0..n {
            let k = order(i) * 2;
            let h = t.height();
            let used = insert(&mut t, &mut spare, k, &[k], None);
            nodes += used;
            assert!(used <= insert_nodes(h));
            let bound = max_height(u128::from(i + 1), (VA_LEAF / 2) as u128, (BR64 / 2) as u128);
            assert!(
                t.height() <= bound,
                "height {} > bound {bound} at {}",
                t.height(),
                i + 1
            );
        }
        t.check().expect("invariants");
        // Edge splits keep ascending and descending fills dense: leaves full, not half full.
        // (The alternating order inserts in the middle of the key set, where splits halve.)
        let full = usize::try_from(n).unwrap_or(usize::MAX) / VA_LEAF;
        if which < 2 {
            assert!(
                nodes < full + full / 10,
                "{nodes} nodes for {n} keys in order {which}"
            );
        }
        // Remove every other key: merges keep every node (off the edges) at least half full.
        for i in (0..n).step_by(2) {
            assert!(t.remove(i * 2, &mut spare).is_some());
        }
        t.check().expect("invariants after removals");
        let mut out = NodeBag::new();
        let mut seen = 0u64;
        t.clear(&mut out, |_, _, _| seen += 1);
        assert_eq!(seen, n / 2);
        assert_eq!(t.len(), 0);
        assert!(t.root().is_none());
    }
}

/// Deleting a long run in one walk rebalances all the way and keeps the tree valid.
#[test]
fn range_walk_over_most_of_the_tree() {
    let mut t = T::new();
    let mut spare = NodeBag::new();
    for k in 0..20_000u64 {
        insert(&mut t, &mut spare, k * 3, &[k * 3], None);
    }
    let mut w = RemoveAll(Vec::new());
    t.walk_range(30, 59_000, &mut w, &mut spare);
    assert_eq!(w.0.len(), (30..59_000).filter(|k| k % 3 == 0).count());
    t.check().expect("invariants");
    assert_eq!(keys(&t).len(), t.len());
}

/// Regression: after an ascending fill (edge splits: full leaves), one walk removing a long run
/// from the middle left an underfull leaf.
#[test]
fn range_walk_after_an_ascending_fill() {
    for (n, lo, hi) in [
        (3074u64, 640, 1664),
        (3074, 0, 1024),
        (3074, 2000, 3074),
        (5000, 17, 4990),
    ] {
        let mut t = T::new();
        let mut spare = NodeBag::new();
        for k in 0..n {
            insert(&mut t, &mut spare, k, &[k], None);
        }
        t.check().expect("invariants after the fill");
        let mut w = RemoveAll(Vec::new());
        t.walk_range(lo, hi, &mut w, &mut spare);
        assert_eq!(w.0.len() as u64, hi - lo);
        if let Err(e) = t.check() {
            panic!("n {n}, removing {lo}..{hi}: {e}");
        }
    }
}

/// Regression: a walk that removed a long run and re-keyed its last entry past a stale pivot
/// raised the pivots only after rebalancing. When the emptied subtree merged with its right
/// sibling, the old separator moved down into the merged node unraised, and the re-keyed entry
/// sat right of it: "leaf key outside its pivots", and lookups missed the entry. (Found by the
/// reservation property test on a full mapping tree: an unmap across many mappings that cut the
/// last one.)
#[test]
fn rekey_past_a_stale_pivot_at_the_end_of_a_long_walk() {
    for seed in 1..=40u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut t = T::new();
        let mut spare = NodeBag::new();
        let mut model = BTreeSet::new();
        let n = 4000 + r.below(8000);
        for k in 0..n {
            insert(&mut t, &mut spare, k * 64, &[k * 64], None);
            model.insert(k * 64);
        }
        for round in 0..30 {
            // Stale pivots: drop a run of keys, so that gaps span subtree boundaries.
            let at = r.below(n) * 64;
            let gap = 1 + r.below(40);
            let mut w = RemoveAll(Vec::new());
            t.walk_range(at, at + gap * 64, &mut w, &mut spare);
            for k in &w.0 {
                model.remove(k);
            }
            // A long walk ending right before a gap: its last key moves to the top of the gap.
            let lo = r.below(n) * 64;
            let hi = lo + 64 * (1 + r.below(1500));
            let inside: Vec<u64> = model.range(lo..hi).copied().collect();
            let Some(&last) = inside.last() else { continue };
            let gap_end = model.range(last + 1..).next().copied().unwrap_or(u64::MAX);
            let to = gap_end - 1;
            let mut w = RemoveThenRekey {
                last,
                to,
                removed: Vec::new(),
            };
            t.walk_range(lo, hi, &mut w, &mut spare);
            for k in &inside {
                model.remove(k);
            }
            model.insert(to);
            if let Err(e) = t.check() {
                panic!("seed {seed} round {round}: walk {lo}..{hi}, {last} -> {to}: {e}");
            }
            assert!(t.get(to).is_some(), "seed {seed} round {round}: {to} lost");
            assert_eq!(t.len(), model.len());
        }
        assert_eq!(keys(&t), model.iter().copied().collect::<Vec<_>>());
    }
}
