"""Oracle studies of inference-time-dynamic convolutions ("The Untapped Potential of
Off-the-Shelf CNNs", 2021).

- :func:`run_oracle` (Sec. 3.3): every sample under every permutation, one forward per
  permutation and batch, each batch's results saved so that an interrupted run resumes.
- :func:`oracle_summary`: best / median / worst accuracy. Per sample the permutations
  are ranked by their score; the best-case network takes the top-ranked permutation,
  the worst-case one the lowest, the median one the permutation at the median rank
  (the lower middle for an even count). Classification: score = softmax confidence of
  the true label + 1 if the prediction is correct (so the best case is correct whenever
  any permutation is). Segmentation: score = quality = the image's mIoU (mean IoU over
  the classes present in its ground truth or prediction). Detection: score = quality =
  the image's AP (VOC-style AP at IoU 0.5, mmdet's ``eval_map``, averaged over the
  classes of its ground truth; an image without ground truth scores 1 if it has no
  detection, else 0).
- :func:`greedy_accumulation` (Sec. 4.2): best-case quality when only k permutations
  are allowed, choosing greedily the permutation that adds the most.
- :func:`efficient_oracle` (Sec. 4.6): per sample, the cheapest permutation (MACs) whose
  prediction equals the reference permutation's.
"""
import json
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmdyn.ops.attribute_conv import ConvOption


def permutation_label(permutation: Sequence[ConvOption]) -> str:
    return '|'.join(str(o) for o in permutation)


def _serialise(permutation):
    return [dict(stride=str(o.stride), dilation=o.dilation, kernel_size=o.kernel_size)
            for o in permutation]


# -- per-sample scores ------------------------------------------------------------------

def classification_scores(model, data):
    """``(score, quality, prediction)`` per sample of a preprocessed batch for an
    mmpretrain classifier: score = p(true label) + correct, quality = correct."""
    logits = model(data['inputs'], data['data_samples'], mode='tensor')
    labels = torch.cat([s.gt_label for s in data['data_samples']]).to(logits.device)
    probs = F.softmax(logits, dim=1)
    predictions = probs.argmax(1)
    correct = (predictions == labels).float()
    confidence = probs.gather(1, labels[:, None])[:, 0]
    return confidence + correct, correct, predictions


def image_miou(prediction: torch.Tensor, truth: torch.Tensor, ignore_index: int = 255):
    """Mean IoU over the classes present in ``truth`` or ``prediction`` (void ignored)."""
    valid = truth != ignore_index
    prediction, truth = prediction[valid], truth[valid]
    classes = torch.unique(torch.cat([prediction, truth]))
    if len(classes) == 0:
        return 1.0
    ious = [((prediction == c) & (truth == c)).sum().item()
            / ((prediction == c) | (truth == c)).sum().item() for c in classes]
    return float(np.mean(ious))


def segmentation_scores(model, data):
    """``(score, quality, prediction)`` per image for an mmseg segmentor: score =
    quality = the image's mIoU; the prediction id is -1 (maps are not compared)."""
    results = model.predict(data['inputs'], data['data_samples'])
    ignore = getattr(model.decode_head, 'ignore_index', 255)
    quality = torch.tensor([image_miou(r.pred_sem_seg.data[0].cpu(),
                                       r.gt_sem_seg.data[0].cpu(), ignore) for r in results])
    return quality, quality, torch.full((len(results),), -1)


def image_ap(bboxes, scores, labels, gt_bboxes, gt_labels, iou_thr: float = 0.5) -> float:
    """One image's AP at ``iou_thr`` (mmdet's ``eval_map``, VOC area interpolation),
    averaged over the classes present in its ground truth; boxes ``[n, 4]`` x1y1x2y2.
    Without ground truth: 1.0 when nothing is detected, else 0.0."""
    from mmdet.evaluation.functional import eval_map
    bboxes, scores, labels = (np.asarray(v, dtype=np.float32) for v in (bboxes, scores, labels))
    gt_bboxes = np.asarray(gt_bboxes, dtype=np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64)
    if not len(gt_labels):
        return float(len(labels) == 0)
    classes = int(max(gt_labels.max(), labels.max() if len(labels) else 0)) + 1
    detections = [np.concatenate([bboxes.reshape(-1, 4)[labels == c],
                                  scores[labels == c, None]], axis=1) for c in range(classes)]
    mean_ap, _ = eval_map([detections], [dict(bboxes=gt_bboxes, labels=gt_labels)],
                          iou_thr=iou_thr, logger='silent')
    return float(mean_ap)


