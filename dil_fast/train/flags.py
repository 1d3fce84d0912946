"""Every ``dil-fast train`` flag with its default and help (the released trainer's flags keep their
names and defaults); :class:`dil_fast.train.config.TrainConfig` validates what they parse to."""

from __future__ import annotations

import argparse
import dataclasses

from ..meta import VARIANTS
from ..meta.options import option_fields
from ..models.registry import ARCHS
from ..tasks import TASKS
from .config import BACKEND_CHOICES, LAUNCHERS, LOADERS, LOSS_NAMES, PRECISIONS

__all__ = ["add_train_arguments", "variant_options"]


def _levels(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def variant_option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every registered variant's options: name -> (field, the variants that take it). One name is
    one flag; variants that share it share its default, type and choices."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for entry in VARIANTS.entries():
        for f in option_fields(entry.options):
            if f.name in out:
                known, users = out[f.name]
                if (known.default, known.type, known.metadata.get("choices")) != (
                    f.default,
                    f.type,
                    f.metadata.get("choices"),
                ):
                    raise ValueError(f"variants {users[0]} and {entry.name} define --{f.name} differently")
                users.append(entry.name)
            else:
                out[f.name] = (f, [entry.name])
    return out


def add_variant_options(group) -> None:
    """A flag per variant option (:mod:`dil_fast.meta.options`), default None: the variant's own
    default applies unless the flag is given."""
    for name, (f, users) in variant_option_fields().items():
        kind = type(f.default)
        group.add_argument(
            f"--{name}",
            type=kind if kind in (int, float) else str,
            default=None,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} ({', '.join(users)}; default {f.default})",
        )


