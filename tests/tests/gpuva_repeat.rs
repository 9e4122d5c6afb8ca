//! Repeat mappings (`gpuva::Repeat`, `docs/semantics.md`, "Repeat mappings"): a VA range backed
//! by one object window repeated, whose pieces keep their phase through every split.
//!
//! * one test per documented case (R1-R5 in `docs/semantics.md` name them);
//! * `refused_repeat_maps_change_nothing`: the validation errors;
//! * `random_repeat_requests_match_the_models`: random mixes of repeat maps, plain maps, unmaps,
//!   attribute splits and unmaps of objects, merge on and off, links on and off, each checked
//!   against an address-granular reference written here (window start plus `(phase + k) mod
//!   period`, computed independently of the library), its ops replayed on a mapping list, the
//!   op list equal to the steps, the node bound never exceeded from the random prior state; with
//!   merge off and no splits also against `tests::model::Model` (its expected op lists, and its
//!   check that the ops describe exactly the change).

use std::collections::BTreeMap;

use gpuva::{Mapping, ObjId, Op, OpsError, RangeError, Repeat, Request, StepError};
use tests::addr_model::{addrs_of, reference, replay, run, Addrs, Vm};
use tests::harness::Rng;
use tests::model::Model;

const P: u64 = 0x1000;

fn obj(n: u64) -> Option<ObjId> {
    ObjId::new(n)
}

fn rep(period: u64) -> Option<Repeat> {
    Some(Repeat::new(period).expect("power of two"))
}

fn paged(links: bool, merge: bool, maps: &[Mapping]) -> Vm {
    let mut vm = Vm::with_granule(0..1 << 32, 0..0, P)
        .expect("geometry")
        .with_merge(merge);
    if !links {
        vm = vm.without_links();
    }
    for m in maps {
        run(&mut vm, Request::Map(*m)).expect("setup");
    }
    vm
}

fn all(vm: &Vm) -> Vec<Mapping> {
    vm.iter().map(|v| v.mapping()).collect()
}

// ---------------------------------------------------------------------------------------------
// The documented cases.

/// Case R1: an unmap 5 pages into a repeat of a 4-page window (5 is no multiple of 4): the next
/// piece starts at phase (0 + 6) mod 4 = 2 pages, the prev piece keeps phase 0; both stay
/// repeats of the same window.
#[test]
fn repeat_split_at_a_non_multiple_of_the_period() {
    let r = Mapping::new(0, 16 * P, obj(1), 4 * P).with_repeat(rep(4 * P));
    for links in [true, false] {
        let mut vm = paged(links, false, &[r]);
        let ops = run(
            &mut vm,
            Request::Unmap {
                addr: 5 * P,
                len: P,
            },
        )
        .expect("valid");
        let prev = Mapping::new(0, 5 * P, obj(1), 4 * P).with_repeat(rep(4 * P));
        let next = Mapping::new(6 * P, 10 * P, obj(1), 6 * P).with_repeat(rep(4 * P));
        assert_eq!(
            ops,
            [Op::Remap {
                unmap: r,
                keep: false,
                prev: Some(prev),
                next: Some(next),
            }]
        );
        assert_eq!(all(&vm), [prev, next]);
        // Page 6 reads window page 2, page 8 window page 0 again.
        let n = vm.lookup(8 * P).expect("mapped").mapping();
        assert_eq!(n.offset_after(8 * P - n.addr), 4 * P);
    }
}

/// Case R2: a plain map strictly inside a repeat (window 0x8000 + 4 pages, phase 1 page): the
/// prev piece keeps phase 1, the next piece, 5 pages in, continues at (1 + 5) mod 4 = 2.
#[test]
fn repeat_request_inside_keeps_both_ends_in_phase() {
    let r = Mapping::new(0, 16 * P, obj(1), 9 * P).with_repeat(rep(4 * P));
    let mut vm = paged(true, false, &[r]);
    let req = Mapping::new(3 * P, 2 * P, obj(2), 0);
    let ops = run(&mut vm, Request::Map(req)).expect("valid");
    assert_eq!(
        ops,
        [
            Op::Remap {
                unmap: r,
                keep: false,
                prev: Some(Mapping::new(0, 3 * P, obj(1), 9 * P).with_repeat(rep(4 * P))),
                next: Some(Mapping::new(5 * P, 11 * P, obj(1), 10 * P).with_repeat(rep(4 * P))),
            },
            Op::Map(req),
        ]
    );
    // The object index follows the pieces (an unmap of the object finds both).
    let gone = run(
        &mut vm,
        Request::UnmapObject {
            obj: obj(1).expect("id"),
        },
    )
    .expect("valid");
    assert_eq!(gone.len(), 2);
    assert_eq!(all(&vm), [req]);
}

