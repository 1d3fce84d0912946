"""The run's configuration: the ``dil-fast train`` flags, parsed and validated once.

:func:`dil_fast.train.flags.add_train_arguments` defines every flag (the released trainer's keep
their names and defaults); :meth:`TrainConfig.from_args` builds the config and :meth:`TrainConfig.validate`
checks every value and every combination, raising one :class:`~dil_fast.errors.FlagError` that
names the flag. Everything downstream trusts a validated config; :func:`dil_fast.devices.resolve_device`
turns ``--device`` into a ``torch.device``.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass, field

from ..devices import resolve_device
from ..errors import FlagError

LOADERS = ("auto", "reference", "folder", "paired", "store", "dali")
LOSS_NAMES = ("l1", "l2", "mse", "charbonnier")
BACKEND_CHOICES = ("auto", "torch", "triton", "cuda")
PRECISIONS = ("fp32", "tf32", "bf16")
LAUNCHERS = ("none", "pytorch", "slurm")


@dataclass
class TrainConfig:
    """Everything that defines a run (the CLI flags, parsed and validated)."""

    ckpt_save: str
    trainset: str | list[str] | None = None  # one folder/store, or several paired folders (one confounder each)
    testset: str | list[str] = "default"  # one test folder or several (each scored and logged apart)
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
    launcher: str | None = None  # none | pytorch (torchrun) | slurm (srun); None: pytorch with --distributed
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
    channels_last_weights: bool | None = None  # None: off (the GPU check compares it)
    weight_shadow: bool | None = None  # None: off (the GPU check compares it)
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
    wandb: str | None = None  # --wandb PROJECT: the same scalars to Weights & Biases (the wandb extra)
    ema: float | None = None  # --ema DECAY: an EMA of the trained weights (dil_fast.train.ema)
    filename_tmpl: str | None = None  # BasicSR's: the LQ stem of a paired folder from its GT stem ('{}x4')

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The config of parsed ``dil-fast train`` arguments (not yet validated)."""
        cfg = cls(
            ckpt_save=args.ckpt_save,
            trainset=args.trainset,
            testset=args.testset[0] if len(args.testset) == 1 else list(args.testset),
            resume=args.resume,
            variant=args.variant,
            levels=tuple(args.levels),
            patch_size=args.patch_size,
            batch_size=args.batch_size,
            total_epoch=args.total_epoch,
            save_every=args.save_every,
            test_every=args.test_every,
            print_every=args.print_every,
            num_workers=args.num_workers,
            seed=args.seed,
            gpus=args.gpus,
            distributed=args.distributed,
            local_rank=args.local_rank,
            ddp_timeout=args.ddp_timeout,
            launcher=args.launcher,
            device=args.device,
            nf=args.nf,
            nb=args.nb,
            gc=args.gc,
            lr=args.lr,
            meta_lr=args.meta_lr,
            lr_step=args.lr_step,
            test_level=args.test_level,
            loss=args.loss,
            stop_after=args.stop_after,
            loader=args.loader,
            confounders=args.confounders,
            pairing=args.pairing,
            memory_budget=args.memory_budget,
            backend=None if args.backend == "auto" else args.backend,
            progress=False if args.no_progress else None,
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
            cuda_graphs=args.cuda_graphs,
            deterministic=args.deterministic,
            reference_mode=args.reference_mode,
            ema=args.ema,
            filename_tmpl=args.filename_tmpl,
            channels_last_weights=args.channels_last_weights,
            weight_shadow=args.weight_shadow,
            task=args.task,
            test_confounders=args.test_confounders,
            order=args.order,
            arch=args.arch,
            arch_kwargs=args.arch_kwargs,
            scale=args.scale,
            y=args.y,
            crop_border=args.crop_border,
            auto_resume=args.auto_resume,
            max_bad_steps=args.max_bad_steps,
            tensorboard=not args.no_tensorboard,
            wandb=args.wandb,
        )
        from .flags import variant_options

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
        for name in (
            "patch_size",
            "batch_size",
            "total_epoch",
            "save_every",
            "test_every",
            "print_every",
            "gpus",
            "nf",
            "nb",
            "gc",
            "lr",
            "meta_lr",
            "lr_step",
            "stop_after",
        ):
            _check_positive(name, getattr(self, name))
        _check_positive("num_workers", self.num_workers, allow_zero=True)
        _check_positive("test_level", self.test_level, allow_zero=True)
        _check_positive("ddp_timeout", self.ddp_timeout)
        for name in ("lr", "meta_lr", "test_level", "ddp_timeout"):
            _check_finite(name, getattr(self, name))
        for name in ("lr", "meta_lr"):  # the optimizers hold their learning rates in float32
            if getattr(self, name) > _FLOAT32_MAX:
                value = getattr(self, name)
                raise FlagError(f"--{name} {value:g}: larger than a float32 learning rate can be (3.4e38)")
        if self.memory_budget is not None:
            from ..data.store import parse_bytes

            parse_bytes(self.memory_budget)
        if self.launcher not in (None, *LAUNCHERS):
            raise FlagError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.launcher == "none" and self.distributed:
            raise FlagError("--distributed runs under a launcher, --launcher none is one process: drop one of them")
        self.distributed = self.distributed or self.launcher in ("pytorch", "slurm")  # DDP, as --distributed
        if self.wandb is not None:
            from .tracking import check_wandb

            check_wandb(self.wandb)
        if self.ema is not None and not (math.isfinite(self.ema) and 0.0 < self.ema < 1.0):
            raise FlagError(f"--ema must be a decay in (0, 1), e.g. 0.999, got {self.ema}")
        if self.filename_tmpl is not None:
            from ..data.folders import check_filename_tmpl, is_paired_folder

            try:
                check_filename_tmpl(self.filename_tmpl)
            except (ValueError, FlagError) as exc:
                raise FlagError(str(exc)) from None
            if not self.trainsets() or not all(is_paired_folder(t) for t in self.trainsets()):
                raise FlagError(
                    "--filename_tmpl names the LQ files of paired --trainset folders (GT/ and LQ/); "
                    "this --trainset is not one"
                )
        if len(self.testsets()) != len(set(self.testsets())):
            raise FlagError(f"--testset names a folder twice: {' '.join(self.testsets())}")
        if self.loss not in LOSS_NAMES:
            raise FlagError(f"--loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}")
        self._validate_task()
        variant = self.variant_entry()
        try:
            variant.obj.options_from(self.variant_options)
        except ValueError as exc:
            raise FlagError(str(exc)) from None
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
        self._check_weight_options(device)
        return self

    def _check_weight_options(self, device) -> None:
        """``--channels_last_weights`` needs channels-last activations; ``--weight_shadow`` bf16 and a
        variant that trains through the module's forward (the fused optimizer it needs is the run
        plan's decision: :class:`dil_fast.train.plan.RunPlan`)."""
        on_cuda = device.type == "cuda"
        channels_last = on_cuda if self.channels_last is None else self.channels_last
        if self.channels_last_weights and not channels_last:
            raise FlagError(
                "--channels_last_weights stores the weights NHWC for channels-last activations; "
                "add --channels_last (the default on CUDA)"
            )
        if not self.weight_shadow:
            return
        if (self.precision or ("bf16" if on_cuda else "fp32")) != "bf16":
            raise FlagError(
                "--weight_shadow is a bf16 copy of the weights; it needs --precision bf16 (the default on CUDA)"
            )
        from ..meta import VARIANTS

        if not self.variant_entry().trains_module_forward:
            users = ", ".join(VARIANTS.where(lambda e: e.trains_module_forward))
            raise FlagError(
                f"--weight_shadow applies to the variants that train through the module's forward "
                f"({users}); --variant {self.variant} evaluates its virtual models functionally"
            )
        if self.distributed:
            raise FlagError(
                "--weight_shadow runs the module on views of its own cast weights, which DDP's "
                "wrapper does not take; drop one of --weight_shadow and --distributed"
            )

    def _validate_task(self) -> None:
        from ..models.registry import ARCHS, is_custom_arch, parse_arch_kwargs, size_kwargs
        from ..tasks import TASKS

        if self.task not in TASKS:
            raise FlagError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.order not in (1, 2):
            raise FlagError(f"--order must be 1 or 2, got {self.order}")
        if self.order == 2 and self.task != "realsr":
            raise FlagError(
                f"--order 2 selects Real-ESRGAN's second-order degradation of --task realsr, not --task {self.task}"
            )
        arch = self.arch_name()
        if (arch not in ARCHS and not is_custom_arch(arch)) or (is_custom_arch(arch) and not _CLASS_PATH.match(arch)):
            raise FlagError(f"--arch must be one of {', '.join(ARCHS.names())} or package.module:Class, got {arch!r}")
        try:
            given = parse_arch_kwargs(self.arch_kwargs)
            sizes = size_kwargs(arch, self.model_overrides())
        except ValueError as exc:
            raise FlagError(str(exc)) from None
        for key, value in sizes.items():  # two values for one keyword: neither silently wins
            if key in given and given[key] != value:
                raise FlagError(f"--{key} {value} and --arch_kwargs {key}={given[key]!r} disagree; give {key} once")
        _check_positive("scale", self.scale)
        _check_positive("crop_border", self.crop_border, allow_zero=True)
        if self.patch_size % self.effective_scale():
            raise FlagError(
                f"--patch_size {self.patch_size} must be a multiple of the scale {self.effective_scale()} "
                "(the HR crop is patch_size, the LR crop patch_size / scale)"
            )
        self.test_specs()
        if len(self.trainsets()) > 1 and self.loader not in ("auto", "paired"):
            raise FlagError(
                f"several --trainset folders are paired folders, one confounder each (--loader paired); "
                f"--loader {self.loader} takes one"
            )

    def task_spec(self):
        from ..tasks import TASKS

        return TASKS[self.task]

    def testsets(self) -> list[str]:
        """``--testset`` as a list (one folder or several; ``default``: the built-in images)."""
        return [self.testset] if isinstance(self.testset, str) else list(self.testset)

    def trainsets(self) -> list[str]:
        if self.trainset is None:
            return []
        return [self.trainset] if isinstance(self.trainset, str) else list(self.trainset)

    def arch_name(self) -> str:
        """``--arch``, else the task's architecture (an empty ``--arch`` is refused by :meth:`validate`)."""
        return self.task_spec().arch if self.arch is None else self.arch

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

    def variant_entry(self):
        """The registry entry of ``--variant`` (:data:`dil_fast.meta.VARIANTS`); FlagError when unknown."""
        from ..meta import VARIANTS
        from ..registry import UnknownEntry

        try:
            return VARIANTS[self.variant]
        except UnknownEntry as exc:
            raise FlagError(str(exc)) from None

    def _check_reference_mode(self) -> None:
        """Refuse ``--reference_mode`` combined with anything the released trainer did not do."""
        if self.variant_entry().released is None:
            raise FlagError(
                f"--reference_mode re-creates the released DIL_sf trainer; --variant {self.variant} has no reference"
            )
        if self.loader not in ("auto", "reference"):
            raise FlagError(f"--reference_mode reads PNG patches as released; --loader {self.loader} is not allowed")
        if self.precision not in (None, "fp32"):
            raise FlagError(f"--reference_mode trains in fp32; --precision {self.precision} is not allowed")
        for flag in ("channels_last", "compile", "cuda_graphs", "channels_last_weights", "weight_shadow", "ema"):
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


_FLOAT32_MAX = 3.4028234663852886e38
# --arch package.module:Class: an absolute module path and an attribute path (no relative import)
_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _check_finite(name: str, value) -> None:
    if value is not None and not math.isfinite(value):
        raise FlagError(f"--{name} must be a finite number, got {value}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        raise FlagError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
