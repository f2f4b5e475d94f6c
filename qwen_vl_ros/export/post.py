"""The post model: final RMSNorm and lm_head, (1, 1, D) hidden row -> (1, 1, V) logits."""
import torch
from torch import nn


class PostStandIn(nn.Module):
    """`lm_head(norm(x))`; with tied embeddings lm_head shares the embedding table."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm = norm
        self.lm_head = lm_head

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (contract name)
        """Logits of one hidden row."""
        return self.lm_head(self.norm(input))
