"""One rank of the 2-process gloo tests in test_ddp.py (launched with RANK/WORLD_SIZE/MASTER_* set).

``equal OUT``: every DDP variant takes three meta-iterations on this rank's half of fixed global
batches; each rank saves its meta weights to ``OUT/<variant>.rank<R>.pt``.
``die N -- ARGS`` / ``hang N -- ARGS``: ``dil-fast train ARGS``, where rank 1 exits (``os._exit``)
or sleeps forever at its N-th meta-iteration.
"""

import os
import sys
import time

import torch


def global_batches(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 3, 8, 8, generator=g), torch.rand(n, 3, 8, 8, generator=g)) for _ in range(k)]


def make_algorithm(variant):
    from dil_fast.meta import VARIANTS
    from dil_fast.models import RRDBNet

    torch.manual_seed(0)
    model = RRDBNet(nf=8, nb=1, gc=4)
    kw = dict(lr=1e-3) if variant == "erm" else dict(meta_lr=1e-3)
    if variant in ("sf", "pf"):
        kw["inner_lr"] = 1e-3
    if variant == "pf":
        kw["query"] = "explicit"
    return VARIANTS[variant](model, **kw)


def run_steps(algo, rank, world, steps=3, k=3, per_rank=2):
    for s in range(steps):
        batches = global_batches(k, per_rank * world, seed=100 + s)
        mine = [
            (x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank]) for x, y in batches
        ]
        if algo.name == "pf":
            qx, qy = global_batches(1, per_rank * world, seed=200 + s)[0]
            algo.step(
                mine, query=(qx[rank * per_rank : (rank + 1) * per_rank], qy[rank * per_rank : (rank + 1) * per_rank])
            )
        else:
            algo.step(mine)
    return algo


def equal(out):
    import torch.distributed as dist

    from dil_fast.train import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for variant in ("sf", "pf", "erm", "ss"):
        algo = make_algorithm(variant)
        distributed.attach(algo, world, torch.device("cpu"))
        run_steps(algo, rank, world)
        torch.save(algo.meta_model.state_dict(), os.path.join(out, f"{variant}.rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def fail_at(mode, n, argv):
    from dil_fast import cli
    from dil_fast.meta import SerialFirstOrder

    plain = SerialFirstOrder.step
    calls = [0]

    def step(self, *a, **kw):
        calls[0] += 1
        if int(os.environ["RANK"]) == 1 and calls[0] == n:
            if mode == "die":
                os._exit(9)
            time.sleep(3600)
        return plain(self, *a, **kw)

    SerialFirstOrder.step = step
    sys.exit(cli.main(["train"] + argv))


if __name__ == "__main__":
    if sys.argv[1] == "equal":
        equal(sys.argv[2])
    else:
        fail_at(sys.argv[1], int(sys.argv[2]), sys.argv[4:])
