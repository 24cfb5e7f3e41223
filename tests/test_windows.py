"""Training targets: every (x, y) window is block_size tokens of the stream and the same shifted by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from momattn.data.datamodule import TokenWindows


@pytest.mark.parametrize("shuffle", [True, False])
def test_targets_are_the_inputs_shifted_by_exactly_one_token(shuffle):
    block, n = 8, 203
    tokens = np.arange(n, dtype=np.uint16)  # token value == its position in the stream
    ds = TokenWindows(tokens, block, seed=3, shuffle=shuffle)
    assert len(ds) == (n - 1) // block
    starts = []
    for g in range(2 * len(ds)):  # two epochs
        x, y = ds[g]
        assert x.shape == y.shape == (block,) and x.dtype == y.dtype == torch.int64
        start = int(x[0])
        assert start % block == 0  # windows are aligned, non-overlapping
        assert x.tolist() == tokens[start : start + block].tolist()
        assert y.tolist() == tokens[start + 1 : start + block + 1].tolist()  # y[t] == tokens[start + t + 1]
        starts.append(start)
    epoch = sorted(starts[: len(ds)])
    assert epoch == list(range(0, len(ds) * block, block))  # each epoch visits every window once


def test_targets_follow_the_stream_not_the_arithmetic():
    # a stream whose next token is not "this token + 1": y must come from the stream itself
    tokens = np.random.default_rng(0).integers(0, 500, size=129).astype(np.uint16)
    ds = TokenWindows(tokens, 16, seed=0, shuffle=False)
    for g in range(len(ds)):
        x, y = ds[g]
        s = 16 * g
        assert torch.equal(x, torch.from_numpy(tokens[s : s + 16].astype(np.int64)))
        assert torch.equal(y, torch.from_numpy(tokens[s + 1 : s + 17].astype(np.int64)))
        assert torch.equal(y[:-1], x[1:])
