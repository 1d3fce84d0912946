"""ERM vs DIL at seen and unseen degradation levels: a thin wrapper of ``dil-fast study generalization``.

    python bench/study_generalization.py --scale cpu --out runs/study_cpu
    python bench/study_generalization.py --scale gpu --trainset /data/DF2K_patches --out runs/study_gpu

Writes results.csv, results.md and generalization_<task>.png into --out (see dil_fast/study.py).
"""
import sys

from dil_fast.study import main

if __name__ == "__main__":
    sys.exit(main())
