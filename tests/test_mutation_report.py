"""benchmarks/mutation_report.py: kill rates per module from mutmut's results listing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import mutation_report  # noqa: E402


def test_kill_rate_per_module_and_survivors():
    text = "\n".join(["    momattn.ops.x__carry__mutmut_1: killed", "    momattn.ops.x__carry__mutmut_2: survived",
                      "    momattn.ops.x_momentum_ema__mutmut_3: killed", "    momattn.lit.x_lr_lambda__mutmut_1: timeout",
                      "    momattn.lit.x_lr_lambda__mutmut_2: killed", "some warning line"])
    per_module, survivors = mutation_report.parse(text)
    assert per_module["momattn.ops"] == {"killed": 2, "survived": 1}
    assert per_module["momattn.lit"] == {"killed": 1, "timeout": 1}
    assert survivors == {"momattn.ops": ["momattn.ops.x__carry__mutmut_2"]}
