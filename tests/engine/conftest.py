"""Fixtures the engine's tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A local Ray of 2 CPUs for one test module: started unless one runs already (then stopped at the module's
    end), with the module itself pickled by value, so that the classes it defines reach the workers."""
    import ray  # a declared test dependency: missing, the tests fail rather than skip

    ray.cloudpickle.register_pickle_by_value(request.module)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()