def detection_scores(model, data):
    """``(score, quality, prediction)`` per image for an mmdet detector: score = quality
    = the image's AP at IoU 0.5; the prediction id is -1 (boxes are not compared)."""
    results = model.predict(data['inputs'], data['data_samples'])
    quality = torch.tensor([image_ap(r.pred_instances.bboxes.cpu(), r.pred_instances.scores.cpu(),
                                     r.pred_instances.labels.cpu(), r.gt_instances.bboxes.cpu(),
                                     r.gt_instances.labels.cpu()) for r in results])
    return quality, quality, torch.full((len(results),), -1)


def scorer_for(model) -> Callable:
    if hasattr(model, 'decode_head'):
        return segmentation_scores
    if hasattr(model, 'head'):
        return classification_scores
    if hasattr(model, 'bbox_head') or hasattr(model, 'roi_head'):
        return detection_scores
    raise TypeError(f'{type(model).__name__}: the oracle covers mmpretrain classifiers, '
                    'mmseg segmentors and mmdet detectors')


# -- the oracle run --------------------------------------------------------------------

@dataclass
class OracleResults:
    """``[P, N]`` arrays: permutations x samples."""
    permutations: List[tuple]
    scores: np.ndarray
    quality: np.ndarray
    predictions: np.ndarray
    macs: np.ndarray

    @property
    def default_index(self) -> int:
        return 0  # run_oracle puts the reference permutation first


def run_oracle(model, dataloader, permutations: Sequence[tuple], work_dir: Optional[str] = None,
               progress: bool = True, max_batches: Optional[int] = None) -> OracleResults:
    """Score every sample of ``dataloader`` under every permutation (the first one is the
    reference). With ``work_dir``, each batch's arrays go to ``batch_<k>.npz`` and
    existing files are reused (resume after interruption)."""
    backbone = model.backbone
    permutations = [backbone.check_permutation(p) for p in permutations]
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
        listing = os.path.join(work_dir, 'permutations.json')
        serialised = [_serialise(p) for p in permutations]
        if os.path.exists(listing):
            with open(listing) as f:
                if json.load(f) != serialised:
                    raise ValueError(f'{work_dir} holds results for other permutations; use '
                                     'another --work-dir')
        else:
            with open(listing, 'w') as f:
                json.dump(serialised, f)
    scorer = scorer_for(model)
    total = len(dataloader) if max_batches is None else min(max_batches, len(dataloader))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total * len(permutations), desc='oracle', unit='fwd')
    model.eval()
    parts = []
    for k, data in enumerate(dataloader):
        if k >= total:
            break
        path = os.path.join(work_dir, f'batch_{k:05d}.npz') if work_dir else None
        if path and os.path.exists(path):
            with np.load(path) as saved:
                parts.append({key: saved[key] for key in saved.files})
            if bar:
                bar.update(len(permutations))
            continue
        data = model.data_preprocessor(data, False)
        arrays = {key: [] for key in ('scores', 'quality', 'predictions', 'macs')}
        with torch.no_grad():
            for permutation in permutations:
                backbone.set_permutation(permutation)
                score, quality, prediction = scorer(model, data)
                arrays['scores'].append(score.cpu().numpy())
                arrays['quality'].append(quality.cpu().numpy())
                arrays['predictions'].append(prediction.cpu().numpy())
                arrays['macs'].append(backbone.sparsity_summary().executed_flops.cpu().numpy())
                if bar:
                    bar.update(1)
        arrays = {key: np.stack(v) for key, v in arrays.items()}
        if path:
            np.savez(path + '.tmp.npz', **arrays)
            os.replace(path + '.tmp.npz', path)
        parts.append(arrays)
    backbone.set_permutation(None)
    if bar:
        bar.close()
    return OracleResults(permutations, *(np.concatenate([p[key] for p in parts], axis=1)
                                         for key in ('scores', 'quality', 'predictions',
                                                     'macs')))


# -- what the results say --------------------------------------------------------------

