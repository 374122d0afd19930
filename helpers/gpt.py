"""GPT-2 from scratch in plain PyTorch, and generation by hand with a KV cache.

Introduced in ``notebooks/03_inside_gpt2.ipynb``, which writes and explains every line below.
GENERATED from that notebook's cells tagged ``export`` by ``python -m tools.export``: edit the
notebook, not this file (``tests/test_gpt.py`` fails while the two differ).

Reads like nanoGPT's ``model.py``: the configuration, attention, the MLP, the block, the model
(with :meth:`GPT.from_transformers`, which loads the weights of a transformers
``GPT2LMHeadModel``, and :meth:`GPT.to_transformers`, the way back, which notebook 04 uses),
then sampling, :func:`generate` and the :class:`KVCache`.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel


@dataclass
class GPTConfig:
    """The sizes that define a GPT-2 (defaults: GPT-2 small, 124M parameters). Notebook 03, section 3."""

    vocab_size: int = 50257  # tokens it reads and predicts (02's tokenizer)
    block_size: int = 1024  # the longest context: one position embedding per place
    n_layer: int = 12  # blocks, one after the other
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # channels of the residual stream
    dropout: float = 0.0  # GPT-2 trained with 0.1; it does nothing at inference
    layer_norm_epsilon: float = 1e-5


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: n_head heads, each on its own slice of the channels. Notebook 03, section 3."""

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
        self.n_head, self.layer, self.dropout = config.n_head, layer, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # queries, keys, values of every head at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)  # mixes the heads' outputs back into the stream
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        B, T, C = x.shape  # batch, positions, channels
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): each head gets its own slice of the channels
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # section 7: the keys and values of the earlier positions, kept from before
            k, v = cache.update(self.layer, k, v)
        past = k.size(2) - T  # cached positions before these T (0 without a cache)
        mask = None if past == 0 else torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=past == 0)
        y = y.transpose(1, 2).reshape(B, T, C)  # the heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The block's feed-forward part: widen 4x, GELU (GPT-2's tanh version), narrow back. Notebook 03, section 3."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """One transformer block: LayerNorm then attention, LayerNorm then MLP, each added to the stream. Notebook 03, section 3."""

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # pre-LayerNorm; the residual adds the result back
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token and position embeddings, n_layer blocks, a final LayerNorm, an LM head tied to the token
    embedding. ``forward(input_ids)`` returns logits (batch, time, vocab). Notebook 03, section 4."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding: a row per vocabulary entry
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding: a row per place
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, layer) for layer in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one table to read and write tokens

    def hidden_states(self, input_ids: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        """The stream after the last block and the final LayerNorm, (batch, time, n_embd): what the LM head reads."""
        past = len(cache) if cache is not None else 0  # positions the cache already holds (section 7)
        T = input_ids.size(1)
        if past + T > self.config.block_size:
            raise ValueError(f"{past + T} positions do not fit the context of {self.config.block_size}; "
                             "shorten the input or generate fewer tokens")
        positions = torch.arange(past, past + T, device=input_ids.device)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x, cache)
        return self.transformer.ln_f(x)

    def forward(self, input_ids: torch.Tensor, cache: "KVCache | None" = None, last_only: bool = False) -> torch.Tensor:
        x = self.hidden_states(input_ids, cache)
        return self.lm_head(x[:, -1:] if last_only else x)  # generation needs only the last position's logits

    @classmethod
    def from_transformers(cls, hf_model) -> "GPT":
        """A GPT with the weights of a transformers ``GPT2LMHeadModel``, on its device and dtype (section 5)."""
        model = cls(config_from_transformers(hf_model.config))
        model.load_state_dict(gpt2_state_dict(hf_model.state_dict()))
        return model.to(device=hf_model.device, dtype=hf_model.dtype).eval()

    def to_transformers(self) -> GPT2LMHeadModel:
        """The way back: a transformers ``GPT2LMHeadModel`` with this GPT's weights, on its device and dtype, in
        eval mode (notebook 04, section 6: what you trained, saved and served like any GPT-2)."""
        hf_model = GPT2LMHeadModel(config_to_transformers(self.config))
        hf_model.load_state_dict(transformers_state_dict(self.state_dict()))  # strict: every name and shape
        return hf_model.to(device=self.lm_head.weight.device, dtype=self.lm_head.weight.dtype).eval()


