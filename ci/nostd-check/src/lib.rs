//! Core-only link check: exercise the libraries with caller-owned memory and no allocator.
#![no_std]

use core::mem::ManuallyDrop;

use gpuva::{GpuVm, Mapping, Node, NodeBag, ObjId, RefNode, Request};

/// Nodes in the caller array: one map with an object plus its link, then an unmap, in a
/// 4 KiB-granular 1 GiB space (small bounds).
const SLOTS: usize = 64;

/// Maps and unmaps through gpuva, with object links, nodes in a caller array; returns the
/// mapping count (`usize::MAX` on any failure).
#[no_mangle]
pub extern "C" fn nostd_check_gpuva(addr: u64, len: u64) -> usize {
    let mut slots: ManuallyDrop<[Node<(), (), RefNode<'_, ()>>; SLOTS]> =
        ManuallyDrop::new(core::array::from_fn(|_| Node::new()));
    let mut bag = NodeBag::new();
    for slot in slots.iter_mut() {
        bag.push(RefNode::new(slot));
    }
    let Ok(mut vm) = GpuVm::with_granule(0..1 << 30, 0..0x1000, 0x1000) else {
        return usize::MAX;
    };
    let Some(obj) = ObjId::new(1) else {
        return usize::MAX;
    };
    let map = Request::Map(Mapping::new(addr, len, Some(obj), 0));
    let unmap = Request::Unmap {
        addr: addr + len / 4,
        len: len / 2,
    };
    let need = vm.nodes_for(&map) + vm.nodes_for(&unmap) + vm.link_nodes();
    let Ok(mut claim) = vm.reserve(need, &mut bag) else {
        return usize::MAX;
    };
    let Ok(pin) = vm.link_obtain(obj, &mut claim, || ()) else {
        return usize::MAX;
    };
    if vm
        .step(map, &mut claim, &mut gpuva::Apply::default())
        .is_err()
    {
        return usize::MAX;
    }
    let _ = vm.step(unmap, &mut claim, &mut gpuva::Apply::default());
    let _ = vm.release(claim);
    let _ = vm.link_put(pin);
    let n = vm.len();
    // Hand every node back before the slots go away.
    let mut spare = vm.trim(0);
    vm.clear(|_, ()| {});
    spare.append(&mut vm.trim(0));
    drop(vm);
    drop(spare);
    drop(bag);
    n
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[cfg(not(target_os = "none"))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}
