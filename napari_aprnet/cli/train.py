"""``aprnet train``, ``aprnet eval`` and ``aprnet predict``."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from napari_aprnet.bundled import resolve_checkpoint
from napari_aprnet.data import (
    NUCLEI_DATASETS,
    FolderDataset,
    NucleiDataset,
    NucleiParams,
    SegmentationFolder,
    ShapeParams,
    ShapesDataset,
    epoch_batches,
    make_loader,
    read_image_file,
)
from napari_aprnet.data.shapes import _widen
from napari_aprnet.io.images import write_image
from napari_aprnet.training import TrainConfig, evaluate, train
from napari_aprnet.training.checkpoint import load_checkpoint
from napari_aprnet.training.predict import Classifier, checkpoint_task
from napari_aprnet.training.segment import Segmenter
from napari_aprnet.training.tasks import SegmentationTask

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the train / eval / predict sub-commands to ``subparsers``."""
    p = subparsers.add_parser("train", help="train an APRNet or pixel CNN",
                              description="Train a network to classify (thesis networks; synthetic shapes or an "
                                          "image folder) or to segment (U-Nets; synthetic nuclei or a folder of "
                                          "images/ and masks/). Writes RUN_DIR/checkpoint.pt, best.pt (with "
                                          "--epochs) and log.csv.")
    p.add_argument("--task", choices=("classify", "segment"), default="classify")
    p.add_argument("--data", default=None, help="classify: 'shapes' (default) or a folder with one sub-folder per "
                                                "class; segment: 'nuclei2d' (default), 'nuclei3d' or a folder "
                                                "with images/ and masks/")
    p.add_argument("--model", default=None, help="classify: APR_A, Pix_A, APR_B (default), Pix_B, APR_C, Pix_C, "
                                                 "optionally -same/-close (APR) or -expanded (Pix); segment: "
                                                 "APR_UNet (default) or Pix_UNet")
    p.add_argument("--rel-error", type=float, default=0.1, help="APR relative error threshold E")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="streaming mode on shapes: number of batches")
    length.add_argument("--epochs", type=int, help="fixed-dataset mode: passes over the training set")
    p.add_argument("--batch-size", type=int, default=36)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=None, help="default: 1e-4 with --epochs, else 0")
    p.add_argument("--dropout", type=float, default=None, help="default: 0.5 with --epochs, else 0")
    p.add_argument("--spatial-dropout", type=float, default=None, help="default: 0.3 with --epochs, else 0")
    p.add_argument("--size", type=int, default=256, help="network input size (images are resized)")
    p.add_argument("--image-size", type=int, default=None, help="size of generated shape images (default --size)")
    p.add_argument("--n-train", type=int, default=200, help="shapes with --epochs: training images per class")
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--classes", default=None, help="shapes: comma-separated subset of the six classes")
    p.add_argument("--augment", action="store_true", help="thesis 4.2.4 augmentation of training images")
    p.add_argument("--width", type=float, default=None, help="classify: channel multiplier (default 1 = thesis "
                                                              "network); segment: first-stage channels (default 16)")
    p.add_argument("--depth", type=int, default=None, help="segment: U-Net poolings (default 3)")
    p.add_argument("--shape", default=None, help="segment, nuclei: image shape, e.g. 128x128 or 64x128x128")
    p.add_argument("--boundary", action="store_true",
                   help="segment: learn background / interior / boundary, to split touching objects")
    p.add_argument("--dice-weight", type=float, default=0.0, help="segment: weight of a soft Dice loss term")
    p.add_argument("--loss-weighting", choices=("particles", "pixels"), default="particles",
                   help="segment, APR nets: every particle's loss counts once (default; learns sparse 3D "
                        "volumes), or for its cell's pixels")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning; same network settings)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (per training process)")
    p.add_argument("--nproc", type=int, default=1,
                   help="training processes on this machine (data parallel: --batch-size is shared by all); "
                        "for several machines start `python -m napari_aprnet.cli train ...` with torchrun")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where each process trains: cpu, cuda (one GPU per process) or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0 = each epoch)")
    p.add_argument("--cache-dir", default=None, help="keep converted APRs of fixed datasets on disk here")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=_train)

    ckpt_help = "checkpoint file (best.pt, checkpoint.pt) or a bundled model: bundled:shapes"
    p = subparsers.add_parser("eval", help="accuracy and confusion matrix (classification) or IoU, Dice and "
                                           "object F1 (segmentation) of a checkpoint")
    p.add_argument("checkpoint", help=ckpt_help)
    p.add_argument("--data", default=None, help="'shapes' (default for classifiers) or 'nuclei2d'/'nuclei3d' (the "
                                                "held-out test split; default: the training data), or a folder")
    p.add_argument("--n", type=int, default=100, help="shapes: images per class; nuclei: images")
    p.add_argument("--seed", type=int, default=None,
                   help="shapes: seed of the generated images (default: the training seed's test split)")
    p.add_argument("--modified", action="store_true", help="shapes: the modified ('more extreme') distribution")
    p.add_argument("--batch-size", type=int, default=None, help="default 36 (classify), 4 (segment)")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("predict", help="classify or segment image files with a checkpoint")
    p.add_argument("checkpoint", help=ckpt_help)
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=3, help="classify: classes to print per image")
    p.add_argument("--out", default=None, help="segment: folder for the instance label images (<name>_labels.tif)")
    p.add_argument("--tile", type=int, default=None, help="segment: process images in tiles of this side")
    p.set_defaults(func=_predict)


