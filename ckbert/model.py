"""The CKBERT encoder and its masked-LM head, in one file (design.md, section 3).

Parameter names are the checkpoint format: they are exactly those of Hugging Face
`BertForMaskedLM` (layout `post_ln`) and `MegatronBertForMaskedLM` (layout `pre_ln`), so
`model.state_dict()` holds the same keys as an HF `model.safetensors`. As in HF, the decoder is
tied: its weight is `bert.embeddings.word_embeddings.weight` and its bias `cls.predictions.bias`
(HF saves neither `cls.predictions.decoder.*` key), so there is no separate decoder module.

post_ln (BERT):       x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x))); embeddings end in a LayerNorm
pre_ln (Megatron):    x = x + drop(attn(LN(x))); x = x + drop(ffn(LN(x))); a final LN after the last
                      layer, no LayerNorm on the embeddings

The fused elementwise ops (bias + dropout + residual + LayerNorm, residual + LayerNorm, bias +
GELU, the MLM head's linear + cross-entropy) come from `ckbert.kernels`; the backend is chosen once
from `config.kernels` and changes no parameter. Where a fused op adds a bias, the linear layer
before it runs without its bias and hands the bias to that op.

Unpadded ("varlen") path: with padding in the batch, `encode` gathers the T real tokens once
(flat indices from the attention mask) and runs the embeddings, every linear layer, the FFN, the
LayerNorms, dropout and the fused kernels on [T, H] rows; only the attention core (q/k/v scattered
to [B, heads, L, head_dim], SDPA with the key mask, the context gathered back) sees the padded
shape. On CPU under bf16 the matmuls are nearly the whole step, so compute spent on padding is
pure loss. Without padding nothing is gathered and the layers run on [B, L, H] as before.
`encode` re-pads its result to [B, L, H] with zeros at the pad positions. `encode_packed` runs
several padded batches (the MLM batch and CMRM's sample texts) as one such stream: one GEMM per
weight and step instead of one per batch, each batch's attention core on its own padded shape.

Every linear layer goes through `kernels.linear`: F.linear, except for bf16 GEMMs on CPUs where
PyTorch has no oneDNN bf16 (faster operand layouts, decided once per process). Dropout, the
attention core and the word-embedding lookup go through `kernels.dropout`, `kernels.attention` and
`kernels.embedding` (F.dropout, SDPA and F.embedding, with cheaper CPU paths); the model itself
holds no precision or hardware code.

The model knows nothing of parallelism, precision or compilation (style.md, item 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ckbert.errors import UserError
from ckbert.kernels import ops
from ckbert.kernels.ops import linear
from ckbert.model_config import ModelConfig

# HF hidden_act -> torch GELU `approximate` ("gelu_new" is the tanh form).
GELU_APPROXIMATE = {"gelu": "none", "gelu_new": "tanh"}


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        if config.layout == "post_ln":
            self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids [B, L] -> [B, L, H]; unpadded, input_ids [T] (real tokens) with `positions` [T]
        (each one's position in its row; the caller checks the lengths) -> [T, H]. The sum order
        (word + type) + position follows HF."""
        if positions is None:
            check_length(input_ids.shape[1], self.position_embeddings.num_embeddings)
            positions = self.position_embeddings.weight[: input_ids.shape[1]]  # [L, H], broadcast over B
        else:
            positions = self.position_embeddings(positions)  # [T, H]
        x = ops.embedding(input_ids, self.word_embeddings.weight, self.word_embeddings.padding_idx)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + positions
        if hasattr(self, "LayerNorm"):
            x = F.layer_norm(x, x.shape[-1:], self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)
        return ops.dropout(x, self.dropout_p, self.training)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _repad(rows: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """[T, H] states of the real tokens at flat `index` into a [B, L] batch -> [B, L, H], zeros at pads."""
    h = rows.shape[-1]
    return rows.new_zeros(shape.numel(), h).index_copy(0, index, rows).view(*shape, h)


def check_length(length: int, max_positions: int) -> None:
    if length > max_positions:
        raise ValueError(f"sequence length {length} > max_position_embeddings {max_positions}")


@dataclass(frozen=True)
class Unpadded:
    """Where the rows of an unpadded [T, H] stream come from: one or more padded batches, each with
    its key mask [B, 1, 1, L] (True = real token) and the flat indices [T_i] of its real tokens in
    B*L; the stream holds batch 0's T_0 rows, then batch 1's. Only the attention core reads it."""

    masks: tuple[torch.Tensor, ...]
    indices: tuple[torch.Tensor, ...]

    @property
    def sizes(self) -> list[int]:
        return [i.numel() for i in self.indices]


class SelfAttention(nn.Module):
    """Holds `query`/`key`/`value`; SDPA with a key padding mask (padded core, see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.num_heads = config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: Unpadded | None = None) -> torch.Tensor:
        """Padded: x [B, L, H], mask [B, 1, 1, L] bool (True = attend) or None -> context [B, L, H].
        Unpadded: x [T, H] (the real tokens of `rows`' batches) -> context [T, H]; the linear layer
        runs on the T rows, only SDPA on each batch's padded shape."""
        # One matmul for q, k and v. Concatenating the three [H, H] weights per forward was measured
        # (issue 13, 1 CPU thread): 0.05 ms against 21 ms for this linear's forward + backward at
        # H 256, T 2048, and 0.6 ms against 76 ms at H 768, T 1024; under 1%, so the parameters
        # keep their HF names and shapes instead of a fused copy to keep in sync.
        w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = linear(x, w, bias)  # [B, L, 3H] or [T, 3H]
        if rows is None:
            return self._attend(qkv, mask)
        parts = qkv.split(rows.sizes)
        ctx = [self._attend_rows(part, m, i) for part, m, i in zip(parts, rows.masks, rows.indices, strict=True)]
        return _cat(ctx)

    def _attend_rows(self, qkv: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """qkv [T, 3H] of one batch's real tokens -> context [T, H], through its padded shape."""
        b, length = mask.shape[0], mask.shape[-1]
        if b * length == 0:  # an empty batch (e.g. no CMRM sample texts)
            return qkv[:, : qkv.shape[1] // 3]
        # zeros at the pad positions: as keys they are masked, as queries their rows are dropped
        padded = qkv.new_zeros(b * length, qkv.shape[1]).index_copy(0, index, qkv)
        ctx = self._attend(padded.view(b, length, -1), mask)
        return ctx.view(b * length, -1).index_select(0, index)

    def _attend(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv [B, L, 3H] -> context [B, L, H]: `kernels.attention` (SDPA) with the key mask."""
        b, length, h = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.view(b, length, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = ops.attention(q, k, v, mask, self.dropout_p, self.training)  # each [B, heads, L, head_dim]
        return ctx.transpose(1, 2).reshape(b, length, h)


class Dense(nn.Module):
    """Holds the linear layer under its HF name `dense`; `Layer` applies it (see the module docstring)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)


class SelfOutput(Dense):
    def __init__(self, config: ModelConfig):
        super().__init__(config.hidden_size, config.hidden_size)
        if config.layout == "post_ln":
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class FFNOutput(Dense):
    def __init__(self, config: ModelConfig):
        super().__init__(config.intermediate_size, config.hidden_size)
        if config.layout == "post_ln":
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.layout == "pre_ln":
            self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = SelfAttention(config)
        self.output = SelfOutput(config)


class Layer(nn.Module):
    """One transformer block; its forward depends on the layout (see the module docstring)."""

    def __init__(self, config: ModelConfig, backend: str):
        super().__init__()
        self.attention = Attention(config)
        if config.layout == "pre_ln":
            self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = Dense(config.hidden_size, config.intermediate_size)
        self.output = FFNOutput(config)
        self.p = config.hidden_dropout_prob
        self.eps = config.layer_norm_eps
        self.approximate = GELU_APPROXIMATE[config.hidden_act]
        self.backend = backend

    def _ffn_in(self, x: torch.Tensor) -> torch.Tensor:
        # [..., H] -> [..., FFN]
        d = self.intermediate.dense
        return ops.bias_gelu(linear(x, d.weight), d.bias, self.approximate, backend=self.backend)

    def forward_post_ln(
        self, x: torch.Tensor, mask: torch.Tensor | None, rows: Unpadded | None = None
    ) -> torch.Tensor:
        """x [B, L, H] (padded) or [T, H] with `rows` (unpadded) -> the same shape."""
        att, out = self.attention.output, self.output
        ctx = self.attention.self(x, mask, rows)
        x = ops.bias_dropout_add_layernorm(
            linear(ctx, att.dense.weight), att.dense.bias, x, att.LayerNorm.weight, att.LayerNorm.bias,
            self.eps, self.p, self.training, backend=self.backend,
        )
        y = linear(self._ffn_in(x), out.dense.weight)
        return ops.bias_dropout_add_layernorm(
            y, out.dense.bias, x, out.LayerNorm.weight, out.LayerNorm.bias,
            self.eps, self.p, self.training, backend=self.backend,
        )

    def forward_pre_ln(
        self, pending: torch.Tensor | None, residual: torch.Tensor, mask: torch.Tensor | None,
        rows: Unpadded | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`residual` [B, L, H] (or [T, H] with `rows`, unpadded) is the stream; `pending` (same
        shape) the previous sublayer's output
        (bias included, dropout not yet applied) that is not yet added to it (None before the first
        layer). Returns the new (pending, residual), so that each dropout + add is fused with the
        LayerNorm that follows it. Only activations cross the layer boundary, never parameters,
        so a sharded (FSDP) layer may free its weights after its call."""
        ln = self.attention.ln
        if pending is None:
            y = F.layer_norm(residual, residual.shape[-1:], ln.weight, ln.bias, self.eps)
        else:
            y, residual = dropout_add_layernorm(pending, residual, ln, self.p, self.training, self.backend)
        # the attention output's bias and dropout are fused into the add + LayerNorm here
        d, ln = self.attention.output.dense, self.ln
        y, residual = ops.add_layernorm(
            linear(self.attention.self(y, mask, rows), d.weight), residual, ln.weight, ln.bias, self.eps,
            backend=self.backend, bias=d.bias, p=self.p, training=self.training,
        )
        d = self.output.dense
        return linear(self._ffn_in(y), d.weight, d.bias), residual


def dropout_add_layernorm(
    x: torch.Tensor, residual: torch.Tensor, ln: nn.LayerNorm, p: float, training: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(residual + dropout(x)), residual + dropout(x)) for [..., H] tensors."""
    return ops.add_layernorm(x, residual, ln.weight, ln.bias, ln.eps, backend=backend, p=p, training=training)


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig, backend: str):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config, backend) for _ in range(config.num_hidden_layers))
        if config.layout == "pre_ln":
            self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layout = config.layout
        self.p = config.hidden_dropout_prob
        self.backend = backend

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: Unpadded | None = None) -> torch.Tensor:
        """x [B, L, H] (padded) or [T, H] with `rows` (unpadded) -> the last hidden states, same shape."""
        if self.layout == "post_ln":
            for layer in self.layer:
                x = layer.forward_post_ln(x, mask, rows)
            return x
        pending = None
        for layer in self.layer:
            pending, x = layer.forward_pre_ln(pending, x, mask, rows)
        if pending is None:  # no layers
            return F.layer_norm(x, x.shape[-1:], self.ln.weight, self.ln.bias, self.ln.eps)
        y, _ = dropout_add_layernorm(pending, x, self.ln, self.p, self.training, self.backend)
        return y


class BertBody(nn.Module):
    def __init__(self, config: ModelConfig, backend: str):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config, backend)


