#!/usr/bin/env python3
"""Random trace generator for VA trace format v1 (stdlib only).

Emits trace format v1 (docs/trace-format.md):
    space <start> <size>
    [reserve <addr> <size>]
    map <addr> <size> <obj> <offset>      (obj 0 = NULL / sparse mapping)
    unmap <addr> <size>

Modes
  random          uniformly random maps/unmaps of 1..max-pages granules over a
                  small space, so that requests overlap a lot (splits, merges,
                  keep flags, multi-mapping unmaps).
  dense           build up to --dense-mappings small mappings (one per slot of
                  max-pages granules, slots visited in random order), then churn:
                  partial/whole re-maps, partial/whole unmaps and maps spanning
                  two slots.  The mapping count stays around --dense-mappings.
  sparse-texture  Vulkan sparse residency: one big range backed by a NULL
                  (sparse) mapping, then random runs of 64 KiB tiles bound to a
                  few objects, or unbound (re-bound to NULL, or really unmapped).

Invalid requests (--invalid-ratio, kinds from --invalid-kinds):
  zero      size 0 (drm_gpuvm itself does NOT reject these - see README; the
            address is never 0, where a size-0 node would get last = 2^64-1)
  oob       partly or fully outside the VA space
  overflow  addr + size wraps around 2^64
  reserved  overlaps the kernel-reserved node (needs --reserve; else oob)

Offsets: with probability --contig-ratio a mapping of object k at address a
uses offset (a - usable_start) ("identity" layout), so overlapping/adjacent
re-maps of the same object are physically contiguous and produce keep=1;
otherwise a random granule-aligned offset is used.
"""
import argparse
import random
import sys

U64 = (1 << 64) - 1


