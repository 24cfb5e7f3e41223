"""benchmarks/bench_long_document.py: both ways run in their own process and give the same ids (a tiny document;
no memory figure is checked)."""

import json

from conftest import run_cli


def test_both_ways_encode_one_long_document_to_the_same_ids(tmp_path):
    out = tmp_path / "long.json"
    r = run_cli("benchmarks/bench_long_document.py", ["--words", "2000", "--tokenizer", "bpe", "--out", str(out)],
                tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [x["way"] for x in res["results"]] == ["whole", "pieces"]
    assert len({x["ids_sha256"] for x in res["results"]}) == 1 and all(x["tokens"] > 0 for x in res["results"])
    assert "Same ids both ways: yes" in out.with_suffix(".md").read_text()
