#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the built-in DIL demo: a short DIL_sf training of a
# reduced RRDB on patches cut from public-domain sample images, reporting PSNR at a seen and an
# unseen noise level. Extra arguments go to `dil-fast demo`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
"$VENV/bin/dil-fast" demo "$@"
