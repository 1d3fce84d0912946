"""Restoration backbones: RRDBNet / RRDBNetX4 (state_dict-compatible with the released DIL trainer),
SwinIR (the official parameter names), and checkpoint interchange with BasicSR / Real-ESRGAN."""
from .interchange import basicsr_to_dil, detect_layout, dil_to_basicsr, extract_state_dict, write_checkpoint
from .rrdb import RRDB, ResidualDenseBlock, RRDBNet, RRDBNetX4, build_rrdb, infer_rrdb_config
from .swinir import SwinIR, swinir_config_from_state_dict

__all__ = ["RRDB", "RRDBNet", "RRDBNetX4", "ResidualDenseBlock", "build_rrdb", "infer_rrdb_config", "SwinIR",
           "swinir_config_from_state_dict", "detect_layout", "basicsr_to_dil", "dil_to_basicsr",
           "extract_state_dict", "write_checkpoint"]