/// Case R3: keep holds only for the same object, period and window at a congruent phase; a
/// repeat never keeps with a plain mapping, even one translating the shared pages alike.
#[test]
fn repeat_keep_needs_same_window_and_congruent_phase() {
    let r = Mapping::new(0, 16 * P, obj(1), 8 * P).with_repeat(rep(4 * P));
    let vm = paged(true, false, &[r]);
    let keep_of = |m: Mapping| match vm.sm_map_ops(m).expect("valid").ops()[0] {
        Op::Remap { keep, .. } | Op::Unmap { keep, .. } => keep,
        op => panic!("{op:?}"),
    };
    // 6 pages in: phase (0 + 6) mod 4 = 2, offset 0x8000 + 2 pages.
    assert!(keep_of(
        Mapping::new(6 * P, 2 * P, obj(1), 10 * P).with_repeat(rep(4 * P))
    ));
    // Congruent modulo the period is enough: phase 2 is phase 2 however the request is written.
    assert!(keep_of(
        Mapping::new(2 * P, 2 * P, obj(1), 10 * P).with_repeat(rep(4 * P))
    ));
    // Other phase, other window, other period, other object, plain: no keep.
    for m in [
        Mapping::new(6 * P, 2 * P, obj(1), 11 * P).with_repeat(rep(4 * P)),
        Mapping::new(6 * P, 2 * P, obj(1), 14 * P).with_repeat(rep(4 * P)),
        Mapping::new(6 * P, 2 * P, obj(1), 10 * P).with_repeat(rep(2 * P)),
        Mapping::new(6 * P, 2 * P, obj(2), 10 * P).with_repeat(rep(4 * P)),
        Mapping::new(6 * P, 2 * P, obj(1), 10 * P),
    ] {
        assert!(!keep_of(m), "{m:?}");
    }
    // The exact match keeps, like drm_gpuvm's A1.
    assert_eq!(
        vm.sm_map_ops(r).expect("valid").ops(),
        [Op::Unmap { va: r, keep: true }, Op::Map(r)]
    );
}

/// Case R4: under the merge policy a repeat next to a congruent repeat of the same window
/// merges (one mapping), one at another phase or a plain neighbour does not.
#[test]
fn repeat_merge_with_congruent_neighbour() {
    let left = Mapping::new(0, 4 * P, obj(1), 8 * P).with_repeat(rep(4 * P));
    for links in [true, false] {
        let mut vm = paged(links, true, &[left]);
        // 4 pages in, phase (0 + 4) mod 4 = 0.
        let req = Mapping::new(4 * P, 2 * P, obj(1), 8 * P).with_repeat(rep(4 * P));
        let ops = run(&mut vm, Request::Map(req)).expect("valid");
        let wide = Mapping::new(0, 6 * P, obj(1), 8 * P).with_repeat(rep(4 * P));
        assert_eq!(
            ops,
            [
                Op::Unmap {
                    va: left,
                    keep: true
                },
                Op::Map(wide)
            ]
        );
        assert_eq!(all(&vm), [wide]);
        // Incongruent on the right (phase 3, should be 2), plain on the far right: no merge.
        let odd = Mapping::new(6 * P, P, obj(1), 11 * P).with_repeat(rep(4 * P));
        let plain = Mapping::new(7 * P, P, obj(1), 11 * P);
        for m in [odd, plain] {
            assert_eq!(run(&mut vm, Request::Map(m)).expect("valid"), [Op::Map(m)]);
        }
        assert_eq!(all(&vm), [wide, odd, plain]);
        assert!(vm.is_merge_canonical());
    }
}

