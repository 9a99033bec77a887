"""Global state reset for every test (STYLE.md rule 9), a private data cache and the device
fixture."""

import os
import sys
import tempfile

import pyro
import pytest
import torch

# ``from common import ...`` must work whatever pytest's import mode is.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# The suite never writes into the user's cache: data sets that tests (and the tutorial notebooks'
# kernels, which inherit the environment) build go to a folder of this session, removed at exit.
# Set at import time, before any test module reads the cache location. Nothing is downloaded:
# the small chorale sets are built from the music21 corpus on disk.
_SESSION_CACHE = tempfile.TemporaryDirectory(prefix="pyro-seqvae-test-cache-")
os.environ["PYRO_SEQVAE_CACHE"] = os.path.join(_SESSION_CACHE.name, "pyro-seqvae")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE.name


@pytest.fixture(autouse=True)
def _reset_pyro_state():
    """Clear the param store, enable validation and seed every RNG before each test."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread: the suite's tensors are tiny, and on a shared
    2-core CPU thread hand-offs cost more than the arithmetic (several-fold slower SVI steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device():
    """The torch device the suite runs on: ``$PYRO_SEQVAE_TEST_DEVICE`` (default ``cpu``)."""
    name = os.environ.get("PYRO_SEQVAE_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"PYRO_SEQVAE_TEST_DEVICE={name} but CUDA is not available")
    return torch.device(name)
