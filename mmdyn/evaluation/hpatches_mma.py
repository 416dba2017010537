"""HPatches mean matching accuracy, the protocol of D2-Net's
``HPatches-Sequences-Matching-Benchmark.ipynb`` (also used by the CAD paper):

* image 1 of every sequence is matched to images 2 ... 6 by mutual nearest neighbour
  on the descriptor similarity ``d1 @ d2.T``;
* the keypoints of 1 are mapped by ``H_1_k``; a match is correct at threshold t when
  the matched keypoint of k is within t pixels; a pair scores the fraction of correct
  matches, 0 if it has no match;
* MMA@t is the mean over pairs, for illumination (``i_*``), viewpoint (``v_*``) and all
  pairs (thresholds 1 ... 10 plotted, 15 also computed).

:class:`HPatchesMMAMetric` is the mmengine metric; it also reports the mean number of
features, matches and the descriptor network's multiply-adds per image.
"""
from typing import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

from mmdyn.datasets.hpatches import project

THRESHOLDS = tuple(range(1, 16))
KINDS = ('i', 'v')


def mutual_nearest_neighbours(desc1: np.ndarray, desc2: np.ndarray) -> np.ndarray:
    """``[m, 2]`` index pairs (i in 1, j in 2) that are each other's nearest neighbour by
    dot-product similarity."""
    if len(desc1) == 0 or len(desc2) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    similarity = np.asarray(desc1, np.float32) @ np.asarray(desc2, np.float32).T
    nn12 = similarity.argmax(1)
    nn21 = similarity.argmax(0)
    ids = np.arange(len(desc1))
    mutual = nn21[nn12] == ids
    return np.stack([ids[mutual], nn12[mutual]], 1)


def match_errors(features1: dict, features2: dict, homography: np.ndarray) -> np.ndarray:
    """Reprojection errors (pixels) of the mutual matches of a pair; ``[inf]`` when
    there is none, so that the pair scores 0 at every threshold."""
    matches = mutual_nearest_neighbours(features1['descriptors'], features2['descriptors'])
    if len(matches) == 0:
        return np.array([np.inf])
    xy1 = np.asarray(features1['keypoints'], np.float64)[matches[:, 0], :2]
    xy2 = np.asarray(features2['keypoints'], np.float64)[matches[:, 1], :2]
    return np.linalg.norm(project(xy1, homography) - xy2, axis=1)


def check_features(features: dict, where: str) -> dict:
    for key in ('keypoints', 'descriptors'):
        if key not in features:
            raise KeyError(f'{where}: features have no {key!r} (keys: {sorted(features)})')
    keypoints, descriptors = np.asarray(features['keypoints']), np.asarray(features['descriptors'])
    if len(keypoints) != len(descriptors):
        raise ValueError(f'{where}: {len(keypoints)} keypoints but {len(descriptors)} descriptors')
    if len(keypoints) and (keypoints.ndim != 2 or keypoints.shape[1] < 2):
        raise ValueError(f'{where}: keypoints must be [n, >=2] (x, y), got {keypoints.shape}')
    return features


def sequence_results(name: str, kind: str, features: Sequence[dict], homographies,
                     thresholds=THRESHOLDS) -> dict:
    """Per-pair accuracies ``[5, len(thresholds)]`` of one sequence and its counts."""
    if kind not in KINDS:
        raise ValueError(f'{name}: kind={kind!r} is not one of {KINDS}')
    if len(features) != 6 or len(homographies) != 5:
        raise ValueError(f'{name}: need 6 feature sets and 5 homographies, got '
                         f'{len(features)} and {len(homographies)}')
    features = [check_features(f, f'{name}/{k + 1}') for k, f in enumerate(features)]
    accuracy, matches = [], []
    for k in range(1, 6):
        errors = match_errors(features[0], features[k], np.asarray(homographies[k - 1]))
        accuracy.append([float(np.mean(errors <= t)) for t in thresholds])
        matches.append(int(np.isfinite(errors).sum()))
    return dict(sequence=name, kind=kind, accuracy=accuracy, matches=matches,
                num_features=[len(f['keypoints']) for f in features],
                macs=[float(f.get('macs', 0.0)) for f in features])


def summarize(results: Sequence[dict], thresholds=THRESHOLDS) -> dict:
    """MMA@t overall / illumination / viewpoint, mean features, matches and GMACs."""
    if not results:
        raise ValueError('no sequences were evaluated')
    metrics = {}
    groups = {'': list(results), '_i': [r for r in results if r['kind'] == 'i'],
              '_v': [r for r in results if r['kind'] == 'v']}
    for suffix, group in groups.items():
        if not group:
            continue
        accuracy = np.concatenate([np.asarray(r['accuracy']) for r in group])  # [pairs, T]
        for index, t in enumerate(thresholds):
            metrics[f'mma{suffix}@{t}'] = float(accuracy[:, index].mean())
        metrics[f'num_pairs{suffix}'] = int(accuracy.shape[0])
    metrics['mean_matches'] = float(np.mean([m for r in results for m in r['matches']]))
    metrics['mean_features'] = float(np.mean([n for r in results for n in r['num_features']]))
    metrics['gmacs'] = float(np.mean([m for r in results for m in r['macs']]) / 1e9)
    return metrics


@METRICS.register_module()
class HPatchesMMAMetric(BaseMetric):
    """MMA on HPatches sequences. Each prediction is a dict with ``sequence``, ``kind``,
    ``homographies`` ``[5, 3, 3]`` and ``features`` (six dicts with ``keypoints``
    (x, y), ``descriptors`` and ``macs``), as
    :class:`~mmdyn.models.keypoints.HPatchesFeatureModel` returns them."""
    default_prefix = 'hpatches'

    def __init__(self, thresholds: Sequence[int] = THRESHOLDS, **kwargs):
        super().__init__(**kwargs)
        thresholds = tuple(thresholds)
        if not thresholds or any(not t > 0 for t in thresholds):
            raise ValueError(f'thresholds={thresholds} must be positive numbers')
        self.thresholds = thresholds

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            self.results.append(sequence_results(sample['sequence'], sample['kind'],
                                                 sample['features'], sample['homographies'],
                                                 self.thresholds))

    def compute_metrics(self, results):
        return summarize(results, self.thresholds)
