//! Shared test fixtures: counted objects, a recording MMU, a page-granular reference model and
//! an independent decoder of the page tables.
#![allow(
    dead_code,
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation
)]

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::rc::Rc;

use gpuva::ObjId;
use pagetable::{Chunk, Format, PhysAddr, TableMemory, VecPool};
use vmbind::{BindOp, JobFence, MapFlags, Mmu, ObjRef, ObjectRegistry, Vm, VmConfig};

pub const PAGE: u64 = 0x1000;
pub const MIB2: u64 = 0x20_0000;
/// The window random ops fall in (pages).
pub const WINDOW_PAGES: u64 = 4096; // 16 MiB
pub const VA_BASE: u64 = 0x40_0000_0000;
pub const OBJ_SIZE: u64 = 4 * MIB2;

/// A counted object reference: clones and drops move the registry's live count.
#[derive(Debug)]
pub struct Bo {
    pub id: u64,
    pub chunks: Rc<Vec<Chunk>>,
    live: Rc<Cell<i64>>,
}

impl Clone for Bo {
    fn clone(&self) -> Self {
        self.live.set(self.live.get() + 1);
        Self {
            id: self.id,
            chunks: self.chunks.clone(),
            live: self.live.clone(),
        }
    }
}

impl Drop for Bo {
    fn drop(&mut self) {
        self.live.set(self.live.get() - 1);
    }
}

impl ObjRef for Bo {
    fn size(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }
    fn backing(&self) -> &[Chunk] {
        &self.chunks
    }
}

/// Objects 1..=4 with different physical layouts; lookups of other ids fail.
pub struct Registry {
    pub objs: HashMap<u64, Rc<Vec<Chunk>>>,
    pub live: Rc<Cell<i64>>,
    /// Fail every lookup (to inject a registry failure).
    pub fail: bool,
}

impl Registry {
    pub fn new() -> Self {
        let mut objs = HashMap::new();
        // 1: one 2 MiB-aligned contiguous chunk (blocks wherever the VA allows).
        objs.insert(
            1,
            Rc::new(vec![Chunk::new(PhysAddr::new(0x1_0000_0000), OBJ_SIZE)]),
        );
        // 2: scattered 64 KiB chunks.
        objs.insert(
            2,
            Rc::new(
                (0..OBJ_SIZE / 0x1_0000)
                    .map(|i| {
                        Chunk::new(
                            PhysAddr::new(0x2_0000_0000 + (i * 7 % 64) * 0x10_0000),
                            0x1_0000,
                        )
                    })
                    .collect(),
            ),
        );
        // 3: a 2 MiB block-capable chunk, then scattered pages.
        let mut v = vec![Chunk::new(PhysAddr::new(0x3_0000_0000), MIB2)];
        v.extend(
            (0..(OBJ_SIZE - MIB2) / PAGE)
                .map(|i| Chunk::new(PhysAddr::new(0x3_8000_0000 + i * 2 * PAGE), PAGE)),
        );
        objs.insert(3, Rc::new(v));
        // 4: contiguous but only page-aligned (no blocks).
        objs.insert(
            4,
            Rc::new(vec![Chunk::new(PhysAddr::new(0x4_0000_1000), OBJ_SIZE)]),
        );
        Self {
            objs,
            live: Rc::new(Cell::new(0)),
            fail: false,
        }
    }

    /// The physical address of byte `off` of `obj`.
    pub fn pa(&self, obj: u64, off: u64) -> u64 {
        let mut off = off;
        for c in self.objs[&obj].iter() {
            if off < c.len {
                return c.pa.as_u64() + off;
            }
            off -= c.len;
        }
        panic!("offset beyond object");
    }
}

impl ObjectRegistry for Registry {
    type Ref = Bo;
    type Error = &'static str;
    fn get(&mut self, obj: ObjId) -> Result<Bo, &'static str> {
        if self.fail {
            return Err("lookup failed");
        }
        let chunks = self.objs.get(&obj.get()).ok_or("no such object")?.clone();
        self.live.set(self.live.get() + 1);
        Ok(Bo {
            id: obj.get(),
            chunks,
            live: self.live.clone(),
        })
    }
}

