"""Train the bundled shapes classifier and write it to ``napari_aprnet/bundled/shapes_apr_b.pt``.

The run is the thesis' APR_B setting (streaming shapes, 256x256, batch 36,
Adam lr 5e-4, E = 0.1, seed 0) for ``--steps`` batches. It is the same run
folder as the ``APR_B_E0.1`` row of ``benchmarks/bench_training.py table``,
so either command reuses (or resumes) the other's training. The result is
deterministic for a given machine and thread count: every batch is a pure
function of (seed, step) and the initial weights of the seed.

The bundled file holds the weights (BatchNorm statistics re-estimated, no
optimizer state). The script then checks the model on 300 fresh images
(50 per class, a seed never used in training) and on the plugin's shapes
sample, and exits with status 1 if accuracy is below 0.98 or a sample image
is misclassified. Run::

    .venv/bin/python scripts/train_bundled_model.py [--steps 3000] [--runs out/training]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "napari_aprnet" / "bundled" / "shapes_apr_b.pt"
CHECK_SEED = 20261129  # the held-out check set; training streams never use ShapesDataset seeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--runs", type=Path, default=ROOT / "out" / "training")
    args = p.parse_args(argv)

    from napari_aprnet.checkpoint import load_checkpoint, save_checkpoint
    from napari_aprnet.classify import Classifier
    from napari_aprnet.data import ShapesDataset
    from napari_aprnet.samples import shapes_gallery
    from napari_aprnet.train import TrainConfig, train

    out = args.runs / "APR_B_E0.1"
    done = 0
    if (out / "checkpoint.pt").is_file():
        done = int(load_checkpoint(out / "checkpoint.pt")["train"]["step"])
    if done < args.steps:
        cfg = TrainConfig(model="APR_B", steps=args.steps, batch_size=36, lr=5e-4, rel_error=0.1, size=256,
                          image_size=256, seed=0, checkpoint_every=100, last_window=100)
        for ev in train(cfg, out, resume=done > 0):
            if ev.phase == "train" and ev.step % 100 == 0:
                print(f"step {ev.step}/{ev.total_steps}  loss {ev.loss:.4f}  {ev.elapsed:.0f} s", flush=True)
    data = load_checkpoint(out / "checkpoint.pt")
    if int(data["train"]["step"]) != args.steps:
        print(f"the run in {out} has {data['train']['step']} steps, not {args.steps}; use another --runs folder",
              file=sys.stderr)
        return 1
    save_checkpoint(TARGET, model_config=data["model"], state_dict=data["state_dict"],
                    class_names=data["class_names"], input_spec=data["input"], train=data["train"])
    print(f"wrote {TARGET.relative_to(ROOT)} ({TARGET.stat().st_size / 1e6:.2f} MB)")

    clf = Classifier.bundled("shapes")
    check = ShapesDataset(50, seed=CHECK_SEED, size=256, split=2)
    pred = clf.predict_proba([check[i][0] for i in range(len(check))], batch_size=36).argmax(1)
    accuracy = float((pred == check.labels).mean())
    print(f"accuracy on {len(check)} fresh 256x256 images (seed {CHECK_SEED}): {accuracy:.4f}")
    images, names = shapes_gallery()
    got = clf.predict(images)
    print("shapes sample:", ", ".join(f"{n} -> {g}" for n, g in zip(names, got)))
    ok = accuracy >= 0.98 and list(got) == list(names)
    if not ok:
        print("the bundled model misses its goal (accuracy >= 0.98, every sample image right)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