def _measures(m: dict) -> str:
    """The measures of an evaluation (``EvalResult.to_dict()``) in one line."""
    if "iou" in m:
        return f"IoU {m['iou']:.4f}  Dice {m['dice']:.4f}  F1 {m['f1']:.4f}  loss {m['loss']:.4f}"
    return f"accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}"


def _progress(ev, tty: bool, score: str) -> None:
    if ev.phase == "train":
        line = (f"step {ev.step}/{ev.total_steps}  epoch {ev.epoch}  loss {ev.loss:.4f}  {score} {ev.accuracy:.3f}  "
                f"{ev.step_time:.2f} s/step  {ev.elapsed:.0f} s")
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif ev.step % 10 == 0 or ev.step == ev.total_steps:
            print(line, file=sys.stderr, flush=True)
    elif ev.phase in ("val", "test", "test_modified"):
        print(("\n" if tty else "") + f"{ev.phase}: {_measures(ev.metrics[ev.phase])}", file=sys.stderr, flush=True)


def _shape(text: str | None) -> list | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise ValueError(f"--shape takes sides joined by x, e.g. 128x128 or 64x128x128; got {text!r}") from None


def _train(args) -> int:
    if not args.resume and args.steps is None and args.epochs is None:
        raise ValueError("give --steps N (streaming) or --epochs N (fixed datasets)")
    segment = args.task == "segment"
    data = args.data or ("nuclei2d" if segment else "shapes")
    data = data if data in ("shapes", *NUCLEI_DATASETS) else str(Path(data).expanduser())
    model = args.model or ("APR_UNet" if segment else "APR_B")
    config = TrainConfig(model=model, data=data, task=args.task, steps=args.steps, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         dropout=args.dropout, spatial_dropout=args.spatial_dropout, rel_error=args.rel_error,
                         size=args.size, image_size=args.image_size, n_train=args.n_train, n_val=args.n_val,
                         n_test=args.n_test, classes=args.classes.split(",") if args.classes else None,
                         augment=args.augment, seed=args.seed, workers=args.workers, eval_every=args.eval_every,
                         width=args.width, depth=args.depth, image_shape=_shape(args.shape), boundary=args.boundary,
                         dice_weight=args.dice_weight, loss_weighting=args.loss_weighting,
                         init_from=args.init_from)
    tty = sys.stderr.isatty()
    gen = train(config, args.out, resume=args.resume, cache_dir=args.cache_dir, nproc=args.nproc,
                device=args.device)
    last, interrupted = None, False
    try:
        for last in gen:
            _progress(last, tty, "IoU" if segment else "acc")
    except KeyboardInterrupt:
        gen.close()  # saves checkpoint.pt
        interrupted = True
    if tty:
        print(file=sys.stderr)
    if interrupted or (last is not None and last.phase == "stopped"):  # several processes: all stop together
        print(f"interrupted; continue with: aprnet train --out {args.out} --resume", file=sys.stderr)
        return 130
    if last is not None and last.phase == "done":
        print(f"done: {last.step} steps, checkpoint {last.checkpoint}")
        for key, value in last.metrics.items():
            if isinstance(value, dict):
                print(f"  {key}: {_measures(value)}")
            elif value is not None:
                print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


