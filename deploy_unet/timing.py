"""Per-stage wall time for long commands, so a slow run says where its time went instead of leaving it to guesses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Stage:
    name: str
    seconds: float
    group: str = ""  # the top-level step a sub-stage belongs to ("" for a top-level step)
    done: bool = True  # False while its block still runs (a report written inside it leaves it out)


@dataclass
class StageTimes:
    """Ordered wall times; ``stage()`` times a block, ``add()`` records a time measured elsewhere."""

    stages: list[Stage] = field(default_factory=list)
    clock: Callable[[], float] = time.perf_counter

    @contextlib.contextmanager
    def stage(self, name: str, group: str = "") -> Iterator[None]:
        # Appended on entry so a step lists before the sub-stages recorded while it runs.
        entry = Stage(name, 0.0, group, done=False)
        self.stages.append(entry)
        start = self.clock()
        try:
            yield
        finally:
            entry.seconds, entry.done = self.clock() - start, True

    def add(self, name: str, seconds: float, group: str = "") -> None:
        self.stages.append(Stage(name, float(seconds), group))

    def extend(self, other: StageTimes, group: str) -> None:
        """Take another command's stages (e.g. export's) as sub-stages of ``group``."""
        self.stages += [Stage(s.name, s.seconds, group) for s in other.stages]

    @property
    def finished(self) -> list[Stage]:
        return [s for s in self.stages if s.done]

    @property
    def total(self) -> float:
        return sum(s.seconds for s in self.finished if not s.group)

    def as_dict(self) -> dict[str, float]:
        return {s.name: round(s.seconds, 3) for s in self.finished}

    def rows(self, indent: str = "  ") -> list[list[str]]:
        """Table rows (stage, seconds, share of the total); sub-stages are indented under their step."""
        total = self.total or 1.0
        return [[(indent if s.group else "") + s.name, f"{s.seconds:.2f}", f"{100 * s.seconds / total:.0f}%"]
                for s in self.finished]

    def to_list(self) -> list[dict[str, object]]:
        return [{"stage": s.name, "group": s.group, "seconds": round(s.seconds, 3)} for s in self.finished]
