"""Level 2: pytest-benchmark benches of Python workloads. Run by ``worker.py workloads`` under
one allocator configuration (the suite's ``run.py`` runs it under each, in fresh interpreters);
``RMBENCH_SCALE`` and ``RMBENCH_ROUNDS`` size it. Not collected by the project's test run."""

import os

import pytest

from workloads import SCALE_TIMED, WORKLOADS, run_and_drop

SCALE = int(os.environ.get("RMBENCH_SCALE", SCALE_TIMED))
ROUNDS = int(os.environ.get("RMBENCH_ROUNDS", "5"))


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload(benchmark, name):
    benchmark.pedantic(run_and_drop, args=(name, SCALE), rounds=ROUNDS, warmup_rounds=1, iterations=1)