def parse_int(s):
    s = s.strip().replace("_", "")
    return int(s, 16) if s.lower().startswith("0x") else int(s, 10)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000, help="number of requests (default 1000)")
    ap.add_argument("--mode", choices=["random", "dense", "sparse-texture"], default="random")
    ap.add_argument("--space-start", type=parse_int, default=0)
    ap.add_argument("--space-size", type=parse_int, default=None,
                    help="default: random 0x10000000, dense computed, sparse-texture 0x400000000")
    ap.add_argument("--granule", type=parse_int, default=0x1000)
    ap.add_argument("--max-pages", type=int, default=None,
                    help="max mapping size in granules (default: random 16, dense 4)")
    ap.add_argument("--objects", type=int, default=None,
                    help="number of GEM objects (default: random 8, dense 64, sparse-texture 4)")
    ap.add_argument("--unmap-ratio", type=float, default=None,
                    help="fraction of unmap/unbind requests (default: 0.3, sparse-texture 0.4)")
    ap.add_argument("--null-ratio", type=float, default=0.05,
                    help="random/dense: fraction of maps with obj 0 (NULL/sparse)")
    ap.add_argument("--contig-ratio", type=float, default=0.5,
                    help="fraction of maps using the identity offset layout")
    ap.add_argument("--invalid-ratio", type=float, default=0.0)
    ap.add_argument("--invalid-kinds", default="zero,oob,overflow,reserved")
    ap.add_argument("--reserve", type=parse_int, default=0,
                    help="size of the kernel-reserved node (0 = none)")
    ap.add_argument("--reserve-addr", type=parse_int, default=None,
                    help="address of the reserved node (default: space start)")
    ap.add_argument("--dense-mappings", type=int, default=None,
                    help="dense: number of slots/mappings to build (default requests//2, max 1e6)")
    ap.add_argument("--tile-size", type=parse_int, default=0x10000)
    ap.add_argument("--max-tiles", type=int, default=16)
    ap.add_argument("--pool-size", type=parse_int, default=0x10000000,
                    help="sparse-texture: size of each backing object (random offsets)")
    ap.add_argument("--no-sparse-backing", action="store_true",
                    help="sparse-texture: don't start with a NULL mapping of the whole range")
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    g = a.granule
    if g <= 0 or g & (g - 1):
        sys.exit("--granule must be a power of two")
    mode = a.mode
    max_pages = a.max_pages or (4 if mode == "dense" else 16)
    nobj = a.objects or {"random": 8, "dense": 64, "sparse-texture": 4}[mode]
    unmap_ratio = a.unmap_ratio if a.unmap_ratio is not None else (0.4 if mode == "sparse-texture" else 0.3)
    kinds = [k for k in a.invalid_kinds.split(",") if k]
    for k in kinds:
        if k not in ("zero", "oob", "overflow", "reserved"):
            sys.exit("unknown invalid kind %r" % k)

    start = a.space_start
    dense_T = None
    if mode == "dense":
        dense_T = a.dense_mappings or max(1, min(a.requests // 2, 1_000_000))
    if a.space_size is not None:
        size = a.space_size
    elif mode == "random":
        size = 0x10000000
    elif mode == "dense":
        size = dense_T * max_pages * g + a.reserve + max_pages * g
    else:
        size = 0x400000000 + a.reserve
    end = start + size
    if end > U64 + 1:
        sys.exit("space exceeds 2^64")

    raddr = a.reserve_addr if a.reserve_addr is not None else start
    rsize = a.reserve
    # usable region for valid requests: the larger piece of the space outside
    # the reserved node
    lo, hi = start, end
    if rsize:
        left = (start, max(start, min(raddr, end)))
        right = (min(end, max(start, raddr + rsize)), end)
        lo, hi = max((left, right), key=lambda p: p[1] - p[0])
    align = a.tile_size if mode == "sparse-texture" else g
    lo = (lo + align - 1) // align * align
    hi = hi // align * align
    if hi - lo < max_pages * g:
        sys.exit("usable VA space too small")

    out = sys.stdout if a.output == "-" else open(a.output, "w")
    buf = []
    w = buf.append

    def flush():
        out.write("".join(buf))
        buf.clear()

    w("# gen_trace.py " + " ".join(sys.argv[1:]) + "\n")
    w("# mode=%s seed=%d requests=%d granule=0x%x max_pages=%d objects=%d unmap_ratio=%g invalid_ratio=%g\n"
      % (mode, a.seed, a.requests, g, max_pages, nobj, unmap_ratio, a.invalid_ratio))
    w("space 0x%x 0x%x\n" % (start, size))
    if rsize:
        w("reserve 0x%x 0x%x\n" % (raddr, rsize))

    def rand_obj():
        if rng.random() < a.null_ratio:
            return 0
        return rng.randint(1, nobj)

    def offset_for(addr, obj, npages):
        if obj == 0:
            return 0
        if rng.random() < a.contig_ratio:
            return addr - lo
        return rng.randrange(0, 1 << 12) * g

    def emit_map(addr, sz, obj, off):
        w("map 0x%x 0x%x %d 0x%x\n" % (addr, sz, obj, off))

    def emit_unmap(addr, sz):
        w("unmap 0x%x 0x%x\n" % (addr, sz))

    def emit_invalid():
        kind = rng.choice(kinds) if kinds else "oob"
        if kind == "reserved" and not rsize:
            kind = "oob"
        npg = rng.randint(1, max_pages)
        if kind == "zero":
            a0 = max(lo, g)
            addr = a0 + rng.randrange(0, max(1, (hi - a0) // g)) * g
            sz = 0
        elif kind == "oob":
            choice = rng.randrange(3)
            if choice == 0 and start >= g:
                # starts below the space, ends inside it
                addr = start - rng.randint(1, min(max_pages, start // g)) * g
                sz = (start - addr) + npg * g
            elif choice == 1 and end <= U64 - max_pages * g:
                # starts inside, ends past the end
                addr = end - rng.randint(1, npg) * g
                sz = (end - addr) + rng.randint(1, max_pages) * g
            else:
                # entirely past the end (or, if the space ends at 2^64, below it)
                if end <= U64 - 2 * max_pages * g:
                    addr = end + rng.randint(0, max_pages) * g
                else:
                    addr = max(0, start - 2 * max_pages * g)
                    if start == 0:
                        addr, sz = end - g, 2 * g  # overflows or runs past the end
                        return finish_invalid(addr, sz)
                sz = npg * g
        elif kind == "overflow":
            k = rng.randint(1, max_pages)
            addr = (1 << 64) - k * g
            sz = rng.choice([k * g + rng.randint(1, max_pages) * g, U64, 1 << 63])
            if addr + sz <= U64:
                sz = U64
        else:  # reserved
            addr = raddr + rng.randrange(0, max(1, rsize // g)) * g
            if rng.random() < 0.5 and raddr >= g:
                addr = raddr - g * rng.randint(1, max_pages)   # straddles the start
            sz = rng.randint(1, max_pages) * g
            if addr + sz <= raddr:
                sz = raddr - addr + g
            addr &= U64
        return finish_invalid(addr, sz)

    def finish_invalid(addr, sz):
        addr &= U64
        sz &= U64
        if rng.random() < 0.5:
            obj = rng.randint(1, nobj)
            emit_map(addr, sz, obj, rng.randrange(0, 1 << 12) * g)
        else:
            emit_unmap(addr, sz)

    n = 0
    N = a.requests

    def maybe_invalid():
        nonlocal n
        while n < N and a.invalid_ratio and rng.random() < a.invalid_ratio:
            emit_invalid()
            n += 1

    if mode == "random":
        pages_total = (hi - lo) // g
        while n < N:
            maybe_invalid()
            if n >= N:
                break
            if rng.random() < unmap_ratio:
                npg = rng.randint(1, 4 * max_pages)
                npg = min(npg, pages_total)
                addr = lo + rng.randrange(0, pages_total - npg + 1) * g
                emit_unmap(addr, npg * g)
            else:
                npg = rng.randint(1, max_pages)
                addr = lo + rng.randrange(0, pages_total - npg + 1) * g
                obj = rand_obj()
                emit_map(addr, npg * g, obj, offset_for(addr, obj, npg))
            n += 1
            if len(buf) > 65536:
                flush()

    elif mode == "dense":
        slot = max_pages * g
        T = min(dense_T, (hi - lo) // slot - 1)
        if T < 2:
            sys.exit("dense: space too small for the requested mappings")
        order = list(range(T))
        rng.shuffle(order)
        # build phase
        for i in order:
            maybe_invalid()
            if n >= N:
                break
            addr = lo + i * slot
            npg = rng.randint(1, max_pages)
            obj = rand_obj()
            emit_map(addr, npg * g, obj, offset_for(addr, obj, npg))
            n += 1
            if len(buf) > 65536:
                flush()
        # churn phase
        while n < N:
            maybe_invalid()
            if n >= N:
                break
            j = rng.randrange(T)
            base = lo + j * slot
            r = rng.random()
            if r < unmap_ratio:
                v = rng.random()
                if v < 0.45:        # whole slot
                    emit_unmap(base, slot)
                elif v < 0.9:       # partial, inside the slot
                    p0 = rng.randrange(max_pages)
                    p1 = rng.randint(p0 + 1, max_pages)
                    emit_unmap(base + p0 * g, (p1 - p0) * g)
                else:               # spanning into the next slot
                    p0 = rng.randrange(1, max_pages) if max_pages > 1 else 0
                    npg = rng.randint(max_pages - p0 + 1, 2 * max_pages - p0)
                    emit_unmap(base + p0 * g, npg * g)
            else:
                v = rng.random()
                obj = rand_obj()
                if v < 0.4:         # re-map the slot from its start
                    npg = rng.randint(1, max_pages)
                    addr = base
                elif v < 0.8:       # sub-range inside the slot
                    p0 = rng.randrange(max_pages)
                    npg = rng.randint(1, max_pages - p0)
                    addr = base + p0 * g
                else:               # spanning two slots
                    p0 = rng.randrange(1, max_pages) if max_pages > 1 else 0
                    npg = rng.randint(max_pages - p0 + 1, 2 * max_pages - p0)
                    addr = base + p0 * g
                emit_map(addr, npg * g, obj, offset_for(addr, obj, npg))
            n += 1
            if len(buf) > 65536:
                flush()

    else:  # sparse-texture
        tile = a.tile_size
        if tile % g:
            sys.exit("--tile-size must be a multiple of --granule")
        ntiles = (hi - lo) // tile
        max_tiles = max(1, min(a.max_tiles, ntiles))
        pool_tiles = max(max_tiles, a.pool_size // tile)
        if not a.no_sparse_backing and n < N:
            emit_map(lo, ntiles * tile, 0, 0)
            n += 1
        while n < N:
            maybe_invalid()
            if n >= N:
                break
            cnt = rng.randint(1, max_tiles)
            t0 = rng.randrange(0, ntiles - cnt + 1)
            addr = lo + t0 * tile
            sz = cnt * tile
            if rng.random() < unmap_ratio:
                if rng.random() < 0.75:
                    emit_map(addr, sz, 0, 0)     # unbind -> back to NULL/sparse
                else:
                    emit_unmap(addr, sz)         # real unmap, leaves a hole
            else:
                obj = rng.randint(1, nobj)
                if rng.random() < a.contig_ratio:
                    off = addr - lo
                else:
                    off = rng.randrange(0, pool_tiles - cnt + 1) * tile
                emit_map(addr, sz, obj, off)
            n += 1
            if len(buf) > 65536:
                flush()

    flush()
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
