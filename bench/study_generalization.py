"""ERM against DIL at seen and unseen levels: a thin wrapper of ``dil-fast study generalization``.

    python bench/study_generalization.py --scale cpu --seeds 1 --testset default ../shared/data/Set5 --out runs/s1
    python bench/study_generalization.py --scale cpu --from_curves runs/s1/curves.csv runs/s2/curves.csv --out runs/all
    bash bench/gpu_study.sh --out DIR      # the gpu preset as one device call (--dry-run: the plan)

Writes results.md, results.csv, curves.csv and generalization_<task>.png into --out (see dil_fast/study).
"""

import sys

from dil_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", "generalization", *sys.argv[1:]]))