/// Case R5: an attribute split of a repeat cuts it into pieces that keep their phases (keep =
/// true, no page-table change), and a merged map can join them again.
#[test]
fn repeat_attribute_split_keeps_phases() {
    let r = Mapping::new(0, 10 * P, obj(1), 3 * P).with_repeat(rep(2 * P));
    let mut vm = paged(true, false, &[r]);
    let ops = run(
        &mut vm,
        Request::Split {
            addr: 3 * P,
            len: 4 * P,
        },
    )
    .expect("valid");
    assert!(ops
        .iter()
        .all(|op| matches!(op, Op::Remap { keep: true, .. })));
    // Window [2, 4) pages, phase 1: pieces at 0, 3 and 7 pages start at phases 1, 0 and 0.
    let want: Vec<Mapping> = [(0, 3, 3), (3, 4, 2), (7, 3, 2)]
        .iter()
        .map(|&(a, l, o)| Mapping::new(a * P, l * P, obj(1), o * P).with_repeat(rep(2 * P)))
        .collect();
    assert_eq!(all(&vm), want);
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// A repeat without an object, with a period below the granule or a phase off the granule is
/// refused by every entry point, in the documented order, and changes nothing.
#[test]
fn refused_repeat_maps_change_nothing() {
    let r = Mapping::new(0, 16 * P, obj(1), 4 * P).with_repeat(rep(4 * P));
    let mut vm = paged(true, false, &[r]);
    let before = (all(&vm), vm.generation());
    for (m, e) in [
        (
            Mapping::new(P, P, None, 0).with_repeat(rep(P)),
            RangeError::RepeatWithoutObject,
        ),
        (
            Mapping::new(P, P, obj(1), 0).with_repeat(rep(P / 2)),
            RangeError::RepeatPeriod,
        ),
        (
            Mapping::new(P, P, obj(1), P / 2).with_repeat(rep(P)),
            RangeError::RepeatPhase,
        ),
        // The range checks come first.
        (
            Mapping::new(P, 0, None, 1).with_repeat(rep(1)),
            RangeError::ZeroSize,
        ),
    ] {
        assert_eq!(vm.check_map(&m), Err(e), "{m:?}");
        assert_eq!(run(&mut vm, Request::Map(m)), Err(StepError::Range(e)));
        assert!(matches!(vm.sm_map_ops(m), Err(OpsError::Range(x)) if x == e));
        assert_eq!((all(&vm), vm.generation()), before);
    }
    // The length need not be a multiple of the period, nor the window start of the request's
    // length: pieces of splits are arbitrary anyway.
    let odd = Mapping::new(0x100_0000, 3 * P, obj(1), 5 * P).with_repeat(rep(4 * P));
    assert_eq!(vm.check_map(&odd), Ok(odd.range()));
}

// ---------------------------------------------------------------------------------------------
// Random mixes against the models.

fn random_request(rng: &mut Rng, space: u64, splits: bool) -> Request {
    let addr = rng.below(space);
    let max = if rng.below(6) == 0 { 60 } else { 10 };
    let len = (1 + rng.below(max)).min(space - addr);
    match rng.below(if splits { 12 } else { 10 }) {
        0..=3 => {
            let period = 1 << rng.below(5);
            let base = period * rng.below(3);
            // Congruent with a repeat of the same window at `addr` half the time, so keeps and
            // merges happen.
            let phase = if rng.below(2) == 0 {
                addr % period
            } else {
                rng.below(period)
            };
            Request::Map(
                Mapping::new(addr, len, obj(1 + rng.below(2)), base + phase)
                    .with_repeat(Repeat::new(period)),
            )
        }
        4..=5 => {
            let offset = if rng.below(2) == 0 {
                addr
            } else {
                rng.below(8)
            };
            Request::Map(Mapping::new(addr, len, obj(rng.below(3)), offset))
        }
        6 | 7 => Request::Unmap { addr, len },
        8 => Request::UnmapObject {
            obj: ObjId::new(1 + rng.below(2)).expect("non-zero"),
        },
        9 => Request::Prefetch { addr, len },
        _ => Request::Split { addr, len },
    }
}

#[test]
fn random_repeat_requests_match_the_models() {
    let space = 300;
    for (seed, links, merge, splits) in [
        (1, true, false, false),
        (2, false, false, false),
        (3, true, false, true),
        (4, true, true, false),
        (5, false, true, true),
        (6, true, true, true),
    ] {
        let mut rng = Rng::new(seed);
        let mut vm = Vm::new(0..space, 0..0).expect("geometry").with_merge(merge);
        if !links {
            vm = vm.without_links();
        }
        // The page-granular model applies to drm_gpuvm's semantics (no merging) without cuts
        // (it infers boundaries from runs, and a cut leaves one run in two mappings).
        let mut model = (!merge && !splits).then(|| Model::new(0..space, 0..0, 1));
        let mut addrs = Addrs::new();
        let mut list = BTreeMap::new();
        let mut repeats = 0;
        for i in 0..3000u64 {
            let req = random_request(&mut rng, space, splits);
            let walked = vm.request_ops(req).expect("valid").ops().to_vec();
            if let Some(model) = &model {
                let want = match req {
                    Request::Map(m) => Some(model.expected_map_ops(&m)),
                    Request::Unmap { addr, len } => {
                        Some(model.expected_unmap_ops(addr..addr + len))
                    }
                    _ => None,
                };
                if let Some(want) = want {
                    assert_eq!(walked, want, "seed {seed} request {i} {req:?}");
                }
            }
            let stepped = run(&mut vm, req).expect("valid request");
            assert_eq!(walked, stepped, "seed {seed} request {i} {req:?}");
            replay(&mut list, &stepped);
            assert!(
                list.values().copied().eq(vm.iter().map(|v| v.mapping())),
                "seed {seed} request {i} {req:?}"
            );
            reference(&mut addrs, &req);
            assert_eq!(addrs_of(&vm), addrs, "seed {seed} request {i} {req:?}");
            if let Some(model) = &mut model {
                model
                    .apply_ops(&stepped, i)
                    .unwrap_or_else(|e| panic!("seed {seed} request {i} {req:?}: {e}"));
                let now: Vec<Mapping> = model.mappings().into_iter().map(|(m, _)| m).collect();
                assert_eq!(now, all(&vm), "seed {seed} request {i} {req:?}");
            }
            if merge && !splits {
                assert!(vm.is_merge_canonical(), "seed {seed} request {i} {req:?}");
            }
            repeats += vm.iter().filter(|v| v.repeat().is_some()).count();
        }
        assert!(
            repeats > 3000,
            "seed {seed}: repeat mappings must be common"
        );
    }
}

/// Repeat maps on trees filled to their height bound, from random prior states: the bound of
/// a repeat map is a map's, and no request draws more (`run` asserts it).
#[test]
fn repeat_bounds_hold_on_full_trees() {
    const N: u64 = 8192;
    for (seed, links) in [(1, true), (2, false)] {
        let mut vm = Vm::with_granule(0..N * P, 0..0, P)
            .expect("geometry")
            .with_merge(seed == 1);
        if !links {
            vm = vm.without_links();
        }
        let plain = Request::Map(Mapping::new(0, P, obj(1), 0));
        let r = Request::Map(Mapping::new(0, P, obj(1), 0).with_repeat(rep(P)));
        assert_eq!(vm.nodes_for(&r), vm.nodes_for(&plain));
        let mut rng = Rng::new(seed);
        for s in 0..N / 2 {
            let m = Mapping::new(s * 2 * P, 2 * P, obj(1 + s % 3), 0)
                .with_repeat(Repeat::new(P << (s % 3)));
            run(&mut vm, Request::Map(m)).expect("fill");
        }
        for _ in 0..400 {
            let a = rng.below(N - 64) * P;
            let len = (1 + rng.below(40)) * P;
            let period = P << rng.below(4);
            let m = Mapping::new(
                a,
                len,
                obj(1 + rng.below(3)),
                period * rng.below(2) + (a % period),
            )
            .with_repeat(Repeat::new(period));
            run(&mut vm, Request::Map(m)).expect("valid");
            run(
                &mut vm,
                Request::Unmap {
                    addr: a + P,
                    len: P,
                },
            )
            .expect("valid");
        }
    }
}
