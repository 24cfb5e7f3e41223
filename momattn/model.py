"""A GPT in the spirit of nanoGPT, with swappable attention: vanilla, momentum (the paper) or multirate_ema
(the authors' posted code). Pure PyTorch: no Lightning, no Hydra.

    vanilla        y_t = softmax attention (SDPA; flash on GPU)
    momentum       y_t = softmax attention + sum_{i<t} eta^(t-i) v_i          per head, before c_proj
    multirate_ema  y_t = softmax attention + sum_{i<=t} sum_r gamma_r p_r^(t-i) v_i   per channel, before c_proj
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from momattn import cpu_attention
from momattn.errors import ConfigError
from momattn.loss import lm_loss
from momattn.ops import link_values, momentum_ema, multirate_ema

ATTENTION_KINDS = ("vanilla", "momentum", "multirate_ema")
ATTENTION_SETTINGS = {"eta": ("momentum",), "learnable_eta": ("momentum",), "include_current": ("momentum",),
                      "n_rates": ("multirate_ema",)}  # AttentionConfig's fields, and the kinds that read them
ATTENTION_SWITCHES = ("learnable_eta", "include_current")  # its on/off settings


def _as_float(value: numbers.Real, key: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an int of 400 digits: an OverflowError from float() (second diff review)
        raise ConfigError(f"{key}={str(value)[:20]}... is too large a number") from None


@dataclass
class AttentionConfig:
    kind: str = "vanilla"  # vanilla | momentum | multirate_ema
    eta: float = 0.5  # momentum: decay rate in [0, 1); 0.5 gives the earlier values a total weight of 1
    learnable_eta: bool = False  # momentum: one rate per head, sigmoid-parameterised, initialised at eta
    include_current: bool = False  # momentum: sum over i <= t instead of the paper's i < t
    n_rates: int = 8  # multirate_ema: decay rates per channel (the authors' code uses 8)

    def __post_init__(self):
        if isinstance(self.eta, numbers.Real) and not isinstance(self.eta, bool):
            self.eta = _as_float(self.eta, "attention.eta")  # numpy's numbers too (np.float32 was refused)
        if self.kind not in ATTENTION_KINDS:
            raise ConfigError(f"attention.kind='{self.kind}' is unknown; choose one of {', '.join(ATTENTION_KINDS)}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float):
            raise ConfigError(f"attention.eta={self.eta!r} must be a number in [0, 1)")
        if not 0.0 <= self.eta < 1.0:
            raise ConfigError(f"attention.eta={self.eta} is outside [0, 1); the momentum sum only converges for eta < 1")
        if self.learnable_eta and self.eta == 0.0:
            raise ConfigError("attention.learnable_eta=true needs attention.eta in (0, 1): a sigmoid cannot start at 0")
        # the model holds eta in float32 (or as a float32 logit through a sigmoid): it must stay inside there too
        held = torch.sigmoid(torch.tensor(math.log(self.eta / (1 - self.eta)) if self.eta > 0 else -math.inf)) \
            if self.learnable_eta else torch.tensor(float(self.eta))
        if float(held) >= 1.0 or (self.learnable_eta and float(held) <= 0.0):
            raise ConfigError(f"attention.eta={self.eta!r} rounds to {float(held):g} in float32, where the model "
                              f"holds it; use an eta {'at least 1e-7' if float(held) <= 0 else 'at most 0.9999999'}")
        if isinstance(self.n_rates, numbers.Integral) and not isinstance(self.n_rates, bool):
            self.n_rates = int(self.n_rates)  # (np.int64 is no int: refused, flows review)
        if isinstance(self.n_rates, bool) or not isinstance(self.n_rates, int) or self.n_rates < 1:
            raise ConfigError(f"attention.n_rates={self.n_rates!r} must be a whole number >= 1")
        for name in ATTENTION_SWITCHES:  # (the Python API: train.py's config refuses them too)
            if getattr(self, name) and self.kind not in (kinds := ATTENTION_SETTINGS[name]):
                raise ConfigError(f"attention.{name}=true is read by {' and '.join(kinds)} attention only, not "
                                  f"attention.kind='{self.kind}'; drop it, or use kind='{kinds[0]}'")


@dataclass
class GPTConfig:
    block_size: int = 256  # context length
    vocab_size: int = 4096  # set from the tokenizer at start-up, padded up to a multiple of vocab_multiple
    vocab_multiple: int = 64  # pad the vocabulary for faster matmuls (nanoGPT's 50304)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    dropout: float = 0.0
    bias: bool = True
    pos_emb: str = "learned"  # learned | rotary
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self):
        if isinstance(self.attention, dict):
            self.attention = AttentionConfig(**self.attention)
        for name in ("block_size", "vocab_size", "vocab_multiple", "n_layer", "n_head", "n_embd", "n_inner"):
            value = getattr(self, name)
            if name == "n_inner" and value is None:
                continue
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, value := int(value))  # numpy's ints too (np.int64(32) was refused: flows review)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # 16.0: a TypeError in torch
                raise ConfigError(f"model.{name}={value!r} must be a whole number >= 1"
                                  + (", or null for 4 x model.n_embd" if name == "n_inner" else ""))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_head={self.n_head} does not divide model.n_embd={self.n_embd}; "
                f"pick n_head among {[h for h in range(1, 33) if self.n_embd % h == 0]}"
            )
        if self.pos_emb not in ("learned", "rotary"):
            raise ConfigError(f"model.pos_emb='{self.pos_emb}' is unknown; choose 'learned' or 'rotary'")
        if self.pos_emb == "rotary" and (self.n_embd // self.n_head) % 2:
            even = [h for h in range(1, 33) if self.n_embd % h == 0 and (self.n_embd // h) % 2 == 0]
            raise ConfigError(f"model.pos_emb=rotary needs an even head size (n_embd / n_head = {self.n_embd} / "
                              f"{self.n_head} = {self.n_embd // self.n_head}); " +
                              (f"pick n_head among {even}" if even else  # (an odd n_embd: none, said as [])
                               f"model.n_embd={self.n_embd} is odd, so no head size is even: use an even n_embd"))
        if isinstance(self.dropout, numbers.Real) and not isinstance(self.dropout, bool):
            self.dropout = _as_float(self.dropout, "model.dropout")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must lie in [0, 1)")


class LayerCache:
    """Keys, values and the momentum state of one layer for incremental decoding."""

    def __init__(self):
        self.shared_k: torch.Tensor | None = None  # (1, H, S, D) a prefix every row shares (cache.expand), first
        self.shared_v: torch.Tensor | None = None  # (1, H, S, D)
        self.k: torch.Tensor | None = None  # (B, H, P, D) the rows' own keys, after the shared prefix
        self.v: torch.Tensor | None = None  # (B, H, P, D)
        self.state: torch.Tensor | None = None  # the EMA op's final state: momentum (B, H, D), multirate_ema (B, C, R)


class KVCache:
    """Everything needed to continue a sequence without re-reading it. Appending builds new tensors
    (never in place), so `expand(n)` can share one encoded prefix among n continuations."""

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]
        self.length = 0

    def expand(self, n: int) -> KVCache:
        """A cache with batch size n that shares this batch-1 prefix (no copy): attention reads the prefix's keys
        once for the whole batch, and each row appends its own keys after them."""
        out = KVCache(len(self.layers))
        out.length = self.length
        for src, dst in zip(self.layers, out.layers):
            if src.shared_k is not None or any(t is not None and t.size(0) != 1 for t in (src.k, src.state)):
                raise ValueError("KVCache.expand needs a cache of batch size 1 that was not expanded itself")
            dst.shared_k, dst.shared_v = src.k, src.v
            if src.state is not None:
                dst.state = src.state.expand(n, *src.state.shape[1:])
        return out


def shared_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kp: torch.Tensor,
                            vp: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of q (B, H, T, D) over a prefix every row shares, kp and vp (1, H, S, D), then
    the rows' own keys and values k, v (B, H, P, D), the last T of which are the queries' own. The prefix's
    scores are one matmul for the whole batch (its keys are never copied per row); the two parts are
    normalised together, as one softmax over their concatenation. Returns (B, H, T, D). Needs T >= 1 and S >= 1."""
    with torch.autocast(q.device.type, enabled=False):  # scores and their exponentials at least in float32
        return _shared_prefix_attention(q, k, v, kp, vp)


