"""Pure-torch references of every hot op: the test oracle and the CPU fallback.

The references live beside the op families they belong to and are gathered here, so tests and
benchmarks have one import: ``from dil_fast.ops import reference as ref``.
"""
from .ref_optim import *  # noqa: F401,F403
from .ref_degrade import *  # noqa: F401,F403
from .ref_sample import *  # noqa: F401,F403
