"""Pure-torch references of every hot op: the test oracle and the fallback where no kernel serves.
One module per op, named as the op (:mod:`dil_fast.ops`); everything is re-exported here so tests
and benchmarks have one import: ``from dil_fast.ops import reference as ref``."""

from .blur import *  # noqa: F401,F403
from .isp import *  # noqa: F401,F403
from .jpeg import *  # noqa: F401,F403
from .noise import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .poisson import *  # noqa: F401,F403
from .rain import *  # noqa: F401,F403
from .resize import *  # noqa: F401,F403
from .sample_crops import *  # noqa: F401,F403