def _shared_prefix_attention(q, k, v, kp, vp):
    B, H, T, D = q.shape
    S, P = kp.size(2), k.size(2)
    dt = torch.promote_types(q.dtype, torch.float32)
    qh = q.transpose(0, 1).reshape(H, B * T, D).to(dt)  # (H, B*T, D): the batch's queries side by side
    s_pre = torch.bmm(qh, kp[0].to(dt).transpose(1, 2)).view(H, B, T, S)  # (H, B, T, S)
    s_own = qh.view(H, B, T, D) @ k.transpose(0, 1).to(dt).transpose(-1, -2)  # (H, B, T, P)
    s_own.masked_fill_(torch.ones(T, P, dtype=torch.bool, device=q.device).triu(P - T + 1), float("-inf"))
    # the shift m leaves the softmax unchanged, so it carries no gradient (and the in-place ops below stay legal)
    m = torch.maximum(s_pre.detach().amax(-1), s_own.detach().amax(-1)).unsqueeze(-1)  # (H, B, T, 1), finite
    scale = D**-0.5
    e_pre, e_own = s_pre.sub_(m).mul_(scale).exp_(), s_own.sub_(m).mul_(scale).exp_()  # in place: unnormalised
    y = torch.bmm(e_pre.view(H, B * T, S), vp[0].to(dt)).view(H, B, T, D) + e_own @ v.transpose(0, 1).to(dt)
    y = y / (e_pre.sum(-1, keepdim=True) + e_own.sum(-1, keepdim=True))  # (H, B, T, D)
    return y.transpose(0, 1).to(q.dtype)  # (B, H, T, D)