def _printable(text) -> str:
    """``text`` with control and other unprintable characters escaped (``\\n``, ``\\x1b``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _format_confusion(confusion: np.ndarray, names) -> str:
    names = [_printable(n) for n in names]
    width = max(8, max(len(n) for n in names) + 1)
    lines = ["true \\ predicted".ljust(width) + "".join(n[:width - 1].rjust(width) for n in names)]
    for name, row in zip(names, confusion):
        lines.append(name.ljust(width) + "".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)


def _task_of(checkpoint: str) -> str:
    return checkpoint_task(load_checkpoint(resolve_checkpoint(checkpoint)))


def _eval(args) -> int:
    segment = _task_of(args.checkpoint) == "segment"
    args.batch_size = args.batch_size or (4 if segment else 36)
    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be >= 1")
    return _eval_segmentation(args) if segment else _eval_classification(args)


def _eval_classification(args) -> int:
    clf = Classifier.load(args.checkpoint)
    cfg = TrainConfig.from_dict(clf.metadata.get("config", {}))
    if (args.data or "shapes") == "shapes":
        if cfg.data != "shapes":
            raise ValueError(f"this network was trained on {cfg.data}, not on shapes; pass --data FOLDER")
        params = ShapeParams.from_dict(cfg.shape_params) if cfg.shape_params else ShapeParams()
        if args.modified:
            params = _widen(params)
        seed = cfg.seed if args.seed is None else args.seed
        dataset = ShapesDataset(args.n, seed, cfg.image_size or cfg.size, 3 if args.modified else 2, params,
                                cfg.classes)
    else:
        dataset = FolderDataset(args.data, clf.input_size, clf.channels)
        if tuple(dataset.class_names) != clf.class_names:
            raise ValueError(f"class folders {dataset.class_names} do not match the network's classes "
                             f"{clf.class_names}")
    loader = make_loader(dataset, clf.spec, epoch_batches(len(dataset), args.batch_size, 0, 0, shuffle=False),
                         workers=args.workers)
    res = evaluate(clf.model, loader, len(clf.class_names))
    print(f"{res.n} images  accuracy {res.accuracy:.4f}  loss {res.loss:.4f}")
    print(_format_confusion(res.confusion, clf.class_names))
    return 0


def _eval_segmentation(args) -> int:
    seg = Segmenter.load(args.checkpoint)
    cfg = TrainConfig.from_dict(seg.metadata.get("config", {}))
    data = args.data or (cfg.data if cfg.data in NUCLEI_DATASETS else None)
    if data is None:
        raise ValueError(f"this network was trained on the folder {cfg.data}; pass --data FOLDER (a test folder "
                         f"with images/ and masks/)")
    if data in NUCLEI_DATASETS:
        trained_shape = cfg.image_shape if cfg.data == data else None
        params = NucleiParams.from_dict(cfg.nuclei_params) if cfg.nuclei_params and cfg.data == data else None
        dataset = NucleiDataset(args.n, cfg.seed if args.seed is None else args.seed, trained_shape, split=2,
                                params=params, ndim=NUCLEI_DATASETS[data])
    elif data == "shapes":
        raise ValueError("a segmentation network is evaluated on nuclei2d, nuclei3d or a folder with images/ "
                         "and masks/, not on shapes")
    else:
        dataset = SegmentationFolder(data, seg.spec.channels)
    task = SegmentationTask(seg.n_classes)
    loader = make_loader(dataset, seg.spec, epoch_batches(len(dataset), args.batch_size, 0, 0, shuffle=False),
                         workers=args.workers, targets=task.targets, item_target=task.item_target)
    res = evaluate(seg.model, loader, seg.n_classes, task=task)
    print(f"{res.n} images  IoU {res.iou:.4f}  Dice {res.dice:.4f}  F1 {res.f1:.4f}  "
          f"pixel accuracy {res.accuracy:.4f}  loss {res.loss:.4f}")
    print(_format_confusion(res.confusion, seg.class_names))
    return 0


def _predict(args) -> int:
    if _task_of(args.checkpoint) == "segment":
        return _predict_segmentation(args)
    clf = Classifier.load(args.checkpoint)
    images = [read_image_file(p) for p in args.images]  # all errors before any output
    t0 = time.perf_counter()
    probs = clf.predict_proba(images)
    k = max(1, min(args.top, len(clf.class_names)))
    for path, p in zip(args.images, probs):
        order = np.argsort(-p)[:k]
        print(f"{_printable(path)}: " + ", ".join(f"{_printable(clf.class_names[i])} {p[i]:.3f}" for i in order))
    print(f"({len(images)} images, {time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0


def _predict_segmentation(args) -> int:
    if args.out is None:
        raise ValueError("a segmentation network writes label images: give --out FOLDER")
    seg = Segmenter.load(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for path in args.images:
        image = read_image_file(path, volume=seg.ndim == 3)
        result = seg.segment(image, tile=args.tile)
        target = out / f"{Path(path).stem}_labels.tif"
        write_image(target, result.labels)
        print(f"{_printable(path)}: {int(result.labels.max())} objects, foreground "
              f"{float((result.classes > 0).mean()):.3f} -> {_printable(target)}")
    print(f"({len(args.images)} images, {time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0