/// Records invalidations; can be told to fail them; calls `on_begin`/`on_end` around runs.
pub struct TestMmu {
    pub invalidations: Vec<(Range<u64>, bool)>,
    pub fail_tlb: bool,
    pub on_begin: fn(),
    pub on_end: fn(),
    pub runs: u64,
    pub depth: u32,
    /// Lock regions requested (recorded only when `record_locks` is set: recording allocates).
    pub locks: Vec<pagetable::LockRegion>,
    pub record_locks: bool,
}

impl Default for TestMmu {
    fn default() -> Self {
        Self {
            invalidations: Vec::new(),
            fail_tlb: false,
            on_begin: || {},
            on_end: || {},
            runs: 0,
            depth: 0,
            locks: Vec::new(),
            record_locks: false,
        }
    }
}

impl pagetable::TlbInvalidate for TestMmu {
    type Error = ();
    fn invalidate(&mut self, range: Range<u64>, walk: bool) -> Result<(), ()> {
        if self.fail_tlb {
            return Err(());
        }
        // Recording may allocate: only outside the signalling section (tests that count
        // allocations check `depth`).
        if self.depth == 0 {
            self.invalidations.push((range, walk));
        }
        Ok(())
    }
}

impl pagetable::UpdateHooks for TestMmu {
    fn break_before_make(&mut self, _block: Range<u64>) {}
}

impl Mmu for TestMmu {
    fn lock(&mut self, region: pagetable::LockRegion) {
        if self.record_locks {
            self.locks.push(region);
        }
    }
    fn begin_signalling(&mut self) {
        self.depth += 1;
        self.runs += 1;
        (self.on_begin)();
    }
    fn end_signalling(&mut self) {
        (self.on_end)();
        self.depth -= 1;
    }
}

pub type TestVm = Vm<Bo, VecPool, TestMmu>;

pub fn format() -> Format {
    Format::panthor(48).unwrap().with_oa_bits(40).unwrap()
}

pub type AnyVm<F> = Vm<Bo, VecPool, TestMmu, F>;

pub fn new_vm() -> TestVm {
    new_vm_with()
}

pub fn new_vm_with<F: JobFence>() -> AnyVm<F> {
    let fmt = format();
    let pool = VecPool::new(fmt.granule(), PhysAddr::new(0x80_0000_0000 >> 2)).unwrap();
    let mut cfg = VmConfig::new(fmt, 0x1000..1 << 47);
    cfg.cut_out = VA_BASE + WINDOW_PAGES * PAGE..VA_BASE + WINDOW_PAGES * PAGE + MIB2;
    Vm::new(cfg, pool, TestMmu::default()).unwrap()
}

/// Page-granular reference model: page VA -> (object, object offset, flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub pages: BTreeMap<u64, (u64, u64, MapFlags)>,
}

impl Model {
    pub fn apply(&mut self, op: &BindOp) {
        match *op {
            BindOp::Map {
                va,
                len,
                obj,
                offset,
                flags,
            } => {
                for k in (0..len).step_by(PAGE as usize) {
                    self.pages.insert(va + k, (obj.get(), offset + k, flags));
                }
            }
            BindOp::Unmap { va, len } => {
                let keys: Vec<u64> = self.pages.range(va..va + len).map(|(k, _)| *k).collect();
                for k in keys {
                    self.pages.remove(&k);
                }
            }
            BindOp::SyncOnly => {}
        }
    }
}

/// A decoded leaf page: PA, read-only, no-exec.
pub type PtPage = (u64, bool, bool);

/// Decodes the page tables from raw descriptors (VMSAv8-64, 4 KiB granule, 4 levels), without
/// using the pagetable crate's walker: every valid page, VA -> (PA, RO, XN).
pub fn decode_tables<F: JobFence>(vm: &AnyVm<F>) -> BTreeMap<u64, PtPage> {
    let mut out = BTreeMap::new();
    walk(vm.memory(), vm.page_table().root().as_u64(), 0, 0, &mut out);
    out
}

