"""Batch helpers on uint8 tensors already on the device: the article's crop and flip."""

from __future__ import annotations

import torch


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus horizontal flip, for a whole uint8 batch at once.

    One gather from a view of every crop window (`unfold`) of the padded batch and of its
    mirror image: flipping crop (oy, ox) is cropping the mirrored batch at (oy, 2*pad - ox).
    Three times faster on CPU than indexing every pixel, with the same random draws and
    the same output (docs/speed.md).
    """
    b, c, h, w = x.shape
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(dev)
    flip = (torch.rand(b, generator=gen, device=gen.device) < 0.5).to(dev)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    windows = torch.stack([padded, padded.flip(3)]).unfold(3, h, 1).unfold(4, w, 1)  # [2, b, c, 2p+1, 2p+1, h, w]
    return windows[flip.long(), torch.arange(b, device=dev), :, oy, torch.where(flip, 2 * pad - ox, ox)]
