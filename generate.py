"""Sample text from a momattn checkpoint, streamed to stdout as it is generated (like nanoGPT's sample.py).

    python generate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt prompt="Once upon a time"
    python generate.py ckpt_path=last.ckpt prompt="The film" max_new_tokens=50 temperature=0 num_samples=1
    python generate.py ckpt_path=last.ckpt prompt="Review:" num_samples=3 top_k=40 seed=7

Settings: conf/generate.yaml (momattn/generate.py explains the sampling).
"""

from momattn.entry_signals import early_signals

if __name__ == "__main__":  # (an import of this file leaves the process's signals alone)
    early_signals()  # a SIGTERM or Ctrl-C from here on ends in one line (importing Hydra takes ~0.3 s)
from momattn.cli import hydra_main  # noqa: E402


@hydra_main(config_name="generate")
def main(cfg):
    from momattn.generate import run_generate

    run_generate(cfg)


if __name__ == "__main__":
    main()
