"""Segmentation measures on the pixel grid: foreground IoU and Dice, object-level F1 (pure numpy and scipy).

- *Pixel IoU* and *Dice* of the foreground (every label > 0):
  ``|P & T| / |P | T|`` and ``2 |P & T| / (|P| + |T|)``; both are 1 when
  prediction and truth are both empty.
- *Object F1 at IoU 0.5*: predicted objects are the connected components of
  the predicted foreground (face connectivity: 4 neighbours in 2D, 6 in 3D;
  see :func:`label_instances`), true objects the instances of the
  ground-truth mask. A predicted and a true object *match* when their IoU
  exceeds 0.5. Each object can match at most one other (two objects that
  each cover more than half of the union with a third cannot be disjoint),
  so the matching is unique and needs no assignment solver. Then
  ``F1 = 2 TP / (2 TP + FP + FN)`` (1 when there are no objects at all).

Evaluations over many images add the counts (intersections, unions, TP, FP,
FN) of all images before dividing (:class:`SegmentationCounts`), so large
images weigh more than small ones, as pixels do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["label_instances", "match_objects", "SegmentationCounts", "iou_score", "dice_score", "object_f1"]


def label_instances(foreground: np.ndarray, seeds: np.ndarray | None = None) -> np.ndarray:
    """Instance labels (int32, 0 background, 1..n) of a foreground mask.

    Parameters
    ----------
    foreground : ndarray of bool
        The predicted foreground.
    seeds : ndarray of bool, optional
        Object interiors (inside ``foreground``). When given, each connected
        component of ``seeds`` is an object and every other foreground pixel
        joins the nearest one, so objects that touch through a boundary band
        are kept apart. Without seeds, each connected component of the
        foreground is an object.
    """
    foreground = np.asarray(foreground, bool)
    if seeds is None:
        labels, _ = ndimage.label(foreground)
        return labels.astype(np.int32, copy=False)
    seeds = np.asarray(seeds, bool) & foreground
    if seeds.shape != foreground.shape:
        raise ValueError(f"seeds {seeds.shape} and foreground {foreground.shape} differ in shape")
    labels, n = ndimage.label(seeds)
    if n == 0:
        return label_instances(foreground)
    nearest = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    grown = labels[tuple(nearest)]
    grown[~foreground] = 0
    return grown.astype(np.int32, copy=False)


def match_objects(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of two instance label images, matching objects whose IoU exceeds ``threshold``.

    ``threshold`` must be at least 0.5 so that matches are unique.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and true {truth.shape} labels differ in shape")
    if threshold < 0.5:
        raise ValueError(f"matching needs an IoU threshold >= 0.5 to be unique, got {threshold}")
    p_ids, p_inv = np.unique(predicted.ravel(), return_inverse=True)
    t_ids, t_inv = np.unique(truth.ravel(), return_inverse=True)
    overlap = np.bincount(p_inv * len(t_ids) + t_inv, minlength=len(p_ids) * len(t_ids)).reshape(
        len(p_ids), len(t_ids))
    overlap = overlap[p_ids > 0][:, t_ids > 0]
    p_area = np.bincount(p_inv, minlength=len(p_ids))[p_ids > 0]
    t_area = np.bincount(t_inv, minlength=len(t_ids))[t_ids > 0]
    union = p_area[:, None] + t_area[None, :] - overlap
    tp = int((overlap > threshold * union).sum())
    return tp, len(p_area) - tp, len(t_area) - tp


def _ratio(num: float, den: float) -> float:
    return 1.0 if den == 0 else float(num / den)


def iou_score(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU of one prediction (labels > 0 are foreground)."""
    return SegmentationCounts().add(predicted, truth, objects=False).iou


def dice_score(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice of one prediction (labels > 0 are foreground)."""
    return SegmentationCounts().add(predicted, truth, objects=False).dice


def object_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Object F1 at IoU 0.5 of one prediction: connected components of ``predicted > 0`` vs the instances of
    ``truth``."""
    return SegmentationCounts().add(predicted, truth).f1


@dataclass
class SegmentationCounts:
    """Running sums of a segmentation evaluation over many images.

    Attributes
    ----------
    intersection, predicted, true : int
        Foreground pixels in both, in the prediction, in the truth.
    tp, fp, fn : int
        Matched, unmatched predicted and unmatched true objects.
    """

    intersection: int = 0
    predicted: int = 0
    true: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, predicted: np.ndarray, truth: np.ndarray, *, instances: np.ndarray | None = None,
            objects: bool = True) -> "SegmentationCounts":
        """Add one image.

        Parameters
        ----------
        predicted : ndarray of int or bool
            Predicted labels or classes; > 0 is foreground.
        truth : ndarray of int
            Ground-truth instance labels (0 background).
        instances : ndarray of int, optional
            The predicted objects; default :func:`label_instances` of ``predicted > 0``.
        objects : bool
            Also count objects (TP, FP, FN).
        """
        predicted, truth = np.asarray(predicted), np.asarray(truth)
        if predicted.shape != truth.shape:
            raise ValueError(f"prediction {predicted.shape} and ground truth {truth.shape} differ in shape")
        p, t = predicted > 0, truth > 0
        self.intersection += int(np.count_nonzero(p & t))
        self.predicted += int(np.count_nonzero(p))
        self.true += int(np.count_nonzero(t))
        if objects:
            tp, fp, fn = match_objects(label_instances(p) if instances is None else instances, truth)
            self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        return self

    @property
    def iou(self) -> float:
        return _ratio(self.intersection, self.predicted + self.true - self.intersection)

    @property
    def dice(self) -> float:
        return _ratio(2 * self.intersection, self.predicted + self.true)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)