class PredictionTransform(Dense):
    def __init__(self, config: ModelConfig):
        super().__init__(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Predictions(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))  # the tied decoder's bias


class MLMHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.predictions = Predictions(config)


class CKBertForPreTraining(nn.Module):
    """Encoder + MLM head with HF parameter names; the objectives live in `ckbert.objectives`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("config.vocab_size is null: resolve it from the tokenizer first "
                             "(ckbert.model_config.resolve_vocab_size)")
        self.config = config
        try:  # decided once per process (ckbert.kernels), for every layer
            self.backend = ops.select_backend(config.kernels)
        except (RuntimeError, ValueError) as exc:  # e.g. "triton" requested where it cannot run
            raise UserError(f"model.kernels: {exc}") from None
        self.bert = BertBody(config, self.backend)
        self.cls = MLMHead(config)
        self.approximate = GELU_APPROXIMATE[config.hidden_act]
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # As HF BertPreTrainedModel: N(0, initializer_range) for weights, zero biases, LayerNorm
        # (1, 0), the padding row of the word embeddings zero, the output bias zero.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Predictions):
            nn.init.zeros_(module.bias)

    def set_dropout(self, p: float) -> None:
        """Use dropout probability `p` everywhere from now on (a training-run choice, e.g. none in
        pretraining); `self.config` keeps its values, so an export still carries the model's own."""
        for module in self.modules():
            for name in ("dropout_p", "p"):
                if isinstance(getattr(module, name, None), float) and module is not self:
                    setattr(module, name, float(p))

    @property
    def decoder_weight(self) -> torch.Tensor:
        """[V, H]: the decoder is tied to the word embeddings."""
        return self.bert.embeddings.word_embeddings.weight

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.cls.predictions.bias

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        unpad: bool = True,
    ) -> torch.Tensor:
        """input_ids [B, L], attention_mask [B, L] (1 = real token) -> last hidden states [B, L, H].

        With padding (and `unpad`), the encoder runs on the real tokens only (`encode_unpadded`)
        and the result is re-padded: rows at pad positions are zeros (HF leaves values there that
        no real position depends on). `unpad=False` runs every layer on the padded [B, L, H]
        (the reference for tests). Without padding both are the same computation."""
        if not unpad or attention_mask is None or bool(attention_mask.all()):
            return self._encode_padded(input_ids, attention_mask, token_type_ids)
        hidden, rows = self._encode_rows([(input_ids, attention_mask, token_type_ids)])
        return _repad(hidden, rows.indices[0], input_ids.shape)

    def encode_unpadded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (hidden [T, H] of the T real tokens in row-major order, index [T] their flat positions in
        B*L), or (hidden [B*L, H], None) when the mask has no padding (nothing gathered)."""
        if bool(attention_mask.all()):
            hidden = self._encode_padded(input_ids, attention_mask, token_type_ids)
            return hidden.reshape(-1, self.config.hidden_size), None
        hidden, rows = self._encode_rows([(input_ids, attention_mask, token_type_ids)])
        return hidden, rows.indices[0]

    def encode_packed(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Several padded batches [(input_ids [B_i, L_i], attention_mask [B_i, L_i])] in one encoder
        pass over their real tokens -> [hidden [B_i, L_i, H]], zeros at pad positions; the same
        states as `encode` on each batch (attention never crosses batches or rows). What it saves
        is per-pass work that does not scale with tokens: one GEMM per weight (and one weight
        gradient) instead of one per batch, one embedding gradient, one FSDP gather per layer."""
        hidden, rows = self._encode_rows([(ids, mask, None) for ids, mask in batches])
        return [_repad(part, index, ids.shape)
                for part, (ids, _), index in zip(hidden.split(rows.sizes), batches, rows.indices, strict=True)]

    def _encode_rows(self, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
                     ) -> tuple[torch.Tensor, Unpadded]:
        """[(input_ids [B, L], attention_mask [B, L], token_type_ids or None)] -> (hidden [T, H] of
        every batch's real tokens, batch after batch, row-major; where they come from)."""
        with_types = any(t is not None for _, _, t in batches)  # else type 0 everywhere, no tensor
        ids, types, positions, masks, indices = [], [], [], [], []
        for input_ids, attention_mask, token_type_ids in batches:
            length = input_ids.shape[1]
            check_length(length, self.config.max_position_embeddings)
            index = attention_mask.reshape(-1).nonzero().squeeze(1)  # [T_i]
            ids.append(input_ids.reshape(-1).index_select(0, index))
            if with_types:
                types.append(torch.zeros_like(ids[-1]) if token_type_ids is None
                             else token_type_ids.reshape(-1).index_select(0, index))
            positions.append(index % length)  # position within its row
            masks.append(attention_mask.bool()[:, None, None, :])  # [B, 1, 1, L]: masks keys only
            indices.append(index)
        x = self.bert.embeddings(_cat(ids), _cat(types) if with_types else None, _cat(positions))
        rows = Unpadded(tuple(masks), tuple(indices))
        return self.bert.encoder(x, None, rows), rows

    def _encode_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: masks keys only
        x = self.bert.embeddings(input_ids, token_type_ids)
        return self.bert.encoder(x, mask)

    def mlm_hidden(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, H], positions [M] flat indices into B*L -> transformed rows [M, H].

        Gathers first so the transform and the decoder run only on the M predicted rows."""
        t = self.cls.predictions.transform
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        y = ops.bias_gelu(linear(rows, t.dense.weight), t.dense.bias, self.approximate,
                              backend=self.backend)
        return F.layer_norm(y, y.shape[-1:], t.LayerNorm.weight, t.LayerNorm.bias, t.LayerNorm.eps)

    def mlm_logits(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, H], positions [M] -> logits [M, V]."""
        return linear(self.mlm_hidden(hidden, positions), self.decoder_weight, self.decoder_bias)

    def mlm_loss(self, hidden: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The MLM loss (method.md, section 1): mean cross-entropy over the M predicted rows (hidden
        [B, L, H], positions [M] flat indices into B*L, labels [M], -100 ignored) through
        `kernels.linear_cross_entropy` (the Triton path never materialises [M, V] logits). No
        targets give a zero that still depends on the inputs (so backward works)."""
        rows = self.mlm_hidden(hidden, positions)  # the head runs on the targets only
        if labels.numel() == 0:
            return rows.sum() * 0.0
        return ops.linear_cross_entropy(rows, self.decoder_weight, self.decoder_bias, labels, backend=self.backend)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [M, V] at `positions`, or [B, L, V] at every position when none are given."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        if positions is not None:
            return self.mlm_logits(hidden, positions)
        b, length = input_ids.shape
        all_rows = torch.arange(b * length, device=input_ids.device)
        return self.mlm_logits(hidden, all_rows).view(b, length, -1)
