"""Image normalisation right before a model's image tower, shared by every model family.

Images everywhere in poisonlab are ``[B, C, H, W]`` in ``[0, 1]``; each model normalises them
with its own mean and std. The result is laid out channels-last, which oneDNN's CPU convolutions
(and cuDNN's under AMP) run faster: 1.19x on the tiny CLIP ResNet's training in
``benchmarks/cpu_layout_threads.py``, 1.2-1.4x in single runs (docs/results/performance.md, "Where the demo's time goes on 2 CPU cores"). Values are the same; only the memory layout, and with it the order of
floating-point sums inside a convolution, changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize_images(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                     std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``(images - mean) / std`` per channel, channels-last for 4-d batches."""
    m = torch.as_tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    out = (images - m) / s
    return out.contiguous(memory_format=torch.channels_last) if out.ndim == 4 else out
