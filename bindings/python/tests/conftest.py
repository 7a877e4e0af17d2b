"""Shared helpers for the libdistro binding tests.

Run from the repository root:
    LIBDISTRO_LIBRARY=$PWD/build/lib/libdistro.so.1 PYTHONPATH=bindings/python \
        /usr/bin/python3 -m pytest -q bindings/python/tests
"""

import sys
from pathlib import Path

import numpy as np
import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # bindings/python
REPO_ROOT = PACKAGE_ROOT.parent.parent
HEADER = REPO_ROOT / "capi" / "include" / "distro" / "distro.h"

# Without PYTHONPATH, still test this tree's package rather than an installed one.
if str(PACKAGE_ROOT) not in sys.path:
    sys.path.insert(0, str(PACKAGE_ROOT))

MATRIX_SHAPE = (128, 192)
VECTOR_SHAPE = (64,)


class Peer:
    """One peer: an optimizer over its own copies of the model's parameters and its own gradients."""

    def __init__(self, init, peer_id, run_id=42, **options):
        import libdistro

        self.params = {name: a.copy() for name, a in init.items()}
        self.grads = {name: np.zeros_like(a) for name, a in init.items()}
        self.opt = libdistro.Optimizer(run_id=run_id, peer_id=peer_id, **options)
        for name in init:
            self.opt.add_tensor(name, self.params[name], self.grads[name])

    def fill_grads(self, rng):
        for g in self.grads.values():
            g[...] = rng.standard_normal(g.shape, dtype=np.float32)

    def snapshot(self):
        return {name: a.copy() for name, a in self.params.items()}

    def close(self):
        self.opt.close()


def initial_params(seed=1234):
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal(MATRIX_SHAPE, dtype=np.float32),
        "layer.bias": rng.standard_normal(VECTOR_SHAPE, dtype=np.float32),
    }


@pytest.fixture
def init():
    return initial_params()


@pytest.fixture
def peers(init):
    made = [Peer(init, peer_id=i) for i in range(2)]
    yield made
    for p in made:
        p.close()


@pytest.fixture
def raw():
    """The raw ctypes library."""
    from libdistro import _lib

    return _lib.lib