def config_from_transformers(hf_config) -> GPTConfig:
    """Our GPTConfig from a transformers GPT2Config; refuses variants this GPT does not implement. Notebook 03, section 4."""
    activation = getattr(hf_config, "activation_function", None)
    if getattr(hf_config, "model_type", None) != "gpt2" or activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"not a GPT-2 config (model_type={getattr(hf_config, 'model_type', None)!r}, "
                         f"activation_function={activation!r}); load a GPT2LMHeadModel")
    if hf_config.n_inner not in (None, 4 * hf_config.n_embd) or hf_config.scale_attn_by_inverse_layer_idx:
        raise ValueError("this GPT implements GPT-2's own shape: n_inner = 4 * n_embd, no scale_attn_by_inverse_layer_idx")
    return GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
                     n_head=hf_config.n_head, n_embd=hf_config.n_embd, dropout=hf_config.resid_pdrop,
                     layer_norm_epsilon=hf_config.layer_norm_epsilon)


def config_to_transformers(config: GPTConfig) -> GPT2Config:
    """transformers' GPT2Config for our sizes: the inverse of ``config_from_transformers``. Notebook 04, section 6."""
    return GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_layer=config.n_layer,
                      n_head=config.n_head, n_embd=config.n_embd, resid_pdrop=config.dropout,
                      embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                      layer_norm_epsilon=config.layer_norm_epsilon,
                      bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1)  # GPT-2: the last token


def parameter_counts(config: GPTConfig) -> dict[str, int]:
    """GPT-2's parameters by formula, per part (the tied LM head counted once). Notebook 03, section 4."""
    V, P, L, d = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    return {
        "token embedding": V * d,
        "position embedding": P * d,
        "attention": L * (4 * d * d + 4 * d),
        "MLP": L * (8 * d * d + 5 * d),
        "LayerNorms": (2 * L + 1) * 2 * d,
    }


CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' GPT-2 weights under our names: Conv1D (in, out) matrices transposed to nn.Linear's
    (out, in), the tied LM head added where the file leaves it out. Notebook 03, section 5."""
    state = {name: w.t() if name.endswith(CONV1D_WEIGHTS) else w for name, w in hf_state.items()}
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # tied: stored once
    return state


def transformers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under transformers' GPT-2 layout: the inverse of ``gpt2_state_dict`` (the four matrices per
    block transposed back to Conv1D's (in, out)). Notebook 04, section 6."""
    return {name: w.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else w for name, w in state.items()}


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest logits (ties with the k-th too); the others become -inf. Notebook 03, section 6."""
    kth_largest = torch.topk(logits, min(k, logits.size(-1))).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep each row's smallest set of most probable tokens whose probabilities add up to at least p;
    the others become -inf. Notebook 03, section 6."""
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending: the least probable first
    tail = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # probability of each token and of all less probable ones
    drop = tail <= 1 - p  # a tail holding at most 1 - p: the tokens above it already add up to at least p
    drop[..., -1] = False  # the most probable token always stays
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))  # back to vocabulary order


def next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of (batch, vocab) logits: greedy when temperature is 0, else sample. Notebook 03, section 6."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: GPT, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The prompt ``input_ids`` (batch, time) followed by ``max_new_tokens`` tokens, chosen one at a time
    (temperature 0: greedy). Notebook 03, section 6; the cache: section 7."""
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(f"input_ids must be (batch, time) with at least one token, got shape {tuple(input_ids.shape)}")
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    if input_ids.size(1) + max_new_tokens > model.config.block_size:
        raise ValueError(f"{input_ids.size(1)} prompt + {max_new_tokens} new tokens exceed the model's context "
                         f"of {model.config.block_size}; ask for fewer tokens")
    cache = KVCache(model.config.n_layer) if use_cache else None
    ids = input_ids
    for _ in range(max_new_tokens):
        fresh = ids[:, len(cache) :] if use_cache else ids  # with a cache, only what the model has not seen
        logits = model(fresh, cache=cache, last_only=True)[:, -1]  # (batch, vocab): the next token's logits
        ids = torch.cat([ids, next_token(logits, temperature, top_k, top_p, generator)], dim=1)
    return ids


class KVCache:
    """Every layer's keys and values for the positions seen so far, so each generation step computes only the
    new token's. Notebook 03, section 7."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        """How many positions are cached."""
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values, (batch, heads, new, head_size), to ``layer``'s; return them all."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # along the time axis
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
