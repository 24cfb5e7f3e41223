"""ICL versus explicit finetuning on a checkpoint (Dai et al. 2023, Section 4): Rec2FTP, SimAOU, SimAM, Kendall,
with their baselines, and a numerical check of the dual form.

    python analyze.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt task=ginc shots=32
    python analyze.py ckpt_path=last.ckpt task=sst2 shots=4 lrs=[1e-3,1e-2]
    python analyze.py ckpt_path=last.ckpt 'task={name: mytask, path: f.jsonl, template: "{text}:", answers: [a, b]}'
    python analyze.py sweep_dir=multirun/<date>/<time> task=ginc   # every run of a sweep, then over seeds

Writes results.json, results.md and per_layer.png into the run folder (a sweep: one folder per job under jobs/,
and analysis_sweep.md / .json with mean ± std over seeds, the paper's findings per seed with 95% intervals and
each attention minus vanilla paired by seed). Settings: conf/analyze.yaml.
"""

from momattn.entry_signals import early_signals

if __name__ == "__main__":  # (an import of this file leaves the process's signals alone)
    early_signals()  # a SIGTERM or Ctrl-C from here on ends in one line (importing Hydra takes ~0.3 s)
from momattn.cli import hydra_main  # noqa: E402


@hydra_main(config_name="analyze")
def main(cfg):
    from momattn.analysis.runner import run_analyze

    return run_analyze(cfg)


if __name__ == "__main__":
    main()
