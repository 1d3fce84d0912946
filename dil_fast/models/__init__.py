"""Restoration backbones. RRDBNet is state_dict-compatible with the released DIL trainer."""
from .rrdb import RRDB, RRDBNet, RRDBNetX4, ResidualDenseBlock, build_rrdb, infer_rrdb_config

__all__ = ["RRDB", "RRDBNet", "RRDBNetX4", "ResidualDenseBlock", "build_rrdb", "infer_rrdb_config"]
