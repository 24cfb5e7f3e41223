"""Evaluate momattn checkpoints: perplexity (the paper's Table 6) and in-context accuracy (Table 7).

    python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    python evaluate.py ckpt_paths=[vanilla.ckpt,momentum.ckpt] icl.shots=[0,4] icl.max_examples=100
    python evaluate.py ckpt_path=last.ckpt icl.tasks=table7          # the paper's tasks, from the hub
    python evaluate.py ckpt_path=ginc.ckpt icl.tasks=[ginc,ginc_l3,ginc_l8,ginc_ood] icl.shots=[0,1,2,4,8,16,max]
    python evaluate.py sweep_dir=multirun/2025-01-01/12-00-00   # a sweep's verdict: sweep.md, sweep.json

Writes results.json, results.md, ppl.png, icl.png, icl_predictions_<model>.jsonl and evaluate.log into the
run folder (hydra.run.dir); with sweep_dir, sweep.md and sweep.json (and their plots) too.
Settings: conf/evaluate.yaml.
"""

from momattn.entry_signals import early_signals

if __name__ == "__main__":  # (an import of this file leaves the process's signals alone)
    early_signals()  # a SIGTERM or Ctrl-C from here on ends in one line (importing Hydra takes ~0.3 s)
from momattn.cli import hydra_main  # noqa: E402


@hydra_main(config_name="evaluate")
def main(cfg):
    from momattn.eval.runner import run_evaluate

    return run_evaluate(cfg)


if __name__ == "__main__":
    main()
