"""Evaluation: degrade test images at named levels, restore them with a network, score PSNR/SSIM.

Its own stage: it reads data, degradations, models and metrics and never imports the trainer
(the trainer's periodic test calls :func:`evaluate`).

API::

    from dil_fast.eval import evaluate, load_test_images
    images = load_test_images("default")                      # [(name, HxWx3 uint8 RGB)], sorted
    res = evaluate(model, images, 50, seed=1, device="cuda")  # Gaussian noise 50, the released arithmetic
    res = evaluate(model, images, "blur:5", seed=1, device="cuda")
    res = evaluate(sr_model, images, "bicubic:4", seed=1, device="cuda", y=True, crop_border=4)
    for name, psnr, ssim, restored in res: ...                # restored: HxWx3 uint8

* :func:`evaluate` ``(model, images, level, *, seed, device, y=False, crop_border=0, scale=None)``
  -> ``[(name, psnr, ssim, restored)]``. ``level`` is a number (Gaussian noise sigma on 0..255),
  a string naming one level (``"noise:50"``, ``"blur:4.2"``, ``"hybrid:moderate"``,
  ``"jpeg:20"``, ``"bicubic:4"``, ``"rain:storm"``, ``"isp:mixed"``), a :mod:`dil_fast.degrade`
  spec, or an :class:`EvalLevel`. Plain Gaussian noise (however given) takes the released numpy
  path: image ``i`` gets ``clip(x / 255 + N(0, 1) * sigma / 255, 0, 1)`` with float64 normals in
  ``HxWx3`` order from ``numpy.random.default_rng(SeedSequence([seed, i]))`` (:func:`noise_rng`,
  :func:`add_noise`); every other spec is :func:`dil_fast.degrade.counterfactual` of the one
  image with ``seed`` and ``step = i``. Either way image ``i``'s input depends on ``(seed, i)``
  only. ``scale`` (default: the network's ``upscale``, 1 when absent) > 1 makes it a
  super-resolution test: the ground truth is cropped to a multiple of ``scale``, a same-size
  level is followed by a bicubic resize to ``1/scale`` (``bicubic:s`` is that resize), and the
  metrics compare the network's output with the ground truth. PSNR/SSIM are
  :mod:`dil_fast.metrics` (BasicSR's, ``color_order="rgb"``), on the Y channel with ``y``, after
  removing ``crop_border`` pixels per side. The model runs in eval mode under ``torch.no_grad``
  (float32 ``[1, 3, h, w]`` inputs) and gets its training mode back.
* :func:`evaluate_model` ``(model, images, level, seed, device, y=False, crop_border=0)``: the
  same with a noise sigma (the former ``dil_fast.train.evaluate`` function, unchanged results).
* :func:`iter_evaluate` / :func:`iter_evaluate_pairs`: :class:`ImageResult` per image (adds the
  degraded input and the cropped ground truth) for a level, or for ``(name, GT, LQ)`` pairs
  (:func:`load_paired_images`: two folders matched by file name stem, LQ ``1/scale`` of GT;
  :func:`load_paired_folder`: one folder with ``GT/`` and ``LQ/``, :mod:`dil_fast.data.folders`).
* :func:`degrade_image`, :func:`as_level`, :func:`parse_levels`, :func:`parse_sweep`,
  :func:`training_range` (a training state's range of one family), :func:`load_checkpoint`
  (any layout :func:`dil_fast.models.registry.model_from_checkpoint` reads),
  :func:`plot_generalization` (the matplotlib line plot with the training range shaded).

``dil-fast eval`` (:func:`add_eval_parser`, :func:`run_eval`)::

    dil-fast eval --ckpt C --testset T --save S --level 50        # the released eval_noise.py
    dil-fast eval --ckpt C --testset T --save S --task deblur      # the task's eval levels and metrics
    dil-fast eval --ckpt C --testset T --save S --confounders "hybrid:mild,moderate,severe"
    dil-fast eval --ckpt C --testset GT --lq LQ --save S --task realsr   # a paired folder
    dil-fast eval --ckpt dil=a.pt erm=b.pt --testset T --save S --sweep noise:5:70:5

Levels: ``--level S`` (Gaussian noise, default 50 when nothing else names the levels),
``--confounders`` (any :func:`dil_fast.degrade.parse_confounders` list, one level per value),
``--task``'s ``eval_levels``, ``--sweep`` (one numeric family: ``family:start:stop:step`` with an
inclusive stop, or ``family:a,b,c``), or ``--lq`` (the given degraded images); one of them. A
``--testset`` that is a paired folder (``GT/`` and ``LQ/``) is evaluated on its pairs;
``--filename_tmpl '{}x4'`` (BasicSR's) names the LQ files of ``--lq`` or of a paired folder from the
GT stems.
``--task`` also sets ``--y``, ``--crop_border`` and ``--scale`` (flags override). Without
``--testset`` the current folder is read, as released; ``--testset default`` is the built-in images.

Outputs in ``--save``: the restored PNGs under the test images' names (``x.jpg`` -> ``x.png``),
in ``LABEL/`` subfolders for several checkpoints and ``FAMILY-LEVEL/`` subfolders for several
levels (a sweep writes none unless ``--save_inputs``); with ``--save_inputs`` also
``NAME_input_output_gt.png`` beside each (input upsampled by nearest for SR | output | ground
truth, width 3 W); ``results.csv`` (``ckpt, confounder, level, image, psnr, ssim``, a ``mean``
row per checkpoint and level); for a sweep ``sweep.csv`` (``ckpt, confounder, level, psnr,
ssim``: levels x checkpoints rows) and ``sweep.png`` (PSNR against level, one line per
checkpoint, the training range shaded: from each checkpoint's training state, else
``--train_range``); ``log.txt``: the released ``NAME: PSNR, p; SSIM, s.`` lines and ``avg PSNR: p,
avg SSIM: s.``, under a ``== [LABEL ]FAMILY:LEVEL ==`` title per section when there are several.

Everything is checked before anything is written (flags, every checkpoint, every image and its
size against every level and SSIM's 11 x 11 window, the output folder); outputs are staged in a
hidden folder inside ``--save`` and moved into place at the end, ``log.txt`` last, each file
written atomically (:mod:`dil_fast.fileio`); a failure leaves ``--save`` as it was. Errors are one
line naming the file or flag (exit status 2 from the CLI).

Deliberate differences from the released script: the degradation is seeded (the release's noise
is unseeded); the mean SSIM is correct (the release's is always 0); restored images are always
PNG; the network is whatever the checkpoint holds (``--arch``/``--arch_kwargs``/``--nf --nb --gc``
override), on any device.
"""

