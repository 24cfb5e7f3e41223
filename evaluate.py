"""Evaluate momattn checkpoints: perplexity (the paper's Table 6) and in-context accuracy (Table 7).

    python evaluate.py ckpt_path=outputs/train/.../checkpoints/last.ckpt
    python evaluate.py ckpt_paths=[vanilla.ckpt,momentum.ckpt] icl.shots=[0,4] icl.max_examples=100
    python evaluate.py ckpt_path=last.ckpt icl.tasks=table7          # the paper's tasks, from the hub

Writes results.json, results.md, ppl.png and icl.png into the run folder (hydra.run.dir).
Settings: conf/evaluate.yaml.
"""

from momattn.cli import hydra_main


@hydra_main(config_name="evaluate")
def main(cfg):
    from momattn.eval.runner import run_evaluate

    return run_evaluate(cfg)


if __name__ == "__main__":
    main()
