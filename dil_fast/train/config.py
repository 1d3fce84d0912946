"""The run's configuration: the ``dil-fast train`` flags, parsed and validated once.

:func:`add_train_arguments` defines every flag (the released trainer's keep their names and
defaults); :meth:`TrainConfig.from_args` builds the config and :meth:`TrainConfig.validate`
checks every value and every combination, raising one :class:`~dil_fast.errors.FlagError` that
names the flag. Everything downstream trusts a validated config; :func:`dil_fast.devices.resolve_device`
turns ``--device`` into a ``torch.device``.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field

from ..devices import resolve_device
from ..errors import FlagError

DEFAULT_RRDB = {"nf": 64, "nb": 23, "gc": 32}
LOADERS = ("auto", "reference", "folder", "paired", "store", "dali")
LOSS_NAMES = ("l1", "l2", "mse", "charbonnier")
VARIANT_NAMES = ("sf", "pf", "ss", "ps", "ss-fo", "erm")
BACKEND_CHOICES = ("auto", "torch", "triton", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16")
TASK_NAMES = ("denoise", "deblur", "hybrid", "jpeg", "realsr", "derain", "realnoise")


@dataclass
class TrainConfig:
    """Everything that defines a run (the CLI flags, parsed and validated)."""

    ckpt_save: str
    trainset: str | list[str] | None = None  # one folder/store, or several paired folders (one confounder each)
    testset: str = "default"
    resume: str | None = None
    variant: str = "sf"
    levels: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0)
    patch_size: int = 64
    batch_size: int = 32
    total_epoch: int = 30
    save_every: int = 1
    test_every: int = 5
    print_every: int = 100
    num_workers: int = 8
    seed: int = 1
    gpus: int = 1
    distributed: bool = False
    local_rank: int = 0
    ddp_timeout: float = 300.0  # seconds any collective may wait for a peer (--distributed)
    device: str | None = None
    nf: int | None = None
    nb: int | None = None
    gc: int | None = None
    lr: float = 1e-4
    meta_lr: float = 1e-4
    lr_step: int = 20
    test_level: float = 50.0
    loss: str = "l1"
    loader: str = "auto"
    confounders: str | None = None
    pairing: str = "independent"
    memory_budget: str | None = None
    backend: str | None = None  # forced kernel backend for every op of the run (None: the dispatcher's choice)
    stop_after: int | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    variant_options: dict = field(default_factory=dict)
    # the fast path (dil_fast.train.fast); None = the device's default
    precision: str | None = None  # fp32 | tf32 | bf16 (None: bf16 on CUDA, fp32 on CPU)
    channels_last: bool | None = None  # None: on for CUDA, off for CPU
    compile: bool = False
    cuda_graphs: bool | None = None  # None: on where the run can capture (dil_fast.train.fast.default_cuda_graphs)
    deterministic: bool = False
    reference_mode: bool = False  # the released trainer's behaviour (dil_fast.train.reference_mode)
    # the paper's experiments (dil_fast.tasks) and the model
    task: str = "denoise"
    test_confounders: str | None = None  # None: the task's periodic test (denoise: noise at --test_level)
    order: int = 1  # realsr: Real-ESRGAN's first (1) or second-order (2) degradation
    arch: str | None = None  # None: the task's (rrdb / rrdb_x4)
    arch_kwargs: str | None = None  # JSON keyword arguments of the architecture
    scale: int | None = None  # None: the task's (the network's output / input size)
    y: bool | None = None  # metrics on Y; None: the task's convention
    crop_border: int | None = None  # None: the task's
    # operations
    auto_resume: bool = False  # continue from the run folder's last.pt (else an earlier run is archived)
    max_bad_steps: int = 10  # consecutive non-finite meta-iterations before the run stops (0: never)
    tensorboard: bool = True  # event files beside metrics.csv when torch.utils.tensorboard imports

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The config of parsed ``dil-fast train`` arguments (not yet validated)."""
        cfg = cls(
            ckpt_save=args.ckpt_save, trainset=args.trainset, testset=args.testset, resume=args.resume,
            variant=args.variant, levels=tuple(args.levels), patch_size=args.patch_size, batch_size=args.batch_size,
            total_epoch=args.total_epoch, save_every=args.save_every, test_every=args.test_every,
            print_every=args.print_every, num_workers=args.num_workers, seed=args.seed, gpus=args.gpus,
            distributed=args.distributed, local_rank=args.local_rank, ddp_timeout=args.ddp_timeout,
            device=args.device, nf=args.nf, nb=args.nb,
            gc=args.gc, lr=args.lr, meta_lr=args.meta_lr, lr_step=args.lr_step, test_level=args.test_level,
            loss=args.loss, stop_after=args.stop_after, loader=args.loader, confounders=args.confounders,
            pairing=args.pairing, memory_budget=args.memory_budget,
            backend=None if args.backend == "auto" else args.backend, progress=False if args.no_progress else None,
            precision=args.precision, channels_last=args.channels_last, compile=args.compile,
            cuda_graphs=args.cuda_graphs, deterministic=args.deterministic, reference_mode=args.reference_mode,
            task=args.task, test_confounders=args.test_confounders, order=args.order, arch=args.arch,
            arch_kwargs=args.arch_kwargs, scale=args.scale, y=args.y, crop_border=args.crop_border,
            auto_resume=args.auto_resume, max_bad_steps=args.max_bad_steps, tensorboard=not args.no_tensorboard,
        )
        cfg.variant_options = variant_options(args)
        return cfg

    def to_dict(self) -> dict:
        """The config as plain values (saved in the training state; ``None`` fields left out)."""
        d = asdict(self)
        d["levels"] = list(d["levels"])
        if isinstance(d["trainset"], tuple):
            d["trainset"] = list(d["trainset"])
        return {k: v for k, v in d.items() if v is not None}

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Check every flag and every combination once; returns ``self``. :class:`FlagError` names the flag."""
        for name in ("patch_size", "batch_size", "total_epoch", "save_every", "test_every", "print_every", "gpus",
                     "nf", "nb", "gc", "lr", "meta_lr", "lr_step", "stop_after"):
            _check_positive(name, getattr(self, name))
        _check_positive("num_workers", self.num_workers, allow_zero=True)
        _check_positive("test_level", self.test_level, allow_zero=True)
        _check_positive("ddp_timeout", self.ddp_timeout)
        for name in ("lr", "meta_lr", "test_level", "ddp_timeout"):
            _check_finite(name, getattr(self, name))
        alpha = self.variant_options.get("alpha")
        if alpha is not None:
            _check_finite("alpha", alpha)
            _check_positive("alpha", alpha)
        if self.loss not in LOSS_NAMES:
            raise FlagError(f"--loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}")
        self._validate_task()
        if self.variant not in VARIANT_NAMES:
            raise FlagError(f"--variant must be one of {', '.join(VARIANT_NAMES)}, got {self.variant!r}")
        if not self.levels:
            raise FlagError("--levels needs at least one noise level")
        if any((not math.isfinite(s)) or s < 0 for s in self.levels):
            raise FlagError(f"--levels must be non-negative numbers, got {','.join(map(str, self.levels))}")
        if not self.ckpt_save:
            raise FlagError("--ckpt_save is required (the output folder)")
        from .run_folder import check_writable

        check_writable(self.ckpt_save)
        if self.auto_resume and self.resume:
            raise FlagError("--auto_resume continues from --ckpt_save's last.pt; drop --resume (or --auto_resume)")
        _check_positive("max_bad_steps", self.max_bad_steps, allow_zero=True)
        if self.loader not in LOADERS:
            raise FlagError(f"--loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        if self.backend not in (None, "torch", "triton", "cuda"):
            raise FlagError(f"--backend must be auto, torch, triton or cuda, got {self.backend!r}")
        if self.pairing not in ("independent", "shared"):
            raise FlagError(f"--pairing must be independent or shared, got {self.pairing!r}")
        if self.precision not in (None, *PRECISIONS):
            raise FlagError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.confounders:
            self.confounder_specs()
        if self.reference_mode:
            self._check_reference_mode()
        device = resolve_device(self.device, local_rank=self.local_rank if self.distributed else None)
        if self.cuda_graphs:
            if device.type != "cuda":
                raise FlagError(f"--cuda_graphs needs a CUDA device; this run trains on {device} "
                                "(drop --cuda_graphs, or pass --device cuda on a machine with a GPU)")
            if self.distributed:
                raise FlagError("--cuda_graphs is single-process for now: the per-step gradient all-reduce of "
                                "--distributed is not captured; drop one of the two")
            from ..backends import BackendError
            from ..ops.optim import fused_optimizer

            try:
                fused = fused_optimizer(device, self.backend)
            except BackendError:
                fused = False
            if not fused:
                why = ("--backend torch steps the optimizers with the torch references" if self.backend == "torch"
                       else "`dil-fast info` says why the native core is not in use")
                raise FlagError(f"--cuda_graphs needs the fused optimizer (the native core dil_fast._C with its "
                                f"CUDA kernels); {why}")
        return self

    def _validate_task(self) -> None:
        from ..models.registry import ARCHS, is_custom_arch, parse_arch_kwargs
        from ..tasks import TASKS

        if self.task not in TASKS:
            raise FlagError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.order not in (1, 2):
            raise FlagError(f"--order must be 1 or 2, got {self.order}")
        if self.order == 2 and self.task != "realsr":
            raise FlagError(f"--order 2 selects Real-ESRGAN's second-order degradation of --task realsr, not --task {self.task}")
        arch = self.arch_name()
        if arch not in ARCHS and not is_custom_arch(arch):
            raise FlagError(f"--arch must be one of {', '.join(ARCHS)} or package.module:Class, got {arch!r}")
        try:
            parse_arch_kwargs(self.arch_kwargs)
        except ValueError as exc:
            raise FlagError(str(exc)) from None
        if self.model_overrides() and not arch.startswith("rrdb"):
            raise FlagError(f"--nf/--nb/--gc size an RRDB; --arch {arch} takes --arch_kwargs")
        _check_positive("scale", self.scale)
        _check_positive("crop_border", self.crop_border, allow_zero=True)
        if self.patch_size % self.effective_scale():
            raise FlagError(f"--patch_size {self.patch_size} must be a multiple of the scale {self.effective_scale()} "
                            "(the HR crop is patch_size, the LR crop patch_size / scale)")
        self.test_specs()
        if len(self.trainsets()) > 1 and self.loader not in ("auto", "paired"):
            raise FlagError(f"several --trainset folders are paired folders, one confounder each (--loader paired); "
                            f"--loader {self.loader} takes one")

    def task_spec(self):
        from ..tasks import TASKS

        return TASKS[self.task]

    def trainsets(self) -> list[str]:
        if self.trainset is None:
            return []
        return [self.trainset] if isinstance(self.trainset, str) else list(self.trainset)

    def arch_name(self) -> str:
        return self.arch or self.task_spec().arch

    def effective_scale(self) -> int:
        return int(self.scale or self.task_spec().scale)

    def metric_y(self) -> bool:
        return self.task_spec().y if self.y is None else bool(self.y)

    def metric_crop_border(self) -> int:
        return self.task_spec().crop_border if self.crop_border is None else int(self.crop_border)

    def test_specs(self):
        """The periodic test's degradations: ``--test_confounders``, else the task's (denoise:
        Gaussian noise at ``--test_level``, the released test)."""
        from ..degrade import GaussianNoise, parse_confounders

        if self.test_confounders is None and self.task == "denoise":
            return [GaussianNoise(float(self.test_level))]
        text = self.test_confounders or self.task_spec().test
        try:
            return parse_confounders(text)
        except ValueError as exc:
            raise FlagError(f"--test_confounders: {exc}") from None

    def _check_reference_mode(self) -> None:
        """Refuse ``--reference_mode`` combined with anything the released trainer did not do."""
        if self.variant != "sf":
            raise FlagError(f"--reference_mode re-creates the released DIL_sf trainer; --variant {self.variant} "
                            "has no reference")
        if self.loader not in ("auto", "reference"):
            raise FlagError(f"--reference_mode reads PNG patches as released; --loader {self.loader} is not allowed")
        if self.precision not in (None, "fp32"):
            raise FlagError(f"--reference_mode trains in fp32; --precision {self.precision} is not allowed")
        for flag in ("channels_last", "compile", "cuda_graphs"):
            if getattr(self, flag):
                raise FlagError(f"--reference_mode cannot be combined with --{flag}")

    def confounder_specs(self):
        """The training confounders: ``--confounders`` parsed, else the task's (denoise: Gaussian
        noise at ``--levels``, the released set; realsr: ``--order``)."""
        from ..degrade import GaussianNoise, parse_confounders

        text = self.confounders
        if not text and self.task == "denoise":
            return [GaussianNoise(float(s)) for s in self.levels]
        if not text:
            text = self.task_spec().confounders.replace("realsr:1", f"realsr:{self.order}")
        try:
            return parse_confounders(text)
        except ValueError as exc:
            raise FlagError(f"--confounders: {exc}") from None

    def uses_released_noise(self) -> bool:
        """True when the run is the released trainer's data: Gaussian noise at ``--levels`` at scale 1."""
        return not self.confounders and self.task == "denoise" and self.effective_scale() == 1

    def model_overrides(self) -> dict:
        """``--nf/--nb/--gc`` given on the command line."""
        return {k: getattr(self, k) for k in ("nf", "nb", "gc") if getattr(self, k) is not None}


