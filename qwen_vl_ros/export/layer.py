"""One Qwen2.5-VL decoder layer with the axmodel signature, for one shape group.

    (K_cache, V_cache, indices, input, mask) -> (K_cache_out, V_cache_out, output)

The layer's own modules (norms, projections, MLP) and transformers' rope helpers do the math; this
wrapper only adds what the compiled models do differently from HF: rope tables gathered with the
position rows, an explicit additive mask, and a KV cache passed in and out as (1, rows, kv_dim).
"""
import torch
from torch import nn

from .shapes import LayerGroup


class RopeTables(nn.Module):
    """Plain-rope cos/sin tables for positions 0..length-1, looked up by index rows."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float, length: int):
        super().__init__()
        # Same product as HF's rotary embedding (inv_freq x position), done once for all positions.
        freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer('cos', emb.cos() * attention_scaling, persistent=False)
        self.register_buffer('sin', emb.sin() * attention_scaling, persistent=False)

    def forward(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Look up (1 or 3, S) positions: cos, sin of shape (3, 1, S, head_dim) as HF lays them."""
        # One row (decode) = the same position on all three axes, i.e. plain rope.
        rows = indices.expand(3, -1)
        return self.cos[rows].unsqueeze(1), self.sin[rows].unsqueeze(1)


class DecoderLayerStandIn(nn.Module):
    """HF decoder layer `layer` as a fixed-shape axmodel-style graph for `group`."""

    def __init__(self, layer: nn.Module, text_config, rope: RopeTables, group: LayerGroup):
        super().__init__()
        self.layer = layer
        self.rope = rope
        self.history = group.history
        self.num_heads = text_config.num_attention_heads
        self.num_kv_heads = text_config.num_key_value_heads
        self.head_dim = (getattr(text_config, 'head_dim', None)
                         or text_config.hidden_size // self.num_heads)
        self.mrope_section = list(mrope_section(text_config))
        self.scaling = self.head_dim ** -0.5

    def forward(self, K_cache, V_cache, indices, input, mask):  # noqa: N803 (contract names)
        """One call of the compiled layer; see the module docstring."""
        attn = self.layer.self_attn
        rows = input.shape[1]
        normed = self.layer.input_layernorm(input)
        q = self._heads(attn.q_proj(normed), self.num_heads)
        k = self._heads(attn.k_proj(normed), self.num_kv_heads)
        v = self._heads(attn.v_proj(normed), self.num_kv_heads)
        cos, sin = self.rope(indices)
        q, k = apply_mrope(q, cos, sin, self.mrope_section), apply_mrope(k, cos, sin,
                                                                          self.mrope_section)

        keys, values = k, v
        if self.history:  # group 1's dummy cache is an input of the graph but never read
            keys = torch.cat((self._heads(K_cache, self.num_kv_heads), k), dim=2)
            values = torch.cat((self._heads(V_cache, self.num_kv_heads), v), dim=2)
        # Grouped-query attention without repeating K/V (HF's repeat_kv): the `groups` query
        # heads that share a KV head become extra query rows of it. Same dot products; the
        # repeat was an Expand copying the whole cache per layer and token (1.6 of 7.6 ms of
        # an 8-bit full-size decode layer, onnxruntime profile).
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(1, self.num_kv_heads, groups * rows, self.head_dim)
        scores = torch.matmul(q, keys.transpose(2, 3)) * self.scaling
        scores = scores.view(1, self.num_kv_heads, groups, rows, -1) + mask[:, None, None]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        context = torch.matmul(probs.view(1, self.num_kv_heads, groups * rows, -1), values)
        context = context.view(1, self.num_heads, rows, self.head_dim)
        context = context.transpose(1, 2).reshape(1, rows, -1)
        hidden = input + attn.o_proj(context)
        output = hidden + self.layer.mlp(self.layer.post_attention_layernorm(hidden))
        return self._rows(k), self._rows(v), output

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(1, S, heads*head_dim) -> (1, heads, S, head_dim)."""
        return x.view(1, x.shape[1], heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor:
        """(1, heads, S, head_dim) -> (1, S, heads*head_dim): the cache row layout."""
        return x.transpose(1, 2).reshape(1, x.shape[2], -1)


def apply_mrope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mrope_section: list[int]) -> torch.Tensor:
    """Rotate x (1, heads, S, head_dim) by 3-D rope: cos/sin (3, 1, S, head_dim), one per axis.

    The head_dim channels are split by `mrope_section` (t, h, w; repeated for both halves) and
    each split takes the t, h or w table: transformers 4.49-4.57's
    `apply_multimodal_rotary_pos_emb` in modeling_qwen2_5_vl.py, which 5.x no longer has (its
    rotary embedding interleaves the sections itself). Written here so that the export runs
    under both majors with the same graph.
    """
    splits = list(mrope_section) * 2
    cos = torch.cat([m[i % 3] for i, m in enumerate(cos.split(splits, dim=-1))], dim=-1)
    sin = torch.cat([m[i % 3] for i, m in enumerate(sin.split(splits, dim=-1))], dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # HF's rotate_half
    return x * cos + rotated * sin


def mrope_section(text_config) -> list[int]:
    """Return the t/h/w split of the rotary frequencies (rope_scaling 4.x, rope_parameters 5.x)."""
    rope = getattr(text_config, 'rope_parameters', None) or text_config.rope_scaling
    return rope['mrope_section']


def example_inputs(group: LayerGroup) -> tuple[torch.Tensor, ...]:
    """Zero tensors of the group's input shapes (float32; indices int64 until the graph fix-up)."""
    return tuple(
        torch.zeros(shape, dtype=torch.int64 if name == 'indices' else torch.float32)
        for name, shape in group.input_shapes.items())
