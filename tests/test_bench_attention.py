"""benchmarks/bench_attention.py: the issue-11 targets read from a results dict (no timing here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_attention  # noqa: E402


def _row(variant: str, T: int, overhead: float) -> dict:
    return {"variant": variant, "T": T, "overhead_vs_vanilla_pct": overhead, "overhead_vs_vanilla_best_pct": 0.0,
            "cpu_overhead_vs_vanilla_pct": 0.0, "contended_samples_kept": 0}


def test_momentum_within_3_percent_and_multirate_within_5():
    res = {"train_step": [_row("vanilla", 256, 0.0), _row("momentum", 256, 2.9), _row("momentum_learnable", 256, 3.2),
                          _row("multirate_ema", 256, 4.9), _row("vanilla", 1024, 0.0), _row("multirate_ema", 1024, 5.2)]}
    got = {t["what"]: (t["target"], t["met"]) for t in bench_attention.targets(res)}
    assert got == {
        "training step overhead of momentum vs vanilla at T=256": ("<= +3%", True),
        "training step overhead of momentum_learnable vs vanilla at T=256": ("<= +3%", False),
        "training step overhead of multirate_ema vs vanilla at T=256": ("<= +5%", True),
        "training step overhead of multirate_ema vs vanilla at T=1024": ("<= +5%", False),
    }
