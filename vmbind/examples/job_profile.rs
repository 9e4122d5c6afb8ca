//! A small workload for profilers (`valgrind --tool=cachegrind`): `N` iterations of the bench's
//! two workloads through the pipeline, or (`direct`) through gpuva and pagetable directly.
//!
//! `cargo build --release -p vmbind --example job_profile`, then
//! `valgrind --tool=cachegrind --cache-sim=yes target/release/examples/job_profile pipeline64 10000`.
//! Modes: `pipeline64`, `direct64`, `pipeline16`, `direct16`, `none` (setup only).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    missing_docs,
    reason = "example code: infallible allocation is fine"
)]

use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Request};
use pagetable::{
    map_bound, unmap_bound, Attrs, Chunk, Format, PageTable, PhysAddr, Reserve, TlbInvalidate,
    UpdateHooks, VecPool, VirtAddr,
};
use vmbind::{BindJob, BindOp, MapFlags, Mmu, ObjRef, ObjectRegistry, Vm, VmConfig};

#[derive(Clone)]
struct Bo([Chunk; 1]);

impl ObjRef for Bo {
    fn size(&self) -> u64 {
        self.0[0].len
    }
    fn backing(&self) -> &[Chunk] {
        &self.0
    }
}

const OBJ: u64 = 0x20_0000;
const VA: u64 = 0x40_0000_0000;

fn bo(obj: ObjId) -> Bo {
    Bo([Chunk::new(PhysAddr::new(obj.get() << 32), OBJ)])
}

struct Handles;

impl ObjectRegistry for Handles {
    type Ref = Bo;
    type Error = ();
    fn get(&mut self, obj: ObjId) -> Result<Bo, ()> {
        Ok(bo(obj))
    }
}

struct NoAs;

impl TlbInvalidate for NoAs {
    type Error = ();
    fn invalidate(&mut self, _: std::ops::Range<u64>, _: bool) -> Result<(), ()> {
        Ok(())
    }
}

impl UpdateHooks for NoAs {
    fn break_before_make(&mut self, _: std::ops::Range<u64>) {}
}

impl Mmu for NoAs {}

fn fmt() -> Format {
    Format::panthor(48).unwrap()
}

fn pool() -> VecPool {
    VecPool::new(fmt().granule(), PhysAddr::new(0x1_0000_0000)).unwrap()
}

fn map_op(va: u64, len: u64, offset: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(3).unwrap(),
        offset,
        flags: MapFlags::default(),
    }
}

struct Direct {
    va: GpuVm<(), BoxNode<(), Bo>, Bo>,
    pt: PageTable,
    mem: VecPool,
}

impl Direct {
    fn map(&mut self, va: u64, len: u64, obj: ObjId, offset: u64) {
        let b = bo(obj);
        let backing = [Chunk::new(PhysAddr::new(b.0[0].pa.as_u64() + offset), len)];
        let f = fmt();
        let mut reserve = Reserve::new();
        let n = map_bound(&f, VirtAddr::new(va), &backing).unwrap().total();
        reserve.try_fill(&mut self.mem, n).unwrap();
        let m = Mapping::new(va, len, Some(obj), offset);
        let need = self.va.nodes_for(&Request::Map(m)) + self.va.link_nodes();
        let mut claim = self.va.reserve_boxed(need).unwrap();
        let pin = self.va.link_obtain(obj, &mut claim, || b.clone()).unwrap();
        let flush = self
            .pt
            .map(
                &mut self.mem,
                &mut reserve,
                NoAs,
                VirtAddr::new(va),
                &backing,
                Attrs::default(),
            )
            .unwrap();
        self.va.map(m, &mut claim).unwrap();
        flush
            .invalidate(&mut NoAs)
            .unwrap()
            .release(&mut self.mem)
            .unwrap();
        reserve.release(&mut self.mem).unwrap();
        self.va.release(claim).unwrap();
        self.va.link_put(pin).unwrap();
    }