def ranked_quality(scores: np.ndarray, quality: np.ndarray):
    """Per sample, the quality of the best-, median- and worst-scored permutation."""
    order = np.argsort(scores, axis=0, kind='stable')  # ascending
    columns = np.arange(scores.shape[1])
    count = scores.shape[0]
    return (quality[order[-1], columns], quality[order[(count - 1) // 2], columns],
            quality[order[0], columns])


def oracle_summary(results: OracleResults) -> dict:
    best, median, worst = ranked_quality(results.scores, results.quality)
    static = results.quality.mean(axis=1)
    distinct = [len(np.unique(results.predictions[:, n]))
                for n in range(results.predictions.shape[1])]
    return dict(
        samples=int(results.scores.shape[1]), permutations=len(results.permutations),
        best=float(best.mean()), median=float(median.mean()), worst=float(worst.mean()),
        reference=float(static[results.default_index]),
        reference_permutation=permutation_label(results.permutations[results.default_index]),
        best_static=float(static.max()),
        best_static_permutation=permutation_label(results.permutations[int(static.argmax())]),
        worst_static=float(static.min()),
        mean_distinct_predictions=float(np.mean(distinct)),
        distinct_prediction_counts={int(c): int(n) for c, n in
                                    zip(*np.unique(distinct, return_counts=True))},
        reference_gmacs=float(results.macs[results.default_index].mean() / 1e9))


def sample_preferences(results: OracleResults) -> list:
    """Per sample: the best-scored permutation, its score, the number of permutations
    that reach the best quality and the number of distinct predictions (Fig. 2)."""
    best = results.scores.argmax(axis=0)
    rows = []
    for n, p in enumerate(best):
        rows.append(dict(sample=n, best_permutation=permutation_label(results.permutations[p]),
                         best_score=float(results.scores[p, n]),
                         best_quality_count=int((results.quality[:, n]
                                                 >= results.quality[:, n].max()).sum()),
                         distinct_predictions=int(len(np.unique(results.predictions[:, n])))))
    return rows


def greedy_accumulation(quality: np.ndarray, max_count: Optional[int] = None):
    """Greedy best-case quality with k = 1, 2, ... permutations allowed: each step adds
    the permutation that raises the mean per-sample maximum the most (ties: the lower
    index). Returns ``(chosen indices, curve)`` with ``curve[k - 1]`` the value for k."""
    count = quality.shape[0] if max_count is None else min(max_count, quality.shape[0])
    covered = np.full(quality.shape[1], -np.inf)
    chosen, curve = [], []
    for _ in range(count):
        gains = np.maximum(quality, covered[None]).mean(axis=1)
        gains[chosen] = -np.inf
        pick = int(np.argmax(gains))
        chosen.append(pick)
        covered = np.maximum(covered, quality[pick])
        curve.append(float(covered.mean()))
    return chosen, curve


def efficient_oracle(results: OracleResults, reference: Optional[int] = None) -> dict:
    """Per sample, the cheapest permutation with the reference's prediction (Sec. 4.6);
    mean MACs against the reference (the static model)."""
    reference = results.default_index if reference is None else reference
    same = results.predictions == results.predictions[reference][None]
    macs = np.where(same, results.macs, np.inf)
    choice = macs.argmin(axis=0)
    columns = np.arange(results.macs.shape[1])
    chosen_macs = results.macs[choice, columns]
    return dict(
        reference_gmacs=float(results.macs[reference].mean() / 1e9),
        efficient_gmacs=float(chosen_macs.mean() / 1e9),
        macs_ratio=float(chosen_macs.mean() / results.macs[reference].mean()),
        accuracy=float(results.quality[choice, columns].mean()),
        reference_accuracy=float(results.quality[reference].mean()),
        distinct_permutations_used=int(len(np.unique(choice))))


def oracle_point(results: OracleResults) -> dict:
    """The best-case network's accuracy and mean MACs (its top-scored permutations)."""
    best = results.scores.argmax(axis=0)
    columns = np.arange(results.scores.shape[1])
    return dict(accuracy=float(results.quality[best, columns].mean()),
                gmacs=float(results.macs[best, columns].mean() / 1e9))


# -- figures ---------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_accumulation(curve: Sequence[float], path: str, title: str = ''):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(curve) + 1), curve, marker='.')
    ax.set_xlabel('permutations allowed (greedy)')
    ax.set_ylabel('best-case accuracy')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distinct_predictions(counts: dict, path: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(counts), list(counts.values()))
    ax.set_xlabel('distinct predictions per sample')
    ax.set_ylabel('samples')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_macs(results: OracleResults, efficient: dict, path: str):
    """Fig. 6: every static permutation, the oracle and its efficient variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(results.macs.mean(axis=1) / 1e9, results.quality.mean(axis=1), s=8,
               alpha=0.5, label='static permutations')
    ref = results.default_index
    ax.scatter([results.macs[ref].mean() / 1e9], [results.quality[ref].mean()], marker='s',
               color='k', label='reference (default)')
    oracle = oracle_point(results)
    ax.scatter([oracle['gmacs']], [oracle['accuracy']], marker='*', s=120, color='r',
               label='oracle (best case)')
    ax.scatter([efficient['efficient_gmacs']], [efficient['accuracy']], marker='^', s=80,
               color='g', label='efficient oracle')
    ax.set_xlabel('backbone GMACs per sample')
    ax.set_ylabel('accuracy')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
