"""What carries the sign of Kendall(ICL, FT) on a GINC checkpoint (a diagnostic, not one of the paper's metrics).

    .venv/bin/python benchmarks/kendall_probe.py --ckpt <run>/checkpoints/last.ckpt [--lr 0.02] [--prompts 200]
        [--shots 32]

analyze.py's Kendall(ICL, FT) ranks the demonstration tokens two ways: ICL's attention from the prompt's last
token (softmax per head, summed over heads) and finetuning's "attention to training tokens", sum over heads of
q'_j . q (q'_j: the query recorded at demonstration token j while finetuning, q: the finetuned model's query at
the zero-shot prompt's last token; both before rotary). This probe, with analyze.py's own episodes, finetuning and
captures (task=ginc, k=32 unless --shots, demonstration seed 1), reports per layer, as means over prompts:

  kendall          the package's Kendall(ICL, FT), as analyze.py computes it
  icl_recency      tau(ICL attention, -distance to the last token): ICL's recency bias
  ft_recency       tau(FT's q'_j . q, -distance): the same for the FT side
  icl_norot_vs_ft  Kendall with ICL's attention computed without rotary (pre-rotary q . k): position removed
  icl_vs_ft_keys   Kendall with the FT side's queries q'_j replaced by keys k'_j of the untouched model on each
                   finetuning sequence: query-key, like attention, instead of query-query
  l0_qq_vs_qk      layer 0 only, per head: tau(q_j . q, k_j . q) over the demonstration tokens of the ICL prompt
                   (pre-rotary): whether query-query and query-key similarity rank the tokens alike

Writes <out>/<name>.json and .md (--out, default benchmarks/results/kendall_probe; --name, default the run folder's
name) and prints the table. An existing result is not replaced without --force.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import torch
from harness import check_name, check_out_dir, machine_info, run_main, write_results

from momattn.utils import positive_int  # noqa: E402

ROWS = ("kendall", "icl_recency", "ft_recency", "icl_norot_vs_ft", "icl_vs_ft_keys")


def probe(ckpt: str, lr: float, n_prompts: int, shots: int = 32) -> dict:
    from momattn.analysis.capture import attn_modules, capture, projections64, queries64, record_inputs
    from momattn.analysis.config import AnalyzeConfig
    from momattn.analysis.episodes import ginc_set
    from momattn.analysis.finetune import finetune
    from momattn.analysis.metrics import kendall_per_layer
    from momattn.analysis.metrics import kendall_tau_b as tau
    from momattn.checkpoint import load_checkpoint, read_meta
    from momattn.errors import ConfigError, DataError
    from momattn.eval.runner import is_ginc_run
    from momattn.eval.tasks import resolve_tasks

    meta = read_meta(ckpt).get("momattn") or {}
    run_config = meta.get("config") or {}
    if not is_ginc_run(run_config):  # (it advised analyze.py's text tasks, which the probe cannot take: review)
        raise ConfigError(f"--ckpt {ckpt}: the probe reads GINC prompts, and this checkpoint was not trained on GINC; "
                          "give a GINC run's checkpoint (python train.py experiment=ginc)")
    model, tok = load_checkpoint(ckpt, map_location="cpu")
    model.eval()
    cfg = AnalyzeConfig(task="ginc", shots=shots, max_examples=n_prompts, lrs=[lr], dual_check=False)
    try:  # the world the checkpoint trained on, as analyze.py checks it (it was not checked: review)
        aset = ginc_set(model, tok, resolve_tasks(["ginc"], key="task")[0], cfg, run_config.get("data"),
                        trained_on=meta.get("data_fingerprint"))
    except (ConfigError, DataError) as e:  # analyze.py's keys, as this probe's flags
        raise type(e)(re.sub(r"\bshots\b", "--shots", str(e)).replace("max_examples", "--prompts")) from None
    eps = aset.test
    mods = attn_modules(model)
    L, H, C = len(mods), mods[0].n_head, mods[0].n_embd
    D = C // H
    icl = capture(model, [e.icl_prompt for e in eps])  # the package's rotated ICL scores
    with torch.no_grad(), record_inputs(model) as xs:  # pre-rotary q, k of every ICL prompt (float64, below)
        model(torch.tensor([e.icl_prompt for e in eps]))
    run = finetune(model, [e.train for e in eps], [lr] * len(eps), record_queries=True)
    ft = capture(model, [[aset.eot] + e.query for e in eps], delta=run.delta)
    out = {r: np.zeros((len(eps), L)) for r in ROWS}
    l0 = np.zeros((len(eps), H))
    for n, e in enumerate(eps):
        T, dp = len(e.icl_prompt), torch.as_tensor(e.demo_pos)
        recency = -((T - 1) - dp.numpy())
        q_ft_train = queries64(model, torch.cat(run.queries[n], dim=1))  # (L, n_demo, C): q'_j while finetuning
        with torch.no_grad(), record_inputs(model) as xs_train:  # k'_j: the untouched model on each sequence
            model(torch.tensor([s.tokens for s in e.train]))
        # in float64 from the layer inputs, each distinct one once: repeated tokens' exact ties at layer 0 (rotary)
        # were ordered by float32 rounding (diff review)
        k_train_all = projections64(model, torch.stack([x[0][:, 1:].reshape(-1, C) for x in xs_train]), 1)
        x_icl = torch.stack([x[0][n] for x in xs])  # (L, T, C)
        q_icl, k_icl = projections64(model, x_icl, 0), projections64(model, x_icl, 1)  # (L, T, C)
        out["kendall"][n] = kendall_per_layer(icl.scores[n], dp, ft.q[n], q_ft_train)
        for layer in range(L):
            w = icl.scores[n][layer].double().softmax(-1).sum(0)[dp].numpy()  # (n_demo,) ICL attention
            qf = ft.q[n][layer].double()  # (C,) FT query at the last token
            s_ft = (q_ft_train[layer].double() @ qf).numpy()  # q'_j . q
            k_train = k_train_all[layer]  # (n_demo, C)
            q = q_icl[layer].view(T, H, D).transpose(0, 1)  # (H, T, D) pre-rotary
            k = k_icl[layer].view(T, H, D).transpose(0, 1)
            w_norot = (torch.einsum("hd,htd->ht", q[:, -1], k) / math.sqrt(D)).softmax(-1).sum(0)[dp].numpy()
            out["icl_recency"][n, layer] = tau(w, recency)
            out["ft_recency"][n, layer] = tau(s_ft, recency)
            out["icl_norot_vs_ft"][n, layer] = tau(w_norot, s_ft)
            out["icl_vs_ft_keys"][n, layer] = tau(w, (k_train @ qf).numpy())
            if layer == 0:
                for h in range(H):
                    l0[n, h] = tau((q[h, dp] @ q[h, -1]).numpy(), (k[h, dp] @ q[h, -1]).numpy())
    return {"per_layer": {r: np.nanmean(v, 0).tolist() for r, v in out.items()},
            "mean": {r: float(np.nanmean(v)) for r, v in out.items()},
            "l0_qq_vs_qk_per_head": np.nanmean(l0, 0).tolist(), "prompts": len(eps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--lr", type=float, default=0.01, help="the finetuning lr (analyze.py's chosen one: results.md)")
    ap.add_argument("--prompts", type=positive_int, default=200)
    ap.add_argument("--shots", type=positive_int, default=32, help="demonstrations per prompt (default 32)")
    ap.add_argument("--name", default=None, help="the result's file name (default: the run folder's name)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kendall_probe"),
                    help="the folder it is written to (default: the stored results, benchmarks/results/kendall_probe)")
    ap.add_argument("--force", action="store_true", help="replace a result of that name in --out")
    args = ap.parse_args()
    if not Path(args.ckpt).is_file():
        ap.error(f"--ckpt {args.ckpt}: no such checkpoint file")
    if not args.lr > 0:
        ap.error(f"--lr={args.lr} must be > 0")
    check_name(ap, args.name)
    check_out_dir(ap, Path(args.out))
    name = args.name or Path(args.ckpt).resolve().parent.parent.name
    path = Path(args.out) / f"{name}.json"
    if path.exists() and not args.force:  # a new run named like a stored one (vanilla_seed1) replaced its result
        ap.error(f"{path} exists (another checkpoint's result?); give --name or --out, or --force to replace it")
    res = probe(args.ckpt, args.lr, args.prompts, args.shots)
    L = len(res["per_layer"]["kendall"])
    md = [f"{args.ckpt} (lr {args.lr}, k={args.shots}, {res['prompts']} prompts)\n",
          "| quantity | " + " | ".join(f"layer {i}" for i in range(L)) + " | mean |", "|---|" + "---|" * (L + 1)]
    md += [f"| {r} | " + " | ".join(f"{x:+.3f}" for x in res["per_layer"][r]) + f" | {res['mean'][r]:+.3f} |"
           for r in ROWS]
    md.append("\nlayer 0, tau(q_j . q, k_j . q) per head: " + ", ".join(f"{x:+.2f}" for x in res["l0_qq_vs_qk_per_head"]))
    write_results(path, {"checkpoint": args.ckpt, "lr": args.lr, "shots": args.shots, **res, "machine": machine_info("cpu")}, "\n".join(md))


if __name__ == "__main__":
    run_main(main)
