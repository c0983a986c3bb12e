"""Session fixtures of the fault tests: one tiny demo dataset and one uninterrupted reference run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.faults._harness import FaultDemo, make_demo, read_arrays, store_path


@dataclass
class Reference:
    demo: FaultDemo
    cache_root: Path
    """The reference cache root (manifest + features of an uninterrupted extraction)."""
    store: Path
    arrays: dict[str, np.ndarray]
    record: dict


@pytest.fixture(scope="session")
def fault_demo(tmp_path_factory) -> FaultDemo:
    """The shared fault dataset (generated once; trials never regenerate it)."""
    return make_demo(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session")
def fault_reference(fault_demo) -> Reference:
    """An uninterrupted extraction of the fault dataset (in this process)."""
    from pipeline.extract import stage as extract

    cache = fault_demo.cache("reference")
    cfg = fault_demo.cfg(cache)
    rec = extract.run(cfg)
    store = store_path(cfg)
    arrays = read_arrays(store)
    assert arrays["done"].all(), "the reference extraction must finish every clip"
    return Reference(fault_demo, cache, store, arrays, rec)

