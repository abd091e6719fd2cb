"""Device helpers: small host arrays to a torch device without a wait, a function and its gradient in one round trip.

No library imports: any module may use it.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

__all__ = ["ValueAndGrad", "host_to_device"]


def host_to_device(a, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A copy of the host array or CPU tensor ``a`` as ``dtype`` on ``device``, without waiting for the device.

    On CUDA the copy goes through page-locked memory and is queued on the current stream (an ordinary copy
    from pageable memory waits until the GPU has finished its queued work); elsewhere a plain conversion.
    """
    t = torch.as_tensor(a, dtype=dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class ValueAndGrad:
    """A scalar function of parameters, its gradient and one more scalar, brought to the host in one transfer.

    ``fn(p)`` takes the parameters ``p`` ``[n]`` (float64, on ``device``, requiring grad) and returns ``(value,
    aux)``, two 0-d tensors on ``device``; ``value`` is differentiable in ``p``. A call returns ``[2 + n]`` float64
    on the CPU: value, aux, then ``d value / d p`` (zeros when ``grad`` is False).

    On CUDA, from call ``eager_calls + 1`` on (by default the first), the whole evaluation (forward and backward) is
    one CUDA graph, captured once (after a warm-up run on a side stream, which compiles what needs compiling) and
    replayed: the host launches one graph instead of hundreds of small kernels. ``fn`` must then be capturable: no
    transfers to or from the host, no shapes or branches that depend on values on the device, tensors it reads kept
    alive and in place. A capture that fails is reported in :attr:`graph_error` and the evaluations stay eager.
    Elsewhere every call is eager.
    """

    capture_failed = False
    """Set once a capture failed in this process: later instances do not try again (each try costs an evaluation)."""

    def __init__(self, fn, n: int, device: torch.device, eager_calls: int = 0, use_graph: bool = True) -> None:
        """Prepare the device input; nothing is run or captured yet."""
        self.fn = fn
        self.device = torch.device(device)
        self.p = torch.zeros(n, dtype=torch.float64, device=self.device, requires_grad=True)
        self.use_graph = use_graph and self.device.type == "cuda" and not ValueAndGrad.capture_failed
        self.eager_calls = eager_calls
        self.calls = 0
        self.graph = None
        self.graph_error = ""
        self._out: torch.Tensor | None = None

    def _body(self, grad: bool) -> torch.Tensor:
        if grad:
            with torch.enable_grad():
                value, aux = self.fn(self.p)
                (g,) = torch.autograd.grad(value, self.p)
        else:
            with torch.no_grad():
                value, aux = self.fn(self.p)
            g = torch.zeros_like(self.p)
        return torch.cat([value.detach().reshape(1).double(), aux.detach().reshape(1).double(), g.detach()])

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._body(True)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._out = self._body(True)
        except Exception as e:  # noqa: BLE001 - whatever stops the capture, the evaluation stays eager
            where = traceback.extract_tb(e.__traceback__)
            last = next((f for f in reversed(where) if "XRayCTRegistrationLib" in f.filename), where[-1])
            self.use_graph, self._out = False, None
            self.graph_error = f"{type(e).__name__}: {e} (at {Path(last.filename).name}:{last.lineno})"
            ValueAndGrad.capture_failed = True
            torch.cuda.synchronize(self.device)
            return
        self.graph = graph

    def __call__(self, params: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """Value, aux and gradient at ``params`` ``[n]``: ``[2 + n]`` float64 on the CPU."""
        with torch.no_grad():
            self.p.copy_(params.detach().reshape(-1).to(torch.float64))
        self.calls += 1
        if self.use_graph and self.graph is None and self.calls > self.eager_calls:
            self._capture()
        if self.graph is None:
            return self._body(grad).cpu()
        self.graph.replay()
        return self._out.cpu()
