"""Moving small host arrays to a torch device without waiting for it (no library imports: any module may use it)."""

from __future__ import annotations

import torch

__all__ = ["host_to_device"]


def host_to_device(a, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A copy of the host array or CPU tensor ``a`` as ``dtype`` on ``device``, without waiting for the device.

    On CUDA the copy goes through page-locked memory and is queued on the current stream (an ordinary copy
    from pageable memory waits until the GPU has finished its queued work); elsewhere a plain conversion.
    """
    t = torch.as_tensor(a, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
