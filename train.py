"""Train a GPT with vanilla or momentum attention: python train.py attention=momentum (see README.md)."""

from momattn.cli import hydra_main


@hydra_main(config_name="train")
def main(cfg):
    from momattn.training import run_train

    return run_train(cfg)


if __name__ == "__main__":
    main()
