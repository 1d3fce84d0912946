"""DIL algorithms behind one interface: ``step(batches) -> per-pair losses``, ``meta_model``,
``task_model``, ``state_dict()`` / ``load_state_dict()``."""
from .base import LOSSES, GradSync, MetaAlgorithm, get_loss
from .erm import ERM
from .pf import ParallelFirstOrder
from .ps import ParallelSecondOrder
from .sf import SerialFirstOrder
from .ss import SerialFirstOrderApprox, SerialSecondOrder

VARIANTS = {
    "sf": SerialFirstOrder,
    "pf": ParallelFirstOrder,
    "ss": SerialSecondOrder,
    "ps": ParallelSecondOrder,
    "ss-fo": SerialFirstOrderApprox,
    "erm": ERM,
}

__all__ = [
    "ERM", "GradSync", "LOSSES", "MetaAlgorithm", "ParallelFirstOrder", "ParallelSecondOrder",
    "SerialFirstOrder", "SerialFirstOrderApprox", "SerialSecondOrder", "VARIANTS", "get_loss",
]
