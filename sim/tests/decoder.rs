//! The MMU's own descriptor decoder and walker agree with `pagetable::translate` on every page
//! of random tables (maps of mixed contiguity, unmaps that split blocks).

use std::cell::RefCell;
use std::rc::Rc;

use pagetable::{
    job_bound_alloc, Attrs, Chunk, Format, JobOp, PageTable, PhysAddr, RegionLocked, Reserve,
    TlbInvalidate, VirtAddr,
};
use sim::mmu::walk_from;
use sim::phys::{Phys, TablePool};
use sim::scenario::Rng;

struct Done;
impl TlbInvalidate for Done {
    type Error = ();
    fn invalidate(&mut self, _: core::ops::Range<u64>, _: bool) -> Result<(), ()> {
        Ok(())
    }
}

#[test]
fn decoder_agrees_with_pagetable_translate_on_random_tables() {
    for seed in 0..6 {
        let mut rng = Rng::new(seed);
        let phys = Rc::new(RefCell::new(Phys::new(0x8000_0000, 64 * 512)));
        let mut pool = TablePool::new(Rc::clone(&phys), 0);
        let fmt = Format::panthor(48).expect("format");
        let mut pt = PageTable::try_new(fmt, &mut pool).expect("root");
        let base = 0x40_0000_0000u64;
        for _ in 0..40 {
            let va = base + rng.below(256) * 0x1_0000 * if rng.pct(50) { 32 } else { 1 };
            let len = [0x1000u64, 0x1_0000, 0x20_0000, 0x40_0000]
                [usize::try_from(rng.below(4)).unwrap_or(0)];
            let pa = 0x1_0000_0000
                + rng.below(1 << 10) * 0x20_0000
                + if rng.pct(30) { 0x3000 } else { 0 };
            let backing = [Chunk::new(PhysAddr::new(pa), len)];
            let attrs = Attrs {
                read_only: rng.pct(30),
                no_exec: rng.pct(30),
                ..Attrs::default()
            };
            let ops = [
                JobOp::Unmap {
                    va: VirtAddr::new(va),
                    len,
                },
                JobOp::Map {
                    va: VirtAddr::new(va),
                    backing: &backing,
                },
            ];
            let need = job_bound_alloc(&fmt, &ops).expect("bound").total();
            let mut r = Reserve::new();
            r.try_fill(&mut pool, need).expect("fill");
            let mut ctx = pt.update(&mut pool, &mut r, RegionLocked);
            ctx.unmap(VirtAddr::new(va), len).expect("unmap");
            ctx.map(VirtAddr::new(va), &backing, attrs).expect("map");
            if rng.pct(40) {
                // A hole that splits whatever block is there.
                ctx.unmap(VirtAddr::new(va + 0x1000), 0x1000).ok();
            }
            let flush = ctx.finish();
            let mut rec = flush.invalidate(&mut Done).expect("tlb");
            rec.release(&mut pool).expect("release");
            r.release(&mut pool).expect("release");
        }
        let root = pt.root().as_u64();
        let start = fmt.start_level().as_u8();
        let mut compared = 0;
        for page in (base..base + (256 * 32 + 64) * 0x1_0000).step_by(0x1000) {
            let theirs = pt
                .translate(&pool, VirtAddr::new(page))
                .expect("translate")
                .map(|t| (t.pa.as_u64(), t.attrs.read_only, t.size));
            let mine = walk_from(&pool, root, start, page, |_, _| {})
                .ok()
                .map(|l| (l.translate(page), l.read_only, l.size));
            assert_eq!(mine, theirs, "seed {seed} page {page:#x}");
            compared += usize::from(mine.is_some());
        }
        assert!(compared > 100);
    }
}
