"""``dil-fast`` (also ``python -m dil_fast``): train, eval, crop, pack, bench, info, demo.

Errors caused by the user's input print one line, ``error: <what, naming the file or flag>``, and
exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import DilFastError, FlagError


def _levels(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a restoration model with DIL (drop-in for DIL_sf_noise.py)",
                       description="Flags of the released trainer keep their names and defaults.")
    ref = p.add_argument_group("released trainer flags")
    ref.add_argument("--gpus", type=int, default=1, help="number of GPUs (enters the iterations-per-epoch arithmetic)")
    ref.add_argument("--seed", type=int, default=1, help="random seed")
    ref.add_argument("--ckpt_save", type=str, default=None, help="output folder for checkpoints and train.log")
    ref.add_argument("--resume", type=str, default=None,
                     help="a released checkpoint (weights only) or a dil_fast training state (exact resume)")
    ref.add_argument("--distributed", action="store_true", help="DDP under torchrun (NCCL on GPU, gloo on CPU)")
    ref.add_argument("--local_rank", "--local-rank", type=int, default=0, help="accepted; torchrun's LOCAL_RANK wins")
    ref.add_argument("--trainset", type=str, default=None, help="folder of PNG patches")
    ref.add_argument("--patch_size", type=int, default=64)
    ref.add_argument("--testset", type=str, default="default",
                     help="test folder; 'default' = the built-in sample images (Set5 is not shipped)")
    ref.add_argument("--save_every", type=int, default=1, help="write model_{epoch}.pt every N epochs")
    ref.add_argument("--test_every", type=int, default=5, help="evaluate the meta model every N epochs")
    ref.add_argument("--print_every", type=int, default=100, help="log every N meta-iterations")
    ref.add_argument("--batch_size", type=int, default=32, help="batch size per confounder and GPU")
    ref.add_argument("--num_workder", "--num_workers", dest="num_workers", type=int, default=8,
                     help="data-loader workers per confounder (the released spelling is accepted)")
    ref.add_argument("--total_epoch", type=int, default=30)
    new = p.add_argument_group("dil_fast flags")
    new.add_argument("--variant", default="sf", choices=("sf", "pf", "ss", "ps", "ss-fo", "erm"),
                     help="DIL variant: sf serial first-order (released), pf parallel first-order, ss serial "
                          "second-order (Eq. 4), ps parallel second-order (Eq. 5), ss-fo Eq. 4 first-order, "
                          "erm the plain baseline")
    new.add_argument("--levels", type=_levels, default=(5.0, 10.0, 15.0, 20.0),
                     help="training noise levels (sigma on 0..255), one confounder each")
    new.add_argument("--nf", type=int, default=None, help="RRDB width (default 64, or inferred from --resume)")
    new.add_argument("--nb", type=int, default=None, help="RRDB blocks (default 23, or inferred from --resume)")
    new.add_argument("--gc", type=int, default=None, help="RRDB growth channels (default 32, or inferred)")
    new.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    new.add_argument("--lr", "--inner_lr", dest="lr", type=float, default=1e-4,
                     help="task (inner) Adam learning rate of sf/pf; ERM's learning rate")
    new.add_argument("--alpha", type=float, default=1e-4,
                     help="inner step size of the second-order variants ss, ps, ss-fo")
    new.add_argument("--inner_optimizer", default="sgd", choices=("sgd", "adam"),
                     help="inner step of ss/ps/ss-fo: a plain gradient step (sgd) or one Adam step")
    new.add_argument("--query", default="mixture", choices=("mixture", "split"),
                     help="outer (query) batch of pf/ss/ps/ss-fo: drawn from the given batches (mixture) or a "
                          "held-out half of each batch (split)")
    new.add_argument("--virtual_batching", default="auto", choices=("auto", "tune", "batched", "looped"),
                     help="K virtual models of ss/ss-fo in one batched pass or one at a time; auto: looped on "
                          "CPU, else batched unless it fails (deterministic); tune: time both once, keep the faster")
    new.add_argument("--meta_lr", type=float, default=1e-4, help="meta learning rate")
    new.add_argument("--lr_step", type=int, default=20, help="halve the meta LR every N epochs")
    new.add_argument("--test_level", type=float, default=50.0, help="noise level of the periodic test")
    new.add_argument("--loss", default="l1", help="l1 (released), l2 or charbonnier")
    new.add_argument("--loader", default="auto", choices=("auto", "reference", "store", "dali"),
                     help="training data: the released DataLoader path, a packed store (dil-fast pack) or DALI; "
                          "auto = store when --trainset is a packed store, else reference")
    new.add_argument("--confounders", default=None,
                     help="confounder set for --loader store/dali, e.g. noise:5,10,15,20 or blur:1,2,3,4 "
                          "(default: Gaussian noise at --levels)")
    new.add_argument("--pairing", default="independent", choices=("independent", "shared"),
                     help="independent: each confounder its own clean batch (released); shared: the same clean "
                          "batch under every confounder (the paper's ideal); store/dali loaders only")
    new.add_argument("--memory_budget", default=None,
                     help="bytes the packed store may occupy on the device (e.g. 20G); default 75%% of free memory")
    new.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "cuda"),
                     help="kernels for sampling and degradation (auto: the fastest available; torch: the reference)")
    new.add_argument("--stop_after", type=int, default=None,
                     help="stop after N meta-iterations, saving last.pt for --resume")
    new.add_argument("--no_progress", action="store_true", help="no progress bar even on a terminal")
    fast = p.add_argument_group("fast path (dil_fast.train.fast; defaults differ on CUDA and CPU)")
    fast.add_argument("--precision", default=None, choices=("fp32", "tf32", "bf16"),
                      help="training math: bf16 autocast with fp32 master weights, tf32, or strict fp32 "
                           "(default: bf16 on CUDA, fp32 on CPU)")
    fast.add_argument("--channels_last", dest="channels_last", action="store_true", default=None,
                      help="NHWC activations (default on CUDA)")
    fast.add_argument("--no_channels_last", dest="channels_last", action="store_false",
                      help="NCHW activations (default on CPU)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    fast.add_argument("--cuda_graphs", action="store_true",
                      help="capture the whole meta-iteration in one CUDA graph (CUDA; --variant sf or erm)")
    fast.add_argument("--deterministic", action="store_true",
                      help="deterministic algorithms, no cuDNN autotuning (bitwise-repeatable runs on one GPU)")
    fast.add_argument("--reference_mode", action="store_true",
                      help="compute the way the released trainer does (DataLoader + OpenCV + numpy noise, "
                           "per-tensor Adam, state_dict copies, loss.item() per step, fp32): for comparisons")
    p.set_defaults(func=run_train)
    return p


def run_train(args) -> int:
    from .train.trainer import Trainer, TrainConfig

    cfg = TrainConfig(
        ckpt_save=args.ckpt_save, trainset=args.trainset, testset=args.testset, resume=args.resume,
        variant=args.variant, levels=tuple(args.levels), patch_size=args.patch_size, batch_size=args.batch_size,
        total_epoch=args.total_epoch, save_every=args.save_every, test_every=args.test_every,
        print_every=args.print_every, num_workers=args.num_workers, seed=args.seed, gpus=args.gpus,
        distributed=args.distributed, local_rank=args.local_rank, device=args.device, nf=args.nf, nb=args.nb,
        gc=args.gc, lr=args.lr, meta_lr=args.meta_lr, lr_step=args.lr_step, test_level=args.test_level,
        loss=args.loss, stop_after=args.stop_after, loader=args.loader, confounders=args.confounders,
        pairing=args.pairing, memory_budget=args.memory_budget,
        backend=None if args.backend == "auto" else args.backend, progress=False if args.no_progress else None,
        precision=args.precision, channels_last=args.channels_last, compile=args.compile,
        cuda_graphs=args.cuda_graphs, deterministic=args.deterministic, reference_mode=args.reference_mode,
    )
    cfg.variant_options = variant_options(args)
    return Trainer(cfg).run()


def variant_options(args) -> dict:
    """The constructor options of ``--variant`` beyond the learning rates and loss."""
    if args.variant in ("ss", "ps", "ss-fo"):
        return {"alpha": args.alpha, "inner_optimizer": args.inner_optimizer, "query": args.query,
                "virtual_batching": args.virtual_batching}
    if args.variant == "pf":
        return {"query": args.query, "virtual_batching": args.virtual_batching}
    return {}


def add_info_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="versions, native core, Triton and GPU this installation uses")
    p.set_defaults(func=run_info)
    return p


def run_info(_args) -> int:
    from ._info import collect, format_info

    print(format_info(collect()))
    return 0


def add_demo_parser(sub) -> argparse.ArgumentParser:
    from .demo import add_demo_arguments

    p = sub.add_parser("demo", help="a short DIL training on built-in sample images, then PSNR at seen/unseen noise")
    add_demo_arguments(p)
    return p


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line (``error: dil-fast train: argument --x: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:

    parser = _OneLineErrors(prog="dil-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrors)
    sub.required = True
    add_train_parser(sub)
    for command, module in (("eval", "dil_fast.train.evaluate"), ("crop", "dil_fast.data.crop"),
                            ("pack", "dil_fast.data.pack"), ("bench", "dil_fast.bench_cli"),
                            ("study", "dil_fast.study")):
        _command_parser(sub, command, module)
    add_info_parser(sub)
    add_demo_parser(sub)
    return parser


def _command_parser(sub, command: str, module: str) -> None:
    """Add ``command`` from ``module``'s ``add_<command>_parser`` / ``run_<command>`` pair."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:  # that command is not part of this build yet
            return
        raise
    p = getattr(mod, f"add_{command}_parser")(sub)
    p.set_defaults(func=getattr(mod, f"run_{command}"))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except DilFastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