from .checkpoint import EvalCheckpoint, load_checkpoint, parse_ckpt_arg
from .cli import add_eval_parser, run_eval
from .levels import EvalLevel, as_level, noise_level, parse_levels, parse_sweep, training_range
from .output import format_log
from .plot import PLOT_SIZE, plot_generalization
from .scoring import ImageResult, evaluate, evaluate_model, iter_evaluate, iter_evaluate_pairs, score
from .scoring import restore as restore_tensor
from .synthesis import add_noise, degrade_image, mod_crop, noise_rng
from .testsets import is_paired_testset, load_paired_folder, load_paired_images, load_test_images, output_names

__all__ = [
    "evaluate",
    "evaluate_model",
    "iter_evaluate",
    "iter_evaluate_pairs",
    "ImageResult",
    "restore_tensor",
    "score",
    "EvalLevel",
    "as_level",
    "noise_level",
    "parse_levels",
    "parse_sweep",
    "training_range",
    "noise_rng",
    "add_noise",
    "degrade_image",
    "mod_crop",
    "load_test_images",
    "load_paired_images",
    "load_paired_folder",
    "is_paired_testset",
    "output_names",
    "EvalCheckpoint",
    "load_checkpoint",
    "parse_ckpt_arg",
    "format_log",
    "PLOT_SIZE",
    "plot_generalization",
    "add_eval_parser",
    "run_eval",
]
