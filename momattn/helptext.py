"""`python train.py --help` (and evaluate.py, analyze.py, generate.py): what the entry point does, its config
groups and their options, and its settings file with the comments that explain each key. Hydra's own help lists
every group under conf/ (the training groups for evaluate.py too) and the composed config without comments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# options of a shared group that an entry point refuses (momattn.eval.config.check_logger): not offered in its help
REFUSED = {("evaluate", "logger"): {"csv"}, ("analyze", "logger"): {"csv"}}
# the sections that take keys their files do not list (Lightning's Trainer arguments, callbacks, loggers): the
# only ones where +key=value adds a key; every other section is a typed config that refuses one it does not know
OPEN_SECTIONS = ("trainer", "callbacks", "logger")


def print_help(config_name: str, doc: str | None, conf_dir: Path) -> None:
    try:
        print(help_text(config_name, doc, conf_dir), flush=True)
    except BrokenPipeError:  # `--help | head`: the reader left; no traceback, nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def help_text(config_name: str, doc: str | None, conf_dir: Path) -> str:
    from omegaconf import OmegaConf

    from momattn.cli import _groups

    path = conf_dir / f"{config_name}.yaml"
    text = path.read_text()
    out = [(doc or "").strip(), ""]
    groups, all_options = [], _groups(conf_dir)
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        if not isinstance(entry, dict) or len(entry) != 1:
            continue  # _self_
        (group, default), = entry.items()
        default = "none" if default is None else default
        options = [o for o in all_options.get(group, []) if o not in REFUSED.get((config_name, group), ())]
        if options:
            groups.append(f"  {group}: {', '.join(options)}  (default: {default})")
    if groups:
        out += ["Config groups (group=option; conf/<group>/<option>.yaml):", *groups, ""]
    open_groups = [g for g in OPEN_SECTIONS if any(line.startswith(f"  {g}:") for line in groups)]
    adds = (f"; +key=value adds one, under {' and '.join(open_groups)} only (the other sections take the keys they "
            "list)" if open_groups else "")
    out += [f"Settings ({path.relative_to(conf_dir.parent)}; set any key with key=value{adds}):",
            "", text.rstrip(), "",
            "The composed config: --cfg job. Hydra's own options (multirun, sweepers, shell completion): --hydra-help."]
    return "\n".join(out)