    fn unmap(&mut self, va: u64, len: u64) {
        let f = fmt();
        let mut reserve = Reserve::new();
        let n = unmap_bound(&f, VirtAddr::new(va), len).unwrap().total();
        reserve.try_fill(&mut self.mem, n).unwrap();
        let need = self.va.nodes_for(&Request::Unmap { addr: va, len });
        let mut claim = self.va.reserve_boxed(need).unwrap();
        let flush = self
            .pt
            .unmap(&mut self.mem, &mut reserve, NoAs, VirtAddr::new(va), len)
            .unwrap();
        self.va.unmap(va, len, &mut claim).unwrap();
        flush
            .invalidate(&mut NoAs)
            .unwrap()
            .release(&mut self.mem)
            .unwrap();
        reserve.release(&mut self.mem).unwrap();
        self.va.release(claim).unwrap();
        self.va.drain_zombies(|_, _| {});
        drop(self.va.trim(64));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "pipeline64".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let obj = ObjId::new(3).unwrap();
    let one = [map_op(VA, 0x1_0000, 0)];
    let un_one = [BindOp::Unmap {
        va: VA,
        len: 0x1_0000,
    }];
    let pages: Vec<u64> = (0..16u64).map(|i| (i * 37 % 512) * 0x1000).collect();
    let sparse: Vec<BindOp> = pages.iter().map(|&o| map_op(VA + o, 0x1000, o)).collect();
    let un_win = [BindOp::Unmap {
        va: VA,
        len: 0x20_0000,
    }];
    let mut vm: Vm<Bo, VecPool, NoAs> =
        Vm::new(VmConfig::new(fmt(), 0x1000..1 << 47), pool(), NoAs).unwrap();
    let mut d = {
        let f = fmt();
        let mut mem = pool();
        let pt = PageTable::try_new(f, &mut mem).unwrap();
        let va = GpuVm::with_granule(0x1000..1 << 47, 0..0, f.page_size()).unwrap();
        Direct { va, pt, mem }
    };
    let mut pipeline = |ops: &[BindOp], unmap: &[BindOp]| {
        for o in [ops, unmap] {
            let j = vm.prepare(&mut Handles, &BindJob::new(o)).unwrap();
            let dj = vm.run(j).map_err(|_| ()).unwrap();
            vm.cleanup(dj).map_err(|_| ()).unwrap();
        }
    };
    if mode == "slack" {
        // Reserved / used frames and nodes per job, and the old bound (every map an unmap then
        // a map, a group each: the per-op sum).
        for (name, ops, un) in [
            ("64k", &one[..], &un_one[..]),
            ("sparse16", &sparse, &un_win),
        ] {
            for (what, o) in [("bind", ops), ("unmap", un)] {
                let j = vm.prepare(&mut Handles, &BindJob::new(o)).unwrap();
                let dj = vm.run(j).map_err(|_| ()).unwrap();
                let s = dj.summary();
                vm.cleanup(dj).map_err(|_| ()).unwrap();
                let backs: Vec<[Chunk; 1]> = o
                    .iter()
                    .map(|op| match *op {
                        BindOp::Map {
                            len, offset, obj, ..
                        } => [Chunk::new(PhysAddr::new((obj.get() << 32) + offset), len)],
                        _ => [Chunk::new(PhysAddr::new(0), 0)],
                    })
                    .collect();
                let jops: Vec<pagetable::JobOp<'_>> = o
                    .iter()
                    .zip(&backs)
                    .map(|(op, b)| match *op {
                        BindOp::Map { va, .. } => pagetable::JobOp::Replace {
                            va: VirtAddr::new(va),
                            backing: b,
                        },
                        BindOp::Unmap { va, len } => pagetable::JobOp::Unmap {
                            va: VirtAddr::new(va),
                            len,
                        },
                        BindOp::SyncOnly => unreachable!(),
                    })
                    .collect();
                let old = pagetable::sum_bound(&fmt(), &jops).unwrap().total();
                println!(
                    "{name} {what}: frames reserved {} used {} (old bound {old}); nodes reserved {} used {}",
                    s.frames_reserved, s.frames_used, s.nodes_reserved, s.nodes_used
                );
            }
        }
        return;
    }
    for _ in 0..n {
        match mode.as_str() {
            "pipeline64" => pipeline(std::hint::black_box(&one), &un_one),
            "pipeline16" => pipeline(std::hint::black_box(&sparse), &un_win),
            "direct64" => {
                d.map(std::hint::black_box(VA), 0x1_0000, obj, 0);
                d.unmap(VA, 0x1_0000);
            }
            "direct16" => {
                for &o in &pages {
                    d.map(std::hint::black_box(VA + o), 0x1000, obj, o);
                }
                d.unmap(VA, 0x20_0000);
            }
            _ => {}
        }
    }
}
