import importlib
import sys
import types

import pytest
import torch

# Test tensors are tiny: one thread avoids oversubscribing the 2 cores (and spin-waits).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def dictionary_learning():
    """The real dictionary_learning package (make venv installs it with --no-deps).

    Its package __init__ imports nnsight for the LM buffer only; the SAE classes and trainers
    do not use it, so a stand-in module satisfies the import.
    """
    sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=None))
    try:
        return importlib.import_module("dictionary_learning")
    except ImportError:
        pytest.skip("dictionary-learning not installed (make venv installs it)")
