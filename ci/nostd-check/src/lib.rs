//! Core-only link check: exercise the libraries with caller-owned memory and no allocator.
#![no_std]

use gpuva::{GpuVa, GpuVm, Mapping, NodeReserve, ObjId, RefNode, RetiredList};

/// Maps and unmaps through gpuva with nodes in a caller array; returns the mapping count.
#[no_mangle]
pub extern "C" fn nostd_check_gpuva(addr: u64, len: u64) -> usize {
    let mut slots: [GpuVa<(), RefNode<'_, ()>>; 5] = core::array::from_fn(|_| GpuVa::new(()));
    let mut it = slots.iter_mut();
    let mut map_pool = NodeReserve::<RefNode<'_, ()>>::new();
    let mut unmap_pool = NodeReserve::<RefNode<'_, ()>, 2>::new();
    for _ in 0..3 {
        if let Some(s) = it.next() {
            let _ = map_pool.push(RefNode::new(s));
        }
    }
    for s in it {
        let _ = unmap_pool.push(RefNode::new(s));
    }
    let Ok(mut vm) = GpuVm::new(0..1 << 40, 0..0x1000) else { return usize::MAX };
    let mut retired = RetiredList::new();
    if vm.map(Mapping::new(addr, len, ObjId::new(1), 0), &mut map_pool, &mut retired).is_err() {
        return usize::MAX;
    }
    let _ = vm.unmap(addr + len / 4, len / 2, &mut unmap_pool, &mut retired);
    vm.len()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[cfg(not(target_os = "none"))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}