fn walk(mem: &VecPool, table: u64, level: u32, base: u64, out: &mut BTreeMap<u64, PtPage>) {
    let (entries, _) = mem
        .frame(PhysAddr::new(table))
        .expect("table frame resolves");
    let shift = 39 - 9 * level;
    for (i, pte) in entries.iter().enumerate() {
        let raw = pte.as_raw();
        if raw & 1 == 0 {
            continue;
        }
        let va = base + ((i as u64) << shift);
        let oa = raw & 0x0000_FFFF_FFFF_F000;
        if level < 3 && raw & 2 != 0 {
            walk(mem, oa, level + 1, va, out);
            continue;
        }
        assert!(
            level == 3 && raw & 3 == 3 || (level == 1 || level == 2) && raw & 3 == 1,
            "bad leaf at L{level}"
        );
        let ro = raw & (1 << 7) != 0;
        let xn = raw & (3 << 53) == 3 << 53;
        let size = 1u64 << shift;
        for k in (0..size).step_by(PAGE as usize) {
            out.insert(va + k, (oa + k, ro, xn));
        }
    }
}

/// What the model says the tables must hold.
pub fn expected_tables(model: &Model, reg: &Registry) -> BTreeMap<u64, PtPage> {
    model
        .pages
        .iter()
        .map(|(va, (obj, off, f))| (*va, (reg.pa(*obj, *off), f.read_only, f.no_exec)))
        .collect()
}

/// The VA tree expanded to pages.
pub fn tree_pages<F: JobFence>(vm: &AnyVm<F>) -> BTreeMap<u64, (u64, u64, u32)> {
    let mut out = BTreeMap::new();
    for va in vm.va_space().iter() {
        let obj = va.obj().map_or(0, |o| o.get());
        for k in (0..va.length()).step_by(PAGE as usize) {
            out.insert(va.addr() + k, (obj, va.offset() + k, va.flags().bits()));
        }
    }
    out
}

pub fn model_tree(model: &Model) -> BTreeMap<u64, (u64, u64, u32)> {
    model
        .pages
        .iter()
        .map(|(va, (o, off, f))| (*va, (*o, *off, f.va_flags().bits())))
        .collect()
}

/// Checks tree, tables and links against the model.
pub fn check<F: JobFence>(vm: &AnyVm<F>, model: &Model, reg: &Registry) {
    vm.va_space().check_invariants().expect("gpuva invariants");
    check_contents(vm, model, reg);
}

/// [`check`] without gpuva's structural invariants (contents only).
pub fn check_contents<F: JobFence>(vm: &AnyVm<F>, model: &Model, reg: &Registry) {
    assert_eq!(
        tree_pages(vm),
        model_tree(model),
        "VA tree differs from the model"
    );
    assert_eq!(
        decode_tables(vm),
        expected_tables(model, reg),
        "page tables differ from the model"
    );
    vm.page_table().audit(vm.memory()).expect("table audit");
}

/// xorshift64*.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pick_len(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => MIB2,
        1 => (1 + rng.below(4)) * MIB2 / 2,
        2 => (1 + rng.below(600)) * PAGE,
        _ => (1 + rng.below(16)) * PAGE,
    }
}

/// A valid random op in the window.
pub fn random_op(rng: &mut Rng) -> BindOp {
    let len = pick_len(rng);
    let mut va_page = rng.below(WINDOW_PAGES - len / PAGE);
    if rng.below(3) == 0 {
        va_page &= !511;
    }
    let va = VA_BASE + va_page * PAGE;
    match rng.below(10) {
        0..=5 => {
            let obj = 1 + rng.below(4);
            let max_off = (OBJ_SIZE - len) / PAGE;
            let mut off = rng.below(max_off + 1) * PAGE;
            if rng.below(2) == 0 {
                off &= !(MIB2 - 1);
            }
            let flags = MapFlags {
                read_only: rng.below(4) == 0,
                no_exec: rng.below(4) == 0,
                uncached: false,
            };
            BindOp::Map {
                va,
                len,
                obj: ObjId::new(obj).unwrap(),
                offset: off,
                flags,
            }
        }
        6..=8 => BindOp::Unmap { va, len },
        _ => BindOp::SyncOnly,
    }
}

pub fn random_job(rng: &mut Rng, max_ops: u64) -> Vec<BindOp> {
    (0..1 + rng.below(max_ops))
        .map(|_| random_op(rng))
        .collect()
}
