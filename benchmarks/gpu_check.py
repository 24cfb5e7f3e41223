"""The GPU run, ready to go: one script that a session lent a CUDA GPU runs as is (issue 11, goal 6).

    python benchmarks/gpu_check.py            # or: bash benchmarks/gpu_check.sh
    python benchmarks/gpu_check.py --steps 5 --no-compile   # shorter

On a CUDA GPU, within about 8 minutes: (1) the CUDA-only tests, (2) bench_attention.py --device cuda --dtype bf16
--quick, (3) training throughput of the gpt2_124m model (12 x 768, context 1024, bf16 autocast, fused AdamW) for
vanilla, momentum and multirate_ema with torch.compile off and on: tokens/s and MFU against the device's datasheet
dense bf16 peak. Writes benchmarks/results/gpu.json and gpu.md. Without a GPU every GPU part is skipped, and the
files say so, so that the script is exercised (and cannot rot) on CPU-only machines too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from momattn.hardware import describe  # noqa: E402
from momattn.model import GPT, AttentionConfig, GPTConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# datasheet dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name()
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12,
             "RTX 4090": 165e12, "A6000": 155e12}
KINDS = ("vanilla", "momentum", "multirate_ema")


def datasheet_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def run(cmd: list[str], timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return {"cmd": " ".join(cmd), "rc": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
                "tail": (done.stdout + done.stderr)[-2000:]}
    except subprocess.TimeoutExpired:
        return {"cmd": " ".join(cmd), "rc": None, "seconds": timeout, "tail": "timed out"}


def throughput(kind: str, compile_: bool, steps: int, batch: int) -> dict:
    """tokens/s of full training steps (forward, cross-entropy, backward, clip, fused AdamW) in bf16 autocast."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768,
                    attention=AttentionConfig(kind=kind))
    model = GPT(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randint(0, 50257, (batch, cfg.block_size + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(x[:, :-1])
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    tokens = batch * cfg.block_size
    peak = datasheet_peak(torch.cuda.get_device_name(0))
    flops = model.flops_per_token() * tokens / dt
    return {"attention": kind, "compile": compile_, "batch": batch, "ms_per_step": round(1000 * dt, 1),
            "tokens_per_s": round(tokens / dt), "mfu": round(flops / peak, 4) if peak else None,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def markdown(report: dict) -> str:
    lines = ["# GPU check", "", f"Machine: {report['machine']}", ""]
    if report.get("skipped"):
        return "\n".join(lines + [f"Skipped: {report['skipped']}", ""])
    for name, r in report["commands"].items():
        lines.append(f"- {name}: exit {r['rc']} in {r['seconds']} s (`{r['cmd']}`)")
    lines += ["", "| attention | compile | batch | ms/step | tokens/s | MFU | vs vanilla | peak GiB |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    base = {r["compile"]: r["tokens_per_s"] for r in report["throughput"] if r.get("attention") == "vanilla"}
    for r in report["throughput"]:
        if "error" in r:
            lines.append(f"| {r['attention']} | {r['compile']} | | | error: {r['error'][:80]} | | | |")
            continue
        rel = f"{r['tokens_per_s'] / base[r['compile']]:.3f}x" if base.get(r["compile"]) else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['attention']} | {r['compile']} | {r['batch']} | {r['ms_per_step']} | "
                     f"{r['tokens_per_s']:,} | {mfu} | {rel} | {r['peak_mem_gib']} |")
    return "\n".join(lines + ["", "Targets (issue 11): vanilla >= 45% MFU at 124M in bf16; momentum >= 0.95x "
                                  "vanilla's tokens/s.", ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    a = ap.parse_args()
    report: dict = {"machine": describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not torch.cuda.is_available():
        report["skipped"] = "no CUDA device on this machine: the CUDA tests, the bf16 attention benchmark and " \
                            "the gpt2_124m throughput runs need one (run this script where a GPU is lent)"
    else:
        py = sys.executable
        report["commands"] = {
            "cuda tests": run([py, "-m", "pytest", "-q", "-x", "tests/test_ops.py", "-k", "cuda"], 120),
            "bench_attention": run([py, "benchmarks/bench_attention.py", "--device", "cuda", "--dtype", "bf16",
                                    "--quick", "--out", str(RESULTS / "attention_cuda.json")], 180),
        }
        report["throughput"] = []
        for compile_ in (False,) if a.no_compile else (False, True):
            for kind in KINDS:
                try:
                    report["throughput"].append(throughput(kind, compile_, a.steps, a.batch))
                except Exception as e:  # one failing variant (e.g. a compile error) must not lose the rest
                    report["throughput"].append({"attention": kind, "compile": compile_, "error": repr(e)})
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    md = markdown(report)
    a.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
