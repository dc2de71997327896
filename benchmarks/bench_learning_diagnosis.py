"""Why the thesis networks did not learn the shapes task: one controlled experiment per candidate cause.

Every variant trains APR_B (or Pix_B) on streaming shapes with the thesis'
setting (batch 36, Adam 5e-4, E = 0.1, 256x256 images, seed 0) and changes
ONE thing against its reference. After training, the model (BatchNorm
statistics re-estimated) classifies 600 held-out images drawn from the
*legacy* distribution (amplitude 3-12 % of the radius) and 600 from the new
one, and the errors are binned by the perturbation amplitude in pixels:
this shows whether the remaining errors are fuzzy shapes whose perturbation
is lost in the rounding to pixels.

Runs are kept in ``--runs`` (checkpointed every 100 steps; rerunning the
script resumes unfinished runs and skips finished ones). Results go to
``benchmarks/results/diagnosis.json``; ``training.md`` quotes them. Run::

    .venv/bin/python benchmarks/bench_learning_diagnosis.py [--steps 800] [--only NAME ...]

``--held-out-of CHECKPOINT`` analyses one trained network instead (e.g. a
``bench_training.py`` run at 1000 batches): its held-out errors on the
default distribution by amplitude, ripple symmetry and object size, and its
error on fresh batches with BatchNorm in train mode (batch statistics, as
the training-batch error is measured) against eval mode.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import napari_aprnet.data.spec as input_spec
from napari_aprnet.classify import Classifier
from napari_aprnet.data.shapes import ShapeParams, ShapesDataset, ShapeStream
from napari_aprnet.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
LEGACY = {"amplitude": [0.03, 0.12], "frequency": [5, 16], "amplitude_of": "radius"}
#: the first "new" distribution (amplitude 2-6.4 px) still had ripples of 5-16 periods; the default is 8-16 now
NEW: dict = {"frequency": [5, 16]}

#: name -> (model, TrainConfig overrides, description)
VARIANTS = {
    "legacy": ("APR_B", {"normalisation": "dataset", "shape_params": LEGACY},
               "before: one mean/std for all images, amplitude 3-12 % of the radius"),
    "legacy+image_norm": ("APR_B", {"normalisation": "image", "shape_params": LEGACY},
                          "per-image standardisation, amplitude 3-12 % of the radius"),
    "image_norm+new_amplitude": ("APR_B", {"normalisation": "image", "shape_params": NEW},
                                 "per-image standardisation, amplitude 2-6.4 px (0.8-2.5 % of the image side), frequency 5-16"),
    "new_amplitude+dataset_norm": ("APR_B", {"normalisation": "dataset", "shape_params": NEW},
                                   "one mean/std for all images, amplitude 2-6.4 px"),
    "new+frequency_8-16": ("APR_B", {"normalisation": "image", "shape_params": {**NEW, "frequency": [8, 16]}},
                           "as image_norm+new_amplitude, ripples of 8-16 periods (no 5-7)"),
    "new+frequency_12-24": ("APR_B", {"normalisation": "image", "shape_params": {**NEW, "frequency": [12, 24]}},
                            "as image_norm+new_amplitude, ripples of 12-24 periods (finer than the default 8-16)"),
    "new+frequency_12-24_seed1": ("APR_B", {"shape_params": {"frequency": [12, 24]}, "seed": 1},
                                  "as new+frequency_12-24, seed 1"),
    "new+frequency_12-24_seed2": ("APR_B", {"shape_params": {"frequency": [12, 24]}, "seed": 2},
                                  "as new+frequency_12-24, seed 2"),
    **{f"frequency_12-24_E{e}": ("APR_B", {"shape_params": {"frequency": [12, 24]}, "rel_error": e},
                                 f"as new+frequency_12-24, APRs at E = {e} (the Table 4.2 row)")
       for e in (0.4, 0.6, 0.8)},
    "pix128_frequency_12-24": ("Pix_B", {"shape_params": {"frequency": [12, 24]}, "size": 128},
                               "Pix_B on 128x128 (downsampled), ripples of 12-24 periods"),
    "pix64_frequency_12-24": ("Pix_B", {"normalisation": "image", "shape_params": {**NEW, "frequency": [12, 24]},
                                        "size": 64},
                              "Pix_B on 64x64 (downsampled), ripples of 12-24 periods"),
    "new+filled": ("APR_B", {"normalisation": "image", "shape_params": {**NEW, "filled": True}},
                   "as image_norm+new_amplitude, filled objects"),
    "pix64_legacy": ("Pix_B", {"normalisation": "dataset", "shape_params": LEGACY, "size": 64},
                     "Pix_B on 64x64 (downsampled), before"),
    "pix64_new": ("Pix_B", {"normalisation": "image", "shape_params": NEW, "size": 64},
                  "Pix_B on 64x64 (downsampled), per-image standardisation, new amplitude"),
    "pix64_sampled": ("Pix_B", {"size": 64},
                      "Pix_B on 64x64, default distribution, downsampled by bilinear interpolation WITHOUT "
                      "anti-aliasing (point sampling, as torch's interpolate did before 1.11)"),
    "pix128_sampled": ("Pix_B", {"size": 128},
                       "Pix_B on 128x128, default distribution, downsampled by bilinear interpolation WITHOUT "
                       "anti-aliasing"),
    "pix64_sampled_frequency_12-24": ("Pix_B", {"size": 64, "shape_params": {"frequency": [12, 24]}},
                                      "as pix64_sampled, ripples of 12-24 periods"),
    "contrast_norm": ("APR_B", {},
                      "default, but each image scaled to its contrast, (x - median) / max |x - median|, so the "
                      "outline is +-1 and the background 0 whatever the object's size (per-image "
                      "standardisation makes the outline 1 / sqrt(the outline's pixel fraction), 6-10)"),
    "narrow_band": ("APR_B", {"apr_params": {"lambda_": 0.0}},
                    "default, but APRs formed without the smoothing spline (lambda_ = 0): pixel-resolution "
                    "particles within about 2 px of the outline instead of 4-5 px, computational ratio 30 instead "
                    "of 18 (thesis: slightly above 50), 99 % of the images reconstructed exactly (95 % with the "
                    "spline)"),
    "small_fine_ripples": ("APR_B", {"shape_params": {"frequency": [12, 24], "amplitude": [0.004, 0.012]}},
                           "default, but ripples of 12-24 periods and 1-3 px (0.4-1.2 % of the image side)"),
    "pix64_sampled_small_fine_ripples": ("Pix_B", {"size": 64, "shape_params": {"frequency": [12, 24],
                                                                               "amplitude": [0.004, 0.012]}},
                                         "as pix64_sampled, ripples of 12-24 periods and 1-3 px"),
    "narrow_band_seed1": ("APR_B", {"apr_params": {"lambda_": 0.0}, "seed": 1}, "as narrow_band, seed 1"),
}
#: variants whose downsampling is plain bilinear interpolation (no anti-aliasing filter)
SAMPLED = {"pix64_sampled", "pix128_sampled", "pix64_sampled_frequency_12-24", "pix64_sampled_small_fine_ripples"}
_ANTIALIASED = input_spec.resize_bilinear  # the package's resize, restored for the other variants
_STANDARDISED = input_spec.InputSpec.statistics  # the package's per-image statistics, restored likewise


def _contrast_statistics(self, values, weights=None):
    """(median, max |x - median|) of one grey image's values (the median weighted by their pixels), in place
    of (mean, std)."""
    flat = np.asarray(values, np.float64).reshape(-1)
    order = np.argsort(flat)
    w = np.ones_like(flat) if weights is None else np.asarray(weights, np.float64).reshape(-1)[order]
    median = flat[order][np.searchsorted(np.cumsum(w), 0.5 * w.sum())]
    scale = np.abs(flat - median).max()
    return np.asarray([median], np.float32), np.asarray([scale if scale > 1e-6 else 1.0], np.float32)


def _resize_sampled(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize without anti-aliasing: each output pixel interpolates the 2x2 input pixels around its
    centre, so 4x downsampling reads 4 of every 16 pixels (thesis 4.1.3.3 says only "bilinear interpolation")."""
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (size, size):
        return image
    t = torch.from_numpy(image)[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _train(name: str, steps: int, runs: Path) -> dict:
    model, overrides, _ = VARIANTS[name]
    _use_downsampling(name)
    out = runs / name
    cfg = TrainConfig(model=model, steps=steps, batch_size=36, size=256, image_size=256, rel_error=0.1,
                      seed=0, lr=5e-4, checkpoint_every=100, last_window=100)
    cfg = TrainConfig(**{**cfg.to_dict(), **overrides})
    resume = (out / "checkpoint.pt").is_file()
    t0 = time.perf_counter()
    for ev in train(cfg, out, resume=resume):
        if ev.phase == "train" and ev.step % 100 == 0:
            print(f"  {name} step {ev.step} error(batch) {1 - ev.accuracy:.3f}", flush=True)
    errors = []
    with open(out / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["phase"] == "train":
                errors.append(1 - float(row["accuracy"]))
    return {"errors": errors, "train_s": time.perf_counter() - t0}


def _use_downsampling(name: str) -> None:
    """Point sampling for the SAMPLED variants, the package's anti-aliased resize otherwise (in this process:
    the runs load data without worker processes)."""
    input_spec.resize_bilinear = _resize_sampled if name in SAMPLED else _ANTIALIASED
    input_spec.InputSpec.statistics = _contrast_statistics if name == "contrast_norm" else _STANDARDISED


def _held_out(clf: Classifier, params: ShapeParams, n_per_class: int = 100) -> dict:
    ds = ShapesDataset(n_per_class, seed=424242, size=256, split=2, params=params)
    images, labels, amps, freqs, radii = [], [], [], [], []
    for i in range(len(ds)):
        im, lab = ds[i]
        info = ds.info(i)
        images.append(im)
        labels.append(lab)
        amps.append(info.amplitude)
        freqs.append(info.frequency)
        radii.append(info.radius)
    pred = clf.predict_proba(images, batch_size=36).argmax(1)
    labels, amps, freqs, radii = np.asarray(labels), np.asarray(amps), np.asarray(freqs), np.asarray(radii)
    wrong = pred != labels
    fuzzy = labels >= 3
    # a ripple of k periods has k-fold symmetry: k divisible by 3 or 4 shares the symmetry of a triangle or square
    symmetry = {"periods divisible by 4": freqs % 4 == 0, "by 3 (not 4)": (freqs % 3 == 0) & (freqs % 4 != 0),
                "by neither": (freqs % 3 != 0) & (freqs % 4 != 0)}
    by_symmetry = [{"periods": key, "n": int((fuzzy & m).sum()), "error": float(wrong[fuzzy & m].mean())}
                   for key, m in symmetry.items() if (fuzzy & m).any()]
    by_radius = []
    for lo, hi in ((0, 30), (30, 45), (45, 1000)):
        m = fuzzy & (radii >= lo) & (radii < hi)
        if m.any():
            by_radius.append({"radius_px": [lo, hi], "n": int(m.sum()), "error": float(wrong[m].mean())})
    bins = [0, 1, 1.5, 2, 3, 5, 100]
    by_amp = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = fuzzy & (amps >= lo) & (amps < hi)
        if m.any():
            by_amp.append({"amplitude_px": [lo, hi], "n": int(m.sum()), "error": float(wrong[m].mean()),
                           "called_regular_twin": float((pred[m] == labels[m] - 3).mean())})
    confusion = np.zeros((6, 6), int)
    np.add.at(confusion, (labels, pred), 1)
    return {"error": float(wrong.mean()), "error_regular": float(wrong[~fuzzy].mean()),
            "error_fuzzy": float(wrong[fuzzy].mean()), "by_amplitude": by_amp, "by_symmetry": by_symmetry,
            "by_radius": by_radius, "confusion": confusion.tolist()}


def _batch_statistics_effect(clf: Classifier, n_batches: int = 20, seed: int = 777) -> dict:
    """Error on fresh stream batches of 36 with BatchNorm in train mode (each batch's own statistics, as the
    training-batch error is measured) and in eval mode (running statistics), the same images for both."""
    stream = ShapeStream(seed=seed, size=256, batch=36)
    errors: dict[str, list[float]] = {"train_mode": [], "eval_mode": []}
    state = {k: v.clone() for k, v in clf.model.state_dict().items()}  # train mode updates the running stats
    try:
        for b in range(n_batches):
            images, labels = stream.batch(b)
            x = clf.spec.make_input(list(images), convert_channels=False)
            for mode in errors:
                clf.model.load_state_dict(state)
                clf.model.train(mode == "train_mode")
                with torch.no_grad():
                    errors[mode].append(float((clf.model(x).argmax(1).numpy() != labels).mean()))
    finally:
        clf.model.load_state_dict(state)
        clf.model.eval()
    return {mode: float(np.mean(e)) for mode, e in errors.items()} | {"images": 36 * n_batches}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--runs", type=Path, default=Path("out/diagnosis"))
    p.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    p.add_argument("--held-out-of", type=Path, default=None, metavar="CHECKPOINT",
                   help="only analyse this checkpoint's held-out errors (default distribution); stored in "
                        "results/held_out.json under its run folder's name")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "diagnosis.json"
    if args.held_out_of is not None:
        clf = Classifier.load(args.held_out_of)
        entry = _held_out(clf, ShapeParams(), n_per_class=200)
        entry["batch_statistics"] = _batch_statistics_effect(clf)
        held_path = RESULTS / "held_out.json"
        held = json.loads(held_path.read_text()) if held_path.is_file() else {}
        held[args.held_out_of.parent.name] = entry
        held_path.write_text(json.dumps(held, indent=1))
        print(json.dumps({k: entry[k] for k in ("error", "error_regular", "error_fuzzy", "by_amplitude",
                                                  "by_symmetry", "by_radius", "batch_statistics")}, indent=1))
        return 0
    for name in args.only or list(VARIANTS):
        print(name, flush=True)
        r = _train(name, args.steps, args.runs)
        clf = Classifier.load(args.runs / name / "checkpoint.pt")
        errs = np.asarray(r["errors"])
        entry = {"description": VARIANTS[name][2], "model": VARIANTS[name][0], "steps": len(errs),
                 "threads": torch.get_num_threads(),
                 "train_error_at": {str(s): float(errs[max(0, s - 100):s].mean())
                                    for s in (300, 500, 600, 800, 1000, 1500, 2000, 3000) if s <= len(errs)},
                 "held_out_legacy": _held_out(clf, ShapeParams(**{k: tuple(v) if isinstance(v, list) else v
                                                                  for k, v in LEGACY.items()})),
                 "held_out_new": _held_out(clf, ShapeParams())}
        results = json.loads(path.read_text()) if path.is_file() else {}  # other runs may have written meanwhile
        results[name] = entry
        path.write_text(json.dumps(results, indent=1))
        print(json.dumps({k: entry[k] for k in ("train_error_at",)}),
              "held-out legacy", round(entry["held_out_legacy"]["error"], 3),
              "new", round(entry["held_out_new"]["error"], 3), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
