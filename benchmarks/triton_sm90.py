"""Compile momattn's Triton scan kernels for an H100/H200 (sm_90) on a machine without a GPU, and count instructions.

    .venv/bin/python benchmarks/triton_sm90.py            # every variant (~10-20 min on 2 cores), then the table
    .venv/bin/python benchmarks/triton_sm90.py --quick    # the instruction mix of the reference variants only

Triton ships ptxas and nvdisasm, so a kernel compiles to SASS here with no GPU and no driver. This catches what
Triton's CPU interpreter (the tests) does not: code that the interpreter runs but the compiler refuses, and how
the block product compiles (IEEE float32 FFMAs on the CUDA cores against HMMA tensor-core instructions). It
times nothing. Variants: every autotune config of the scan kernel x values float32 / bf16 x output float32 / the
values' dtype x addend or not x chunked or not x strict or not x reverse or not, and every config of the chunk
state kernel x both dtypes x reverse. Writes benchmarks/results/triton_sm90.json and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, said so to silence its warning

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import SCRATCH, check_out, run_main, write_json  # noqa: E402

SCAN_FLAGS = ("STRICT", "REVERSE", "CHUNKED", "HAS_ADD")
MIX = ("FFMA", "HMMA", "HGMMA", "LDG", "STG", "F2FP")  # the instruction kinds the table shows


def signature(kernel, pointers: dict[str, str], constexprs: set[str]) -> dict[str, str]:
    return {a: pointers.get(a, "constexpr" if a in constexprs else "i32") for a in kernel.arg_names}


def compile_sm90(kernel, sig: dict[str, str], const: dict, num_warps: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(sig)
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 3})


def sass_mix(compiled) -> tuple[int, dict[str, int]]:
    """(instructions, counts of the MIX kinds) of a compiled kernel's SASS."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True).stdout
    ops = Counter()
    lines = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", ln)]
    for ln in lines:
        m = re.search(r"\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", ln)
        if m:
            ops[m.group(2)] += 1
    return len(lines), {k: ops.get(k, 0) for k in MIX}


def scan_variant(ts, config, xt: str, out: str, flags: dict[str, bool]):
    pointers = {"X": f"*{xt}", "ADD": f"*{xt}", "Y": f"*{xt}" if out == "values" else "*fp32", "A": "*fp32",
                "E": "*fp32"}
    sig = signature(ts._scan_kernel, pointers, {*SCAN_FLAGS, "BT", "BD", "INTERPRET"})
    const = {**flags, "BT": config.kwargs["BT"], "BD": config.kwargs["BD"], "INTERPRET": False}
    return compile_sm90(ts._scan_kernel, sig, const, config.num_warps)


def state_variant(ts, config, xt: str, reverse: bool):
    sig = signature(ts._chunk_state_kernel, {"X": f"*{xt}", "E": "*fp32", "A": "*fp32"},
                    {"REVERSE", "BT", "BD", "INTERPRET"})
    const = {"REVERSE": reverse, "BT": config.kwargs["BT"], "BD": config.kwargs["BD"], "INTERPRET": False}
    return compile_sm90(ts._chunk_state_kernel, sig, const, config.num_warps)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--quick", action="store_true", help="only the reference variants' instruction mix")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/triton_sm90.json; with --quick, a "
                    "scratch file in the temporary folder (a quick run replaced the stored 656-variant report: review)")
    a = ap.parse_args(argv)
    if a.out is None:
        a.out = str(SCRATCH / "triton_sm90_quick.json" if a.quick else
                    ROOT / "benchmarks" / "results" / "triton_sm90.json")
    check_out(ap, Path(a.out), suffixes=())
    try:
        from momattn import triton_scan as ts
    except ImportError as e:
        raise SystemExit(f"error: the Triton scan cannot load here ({e}); pip install 'triton>=3'") from e
    t0 = time.time()
    # the reference: the model's forward at gpt2_124m (bf16 values, the addend, output in bf16, chunked, strict)
    # against the same kernel on float32 values with a float32 output (the IEEE dot)
    ref = ts._tuned.configs[0]
    rows = []
    for xt, out, add in (("bf16", "values", True), ("bf16", "fp32", False), ("fp32", "fp32", False)):
        flags = {"STRICT": True, "REVERSE": False, "CHUNKED": True, "HAS_ADD": add}
        n, mix = sass_mix(scan_variant(ts, ref, xt, out, flags))
        rows.append({"values": xt, "output": xt if out == "values" else "fp32", "addend": add,
                     "config": str(ref.kwargs), "num_warps": ref.num_warps, "sass": n, **mix})
    failures, compiled = [], 0
    if not a.quick:
        for cfg in ts._tuned.configs:
            for xt, out, *bits in itertools.product(("bf16", "fp32"), ("fp32", "values"), *[(False, True)] * 4):
                flags = dict(zip(SCAN_FLAGS, bits))
                try:
                    scan_variant(ts, cfg, xt, out, flags)
                except Exception as e:  # noqa: BLE001 (every failure is reported, the rest still compiled)
                    failures.append(f"scan {cfg.kwargs} warps {cfg.num_warps} {xt} out={out} {flags}: {e!r}"[:400])
                compiled += 1
        for cfg in ts._tuned_state.configs:
            for xt, reverse in itertools.product(("bf16", "fp32"), (False, True)):
                try:
                    state_variant(ts, cfg, xt, reverse)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"state {cfg.kwargs} warps {cfg.num_warps} {xt} reverse={reverse}: {e!r}"[:400])
                compiled += 1
    import triton

    doc = {"triton": triton.__version__, "target": "sm_90", "quick": a.quick, "reference": rows, "variants": compiled,
           "failures": failures, "seconds": round(time.time() - t0, 1)}
    lines = [f"Triton {triton.__version__}, sm_90, {ref.kwargs} with {ref.num_warps} warp(s), strict, chunked:", "",
             "| values | output | addend | SASS | " + " | ".join(MIX) + " |", "|---" * (4 + len(MIX)) + "|"]
    for r in rows:
        lines.append(f"| {r['values']} | {r['output']} | {'yes' if r['addend'] else 'no'} | {r['sass']} | "
                     + " | ".join(str(r[k]) for k in MIX) + " |")
    if not a.quick:
        lines += ["", f"{compiled} variants compiled, {len(failures)} failed ({doc['seconds']} s)"] + failures
    write_json(Path(a.out), doc, indent=2)
    print("\n".join(lines))
    return doc


if __name__ == "__main__":
    run_main(main)
