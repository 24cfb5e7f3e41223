"""Memory of tokenizing one long document (a text8-style corpus is a single 100 MB line): encoded whole, against
encoded in pieces as momattn.tokenizer.Tokenizer.encode_documents does (cut where the byte-level pre-tokenizer
splits anyway, so the ids are the same, which this checks).

    .venv/bin/python benchmarks/bench_long_document.py [--words 2000000] [--tokenizer gpt2|bpe]

Each way runs in its own process (peak RSS is a process's high-water mark): the RSS added by the encoding, over
the process's RSS with the text already built, divided by the tokens. Writes benchmarks/results/long_document.json
and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import check_out, default_out, die_with_parent, machine_info, run_main, table, write_results  # noqa: E402

from momattn.utils import positive_int  # noqa: E402

WAYS = ("whole", "pieces")


def text_of(words: int) -> str:
    """One line of `words` words, drawn (seeded) from 1,000 eight-word phrases."""
    rng = random.Random(0)
    vocab = ["the", "cat", "sat", "on", "mat", "quickly", "running", "under", "tree", "seven"]
    phrases = [" ".join(rng.choice(vocab) for _ in range(8)) for _ in range(1000)]
    return " ".join(rng.choice(phrases) for _ in range(max(1, words // 8)))


def worker(way: str, words: int, kind: str) -> dict:
    from momattn import tokenizer as tokenizer_module
    from momattn.tokenizer import gpt2_tokenizer, train_bpe

    text = text_of(words)
    tok = gpt2_tokenizer() if kind == "gpt2" else train_bpe(lambda: [text[:200_000]], 4096)
    if way == "whole":
        tokenizer_module.PIECE_CHARS = 1 << 62
    tok.encode_documents(["the cat sat on the mat"])  # the first encode's buffers (~50 MiB, whatever the text's
    # size) are not the document's: found by review, a quarter of the pieces' figure
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    ids = tok.encode_documents([text])[0]
    seconds = time.perf_counter() - t0
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    return {"way": way, "chars": len(text), "tokens": len(ids), "seconds": seconds, "added_bytes": added,
            "bytes_per_token": added / len(ids), "ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}


def render(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    rows = [[r["way"], f"{r['chars'] / 1e6:.1f}M", f"{r['tokens'] / 1e6:.2f}M", f"{r['seconds']:.1f}",
             f"{r['added_bytes'] / 2**20:.0f}", f"{r['bytes_per_token']:.0f}"] for r in res["results"]]
    same = len({r["ids_sha256"] for r in res["results"]}) == 1
    return "\n".join([
        f"{m.get('describe') or m.get('cpu')}; tokenizer {st['tokenizer']}; one document of {st['words']:,} words, "
        "each way in its own process, once (a memory figure, not a timing)"
        + (", after a short warm-up encode" if st.get("warmed_up") else "") + ".", "",
        table(["encoded", "characters", "tokens", "seconds", "peak RSS added, MiB", "bytes per token"], rows), "",
        f"Same ids both ways: {'yes' if same else 'NO'}. The rest of the pieces' figure is the Python list of ids "
        "that encode_documents returns.", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--words", type=positive_int, default=2_000_000)
    ap.add_argument("--tokenizer", choices=("gpt2", "bpe"), default="gpt2")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/long_document.json for "
                    "the default settings, else a scratch file (said)")
    ap.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.words, args.tokenizer)))
        return
    if args.out is None:  # a trial run replaced the committed results (found by review)
        args.out = default_out(ap, args, "long_document.json")
    check_out(ap, args.out)
    machine = machine_info("cpu", "fp32")
    results = []
    for way in WAYS:
        r = subprocess.run([sys.executable, __file__, "--worker", way, "--words", str(args.words), "--tokenizer",
                            args.tokenizer], capture_output=True, text=True, preexec_fn=die_with_parent)
        if r.returncode != 0:
            sys.exit(f"error: the {way} worker failed:\n{r.stderr[-2000:]}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    res = {"machine": machine, "settings": {"words": args.words, "tokenizer": args.tokenizer, "warmed_up": True}, "results": results}
    text = render(res)
    write_results(args.out, res, text)  # (prints the table)
    if len({r["ids_sha256"] for r in results}) != 1:
        sys.exit("error: the pieces gave other ids than the whole document")


if __name__ == "__main__":
    run_main(main)
