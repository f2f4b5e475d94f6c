"""The vision tower with the runtime signature of the compiled vision axmodel.

Input `hidden_states`: uint8 (1, gh*gw, 392, 3), RGB patches laid out as the AXERA demo does
(392 = temporal_patch * 14 * 14, channel last). The graph normalises (mean/std of the
preprocessor config, scaled to 0..255), reorders each patch to HF's (C, T, 14, 14) flattening and
runs the tower for one temporal group of a fixed grid. Output `hidden_states_out`: float32
(gh*gw/4, out_hidden), merged tokens in HF's raster order.
"""
import torch
from torch import nn

INPUT_NAME = 'hidden_states'    # the names the AXERA vision models were exported with
OUTPUT_NAME = 'hidden_states_out'


class VisionStandIn(nn.Module):
    """`visual` for one temporal group of a grid of `grid_h` x `grid_w` patches."""

    def __init__(self, visual: nn.Module, grid_h: int, grid_w: int,
                 image_mean: list[float], image_std: list[float]):
        super().__init__()
        self.visual = visual
        self.register_buffer('grid_thw', torch.tensor([[1, grid_h, grid_w]]), persistent=False)
        self.register_buffer('mean', torch.tensor(image_mean) * 255.0, persistent=False)
        self.register_buffer('std', torch.tensor(image_std) * 255.0, persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """uint8 (1, seq, T*P*P, 3) -> float32 (seq / merge^2, out_hidden)."""
        x = (hidden_states[0].float() - self.mean) / self.std
        x = x.transpose(1, 2).reshape(x.shape[0], -1)  # (seq, 3 * T*P*P), channel-major like HF
        out = self.visual(x, grid_thw=self.grid_thw)
        return getattr(out, 'pooler_output', out)  # transformers 5 returns an output object


def example_input(grid_h: int, grid_w: int, temporal_patch: int, patch: int) -> torch.Tensor:
    """Return a uint8 patch tensor of the graph's input shape."""
    return torch.zeros((1, grid_h * grid_w, temporal_patch * patch * patch, 3), dtype=torch.uint8)
