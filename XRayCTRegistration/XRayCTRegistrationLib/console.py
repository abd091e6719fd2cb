"""Terminal output shared by the CLI and the demo: a progress bar and pose parameters as text."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .names import PARAM_NAMES


class Progress:
    """A ``progress(fraction, message)`` callback drawing a tqdm bar on stderr."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        """Open the bar (nothing is drawn when ``enabled`` is false)."""
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, disable=not enabled, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def __call__(self, fraction: float, message: str = "") -> None:
        """Move the bar to ``fraction`` in [0, 1] and show ``message``."""
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def format_params(params: Sequence[float]) -> str:
    """``rx=.., ry=.., ...`` (degrees, mm) for printing."""
    return ", ".join(f"{n}={v:.2f}" for n, v in zip(PARAM_NAMES, params, strict=True))
