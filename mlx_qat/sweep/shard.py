"""Splitting a sweep across machines: `--shard i/n` trains a deterministic share of its trunks.

Whole trunks stay on one shard (a branch starts from its trunk's checkpoint). Trunks are dealt
out by the tokens they cost (`Trunk.tokens_trained`): largest first, each to the shard with the
fewest tokens so far (ties: the lower shard; equal trunks by root name), so shards take about
equal time and every machine computes the same assignment from the sweep file alone.

Shard i of n writes its rows (and its settings and grid) to `<out>/shard-i-of-n/`; the runs go
to `<out>/runs/<name>/` as unsplit, so several machines' folders copy into one `<out>`, which
`mlx_qat.fit <out>` reads whole.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .trunks import Trunk

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"i/n"` with 0 <= i < n; ValueError naming the flag otherwise."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m or not 0 <= int(m[1]) < int(m[2]):
            raise ValueError(
                f"--shard {text}: give I/N with 0 <= I < N (e.g. --shard 0/2 on one machine "
                "and --shard 1/2 on the other)"
            )
        return cls(int(m[1]), int(m[2]))

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def dir(self, out: Path) -> Path:
        """Where this shard's rows and settings go."""
        return Path(out) / self.name

    def results(self, out: Path) -> Path:
        return self.dir(out) / RESULTS

    def select(self, trunks: list[Trunk]) -> list[Trunk]:
        """This shard's trunks, in the sweep's order."""
        owner = assign(trunks, self.count)
        return [t for t, s in zip(trunks, owner) if s == self.index]

    def take(self, trunks: list[Trunk], warn: bool = True) -> list[Trunk]:
        """`select`, for a shard about to run: ValueError when it gets no trunk, a warning
        (`warn`) when some other shard gets none."""
        mine, n = self.select(trunks), len(trunks)
        if not mine:
            raise ValueError(
                f"--shard {self.index}/{self.count}: this sweep has {n} trunk(s) and a trunk is "
                f"never split, so shard {self.index} of {self.count} gets no run and would "
                f"write no row; split it into at most {n} shard(s) (--shard I/{n})"
            )
        if warn and self.count > n:
            logger.warning(
                "--shard %d/%d: this sweep has only %d trunk(s), so %d of the %d shards get "
                "no run; --shard I/%d uses every machine",
                self.index, self.count, n, self.count - n, self.count, n,
            )  # fmt: skip
        return mine


def assign(trunks: list[Trunk], count: int) -> list[int]:
    """The shard of each trunk: greedy by tokens, deterministic (module docstring)."""
    order = sorted(
        range(len(trunks)), key=lambda i: (-trunks[i].tokens_trained(), trunks[i].root.point.name)
    )
    load = [0] * count
    owner = [0] * len(trunks)
    for i in order:
        s = min(range(count), key=lambda k: (load[k], k))
        owner[i] = s
        load[s] += trunks[i].tokens_trained()
    return owner
