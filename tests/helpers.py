"""Shared test helpers that tests import (fixtures live in ``conftest.py``)."""

from __future__ import annotations

from federation.client import ClientJob, ClientUpdate
from federation.executors import LocalExecutor
from federation.training import LocalTrainConfig

FAST_TRAIN = LocalTrainConfig(steps=2, batch_size=4, lr=3e-3)
"""Local training of engine tests: two steps of four blocks, seconds per round on the embedded model."""


class RecordingExecutor(LocalExecutor):
    """The in-process executor, keeping the last round's jobs and updates (what devices received and sent)."""

    jobs: list[ClientJob]
    updates: list[ClientUpdate | None]

    def run(self, jobs):
        self.jobs = list(jobs)
        self.updates = super().run(jobs)
        return self.updates
