"""``aprnet train``, ``aprnet eval`` and ``aprnet predict``."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from napari_aprnet.data import FolderDataset, ShapeParams, ShapesDataset, epoch_batches, make_loader, read_image_file
from napari_aprnet.data.shapes import _widen
from napari_aprnet.training import TrainConfig, evaluate, train
from napari_aprnet.training.predict import Classifier

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the train / eval / predict sub-commands to ``subparsers``."""
    p = subparsers.add_parser("train", help="train an APRNet or pixel CNN",
                              description="Train a thesis network on synthetic shapes or an image folder. "
                                          "Writes RUN_DIR/checkpoint.pt, best.pt (with --epochs) and log.csv.")
    p.add_argument("--data", default="shapes", help="'shapes' or a folder with one sub-folder per class")
    p.add_argument("--model", default="APR_B", help="APR_A, Pix_A, APR_B, Pix_B, APR_C, Pix_C, "
                                                    "optionally -same/-close (APR) or -expanded (Pix)")
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
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = thesis network)")
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
    p = subparsers.add_parser("eval", help="accuracy and confusion matrix of a checkpoint")
    p.add_argument("checkpoint", help=ckpt_help)
    p.add_argument("--data", default="shapes", help="'shapes' (the held-out test split) or a class folder")
    p.add_argument("--n", type=int, default=100, help="shapes: images per class")
    p.add_argument("--seed", type=int, default=None,
                   help="shapes: seed of the generated images (default: the training seed's test split)")
    p.add_argument("--modified", action="store_true", help="shapes: the modified ('more extreme') distribution")
    p.add_argument("--batch-size", type=int, default=36)
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("predict", help="classify image files with a checkpoint")
    p.add_argument("checkpoint", help=ckpt_help)
    p.add_argument("images", nargs="+")
    p.add_argument("--top", type=int, default=3, help="classes to print per image")
    p.set_defaults(func=_predict)


def _progress(ev, tty: bool) -> None:
    if ev.phase == "train":
        line = (f"step {ev.step}/{ev.total_steps}  epoch {ev.epoch}  loss {ev.loss:.4f}  acc {ev.accuracy:.3f}  "
                f"{ev.step_time:.2f} s/step  {ev.elapsed:.0f} s")
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif ev.step % 10 == 0 or ev.step == ev.total_steps:
            print(line, file=sys.stderr, flush=True)
    elif ev.phase in ("val", "test", "test_modified"):
        print(("\n" if tty else "") + f"{ev.phase}: loss {ev.loss:.4f}  accuracy {ev.accuracy:.4f}",
              file=sys.stderr, flush=True)


def _train(args) -> int:
    if not args.resume and args.steps is None and args.epochs is None:
        raise ValueError("give --steps N (streaming) or --epochs N (fixed datasets)")
    data = args.data if args.data == "shapes" else str(Path(args.data).expanduser())
    config = TrainConfig(model=args.model, data=data, steps=args.steps, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         dropout=args.dropout, spatial_dropout=args.spatial_dropout, rel_error=args.rel_error,
                         size=args.size, image_size=args.image_size, n_train=args.n_train, n_val=args.n_val,
                         n_test=args.n_test, classes=args.classes.split(",") if args.classes else None,
                         augment=args.augment, seed=args.seed, workers=args.workers, eval_every=args.eval_every,
                         width=args.width)
    tty = sys.stderr.isatty()
    gen = train(config, args.out, resume=args.resume, cache_dir=args.cache_dir, nproc=args.nproc,
                device=args.device)
    last, interrupted = None, False
    try:
        for last in gen:
            _progress(last, tty)
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
                print(f"  {key}: accuracy {value['accuracy']:.4f}  loss {value['loss']:.4f}")
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


def _eval(args) -> int:
    clf = Classifier.load(args.checkpoint)
    if args.n < 1 or args.batch_size < 1:
        raise ValueError("--n and --batch-size must be >= 1")
    if args.data == "shapes":
        cfg = TrainConfig.from_dict(clf.metadata.get("config", {}))
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


def _predict(args) -> int:
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
