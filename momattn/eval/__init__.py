"""Evaluation: perplexity by input length (the paper's Table 6) and in-context accuracy (Table 7).

    config.py   typed settings (EvalConfig: ppl, icl, batch_tokens), validated with did-you-mean
    ppl.py      PerplexityEvaluator: non-overlapping windows scored from scratch; ppl and bits per byte
    tasks.py    IclTask registry: StaICC (offline, reserved rows), hub (Table 7 set), local JSONL files
    scoring.py  PrefixScorer: answer log-likelihoods with the demonstration prefix encoded once (KV cache)
    icl.py      IclEvaluator: the authors' ICL protocol (shots, seeds, mean/sum log-prob, fitting the context,
                k_used, the run-time demonstration-leak check)
    ginc.py     GincEvaluator: GINC prompts (Xie et al. 2022), greedy next token vs the Bayes-optimal label
    lm.py       LanguageModel: the Protocol of what the evaluator needs from a model
    results.py  typed results (ModelResult, PerplexityResult, IclResult, ...) with one to_json / from_json
    report.py   results.json, results.md (Table 6 / Table 7 layouts, GINC accuracy vs k), ppl.png, icl.png
    runner.py   evaluate_model (one model, e.g. at the end of training), run_evaluate (evaluate.py)

No Lightning here; Hydra only where evaluate.py's config is read (runner.hydra_output_dir).
"""

from momattn.eval.config import EvalConfig, IclConfig, PplConfig
from momattn.eval.lm import LanguageModel
from momattn.eval.results import IclResult, ModelResult, PerplexityResult
from momattn.eval.runner import evaluate_model, flat_metrics, write_reports

__all__ = ["EvalConfig", "IclConfig", "IclResult", "LanguageModel", "ModelResult", "PerplexityResult", "PplConfig",
           "evaluate_model", "flat_metrics", "write_reports"]
