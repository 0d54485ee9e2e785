"""Progress of a batch of rollouts, while it runs: one line with the trajectories finished
out of the batch, those still active, the turn, the sampled tokens per second, the searches
so far and the time left (from the rate at which trajectories finish).

:func:`research.rollout.engine.run_rollouts` reports each turn to a :class:`RolloutProgress`
and hands its :meth:`~RolloutProgress.tokens` to a backend that can report every decode step
(the Hugging Face backend's ``on_step``), so the line moves inside a long turn too. The line
is redrawn at most every ``every`` seconds (more rarely when the output is not a terminal,
so a log file is not flooded).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence


class RolloutProgress:
    """One tqdm line over a batch of ``total`` trajectories (``enabled=False``: silent, the
    counts are still kept)."""

    def __init__(self, total: int, desc: str = "rollout", enabled: bool = True,
                 every: float | None = None, file=None):
        from tqdm.auto import tqdm

        file = file or sys.stderr
        terminal = getattr(file, "isatty", lambda: False)()
        self.every = every if every is not None else (2.0 if terminal else 15.0)
        # on a terminal the line sits under the training bar; in a log file it is written in
        # place of it (no cursor movement codes in the file)
        self.bar = tqdm(total=total, desc=desc, unit="traj", leave=False, disable=not enabled,
                        mininterval=self.every, dynamic_ncols=True, file=file,
                        position=None if terminal else 0)
        self.sampled = 0
        self.searches = 0
        self.turn = 0
        self.active = total
        self.start = time.perf_counter()
        self._drawn = 0.0

    def tokens(self, n: int) -> None:
        """``n`` more tokens sampled (called by the backend every decode step)."""
        self.sampled += n
        self._draw()

    def update(self, trajectories: Sequence, turn: int) -> None:
        """The state after turn ``turn``: how many trajectories finished, searched, still run
        (the line shows the turn being generated next)."""
        finished = sum(t.finish_reason is not None for t in trajectories)
        self.active = len(trajectories) - finished
        self.searches = sum(len(t.turns) for t in trajectories)
        self.turn = turn
        self.bar.n = finished
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._drawn < self.every:
            return
        self._drawn = now
        rate = self.sampled / max(now - self.start, 1e-9)
        turn = self.turn + 1 if self.active else self.turn  # the one being generated
        self.bar.set_postfix_str(f"active={self.active} turn={turn} tok/s={rate:.1f} "
                                 f"searches={self.searches}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> RolloutProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
