"""Restoration backbones: RRDBNet / RRDBNetX4 (state_dict-compatible with the released DIL trainer),
BasicSR's pixel-unshuffle RRDBNet (``rrdb_basicsr``, BasicSR's names), SwinIR (the official parameter
names), and checkpoint interchange with BasicSR / Real-ESRGAN. Each
model module registers its architectures in :data:`ARCHS` (:func:`register_arch`); the imports
below are the list of the built-in ones."""

from .interchange import basicsr_to_dil, detect_layout, dil_to_basicsr, extract_state_dict, write_checkpoint
from .registry import ARCHS, register_arch
from .rrdb import RRDB, ResidualDenseBlock, RRDBNet, RRDBNetX4, build_rrdb, infer_rrdb_config
from .rrdb_basicsr import RRDBNetBasicSR
from .swinir import SwinIR, swinir_config_from_state_dict

__all__ = [
    "ARCHS",
    "RRDB",
    "RRDBNet",
    "RRDBNetX4",
    "RRDBNetBasicSR",
    "ResidualDenseBlock",
    "build_rrdb",
    "infer_rrdb_config",
    "SwinIR",
    "register_arch",
    "swinir_config_from_state_dict",
    "detect_layout",
    "basicsr_to_dil",
    "dil_to_basicsr",
    "extract_state_dict",
    "write_checkpoint",
]
