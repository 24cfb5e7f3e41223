"""momattn GPTs (vanilla, momentum or multirate_ema attention; learned or rotary positions) for Hugging Face
transformers, loaded with trust_remote_code=True from a folder that `python -m momattn.export` wrote.

Self-contained on purpose (torch and transformers only; it is copied next to the weights): the momentum term
is a (T x T) decay matrix per head, O(T^2) like the attention itself, and multirate_ema a causal convolution
with its summed kernel (float64 FFTs), rather than momattn's O(T) scans.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained("exported", trust_remote_code=True)  # config.json names the code
    logits = model(**tokenizer("Hello", return_tensors="pt")).logits

Sequences are right-padded or unpadded (a causal model never looks right); a left-padded attention_mask is
refused, since the memory terms sum every earlier position, pads included. There is no KV cache, so generate()
re-reads the whole sequence at every step (use_cache is False in its config; a past_key_values given to forward()
is refused, as is output_attentions); past the context it reads a window of the
last block_size tokens, as momattn's own generate does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


def _rate(logit: torch.Tensor) -> torch.Tensor:
    """A learned rate in float32 at least (float64 in a float64 model), kept below 1 as momattn's model keeps it (a
    float32 sigmoid is 1.0 past ~16.6)."""
    r = torch.sigmoid(logit.to(torch.promote_types(logit.dtype, torch.float32)))
    return r.clamp(max=1 - torch.finfo(r.dtype).eps / 2)


class MomattnConfig(PretrainedConfig):
    model_type = "momattn"
    attribute_map = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
                     "max_position_embeddings": "block_size"}

    def __init__(self, vocab_size: int = 4096, block_size: int = 256, n_layer: int = 4, n_head: int = 4,
                 n_embd: int = 256, n_inner: int | None = None, bias: bool = True, pos_emb: str = "learned",
                 attention_kind: str = "vanilla", eta: float = 0.5, learnable_eta: bool = False,
                 include_current: bool = False, n_rates: int = 8, layer_norm_eps: float = 1e-5, **kwargs):
        self.vocab_size, self.block_size, self.n_layer, self.n_head = vocab_size, block_size, n_layer, n_head
        self.n_embd, self.n_inner, self.bias, self.pos_emb = n_embd, n_inner, bias, pos_emb
        self.attention_kind, self.eta, self.learnable_eta = attention_kind, eta, learnable_eta
        self.include_current, self.n_rates, self.layer_norm_eps = include_current, n_rates, layer_norm_eps
        kwargs.setdefault("tie_word_embeddings", False)  # the output layer reads wte.weight directly
        self.use_cache = kwargs.pop("use_cache", False)  # there is none (assisted generation failed deep inside
        # transformers); set here, as transformers 5 keeps it on the config of a model that declares it
        super().__init__(**kwargs)


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary positions on (B, H, T, D), adjacent pairs rotated (momattn.model.Rotary)."""
    T, D = x.size(-2), x.size(-1)
    # float32 angles, as momattn's models train with; a float64 model's exact, as momattn's float64 model's
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / base ** (torch.arange(0, D, 2, device=x.device).to(dt) / D)
    angles = torch.outer(torch.arange(T, device=x.device).to(dt), inv_freq)  # (T, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def decay_matrix(rate: torch.Tensor, T: int, include_current: bool) -> torch.Tensor:
    """rate (..., 1) -> (..., T, T) with rate^(t-i) where i < t (i <= t with include_current), else 0."""
    t = torch.arange(T, device=rate.device)
    lag = (t[:, None] - t[None, :]).to(rate.dtype)  # (T, T)
    keep = lag >= 0 if include_current else lag > 0
    return torch.where(keep, rate.unsqueeze(-1) ** lag.clamp(min=0), torch.zeros((), device=rate.device))


