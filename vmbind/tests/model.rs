//! prepare/run/cleanup on random multi-op jobs against a page-granular reference model, with the
//! page tables decoded by an independent walker.
#![cfg(feature = "alloc")]
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

mod common;

use common::*;
use vmbind::BindJob;

#[test]
fn random_jobs_match_the_model() {
    let (mut frames, mut unused_frames, mut nodes, mut used_nodes) = (0u64, 0u64, 0u64, 0u64);
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut reg = Registry::new();
        let mut vm = new_vm();
        let mut model = Model::default();
        for _ in 0..12 {
            let ops = random_job(&mut rng, 6);
            let job = vm
                .prepare(&mut reg, &BindJob::new(&ops))
                .unwrap_or_else(|e| panic!("{e:?} for {ops:x?}"));
            frames += job.frames();
            nodes += job.claimed_nodes() as u64;
            let taken = vm.va_space().nodes_taken();
            let done = vm.run(job).expect("own job");
            used_nodes += vm.va_space().nodes_taken() - taken;
            assert_eq!(done.result(), Ok(()));
            unused_frames += done.unused_frames() as u64;
            for op in &ops {
                model.apply(op);
            }
            if rng.below(2) == 0 {
                vm.cleanup(done).expect("cleanup");
            } else {
                vm.defer(done);
            }
            check(&vm, &model, &reg);
        }
        vm.cleanup_deferred();
        assert_eq!(vm.frames_in_flight(), 0);
        assert_eq!(vm.va_space().claimed_nodes(), 0);
        // Every mapped object has exactly one live link holding one reference.
        let objs: std::collections::BTreeSet<u64> = model.pages.values().map(|p| p.0).collect();
        assert_eq!(vm.va_space().links().count(), objs.len());
        assert_eq!(
            reg.live.get(),
            objs.len() as i64,
            "references: one per linked object"
        );
        // Unmapping everything leaves only the root table.
        let ops = [vmbind::BindOp::Unmap {
            va: VA_BASE,
            len: WINDOW_PAGES * PAGE,
        }];
        let job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
        let done = vm.run(job).unwrap();
        vm.cleanup(done).unwrap();
        vm.cleanup_deferred();
        assert!(vm.va_space().is_empty());
        assert_eq!(vm.page_table().audit(vm.memory()).unwrap().table_count(), 1);
        assert_eq!(
            vm.memory().in_use(),
            1 + vm.spare_frames(),
            "only the root frame and the VM's spare (zeroed, unused) frames stay allocated"
        );
        assert_eq!(reg.live.get(), 0, "every reference dropped");
        drop(vm);
    }
    eprintln!(
        "reservation slack: frames {unused_frames}/{frames} unused, gpuva nodes {used_nodes}/{nodes} drawn"
    );
}

#[test]
fn one_invalidation_per_job() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    let mut rng = Rng(77);
    for _ in 0..50 {
        let ops = random_job(&mut rng, 8);
        let before = vm.mmu().invalidations.len();
        let job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
        let done = vm.run(job).unwrap();
        let after = vm.mmu().invalidations.len();
        assert!(after - before <= 1, "at most one invalidation per job");
        vm.cleanup(done).unwrap();
    }
}
