"""Train a bundled model and write it to ``napari_aprnet/bundled/``.

Two models ship with the package (``napari_aprnet.bundled.BUNDLED_MODELS``):

``shapes`` (``shapes_apr_b.pt``)
    The thesis' APR_B setting (streaming shapes, 256x256, batch 36, Adam lr
    5e-4, E = 0.1, seed 0) for ``--steps`` batches (default 3000). It is the
    same run folder as the ``APR_B_E0.1`` row of
    ``benchmarks/bench_training.py table``, so either command reuses (or
    resumes) the other's training. Checked on 300 fresh images (50 per class,
    a seed never used in training) and on the plugin's shapes sample: accuracy
    >= 0.98 and every sample image right.
``nuclei2d`` (``nuclei2d_apr_unet.pt``)
    APR_UNet with a boundary class (background, interior, boundary: touching
    nuclei are kept apart) on streaming ``nuclei2d`` 256x256 images, batch 4,
    Adam lr 1e-3, E = 0.2 with automatic thresholds (as the Convert widget),
    every particle counted once in the loss, seed 0, ``--steps`` steps
    (default 1000). Checked on 20 fresh 256x256 images (a seed never used in
    training) and on the plugin's 512x512 nuclei sample: foreground IoU >=
    0.9 and object F1 (IoU 0.5) >= 0.9 on both.

Every run is deterministic for a given machine and thread count: every batch
is a pure function of (seed, step) and the initial weights of the seed. The
bundled file holds the weights (BatchNorm statistics re-estimated, no
optimizer state). The script exits with status 1 when the model misses its
check. Run::

    .venv/bin/python scripts/train_bundled_model.py [shapes|nuclei2d] [--steps N] [--runs out/training]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK_SEED = 20261129  # the held-out check sets; training streams never use dataset seeds


def _train(config, out: Path) -> dict | None:
    """Train (or resume) ``config`` in ``out``; the final checkpoint, or None if ``out`` holds a longer run."""
    from napari_aprnet.checkpoint import load_checkpoint
    from napari_aprnet.train import train

    done = 0
    if (out / "checkpoint.pt").is_file():
        done = int(load_checkpoint(out / "checkpoint.pt")["train"]["step"])
    if done < config.steps:
        for ev in train(config, out, resume=done > 0):
            if ev.phase == "train" and ev.step % 100 == 0:
                print(f"step {ev.step}/{ev.total_steps}  loss {ev.loss:.4f}  {ev.elapsed:.0f} s", flush=True)
    data = load_checkpoint(out / "checkpoint.pt")
    if int(data["train"]["step"]) != config.steps:
        print(f"the run in {out} has {data['train']['step']} steps, not {config.steps}; use another --runs folder",
              file=sys.stderr)
        return None
    return data


def _bundle(data: dict, name: str) -> None:
    """Write the weights of checkpoint ``data`` as the bundled model ``name``."""
    from napari_aprnet.bundled import BUNDLED_MODELS
    from napari_aprnet.checkpoint import save_checkpoint

    target = ROOT / "napari_aprnet" / "bundled" / BUNDLED_MODELS[name][0]
    save_checkpoint(target, model_config=data["model"], state_dict=data["state_dict"],
                    class_names=data["class_names"], input_spec=data["input"], train=data["train"])
    print(f"wrote {target.relative_to(ROOT)} ({target.stat().st_size / 1e6:.2f} MB)")


def shapes(steps: int, runs: Path) -> bool:
    """Train, bundle and check the shapes classifier; True when it meets its check."""
    from napari_aprnet.classify import Classifier
    from napari_aprnet.data import ShapesDataset
    from napari_aprnet.samples import shapes_gallery
    from napari_aprnet.train import TrainConfig

    cfg = TrainConfig(model="APR_B", steps=steps, batch_size=36, lr=5e-4, rel_error=0.1, size=256,
                      image_size=256, seed=0, checkpoint_every=100, last_window=100)
    data = _train(cfg, runs / "APR_B_E0.1")
    if data is None:
        return False
    _bundle(data, "shapes")
    clf = Classifier.bundled("shapes")
    check = ShapesDataset(50, seed=CHECK_SEED, size=256, split=2)
    pred = clf.predict_proba([check[i][0] for i in range(len(check))], batch_size=36).argmax(1)
    accuracy = float((pred == check.labels).mean())
    print(f"accuracy on {len(check)} fresh 256x256 images (seed {CHECK_SEED}): {accuracy:.4f}")
    images, names = shapes_gallery()
    got = clf.predict(images)
    print("shapes sample:", ", ".join(f"{n} -> {g}" for n, g in zip(names, got)))
    return accuracy >= 0.98 and list(got) == list(names)


def nuclei2d(steps: int, runs: Path) -> bool:
    """Train, bundle and check the 2D nuclei segmentation model; True when it meets its check."""
    from napari_aprnet.data.nuclei import NucleiDataset
    from napari_aprnet.samples import nuclei_image
    from napari_aprnet.train import TrainConfig
    from napari_aprnet.training.seg_metrics import SegmentationCounts
    from napari_aprnet.training.segment import Segmenter

    cfg = TrainConfig(model="APR_UNet", task="segment", data="nuclei2d", image_shape=[256, 256], boundary=True,
                      steps=steps, batch_size=4, lr=1e-3, rel_error=0.2, apr_params={"auto_parameters": True},
                      loss_weighting="particles", seed=0, n_test=20, checkpoint_every=100)
    data = _train(cfg, runs / "bundled_nuclei2d")
    if data is None:
        return False
    _bundle(data, "nuclei2d")
    segmenter = Segmenter.load("bundled:nuclei2d")
    fresh = NucleiDataset(20, seed=CHECK_SEED, shape=(256, 256), split=2)
    ok = True
    for what, pairs in ((f"{len(fresh)} fresh 256x256 images (seed {CHECK_SEED})", (fresh[i] for i in range(20))),
                        ("the 512x512 nuclei sample", [nuclei_image()])):
        counts = SegmentationCounts()
        for image, truth in pairs:
            result = segmenter.segment(image)
            counts.add(result.labels, truth, instances=result.labels)
        print(f"{what}: IoU {counts.iou:.3f}  Dice {counts.dice:.3f}  object F1 {counts.f1:.3f} "
              f"({counts.tp} matched, {counts.fp} false, {counts.fn} missed)")
        ok = ok and counts.iou >= 0.9 and counts.f1 >= 0.9
    return ok


MODELS = {"shapes": (shapes, 3000), "nuclei2d": (nuclei2d, 1000)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="shapes", choices=sorted(MODELS))
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the model's, see above)")
    p.add_argument("--runs", type=Path, default=ROOT / "out" / "training")
    args = p.parse_args(argv)
    make, default_steps = MODELS[args.model]
    if make(args.steps or default_steps, args.runs):
        return 0
    print(f"the bundled model {args.model!r} misses its check (see the docstring)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
