"""Train a GPT with vanilla or momentum attention, then a short evaluation (perplexity by length, ICL accuracy).

    python train.py                                          # the main job: embedded StaICC text (offline), vanilla
    python train.py attention=momentum attention.eta=0.9     # the paper's MoAttn; attention=multirate_ema
    python train.py experiment=ginc attention=momentum       # GINC: in-context learning visible on a CPU
    python train.py -m attention=vanilla,momentum seed=1,2,3 # a sweep; then python evaluate.py sweep_dir=...
    python train.py data=text_files data.paths=[corpus.txt] logger=csv
    python train.py ckpt_path=last                           # resume the newest run
    python -m momattn.plan model=gpt2_124m                   # what a run will cost, before running it

Writes checkpoints, metrics and summary.json into the run folder (hydra.run.dir). Settings: conf/train.yaml;
README.md explains each part.
"""

from momattn.entry_signals import early_signals

if __name__ == "__main__":  # (an import of this file leaves the process's signals alone)
    early_signals()  # a SIGTERM or Ctrl-C from here on ends in one line (importing Hydra takes ~0.3 s)
from momattn.cli import hydra_main  # noqa: E402


@hydra_main(config_name="train")
def main(cfg):
    from momattn.config import load_train_config

    checked = load_train_config(cfg)  # a bad value is named before Lightning, the slow import, is loaded
    from momattn.training import run_train

    return run_train(cfg, checked)


if __name__ == "__main__":
    main()
