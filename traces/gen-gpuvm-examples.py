#!/usr/bin/env python3
"""Writes gpuvm-examples/*.trace and *.expected from the worked examples of docs/semantics.md
(section 8, Examples E1-E14 and U1-U5), transcribed by hand.

The expected outputs come from that section, not from vmsim, so the golden test
(sim/tests/golden.rs) checks vmsim against drm_gpuvm's documented behaviour. Units are the doc's
abstract units in the VA space [0, 1000); objects X=1, Y=2, Z=3, W=4, NULL=0.
"""
import os

X, Y, Z, W, N = 1, 2, 3, 4, 0

def M(a, l, o, off):
    return ("map", a, l, o, off)

def U(a, l):
    return ("unmap", a, l)

def h(v):
    return hex(v)

def piece(p):
    return "-" if p is None else f"{h(p[0])},{h(p[1])},{p[2]},{h(p[3])}"

def op_map(a, l, o, off):
    return f"map {h(a)} {h(l)} {o} {h(off)}"

def op_unmap(v, keep):
    return f"unmap {h(v[0])} {h(v[1])} {v[2]} {h(v[3])} keep={keep}"

def op_remap(v, keep, prev, nxt):
    return f"remap unmap={piece(v)},keep={keep} prev={piece(prev)} next={piece(nxt)}"

# name: (existing mappings, request, expected ops for the request, resulting tree)
EXAMPLES = {
    "e01": ([(100, 100, X, 0)], M(100, 100, X, 0),
            [op_unmap((100, 100, X, 0), 1), op_map(100, 100, X, 0)], [(100, 100, X, 0)]),
    "e02": ([(100, 100, X, 0)], M(100, 100, X, 40),
            [op_unmap((100, 100, X, 0), 0), op_map(100, 100, X, 40)], [(100, 100, X, 40)]),
    "e03": ([(100, 100, X, 0)], M(100, 100, Y, 0),
            [op_unmap((100, 100, X, 0), 0), op_map(100, 100, Y, 0)], [(100, 100, Y, 0)]),
    "e04": ([(100, 300, X, 0)], M(200, 100, X, 100),
            [op_remap((100, 300, X, 0), 1, (100, 100, X, 0), (300, 100, X, 200)), op_map(200, 100, X, 100)],
            [(100, 100, X, 0), (200, 100, X, 100), (300, 100, X, 200)]),
    "e05": ([(100, 300, X, 0)], M(200, 100, Y, 7),
            [op_remap((100, 300, X, 0), 0, (100, 100, X, 0), (300, 100, X, 200)), op_map(200, 100, Y, 7)],
            [(100, 100, X, 0), (200, 100, Y, 7), (300, 100, X, 200)]),
    "e06": ([(100, 200, X, 0)], M(100, 100, Y, 0),
            [op_remap((100, 200, X, 0), 0, None, (200, 100, X, 100)), op_map(100, 100, Y, 0)],
            [(100, 100, Y, 0), (200, 100, X, 100)]),
    "e07": ([(100, 100, X, 0)], M(100, 200, X, 0),
            [op_unmap((100, 100, X, 0), 1), op_map(100, 200, X, 0)], [(100, 200, X, 0)]),
    "e08": ([(100, 200, X, 0)], M(200, 200, X, 100),
            [op_remap((100, 200, X, 0), 1, (100, 100, X, 0), None), op_map(200, 200, X, 100)],
            [(100, 100, X, 0), (200, 200, X, 100)]),
    "e09": ([(200, 200, X, 150)], M(100, 200, X, 50),
            [op_remap((200, 200, X, 150), 1, None, (300, 100, X, 250)), op_map(100, 200, X, 50)],
            [(100, 200, X, 50), (300, 100, X, 250)]),
    "e10": ([(100, 100, X, 0), (200, 100, Y, 0), (350, 100, Z, 10)], M(150, 250, W, 0),
            [op_remap((100, 100, X, 0), 0, (100, 50, X, 0), None), op_unmap((200, 100, Y, 0), 0),
             op_remap((350, 100, Z, 10), 0, None, (400, 50, Z, 60)), op_map(150, 250, W, 0)],
            [(100, 50, X, 0), (150, 250, W, 0), (400, 50, Z, 60)]),
    "e11": ([(100, 100, X, 0)], M(200, 100, X, 100),
            [op_map(200, 100, X, 100)], [(100, 100, X, 0), (200, 100, X, 100)]),
    "e12": ([], M(0, 10, X, 0), [op_map(0, 10, X, 0)], [(0, 10, X, 0)]),
    "e13": ([(100, 200, N, 0)], M(100, 100, N, 0),
            [op_remap((100, 200, N, 0), 0, None, (200, 100, N, 100)), op_map(100, 100, N, 0)],
            [(100, 100, N, 0), (200, 100, N, 100)]),
    "e14": ([(100, 50, X, 0), (150, 50, X, 50)], M(100, 100, X, 0),
            [op_unmap((100, 50, X, 0), 1), op_unmap((150, 50, X, 50), 1), op_map(100, 100, X, 0)],
            [(100, 100, X, 0)]),
    "u1": ([(100, 100, X, 0), (200, 100, Y, 0)], U(150, 100),
           [op_remap((100, 100, X, 0), 0, (100, 50, X, 0), None),
            op_remap((200, 100, Y, 0), 0, None, (250, 50, Y, 50))],
           [(100, 50, X, 0), (250, 50, Y, 50)]),
    "u2": ([(100, 300, X, 0)], U(200, 100),
           [op_remap((100, 300, X, 0), 0, (100, 100, X, 0), (300, 100, X, 200))],
           [(100, 100, X, 0), (300, 100, X, 200)]),
    "u3": ([(100, 100, X, 0), (200, 100, Y, 0)], U(0, 1000),
           [op_unmap((100, 100, X, 0), 0), op_unmap((200, 100, Y, 0), 0)], []),
    "u4": ([(100, 100, X, 0)], U(100, 100), [op_unmap((100, 100, X, 0), 0)], []),
    "u5": ([(100, 100, X, 0)], U(300, 50), [], [(100, 100, X, 0)]),
}

def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpuvm-examples")
    os.makedirs(out_dir, exist_ok=True)
    for name, (existing, req, ops, tree) in EXAMPLES.items():
        trace = [f"# docs/semantics.md, Example {name[0].upper()}{int(name[1:])}", "space 0 1000"]
        expected = []
        for n, (a, l, o, off) in enumerate(existing, start=1):
            trace.append(f"map {a} {l} {o} {off}")
            expected += [f"req {n}", op_map(a, l, o, off)]
        if req[0] == "map":
            trace.append(f"map {req[1]} {req[2]} {req[3]} {req[4]}")
        else:
            trace.append(f"unmap {req[1]} {req[2]}")
        expected.append(f"req {len(existing) + 1}")
        expected += ops
        expected.append("state")
        expected += [f"{h(a)} {h(l)} {o} {h(off)}" for (a, l, o, off) in tree]
        with open(os.path.join(out_dir, f"{name}.trace"), "w") as f:
            f.write("\n".join(trace) + "\n")
        with open(os.path.join(out_dir, f"{name}.expected"), "w") as f:
            f.write("\n".join(expected) + "\n")

if __name__ == "__main__":
    main()