def variant_options(args) -> dict:
    """The options ``--variant`` takes, as given on the command line (the rest keep its defaults);
    :class:`~dil_fast.errors.FlagError` for a variant option given to a variant without it."""
    from ..errors import FlagError

    takes = {f.name for f in option_fields(VARIANTS[args.variant].options)}
    for name, (_, users) in variant_option_fields().items():
        if name not in takes and getattr(args, name, None) is not None:
            raise FlagError(
                f"--{name} applies to --variant {', '.join(users)}; --variant {args.variant} has no such option"
            )
    return {n: getattr(args, n) for n in takes if getattr(args, n, None) is not None}


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every ``dil-fast train`` flag with its default."""
    ref = p.add_argument_group("released trainer flags")
    ref.add_argument("--gpus", type=int, default=1, help="number of GPUs (enters the iterations-per-epoch arithmetic)")
    ref.add_argument("--seed", type=int, default=1, help="random seed")
    ref.add_argument("--ckpt_save", type=str, default=None, help="output folder for checkpoints and train.log")
    ref.add_argument(
        "--resume",
        type=str,
        default=None,
        help="a released checkpoint (weights only) or a dil_fast training state (exact resume)",
    )
    ref.add_argument("--distributed", action="store_true", help="DDP under torchrun (NCCL on GPU, gloo on CPU)")
    ref.add_argument(
        "--ddp_timeout",
        type=float,
        default=300.0,
        help="--distributed: seconds a rank waits for its peers in any collective before it stops "
        "with an error (a peer that crashed is noticed at once)",
    )
    ref.add_argument("--local_rank", "--local-rank", type=int, default=0, help="accepted; torchrun's LOCAL_RANK wins")
    ref.add_argument(
        "--trainset",
        type=str,
        nargs="+",
        default=None,
        help="a folder of PNG/JPEG patches, a packed store (dil-fast pack), or paired folders (GT/ + LQ/, "
        "one confounder each, e.g. three rain datasets)",
    )
    ref.add_argument(
        "--patch_size",
        type=int,
        default=64,
        help="training crop side in pixels (the ground truth's, for super-resolution)",
    )
    ref.add_argument(
        "--testset",
        type=str,
        nargs="+",
        default=["default"],
        help="test folder(s), each scored and logged apart (e.g. Set5 CBSD68); 'default' = the built-in "
        "sample images (Set5 is not shipped)",
    )
    ref.add_argument("--save_every", type=int, default=1, help="write model_{epoch}.pt every N epochs")
    ref.add_argument("--test_every", type=int, default=5, help="evaluate the meta model every N epochs")
    ref.add_argument("--print_every", type=int, default=100, help="log every N meta-iterations")
    ref.add_argument("--batch_size", type=int, default=32, help="batch size per confounder and GPU")
    ref.add_argument(
        "--num_workder",
        "--num_workers",
        dest="num_workers",
        type=int,
        default=8,
        help="data-loader workers per confounder (the released spelling is accepted)",
    )
    ref.add_argument("--total_epoch", type=int, default=30, help="epochs to train (an epoch reads every patch once)")
    new = p.add_argument_group("dil_fast flags")
    new.add_argument(
        "--variant",
        default="sf",
        choices=VARIANTS.names(),
        help="DIL variant: " + "; ".join(f"{e.name} {e.summary}" for e in VARIANTS.entries()),
    )
    new.add_argument(
        "--levels",
        type=_levels,
        default=(5.0, 10.0, 15.0, 20.0),
        help="training noise levels (sigma on 0..255), one confounder each",
    )
    new.add_argument("--nf", type=int, default=None, help="RRDB width (default 64, or inferred from --resume)")
    new.add_argument("--nb", type=int, default=None, help="RRDB blocks (default 23, or inferred from --resume)")
    new.add_argument("--gc", type=int, default=None, help="RRDB growth channels (default 32, or inferred)")
    new.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    new.add_argument(
        "--lr",
        "--inner_lr",
        dest="lr",
        type=float,
        default=1e-4,
        help="task (inner) Adam learning rate of sf/pf; ERM's learning rate",
    )
    add_variant_options(new)
    new.add_argument("--meta_lr", type=float, default=1e-4, help="meta learning rate")
    new.add_argument("--lr_step", type=int, default=20, help="halve the meta LR every N epochs")
    new.add_argument("--test_level", type=float, default=50.0, help="noise level of the periodic test")
    new.add_argument("--loss", default="l1", choices=LOSS_NAMES, help="l1 (released), l2 (mse) or charbonnier")
    new.add_argument(
        "--loader",
        default="auto",
        choices=LOADERS,
        help="training data: reference (the released DataLoader path: noise at --levels), folder (clean "
        "patches read in workers, any confounders), paired (GT/LQ folders), store (dil-fast pack) or "
        "dali; auto: paired folders -> paired, a store -> store, the released denoising -> "
        "reference, else folder",
    )
    new.add_argument(
        "--confounders",
        default=None,
        help="confounder set for --loader store/dali, e.g. noise:5,10,15,20 or blur:1,2,3,4 "
        "(default: Gaussian noise at --levels)",
    )
    new.add_argument(
        "--pairing",
        default="independent",
        choices=("independent", "shared"),
        help="independent: each confounder its own clean batch (released); shared: the same clean "
        "batch under every confounder (the paper's ideal); store/dali loaders only",
    )
    new.add_argument(
        "--memory_budget",
        default=None,
        help="bytes the packed store may occupy on the device (e.g. 20G); default 75%% of free memory",
    )
    new.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_CHOICES,
        help="force one implementation for every dil_fast op of the run (sampling, degradation, "
        "optimizers): torch = the pure-torch references; triton/cuda serve only some ops, and "
        "the run is refused, naming each op, when they cannot serve it (auto: the fastest)",
    )
    new.add_argument(
        "--stop_after", type=int, default=None, help="stop after N meta-iterations, saving last.pt for --resume"
    )
    new.add_argument("--no_progress", action="store_true", help="no progress bar even on a terminal")
    ops = p.add_argument_group("run folder and tracking")
    ops.add_argument(
        "--auto_resume",
        action="store_true",
        help="continue from --ckpt_save's last.pt (without it, a folder holding a run is archived)",
    )
    ops.add_argument(
        "--max_bad_steps",
        type=int,
        default=10,
        help="stop after this many consecutive meta-iterations with non-finite losses or gradients "
        "(or a gradient beyond 2^62 in magnitude); they are skipped; 0: never stop",
    )
    ops.add_argument(
        "--no_tensorboard", action="store_true", help="no TensorBoard event files (metrics.csv is always written)"
    )
    ops.add_argument(
        "--filename_tmpl",
        default=None,
        metavar="TMPL",
        help="paired --trainset folders: the LQ file's stem from its GT stem, BasicSR's option ('{}x4' pairs "
        "0801.png with 0801x4.png; default '{}', the same stem)",
    )
    ops.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="keep an exponential moving average of the trained weights (e.g. 0.999, as BasicSR): the periodic "
        "test scores it, model_N.pt carries it as params_ema (off: the released behaviour)",
    )
    ops.add_argument(
        "--launcher",
        default=None,
        choices=LAUNCHERS,
        help="none: one process; pytorch: DDP under torchrun (as --distributed); slurm: DDP with one srun "
        "task per GPU, the ranks and the first node read from SLURM_* variables, see docs/SLURM.md "
        "(default: pytorch with --distributed, else none)",
    )
    ops.add_argument(
        "--wandb",
        default=None,
        metavar="PROJECT",
        help="also log the scalars to this Weights & Biases project, the run's options as its config "
        "(the wandb extra; WANDB_MODE=offline keeps them local)",
    )
    ops.add_argument("--config", default=None, help="a JSON or YAML file of flag values (the command line wins)")
    task = p.add_argument_group("tasks and models (dil_fast.tasks; a task sets the rest, these override it)")
    task.add_argument(
        "--task",
        default="denoise",
        choices=tuple(TASKS),
        help="the paper's experiment: training confounders, periodic test, model, scale, metric",
    )
    task.add_argument(
        "--test_confounders",
        default=None,
        help="the periodic test's degradation (default: the task's; denoise: noise at --test_level)",
    )
    task.add_argument(
        "--order",
        type=int,
        default=1,
        choices=(1, 2),
        help="--task realsr: Real-ESRGAN's first- or second-order degradation",
    )
    task.add_argument(
        "--arch",
        default=None,
        help=", ".join(ARCHS.names()) + ", or package.module:Class for one's own nn.Module (default: the task's)",
    )
    task.add_argument(
        "--arch_kwargs", default=None, help="JSON keyword arguments of --arch, e.g. '{\"embed_dim\": 60}'"
    )
    task.add_argument(
        "--scale", type=int, default=None, help="super-resolution factor (default: the task's; 1 restores)"
    )
    task.add_argument("--y", dest="y", action="store_true", default=None, help="metrics on the Y channel")
    task.add_argument("--rgb", dest="y", action="store_false", help="metrics on RGB")
    task.add_argument("--crop_border", type=int, default=None, help="pixels removed per side before the metrics")
    fast = p.add_argument_group("fast path (dil_fast.train.fast; defaults differ on CUDA and CPU)")
    fast.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="training math: bf16 autocast with fp32 master weights, tf32, or strict fp32 "
        "(default: bf16 on CUDA, fp32 on CPU)",
    )
    fast.add_argument(
        "--channels_last",
        dest="channels_last",
        action="store_true",
        default=None,
        help="NHWC activations (default on CUDA)",
    )
    fast.add_argument(
        "--no_channels_last", dest="channels_last", action="store_false", help="NCHW activations (default on CPU)"
    )
    fast.add_argument(
        "--channels_last_weights",
        dest="channels_last_weights",
        action="store_true",
        default=None,
        help="store the 4-D weights NHWC in the flat buffers: convolutions on channels-last "
        "activations copy no weight (off by default until the GPU check decides)",
    )
    fast.add_argument(
        "--no_channels_last_weights",
        dest="channels_last_weights",
        action="store_false",
        help="NCHW weights in the flat buffers (the default)",
    )
    fast.add_argument(
        "--weight_shadow",
        dest="weight_shadow",
        action="store_true",
        default=None,
        help="bf16: one cast of the flat weights per forward and one flat gradient cast per "
        "backward instead of one per tensor (sf, pf, erm; off by default until the GPU "
        "check decides)",
    )
    fast.add_argument(
        "--no_weight_shadow",
        dest="weight_shadow",
        action="store_false",
        help="autocast casts each weight (the default)",
    )
    fast.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    fast.add_argument(
        "--cuda_graphs",
        dest="cuda_graphs",
        action="store_true",
        default=None,
        help="capture the whole meta-iteration in one CUDA graph and replay it (default on CUDA in "
        "one process with the fused optimizer and without --compile; a step that cannot be "
        "captured runs eagerly after one warning)",
    )
    fast.add_argument(
        "--no_cuda_graphs",
        dest="cuda_graphs",
        action="store_false",
        help="eager kernel launches, no CUDA graph (default on CPU and with --distributed)",
    )
    fast.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms, no cuDNN autotuning (bitwise-repeatable runs on one GPU)",
    )
    fast.add_argument(
        "--reference_mode",
        action="store_true",
        help="compute the way the released trainer does (DataLoader + OpenCV + numpy noise, "
        "per-tensor Adam, state_dict copies, loss.item() per step, fp32): for comparisons",
    )
    return p
