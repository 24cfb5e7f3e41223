"""The Triton momentum scan (momattn/triton_scan.py) equals the matmul scan, values and gradients.

On a machine without CUDA the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, which conftest.py
sets before anything can import Triton; set here too for a run without it); on CUDA it is compiled. Skipped where Triton is not installed (pip install triton).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from momattn import ops  # noqa: E402
from momattn.model import GPT, AttentionConfig, GPTConfig  # noqa: E402

# the interpreter evaluates log2(0) for a rate of 0 with numpy, which warns; the kernel maps it to exact zeros
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def both(fn):
    """fn() under the Triton backend and under the matmul scan."""
    out = {}
    for backend in ("triton", "torch"):
        old, ops.SCAN_BACKEND = ops.SCAN_BACKEND, backend
        try:
            out[backend] = fn()
        finally:
            ops.SCAN_BACKEND = old
    return out["triton"], out["torch"]


def value_and_grads(v, eta, include_current):
    v = v.detach().requires_grad_()
    eta = eta.detach().requires_grad_() if isinstance(eta, torch.Tensor) else eta
    y, _ = ops.momentum_ema(v, eta, include_current=include_current)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    (y.float() * g.float()).sum().backward()
    return y.detach(), v.grad, (eta.grad if isinstance(eta, torch.Tensor) else None)


@pytest.mark.parametrize("T", [5, 32, 70])
@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("per_head", [False, True])
def test_triton_scan_equals_the_matmul_scan(T, include_current, per_head):
    torch.manual_seed(0)
    v = torch.randn(2, 4, T, 16, device=DEV)
    eta = torch.tensor([0.0, 0.5, 0.9, 0.999], device=DEV) if per_head else torch.tensor(0.7, device=DEV)
    got, want = both(lambda: value_and_grads(v, eta, include_current))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_triton_scan_reads_bf16_strided_values_in_place():
    """The values a model splits from its qkv projection: a strided bf16 view, read without a copy."""
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 40, 16
    qkv = torch.randn(B, T, 3 * H * D, device=DEV).bfloat16()
    v = qkv.split(H * D, dim=2)[2].view(B, T, H, D).transpose(1, 2)  # (B, H, T, D) view
    got, want = both(lambda: value_and_grads(v, 0.6, False))
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("learnable", [False, True])
def test_triton_backend_trains_the_same_model(learnable, monkeypatch):
    """A fixed eta takes the fused path (attention's output added in the kernel, its value gradient joined, once
    per layer), a learned one the kernel inside _MergedScan: the loss and every gradient of the matmul scans."""
    from momattn import triton_scan as ts

    joined, real = [], ts._joined_backward
    monkeypatch.setattr(ts, "_joined_backward", lambda *a: joined.append(1) or real(*a))
    cfg = GPTConfig(block_size=48, vocab_size=64, n_layer=2, n_head=2, n_embd=32,
                    attention=AttentionConfig(kind="momentum", eta=0.5, learnable_eta=learnable))
    x = torch.randint(0, 64, (2, 48), device=DEV)

    def loss_and_grads():
        torch.manual_seed(0)
        model = GPT(cfg).to(DEV)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    (l1, g1), (l2, g2) = both(loss_and_grads)
    assert len(joined) == (0 if learnable else cfg.n_layer)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_head_sizes_the_kernel_cannot_tile_fall_back_to_the_matmul_scan(monkeypatch):
    """Per-head rates over heads of 8 channels: no block of 16 lies inside one head, so the kernel never runs."""
    v = torch.randn(1, 2, 9, 8, device=DEV)
    eta = torch.tensor([0.5, 0.8], device=DEV)
    want = ops.momentum_ema(v, eta)[0]
    kernel = ops._triton_scan()
    monkeypatch.setattr(kernel, "decay_scan", lambda *a: pytest.fail("the kernel ran on heads of 8 channels"))
    monkeypatch.setattr(ops, "SCAN_BACKEND", "triton")
    torch.testing.assert_close(ops.momentum_ema(v, eta)[0], want)


def test_second_derivatives_match_the_matmul_scan():
    """A double backward (create_graph) goes through autograd's matmul scan: same result as that backend alone."""
    torch.manual_seed(0)
    v0 = torch.randn(1, 2, 40, 16, device=DEV)

    def grad_of_grad():
        v = v0.clone().requires_grad_()
        eta = torch.tensor([0.5, 0.8], device=DEV, requires_grad=True)
        y, _ = ops.momentum_ema(v, eta)
        (g_eta,) = torch.autograd.grad((y * y).sum(), eta, create_graph=True)
        return torch.autograd.grad(g_eta.sum(), (v, eta))

    got, want = both(grad_of_grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_an_unknown_backend_is_named():
    old, ops.SCAN_BACKEND = ops.SCAN_BACKEND, "cuda"
    try:
        with pytest.raises(ValueError, match="SCAN_BACKEND must be 'auto', 'torch', 'triton' or 'cpu', got 'cuda'"):
            ops.momentum_ema(torch.randn(1, 1, 4, 16, device=DEV), 0.5)
    finally:
        ops.SCAN_BACKEND = old


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the autotuner runs these blocks itself")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunk", [0, pytest.param(64, marks=pytest.mark.slow)])
def test_every_autotuned_block_shape_gives_the_same_scan(reverse, chunk):
    """The interpreter runs one block shape by default; each shape the GPU autotuner may pick is checked here, whole
    sequences and chunked (each first-pass shape too)."""
    from momattn import triton_scan as ts

    torch.manual_seed(0)
    B, T, G, Dg = 2, 150, 2, 64  # chunked: two whole chunks and a partial one
    x = torch.randn(B, T, G * Dg)
    a = torch.tensor([0.3, 0.95])
    want = ops._scan_merged(x, a, True, 32, reverse=reverse)  # the matmul scan (CPU: SCAN_BACKEND auto)
    n = -(-T // chunk) if chunk else 1
    states = [None]
    if chunk:
        states = []
        for cfg in ts._tuned_state.configs:  # every chunk's edge state but the last's, which nothing reads
            e = torch.empty(B, n - 1, G * Dg)
            bt, bd = cfg.kwargs["BT"], cfg.kwargs["BD"]
            ts._chunk_state_kernel[(B, G * Dg // bd, n - 1)](x, e, a, T, chunk, Dg, *x.stride(), *e.stride()[:2],
                                                         REVERSE=reverse, BT=bt, BD=bd, INTERPRET=True)
            states.append(e)
        for e in states[1:]:
            torch.testing.assert_close(e, states[0], rtol=1e-5, atol=1e-5)
    # an addend of heads of 32 channels (B, H, T, D), as attention returns them: a block of 64 channels spans two
    add = torch.randn(B, G * Dg // 32, T, 32)
    want_add = want + add.transpose(1, 2).reshape(B, T, G * Dg)
    # each (BT, BD) once: configs that differ in num_warps only are the same launch in the interpreter
    for bt, bd in dict.fromkeys((cfg.kwargs["BT"], cfg.kwargs["BD"]) for cfg in ts._tuned.configs):
        for addend, expected in [(None, want), (add, want_add)]:
            y = torch.empty_like(x)
            e = states[0] if chunk else y
            ts._scan_kernel[(B, G * Dg // bd, n)](x, y, a, e, addend if addend is not None else y, T, chunk, Dg,
                                                  *x.stride(), *y.stride(), e.stride(0), e.stride(1) if chunk else 0,
                                                  *ts._add_layout(addend, G * Dg), STRICT=True, REVERSE=reverse,
                                                  CHUNKED=bool(chunk), HAS_ADD=addend is not None, BT=bt, BD=bd,
                                                  INTERPRET=True)
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5,
                                       msg=f"BT={bt}, BD={bd}, chunk={chunk}, add={addend is not None}")


@pytest.mark.parametrize("T", [64, 70, 200])
@pytest.mark.parametrize("include_current", [False, True])
def test_the_chunked_scan_equals_the_matmul_scan(T, include_current, monkeypatch):
    """Chunks of 64 positions (forced; on CUDA the chunk length follows the GPU's size): values and gradients, per-head
    rates with 0 and near 1, a learned rate, bf16 strided values as a model splits them from its qkv projection."""
    monkeypatch.setenv("MOMATTN_TRITON_CHUNK", "64")
    torch.manual_seed(0)
    v = torch.randn(2, 4, T, 16, device=DEV)
    eta = torch.tensor([0.0, 0.5, 0.9, 0.999], device=DEV)
    got, want = both(lambda: value_and_grads(v, eta, include_current))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    qkv = torch.randn(2, T, 3 * 32, device=DEV).bfloat16()
    vb = qkv.split(32, dim=2)[2].view(2, T, 2, 16).transpose(1, 2)  # (B, H, T, D) view
    got, want = both(lambda: value_and_grads(vb, 0.6, include_current))
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_chunks_are_formed_only_where_the_gpu_would_idle(monkeypatch):
    from momattn import triton_scan as ts

    monkeypatch.delenv("MOMATTN_TRITON_CHUNK", raising=False)
    monkeypatch.setattr(ts, "_sm_count", lambda index: 132)  # an H100/H200
    gpu = torch.device("cuda", 0)  # a device object only: nothing runs on it
    # gpt2_124m, batch 16: 16 x 48 programs for 132 x 32 wanted -> 6 chunks of 192 positions (multiples of 64)
    assert ts.chunk_length(16, 1024, 768, gpu) == 192
    assert ts.chunk_length(32, 1024, 768, gpu) == 384  # 3 chunks (the last partial)
    assert ts.chunk_length(64, 1024, 768, gpu) == 0  # 2 chunks would walk as many positions in a row as 1
    assert ts.chunk_length(256, 1024, 768, gpu) == 0  # enough sequences: one program per sequence
    assert ts.chunk_length(1, 8192, 64, gpu) == 64  # 128 chunks: T / 64 at most
    for T in (1, 63, 100, 130, 191, 200):  # fewer than three chunks (200: three of 67 round up to two of 128)
        assert ts.chunk_length(1, T, 768, gpu) == 0
    assert ts.chunk_length(1, 256, 768, gpu) == 64
    assert ts.chunk_length(16, 1024, 768, torch.device("cpu")) == 0  # the interpreter: only when asked
    assert ts.chunk_length(0, 1024, 768, gpu) == 0  # an empty batch (it divided by zero programs)
    monkeypatch.setenv("MOMATTN_TRITON_CHUNK", "0")
    assert ts.chunk_length(16, 1024, 768, gpu) == 0
    monkeypatch.setenv("MOMATTN_TRITON_CHUNK", "128")
    assert ts.chunk_length(16, 1024, 768, gpu) == 128 and ts.chunk_length(16, 100, 768, gpu) == 0
    monkeypatch.setenv("MOMATTN_TRITON_CHUNK", "100")
    with pytest.raises(ValueError, match=r"MOMATTN_TRITON_CHUNK='100' must be 0 \(never chunk\) or a multiple of 64"):
        ts.chunk_length(16, 1024, 768, gpu)


def test_auto_takes_the_kernel_on_cuda_in_eager_mode_only(monkeypatch):
    """SCAN_BACKEND "auto": the kernel for CUDA values in eager mode; inside torch.compile the matmul scan, which
    was the faster one there on an H200 (benchmarks/results/gpu.md); "triton" forces the kernel in both."""
    from types import SimpleNamespace

    cuda_values = SimpleNamespace(dtype=torch.bfloat16, is_cuda=True, shape=(2, 8, 64))  # (B, T, C), 4 heads of 16
    for backend, compiling, want in [("auto", False, True), ("auto", True, False), ("triton", True, True),
                                     ("torch", False, False)]:
        monkeypatch.setattr(ops, "SCAN_BACKEND", backend)
        monkeypatch.setattr(ops, "_is_compiling", lambda c=compiling: c)
        assert ops._use_triton(cuda_values, 4) is want, (backend, compiling)


@pytest.mark.parametrize("learnable", [False, True])
def test_torch_compile_traces_the_kernel_path_without_graph_breaks(learnable, monkeypatch):
    """The kernel is one opaque op inside the compiled graph (a custom op): a break around it would split every
    layer's graph (what the H200 run's slow compiled kernel path made us check; it was not the cause)."""
    import torch._dynamo as dynamo

    monkeypatch.setattr(ops, "SCAN_BACKEND", "triton")  # also on CPU, in the interpreter
    torch.manual_seed(0)
    attn = AttentionConfig(kind="momentum", learnable_eta=learnable)
    model = GPT(GPTConfig(block_size=32, vocab_size=32, n_layer=2, n_head=2, n_embd=32, attention=attn)).to(DEV)

    def step(idx):
        with torch.autocast(DEV, dtype=torch.bfloat16):
            return model(idx).float().logsumexp(-1).mean()

    dynamo.reset()
    explained = dynamo.explain(step)(torch.randint(0, 32, (2, 32), device=DEV))
    dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    graph = explained.graphs[0]
    code = graph.code + "".join(m.code for m in graph.modules() if hasattr(m, "code"))  # with its subgraphs
    assert "momattn.decay_scan" in code, "the kernel path was not traced"


def test_the_kernel_writes_the_sum_with_an_addend_in_the_values_dtype_rounded_once():
    """keep_dtype: the scan plus the addend (attention's heads, another layout) summed in float32 and rounded once to
    bf16, to nearest even as a GPU rounds (the interpreter is made to): exactly the float32 result rounded."""
    from momattn import triton_scan as ts

    torch.manual_seed(0)
    B, H, T, D = 2, 4, 70, 16
    x = torch.randn(B, T, 3 * H * D, device=DEV).bfloat16()[..., H * D: 2 * H * D]  # a strided view, as the model's
    add = torch.randn(B, H, T, D, device=DEV).bfloat16()
    a = torch.tensor([0.3, 0.6, 0.9, 0.99], device=DEV)
    for reverse in (False, True):
        want = ts.decay_scan(x, a, True, reverse) + add.float().transpose(1, 2).reshape(B, T, H * D)  # float32
        got = ts.decay_scan(x, a, True, reverse, add=add, keep_dtype=True)
        assert got.dtype == torch.bfloat16 and got.is_contiguous()
        # exact in the interpreter; on a GPU the two launches are autotuned apart (another block length sums in
        # another order), so a value may round to the neighbouring bf16
        tol = 0 if DEV == "cpu" else 2**-7
        torch.testing.assert_close(got, want.bfloat16(), rtol=tol, atol=tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_bf16_values_are_summed_to_float32_accuracy(reverse):
    """bf16 values take the decay matrix as three bf16 parts (tensor-core dots on a GPU): the sums match a float64
    scan of the same values as closely as the float32 kernel's (max error 5e-6 on sums up to 34; without the
    third part it is 2e-4, with the first alone 8e-2)."""
    from momattn import triton_scan as ts

    torch.manual_seed(0)
    x = torch.randn(2, 150, 64, device=DEV).bfloat16()
    a = torch.tensor([0.3, 0.77, 0.95, 0.999], device=DEV)
    want = ops._scan_merged(x.double(), a.double(), True, 32, reverse=reverse)
    torch.testing.assert_close(ts.decay_scan(x, a, True, reverse).double(), want, rtol=1e-5, atol=1e-5)


def test_every_kernel_compiles_for_sm90_without_a_gpu(tmp_path):
    """The interpreter runs what the GPU compiler may refuse: the reference variants compile for an H100/H200 with
    Triton's own ptxas (no GPU, no driver), bf16 values on the tensor cores (HMMA), float32 on the CUDA cores.
    benchmarks/triton_sm90.py without --quick compiles every variant (about 500, too slow for the suite)."""
    import json

    from conftest import run_cli

    out = tmp_path / "sm90.json"
    r = run_cli("benchmarks/triton_sm90.py", ["--quick", "--out", str(out)], tmp_path, env={"TRITON_INTERPRET": None},
                fresh=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {(row["values"], row["addend"]): row for row in json.loads(out.read_text())["reference"]}
    assert rows[("bf16", True)]["HMMA"] > 0 and rows[("bf16", False)]["HMMA"] > 0
    assert rows[("fp32", False)]["HMMA"] == 0 and rows[("fp32", False)]["FFMA"] > rows[("bf16", False)]["FFMA"]
