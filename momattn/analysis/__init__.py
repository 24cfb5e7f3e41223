"""ICL versus explicit finetuning (Dai et al. 2023, Section 4) on any momattn checkpoint: analyze.py.

    capture.py   hooks: K/V updates for many models at once, and what one forward pass shows of each layer
    finetune.py  the finetuning baseline (SGD on K/V only, one epoch, batch size 1), many models side by side
    episodes.py  the evaluator's prompts as (test input, demonstrations, ICL prompt) episodes
    metrics.py   Rec2FTP, SimAOU, SimAM, Kendall tau-b
    dual.py      the dual form of linear and momentum attention, checked in float64
    runner.py    the story: analyze() and analyze.py's run_analyze()
    report.py    results.json, results.md, per_layer.png, W&B
"""
