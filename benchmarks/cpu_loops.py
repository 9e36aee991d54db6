"""Static instruction counts of the CPU compress hot loops, from the built library (a count, not a timing).

    python benchmarks/cpu_loops.py [path/to/_C.so]      # default: the tnq_kernels/_C*.so of this checkout

For every instantiation of the AVX-512 and AVX2 encode loops (encode_full_groups_avx512<dtype, bits, bin width,
probes, nearest>, encode_full_groups_avx2<dtype, bits, nearest, u16, half>) and of the block-scale loops
(abs_sum_lanes_avx512/avx2<dtype, squares>), prints the instructions of its hot loop: the longest innermost loop of
the function in `objdump -d`, counted from the branch target to the branch. The encode loops handle one 32-element
group per iteration, the AVX-512 scale loop 32 elements and the AVX2 one 16 (in each of its two passes). "vector"
counts the instructions that name an xmm/ymm/zmm or mask register, "stack" those that address the stack (register
spills and reloads). Instruction counts do not depend on the machine's load, so they can be compared across builds
on a busy machine (docs/benchmarks-cpu.md); they are not a time.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERNS = ("tnq::cpu::(anonymous namespace)::encode_full_groups_avx512<", "tnq::cpu::abs_sum_lanes_avx512<",
            "tnq::cpu::(anonymous namespace)::encode_full_groups_avx2<", "tnq::cpu::abs_sum_lanes_avx2<")
_INSN = re.compile(r"\s+([0-9a-f]+):\s+(\S+)\s*(.*)")
_VECTOR = re.compile(r"[xyz]mm\d|\bk[0-7]\b")


def symbols(so: str) -> list[tuple[int, int, str]]:
    """(address, size, demangled name) of the functions matching PATTERNS."""
    out = subprocess.run(["nm", "-C", "-S", so], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and any(p in parts[3] for p in PATTERNS):
            found.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return found


def hot_loop(so: str, addr: int, size: int) -> list[tuple[int, str, str]]:
    """The instructions of the longest innermost loop in [addr, addr + size): of the backward branches whose span
    holds no other backward branch, the longest span."""
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-M", "intel", f"--start-address={addr}",
                          f"--stop-address={addr + size}", so], capture_output=True, text=True, check=True).stdout
    ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_INSN.match, dis.splitlines()) if m]
    back = []  # (target, branch address) of every backward branch
    for a, op, arg in ins:
        t = re.match(r"([0-9a-f]+)", arg) if op.startswith("j") else None
        if t and int(t.group(1), 16) <= a:
            back.append((int(t.group(1), 16), a))
    best: list = []
    for lo, hi in back:
        if any(lo <= t2 and b2 < hi for t2, b2 in back if (t2, b2) != (lo, hi)):
            continue  # an outer loop
        body = [x for x in ins if lo <= x[0] <= hi]
        best = body if len(body) > len(best) else best
    return best


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    so = args[0] if args else sorted(glob.glob(os.path.join(ROOT, "tnq_kernels", "_C*.so")))[0]
    rows = {}
    for addr, size, name in symbols(so):
        body = hot_loop(so, addr, size)
        if not body:
            continue
        vec = sum(1 for _, op, arg in body if _VECTOR.search(arg) or op.startswith("k"))
        stack = sum(1 for _, _, arg in body if re.search(r"\[r[sb]p", arg))
        short = re.sub(r"\(.*", "", name.replace("tnq::cpu::(anonymous namespace)::", "").replace("tnq::cpu::", ""))
        rows[short] = (len(body), vec, stack)
    print(f"{'loop':60s} {'instructions':>12s} {'vector':>7s} {'stack':>6s}")
    for short in sorted(rows):
        n, vec, stack = rows[short]
        print(f"{short:60s} {n:12d} {vec:7d} {stack:6d}")


if __name__ == "__main__":
    main()