class Attention(nn.Module):
    def __init__(self, config: MomattnConfig):
        super().__init__()
        C, H = config.n_embd, config.n_head
        self.n_head, self.kind, self.rotary = H, config.attention_kind, config.pos_emb == "rotary"
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        if self.kind == "momentum":
            self.include_current = config.include_current
            if config.learnable_eta:  # momattn's start: eta itself, through its logit
                self.eta_logit = nn.Parameter(torch.full((H,), math.log(config.eta / (1 - config.eta))))
            self.eta = config.eta
        elif self.kind == "multirate_ema":
            self.delta = nn.Parameter(torch.randn(C, config.n_rates) * 0.2)  # momattn's start: rates near 0.5
            # momattn's gamma, named so that no key holds "gamma": transformers up to 4.48 renamed every such key
            # to "weight" when loading (an old TF LayerNorm fix) and left this one at random (found by review)
            self.rate_mix = nn.Parameter(torch.randn(C, config.n_rates))
            self.scale = math.sqrt(1.0 / C)
        elif self.kind != "vanilla":
            raise ValueError(f"attention_kind={self.kind!r} is unknown to this modeling file")

    def memory(self, v: torch.Tensor) -> torch.Tensor | None:
        """The term added to the merged attention output, from the merged values v (B, T, C), in float32 at least
        (float64 in a float64 model: its logits are then momattn's to float64, not to float32: found by review)."""
        B, T, C = v.shape
        dtype = torch.promote_types(v.dtype, torch.float32)
        vf = v.to(dtype)
        if self.kind == "momentum":  # a fixed eta as momattn's model holds it: rounded to float32, but in a float64
            # model the config's own (momattn's float64 model holds 0.7, not 0.699999988: flows review)
            eta = _rate(self.eta_logit) if hasattr(self, "eta_logit") else \
                torch.full((self.n_head,), float(self.eta), device=v.device, dtype=dtype)
            W = decay_matrix(eta[:, None], T, self.include_current)  # (H, T, T)
            vh = vf.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
            return (W @ vh).transpose(1, 2).reshape(B, T, C)
        if self.kind == "multirate_ema":
            p, g = _rate(self.delta), self.rate_mix.to(dtype) * self.scale  # (C, R)
            lag = torch.arange(T, device=v.device, dtype=torch.float64)
            kernel = (g.double()[..., None] * p.double()[..., None] ** lag).sum(1)  # (C, T): sum_r gamma p^l
            # the causal convolution y_t = sum_l kernel_l v_(t-l), through float64 FFTs zero-padded to 2T (no
            # wrap-around): O(T log T), and exact to float32 on any device (a GPU conv would round in TF32)
            n = 2 * T
            y = torch.fft.irfft(torch.fft.rfft(vf.double().transpose(1, 2), n=n) * torch.fft.rfft(kernel, n=n), n=n)
            return y[..., :T].transpose(1, 2).to(dtype)  # (B, T, C)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v_merged = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v_merged))
        if self.rotary:
            q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        mem = self.memory(v_merged)
        if mem is not None:
            y = y + mem.to(y.dtype)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: MomattnConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, config: MomattnConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class MomattnForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MomattnConfig
    base_model_prefix = "momattn"
    main_input_name = "input_ids"

    def __init__(self, config: MomattnConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> CausalLMOutput | tuple:
        """logits (B, T, V); with output_hidden_states, GPT-2's n_layer + 1 states (B, T, C): the embeddings, each
        block's output, the last one after the final norm. return_dict=False: a tuple of the fields that are set."""
        B, T = input_ids.shape
        cache = next((k for k in ("past_key_values", "cache", "cache_params") if kwargs.get(k) is not None), None)
        if cache is not None:  # it scored the new tokens alone, as a sequence of their own (found by review)
            raise ValueError(f"{cache}: this model keeps no cache; pass the whole sequence each time (generate() "
                             "does so with use_cache=False)")
        if kwargs.get("output_attentions"):  # (it came back None without a word)
            raise ValueError("output_attentions: this model does not return attention weights (its momentum terms "
                             "are no attention map); momattn's analyze.py captures them")
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("attention_mask has a padded position before a real one (left padding, or a token "
                             "generated after right padding): the momentum terms sum every earlier position, pads "
                             "included; pad on the right, or pass sequences one at a time")
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the model's context of {self.config.block_size}")
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=input_ids.device))
        hidden = []
        for block in self.blocks:
            hidden.append(x)
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # tied input/output embeddings
        loss = None
        if labels is not None:  # HF Trainer with gradient accumulation passes num_items_in_batch, the target tokens
            # of all its micro-batches, and then does not divide by the accumulation steps itself: the sum over it
            items = kwargs.get("num_items_in_batch")
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (float64 in a float64 model)
            loss = F.cross_entropy(wide[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                                   reduction="mean" if items is None else "sum")
            if items is not None:
                loss = loss / items
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        out = CausalLMOutput(loss=loss, logits=logits, hidden_states=(*hidden, x) if output_hidden_states else None)
        return out.to_tuple() if return_dict is False else out

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, output_hidden_states=None, **kwargs):
        window = slice(-self.config.block_size, None)
        return {"input_ids": input_ids[:, window], "output_hidden_states": output_hidden_states,
                "attention_mask": None if attention_mask is None else attention_mask[:, window]}