def _check_finite(name: str, value) -> None:
    if value is not None and not math.isfinite(value):
        raise FlagError(f"--{name} must be a finite number, got {value}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        raise FlagError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


# ---------------------------------------------------------------------------------- command line
def _levels(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def variant_options(args) -> dict:
    """The constructor options of ``--variant`` beyond the learning rates and loss."""
    if args.variant in ("ss", "ps", "ss-fo"):
        return {"alpha": args.alpha, "inner_optimizer": args.inner_optimizer, "query": args.query,
                "virtual_batching": args.virtual_batching}
    if args.variant == "pf":
        return {"query": args.query, "virtual_batching": args.virtual_batching}
    return {}


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every ``dil-fast train`` flag with its default."""
    ref = p.add_argument_group("released trainer flags")
    ref.add_argument("--gpus", type=int, default=1, help="number of GPUs (enters the iterations-per-epoch arithmetic)")
    ref.add_argument("--seed", type=int, default=1, help="random seed")
    ref.add_argument("--ckpt_save", type=str, default=None, help="output folder for checkpoints and train.log")
    ref.add_argument("--resume", type=str, default=None,
                     help="a released checkpoint (weights only) or a dil_fast training state (exact resume)")
    ref.add_argument("--distributed", action="store_true", help="DDP under torchrun (NCCL on GPU, gloo on CPU)")
    ref.add_argument("--ddp_timeout", type=float, default=300.0,
                     help="--distributed: seconds a rank waits for its peers in any collective before it stops "
                          "with an error (a peer that crashed is noticed at once)")
    ref.add_argument("--local_rank", "--local-rank", type=int, default=0, help="accepted; torchrun's LOCAL_RANK wins")
    ref.add_argument("--trainset", type=str, nargs="+", default=None,
                     help="a folder of PNG/JPEG patches, a packed store (dil-fast pack), or paired folders (GT/ + LQ/, "
                          "one confounder each, e.g. three rain datasets)")
    ref.add_argument("--patch_size", type=int, default=64,
                     help="training crop side in pixels (the ground truth's, for super-resolution)")
    ref.add_argument("--testset", type=str, default="default",
                     help="test folder; 'default' = the built-in sample images (Set5 is not shipped)")
    ref.add_argument("--save_every", type=int, default=1, help="write model_{epoch}.pt every N epochs")
    ref.add_argument("--test_every", type=int, default=5, help="evaluate the meta model every N epochs")
    ref.add_argument("--print_every", type=int, default=100, help="log every N meta-iterations")
    ref.add_argument("--batch_size", type=int, default=32, help="batch size per confounder and GPU")
    ref.add_argument("--num_workder", "--num_workers", dest="num_workers", type=int, default=8,
                     help="data-loader workers per confounder (the released spelling is accepted)")
    ref.add_argument("--total_epoch", type=int, default=30, help="epochs to train (an epoch reads every patch once)")
    new = p.add_argument_group("dil_fast flags")
    new.add_argument("--variant", default="sf", choices=VARIANT_NAMES,
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
    new.add_argument("--loss", default="l1", choices=LOSS_NAMES, help="l1 (released), l2 (mse) or charbonnier")
    new.add_argument("--loader", default="auto", choices=LOADERS,
                     help="training data: reference (the released DataLoader path: noise at --levels), folder (clean "
                          "patches read in workers, any confounders), paired (GT/LQ folders), store (dil-fast pack) or "
                          "dali; auto: paired folders -> paired, a store -> store, the released denoising -> "
                          "reference, else folder")
    new.add_argument("--confounders", default=None,
                     help="confounder set for --loader store/dali, e.g. noise:5,10,15,20 or blur:1,2,3,4 "
                          "(default: Gaussian noise at --levels)")
    new.add_argument("--pairing", default="independent", choices=("independent", "shared"),
                     help="independent: each confounder its own clean batch (released); shared: the same clean "
                          "batch under every confounder (the paper's ideal); store/dali loaders only")
    new.add_argument("--memory_budget", default=None,
                     help="bytes the packed store may occupy on the device (e.g. 20G); default 75%% of free memory")
    new.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                     help="force one implementation for every dil_fast op of the run (sampling, degradation, "
                          "optimizers): torch = the pure-torch references; triton/cuda serve only some ops, and "
                          "the run is refused, naming each op, when they cannot serve it (auto: the fastest)")
    new.add_argument("--stop_after", type=int, default=None,
                     help="stop after N meta-iterations, saving last.pt for --resume")
    new.add_argument("--no_progress", action="store_true", help="no progress bar even on a terminal")
    ops = p.add_argument_group("run folder and tracking")
    ops.add_argument("--auto_resume", action="store_true",
                     help="continue from --ckpt_save's last.pt (without it, a folder holding a run is archived)")
    ops.add_argument("--max_bad_steps", type=int, default=10,
                     help="stop after this many consecutive meta-iterations with non-finite losses or gradients "
                          "(they are skipped; 0: never stop)")
    ops.add_argument("--no_tensorboard", action="store_true",
                     help="no TensorBoard event files (metrics.csv is always written)")
    ops.add_argument("--config", default=None,
                     help="a JSON or YAML file of flag values (the command line wins)")
    task = p.add_argument_group("tasks and models (dil_fast.tasks; a task sets the rest, these override it)")
    task.add_argument("--task", default="denoise", choices=TASK_NAMES,
                      help="the paper's experiment: training confounders, periodic test, model, scale, metric")
    task.add_argument("--test_confounders", default=None,
                      help="the periodic test's degradation (default: the task's; denoise: noise at --test_level)")
    task.add_argument("--order", type=int, default=1, choices=(1, 2),
                      help="--task realsr: Real-ESRGAN's first- or second-order degradation")
    task.add_argument("--arch", default=None,
                      help="rrdb, rrdb_x4, swinir, or package.module:Class for one's own nn.Module (default: the task's)")
    task.add_argument("--arch_kwargs", default=None, help="JSON keyword arguments of --arch, e.g. '{\"embed_dim\": 60}'")
    task.add_argument("--scale", type=int, default=None, help="super-resolution factor (default: the task's; 1 restores)")
    task.add_argument("--y", dest="y", action="store_true", default=None, help="metrics on the Y channel")
    task.add_argument("--rgb", dest="y", action="store_false", help="metrics on RGB")
    task.add_argument("--crop_border", type=int, default=None, help="pixels removed per side before the metrics")
    fast = p.add_argument_group("fast path (dil_fast.train.fast; defaults differ on CUDA and CPU)")
    fast.add_argument("--precision", default=None, choices=PRECISIONS,
                      help="training math: bf16 autocast with fp32 master weights, tf32, or strict fp32 "
                           "(default: bf16 on CUDA, fp32 on CPU)")
    fast.add_argument("--channels_last", dest="channels_last", action="store_true", default=None,
                      help="NHWC activations (default on CUDA)")
    fast.add_argument("--no_channels_last", dest="channels_last", action="store_false",
                      help="NCHW activations (default on CPU)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    fast.add_argument("--cuda_graphs", dest="cuda_graphs", action="store_true", default=None,
                      help="capture the whole meta-iteration in one CUDA graph and replay it (default on CUDA in "
                           "one process with the fused optimizer and without --compile; a step that cannot be "
                           "captured runs eagerly after one warning)")
    fast.add_argument("--no_cuda_graphs", dest="cuda_graphs", action="store_false",
                      help="eager kernel launches, no CUDA graph (default on CPU and with --distributed)")
    fast.add_argument("--deterministic", action="store_true",
                      help="deterministic algorithms, no cuDNN autotuning (bitwise-repeatable runs on one GPU)")
    fast.add_argument("--reference_mode", action="store_true",
                      help="compute the way the released trainer does (DataLoader + OpenCV + numpy noise, "
                           "per-tensor Adam, state_dict copies, loss.item() per step, fp32): for comparisons")
    return p