class Rotary(nn.Module):
    """Rotary position embedding (the authors' models use it), applied to queries and keys."""

    def __init__(self, head_dim: int, block_size: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        # float32 angles, as every momattn model trained with (3.6e-5 off float64's at position 1023: a float64 model
        # computes its own exact ones, below); on the default device (meta, where a plan builds the model)
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(block_size).float(), inv_freq)  # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def angles(self, start: int, T: int, device: torch.device) -> torch.Tensor:
        """Positions start..start+T-1's angles in float64 (T, D/2): a float64 reference model's own."""
        inv_freq = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device)
                                       / self.head_dim)
        return torch.outer(torch.arange(start, start + T, dtype=torch.float64, device=device), inv_freq)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        T = x.size(-2)
        if x.dtype == torch.float64:  # a float64 reference model: exact tables (model.double() upcast float32
            # angles' roundings, which a float64 reference of the formula could not check past ~1e-5: review)
            angles = self.angles(start, T, x.device)
            cos, sin = angles.cos(), angles.sin()
        else:
            cos, sin = self.cos[start : start + T].to(x.dtype), self.sin[start : start + T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """Vanilla causal softmax attention. Subclasses add a `memory` term over the values before c_proj."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size) if config.pos_emb == "rotary" else None

    def link_values(self, v: torch.Tensor) -> tuple[torch.Tensor, object]:
        """(the values attention reads, a link `memory` takes): a term may join its value gradient to attention's
        in backward (MomentumAttention); vanilla reads v as it is."""
        return v, None

    def memory(self, v: torch.Tensor, cache: LayerCache | None, add: torch.Tensor | None = None, link=None
               ) -> torch.Tensor | None:
        """The extra term over the merged values v (B, T, C), plus add (the attention output, (B, H, T, D)) when
        given, heads merged: (B, T, C); vanilla has no term (None without add). With a cache, the term continues
        from cache.state and leaves the new state there. The ops take add as an addend, which the kernels (CPU,
        Triton) add as they write their output (full-size passes fewer than adding afterwards)."""
        return None if add is None else add.transpose(1, 2).reshape(v.shape)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v_merged = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v_merged))  # (B, H, T, D)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None and cache.k is not None:
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)  # (B, H, P+T, D)
        if cache is not None:
            cache.k, cache.v = k, v
        p = self.dropout if self.training else 0.0
        v, link = self.link_values(v) if cache is None else (v, None)  # (B, H, T, D)
        shared = cache is not None and cache.shared_k is not None  # a prefix every row shares (cache.expand)
        if shared and p == 0.0 and T > 0 and cache.shared_k.size(2) > 0:
            y = shared_prefix_attention(q, k, v, cache.shared_k, cache.shared_v)  # (B, H, T, D)
        else:
            if shared:  # attention dropout (or nothing to attend with): SDPA over a full copy of the prefix per row
                k = torch.cat([cache.shared_k.expand(B, -1, -1, -1), k], dim=2)  # (B, H, S+P, D)
                v = torch.cat([cache.shared_v.expand(B, -1, -1, -1), v], dim=2)
            if k.size(2) == T:  # (B, H, T, D); CPU training in bf16 with AMX: SDPA's forward, a faster backward
                y = cpu_attention.causal(q, k, v) if p == 0.0 and cpu_attention.pays(q, k, v) else \
                    F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:  # queries continue a cached prefix: query i sees keys up to P + i
                P = k.size(2) - T
                mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.memory(v_merged, cache, add=y, link=link)  # (B, T, C) heads merged; a term's state: cache.state
        return self.resid_dropout(self.c_proj(y))


def _below_one(rate: torch.Tensor) -> torch.Tensor:
    """A sigmoid's rate kept below 1: float32's sigmoid is exactly 1.0 for a logit above ~16.6 (eta=0.9999999 starts
    at 16.1), an undamped sum that the ops refuse and ran unchecked here (found by review). The rate then stays at
    the largest value below 1: past that logit a float32 sigmoid has no gradient either way."""
    return rate.clamp(max=1 - torch.finfo(rate.dtype).eps / 2)


def _fp32_at_least(t: torch.Tensor) -> torch.Tensor:
    """A rate's parameter in float32 where the model is in bf16/fp16 (a rate sigmoid(x) near 1 rounds to 1 there)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class MomentumAttention(CausalSelfAttention):
    """The paper's MoAttn: softmax attention plus sum_{i<t} eta^(t-i) v_i (Dai et al. 2023, Sec. 5); per head and
    before c_proj are this project's reading (the paper says neither; the authors' posted code adds before c_proj)."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        a = config.attention
        self.include_current, self._config_eta = a.include_current, float(a.eta)
        if a.learnable_eta:  # one rate per head, kept in (0, 1) by a sigmoid
            self.eta_logit = nn.Parameter(torch.full((config.n_head,), math.log(a.eta / (1 - a.eta))))
        else:
            self.register_buffer("eta_fixed", torch.tensor(a.eta), persistent=False)

    @property
    def eta(self) -> torch.Tensor:  # float32 (or float64) whatever the weights' dtype
        if hasattr(self, "eta_logit"):
            return _below_one(torch.sigmoid(_fp32_at_least(self.eta_logit)))
        if self.eta_fixed.dtype in (torch.bfloat16, torch.float16):
            # a model cast to bf16/fp16 (precision=bf16-true / 16-true, or FSDP's mixed precision, which casts
            # buffers itself): the rate from the config in float32; bf16 rounds 0.999 to 1.0, an undamped sum
            return torch.full((), self._config_eta, dtype=torch.float32, device=self.eta_fixed.device)
        if self.eta_fixed.dtype == torch.float64:  # model.double(): the config's eta, not its float32 rounding
            return torch.full((), self._config_eta, dtype=torch.float64, device=self.eta_fixed.device)
        return self.eta_fixed

    def link_values(self, v):
        # a fixed eta: the kernels' backward (CPU, Triton) adds attention's value gradient as it writes its own (one
        # pass instead of three); a learned one needs its own backward at once, for the rates' gradient
        return (v, None) if hasattr(self, "eta_logit") else link_values(v)

    def memory(self, vm, cache, add=None, link=None):
        B, T, C = vm.shape
        v = vm.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D), no copy
        # the rates are valid by construction (a config-checked eta, or a sigmoid kept below 1 by _below_one):
        # checking them would make a GPU wait, once per layer and step
        if cache is None:
            m = momentum_ema(v, self.eta, self.include_current, check_rates=False, add=add, link=link)[0]
        else:
            m, cache.state = momentum_ema(v, self.eta, self.include_current, cache.state, output_final_state=True,
                                          check_rates=False, add=add)
        return m.transpose(1, 2).reshape(B, T, C)  # (B, H, T, D) with heads side by side in memory: no copy


class MultiRateEMAAttention(CausalSelfAttention):
    """The authors' posted code ("rot-momentum", LMOps issue #9): a learned MEGA-style damped EMA per channel,
    R rates p = sigmoid(delta) mixed by gamma, over the merged values, current token included."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        C, R = config.n_embd, config.attention.n_rates
        self.delta = nn.Parameter(torch.randn(C, R) * 0.2)  # p = sigmoid(delta) starts near 0.5
        self.gamma = nn.Parameter(torch.randn(C, R))
        self.scale = math.sqrt(1.0 / C)

    def memory(self, vm, cache, add=None, link=None):
        p, g = _below_one(torch.sigmoid(_fp32_at_least(self.delta))), self.gamma * self.scale  # (C, R); p in float32 (bf16: 0.999 -> 1)
        if cache is None:  # p is a sigmoid: valid by construction, unchecked (a check would make a GPU wait)
            return multirate_ema(vm, p, g, check_rates=False, add=add)[0]  # (B, T, C): the merged values
        m, cache.state = multirate_ema(vm, p, g, cache.state, output_final_state=True, check_rates=False, add=add)
        return m


ATTENTION_CLASSES = {"vanilla": CausalSelfAttention, "momentum": MomentumAttention, "multirate_ema": MultiRateEMAAttention}


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = 4 * config.n_embd if config.n_inner is None else config.n_inner
        self.c_fc = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = ATTENTION_CLASSES[config.attention.kind](config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache: LayerCache | None = None, start: int = 0):
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        # the tokenizer's ids (load_checkpoint sets it): generate never samples the padding above (it decodes to nothing)
        self.n_ids: int | None = None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    selects_logits = True  # forward takes select=: scorers ask for the logits they read, not all (B, T, V)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                select: tuple[torch.Tensor, torch.Tensor] | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V). With a cache, idx continues the cached sequence. With
        select = (rows, positions), two index tensors of M entries, only the logits there: (M, V). With targets
        (B, T), the mean cross-entropy instead (a scalar; targets of -100 are ignored), without forming the
        float32 logits on a CPU (momattn/loss.py)."""
        B, T = idx.size()
        if select is not None and targets is not None:
            raise ValueError("forward takes select= or targets=, not both")
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's context of {self.config.block_size}")
        try:
            x = self.wte(idx)  # (B, T, C)
        except IndexError:  # (CPU; checked here, not before: a check would make a GPU wait at every step)
            vocab, top = self.config.vocab_size, int(idx.max())
            bad = top if top >= vocab else int(idx.min())
            raise ValueError(f"idx holds token id {bad}, outside this model's vocabulary of {vocab} ids "
                             f"(0..{vocab - 1})") from None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, start)
        if cache is not None:
            cache.length = start + T
        if select is not None:
            x = x[select]  # (M, C): the final norm and the LM head only where they are read
        if targets is not None:
            return lm_loss(self.ln_f(x).flatten(0, 1), self.lm_head.weight, targets.flatten())
        return self.lm_head(self.ln_f(x))  # (B, T, V) or (M, V)

    def last_logits(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, V): the logits at idx's last position only, what decoding reads (no LM head over the prompt)."""
        rows = torch.arange(idx.size(0), device=idx.device)
        return self(idx, cache=cache, select=(rows, torch.full_like(rows, idx.size(1) - 1)))

    def flops_per_token(self, T: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H D T."""
        c, T = self.config, T or self.config.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * T

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, top_p: float = 1.0) -> torch.Tensor:
        """Sample max_new_tokens after idx (B, T), decoding one token at a time with the KV cache; never an id
        >= self.n_ids (the vocabulary's padding) where it is set."""
        from momattn.generate import next_token  # generate.py's rule: a tiny temperature is greedy, not nan

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")  # -3 returned idx unchanged
        if idx.dim() != 2 or idx.size(1) == 0:  # an empty prompt was an IndexError inside the first forward
            raise ValueError(f"idx of shape {tuple(idx.shape)} must be (B, T) with T >= 1: at least one token to "
                             "continue")
        bad = isinstance(temperature, bool) or not isinstance(temperature, int | float)  # True sampled at 1
        if bad or not 0 <= temperature < math.inf:  # None: a TypeError
            raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
        if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 = the whole distribution)")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be an int >= 1, or None for the whole vocabulary")  # IndexError
        vocab = self.config.vocab_size  # the embedding's rows
        if idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < vocab:  # an IndexError inside the embedding
            raise ValueError(f"idx holds token id {int(idx.max()) if int(idx.max()) >= vocab else int(idx.min())}, "
                             f"outside this model's vocabulary of {vocab} ids (0..{vocab - 1})")
        if self.n_ids is not None and idx.numel() and int(idx.max()) >= self.n_ids:  # an untrained row, decoded as ''
            raise ValueError(f"idx holds token id {int(idx.max())}: ids {self.n_ids}..{vocab - 1} are the "
                             f"vocabulary's padding, not tokens of this model's tokenizer (0..{self.n_ids - 1})")
        if max_new_tokens == 0:
            return idx
        cache, logits = self.new_cache(), None
        ctx = idx[:, -self.config.block_size :]
        logits = self.last_logits(ctx, cache)
        for step in range(max_new_tokens):
            if self.n_ids is not None and self.n_ids < logits.size(-1):
                logits = logits.clone()
                logits[:, self.n_ids :] = float("-inf")
            nxt = next_token(logits, temperature, top_k, generator, top_p)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            if step == max_new_tokens - 1:  # the last token's logits would be computed for nothing
                break
            if cache.length >= self.config.block_size:  # context full: a window of the last block_size tokens
                cache = self.new_cache()
                logits = self.last_logits(idx[:, -self.config.block_size :], cache)
            else:
                logits = self.last_logits(nxt, cache)
        return idx
