"""A CPU cost model of mmdyn's own LAS executor, fitted on the running machine.

LASNet's predictor (Sec. 3.3, Appendix A) models a GPU: tiles in waves over PEs,
latency = computation + data movement + launch. On a CPU, PyTorch runs every operator
of mmdyn's sparse executor as one or a few library calls (oneDNN/MKL GEMMs and convs,
row gathers, in-place passes), so the model here keeps Appendix A's sum -- computation
plus data movement plus fixed costs -- but counts the work of the operators mmdyn
really issues (``LASBottleneck._forward_sparse``):

- masker + conv1: one GEMM over every input pixel with ``mid + 1`` outputs (App. B.1);
- gather: ``P (S+2)^2`` window rows of ``mid`` floats (with the halo), ReLU in place;
- conv2: one GEMM (S = 1, a window is one receptive field) or a VALID 3x3 conv on the
  window stack (S >= 2); its MAC rate depends on S (small windows run slowly), so each
  S up to 8 has its own coefficient;
- conv3 + scatter-add (Sec. 3.4): the residual rows of the patches are gathered, conv3
  accumulates onto them (one GEMM, ReLU fused), the map's ReLU, a row copy back;
- a fixed cost per sparse block (mask decision, index building, records: a few dozen
  small PyTorch calls) plus a cost per index element (window taps and patch pixels).

The dense block (the static twin and the dense route of :mod:`dense_fallback`) runs
oneDNN 1x1 and 3x3 convs, the residual add and ReLU. Latency is linear in the
coefficients (seconds per MAC of each operator kind, per byte moved inside the last
level cache and per byte moved to and from DRAM, per call), so the calibration fits
them by non-negative least squares on relative error (:mod:`.calibrate`).

Every operator's bytes are charged at the cache rate when its working set fits in the
last level cache (``llc_bytes``), else at the DRAM rate.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

FP32_BYTES = 4
WINDOW_SIZES = (1, 2, 3, 4, 5, 6, 7, 8)  # S with their own window-conv rate; larger S: 8's
COEFFICIENTS = ('sparse_call', 'index_element', 'gemm_mac',
                *(f'window_mac_s{s}' for s in WINDOW_SIZES),
                'dense_call', 'conv1x1_mac', 'conv3x3_mac', 'cache_byte', 'dram_byte',
                'sar_call', 'sar_group_call')
UNITS = {'sparse_call': 's per sparse block', 'index_element': 's per index element',
         'sar_call': 's per SAR refinement block (selector, mask, record)',
         'sar_group_call': 's per channel group a sparse SAR refinement runs',
         'gemm_mac': 's per GEMM MAC', 'dense_call': 's per dense block',
         'conv1x1_mac': 's per oneDNN 1x1 conv MAC', 'conv3x3_mac': 's per oneDNN 3x3 MAC',
         'cache_byte': 's per byte inside the LLC', 'dram_byte': 's per byte to/from DRAM',
         **{f'window_mac_s{s}': f's per MAC of conv2 on {s + 2}x{s + 2} windows'
            for s in WINDOW_SIZES}}


@dataclass(frozen=True)
class EngineModel:
    """Fitted coefficients (seconds per unit, see :data:`UNITS`) and the cache size.

    Args:
        coefficients (tuple[tuple[str, float], ...]): one ``(name, value)`` per name of
            :data:`COEFFICIENTS`, values finite and >= 0.
        llc_bytes (int): last level cache size; an operator whose bytes exceed it pays
            the DRAM rate.
    """
    coefficients: Tuple[Tuple[str, float], ...]
    llc_bytes: int

    def __post_init__(self):
        names = [n for n, _ in self.coefficients]
        missing = sorted(set(COEFFICIENTS) - set(names))
        unknown = sorted(set(names) - set(COEFFICIENTS))
        if missing or unknown:
            raise ValueError(f'EngineModel coefficients: missing {missing}, unknown {unknown} '
                             '(a profile of another mmdyn version: calibrate anew with '
                             'python tools/analysis/calibrate_latency.py)')
        for name, value in self.coefficients:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(f'EngineModel coefficient {name} must be a finite number '
                                 f'>= 0, got {value!r}')
        if isinstance(self.llc_bytes, bool) or not isinstance(self.llc_bytes, int) \
                or self.llc_bytes < 1:
            raise ValueError(f'EngineModel.llc_bytes must be a positive int, '
                             f'got {self.llc_bytes!r}')

    @classmethod
    def from_mapping(cls, coefficients: Mapping[str, float], llc_bytes: int) -> 'EngineModel':
        """From ``{name: seconds per unit}`` (any order; validated as the fields)."""
        order = {n: k for k, n in enumerate(COEFFICIENTS)}
        return cls(tuple(sorted(coefficients.items(), key=lambda kv: (
            order.get(kv[0], len(order)), str(kv[0])))), llc_bytes)

    def as_dict(self) -> dict:
        return dict(coefficients=dict(self.coefficients), llc_bytes=self.llc_bytes)

    def cost(self, features: Mapping[str, float]) -> float:
        values = dict(self.coefficients)
        return float(sum(values[k] * v for k, v in features.items()))


def window_key(size: int) -> str:
    """The window-conv coefficient of patch size ``size`` (sizes above the largest
    calibrated one share its rate)."""
    return f'window_mac_s{min(max(size, WINDOW_SIZES[0]), WINDOW_SIZES[-1])}'


def _window_size(key: str) -> int:
    return int(key[len('window_mac_s'):])


class Features:
    """Accumulates one operator's features; bytes go to the cache or DRAM term by the
    operator's working set (also used by :mod:`.sar`)."""

    def __init__(self, llc_bytes: int):
        self.llc_bytes = llc_bytes
        self.values: Dict[str, float] = {}

    def add(self, name: str, value: float):
        self.values[name] = self.values.get(name, 0.0) + float(value)

    def move(self, elements: float):
        nbytes = FP32_BYTES * elements
        self.add('dram_byte' if nbytes > self.llc_bytes else 'cache_byte', nbytes)


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def dense_block_ops(llc_bytes: int, cin: int, mid: int, cout: int, h: int, w: int,
                    stride: int = 1, downsample: bool = False) -> Dict[str, Dict[str, float]]:
    """Features of the dense bottleneck's operators (oneDNN convs, add + ReLU)."""
    oh, ow = _out(h, stride), _out(w, stride)
    ops = {'conv1': dense_conv(llc_bytes, cin, mid, 1, h, w),
           'conv2': dense_conv(llc_bytes, mid, mid, 3, h, w, stride),
           'conv3': dense_conv(llc_bytes, mid, cout, 1, oh, ow),
           'add': Features(llc_bytes)}
    ops['conv1'].add('dense_call', 1.0)
    ops['add'].move(5 * cout * oh * ow)  # out += identity (2 reads, 1 write), ReLU r/w
    if downsample:
        ops['downsample'] = dense_conv(llc_bytes, cin, cout, 1, h, w, stride)
    return {k: v.values for k, v in ops.items()}


def dense_conv(llc_bytes: int, cin: int, cout: int, k: int, h: int, w: int,
               stride: int = 1, groups: int = 1) -> Features:
    """One oneDNN conv (1x1 or 3x3, 'same' padding, ``groups`` channel groups) on a
    ``cin x h x w`` map."""
    if k not in (1, 3):
        raise ValueError(f'the engine model has 1x1 and 3x3 convs, got {k}x{k}')
    oh, ow = _out(h, stride), _out(w, stride)
    op = Features(llc_bytes)
    op.add(f'conv{k}x{k}_mac', k * k * cin * cout * oh * ow / groups)
    op.move(cin * h * w + cout * oh * ow + k * k * cin * cout / groups)
    return op


def gemm(llc_bytes: int, rows: int, k: int, n: int) -> Features:
    """mmdyn's GEMM of ``rows x k`` pixel rows with a ``k x n`` matrix (1x1 conv)."""
    op = Features(llc_bytes)
    op.add('gemm_mac', rows * k * n)
    op.move(rows * k + rows * n + k * n)
    return op


def _conv1_gate_and_identity(llc_bytes, cin, mid, cout, h, w, stride, downsample):
    """The fused masker + conv1 GEMM (with the block's fixed cost) and the projection:
    common to the sparse executor and the dense route."""
    ops = {'masker+conv1': gemm(llc_bytes, h * w, cin, mid + 1)}
    ops['masker+conv1'].add('sparse_call', 1.0)
    if downsample:
        ops['downsample'] = dense_conv(llc_bytes, cin, cout, 1, h, w, stride)
    return ops


def sparse_block_ops(llc_bytes: int, cin: int, mid: int, cout: int, h: int, w: int,
                     size: int, patches: int, stride: int = 1,
                     downsample: bool = False) -> Dict[str, Dict[str, float]]:
    """Features of the sparse executor's operators for ``patches`` active ``size x
    size`` patches (module docstring)."""
    oh, ow = _out(h, stride), _out(w, stride)
    ops = _conv1_gate_and_identity(llc_bytes, cin, mid, cout, h, w, stride, downsample)
    pixels = patches * size * size  # computed output pixels, border patches included
    window = (size - 1) * stride + 3
    taps = patches * window * window
    if patches:
        gather = ops['gather'] = Features(llc_bytes)
        gather.add('index_element', taps)
        gather.move(4 * taps * mid)  # row gather (read + write), ReLU in place
        conv2 = ops['conv2'] = Features(llc_bytes)
        macs = 9 * mid * mid * pixels
        conv2.add(window_key(size), macs)
        conv2.move(taps * mid + 3 * pixels * mid + 9 * mid * mid)
        scatter = ops['conv3+scatter_add'] = Features(llc_bytes)
        scatter.add('index_element', pixels)
        scatter.add('gemm_mac', mid * cout * pixels)
        # residual rows gathered, accumulated, copied back; the map's ReLU in place
        scatter.move(6 * pixels * cout + pixels * mid + mid * cout + 2 * cout * oh * ow)
    else:
        ops['relu'] = Features(llc_bytes)
        ops['relu'].move(2 * cout * oh * ow)
    return {k: v.values for k, v in ops.items()}


def dense_route_ops(llc_bytes: int, cin: int, mid: int, cout: int, h: int, w: int,
                    stride: int = 1, downsample: bool = False, partial: bool = True
                    ) -> Dict[str, Dict[str, float]]:
    """Features of the dense route of a LAS bottleneck (``_residual_dense``): the fused
    masker + conv1 GEMM, a dense 3x3 conv, the mask applied to its output (``partial``),
    conv3 accumulated onto the residual (one GEMM, ReLU fused)."""
    oh, ow = _out(h, stride), _out(w, stride)
    ops = _conv1_gate_and_identity(llc_bytes, cin, mid, cout, h, w, stride, downsample)
    conv2 = ops['conv2'] = dense_conv(llc_bytes, mid, mid, 3, h, w, stride)
    conv2.move(2 * mid * h * w + 2 * mid * oh * ow)  # ReLU of its input and output
    conv3 = ops['conv3+add'] = Features(llc_bytes)
    conv3.add('gemm_mac', mid * cout * oh * ow)
    conv3.move(mid * oh * ow + 2 * cout * oh * ow + mid * cout
               + (2 * mid * oh * ow + 2 * cout * oh * ow if partial else 0))
    return {k: v.values for k, v in ops.items()}


def total_features(ops: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for features in ops.values():
        for k, v in features.items():
            out[k] = out.get(k, 0.0) + v
    return out


def calibration_samples(measurements: Mapping, llc_bytes: int
                        ) -> List[Tuple[Dict[str, float], float]]:
    """``(features, seconds)`` of the calibration's measurements (:mod:`.calibrate`):
    ``blocks`` (timed LAS bottlenecks, sparse path, and their static twins: one
    sample per shape, the median), ``sar_blocks`` (SAR refinement blocks on both
    routes, :func:`.sar.refinement_samples`), ``convs`` (oneDNN 1x1/3x3 convs) and
    ``gemms``."""
    from .sar import refinement_samples
    samples = refinement_samples(measurements.get('sar_blocks', ()), llc_bytes)
    statics = {}
    for p in measurements['blocks']:
        shape = (p['in_channels'], p['mid_channels'], p['out_channels'], p['h'], p['w'])
        samples.append((total_features(sparse_block_ops(llc_bytes, *shape, p['S'],
                                                        p['patches'])), p['dynamic']))
        statics.setdefault(shape, []).append(p['static'])
    samples += [(total_features(dense_block_ops(llc_bytes, *shape)), float(np.median(t)))
                for shape, t in statics.items()]
    samples += [(dense_conv(llc_bytes, c['cin'], c['cout'], c['k'], c['h'], c['w']).values,
                 c['seconds']) for c in measurements['convs']]
    samples += [(gemm(llc_bytes, g['rows'], g['k'], g['n']).values, g['seconds'])
                for g in measurements['gemms']]
    return samples


def design_matrix(rows: Sequence[Mapping[str, float]],
                  names: Iterable[str] = COEFFICIENTS) -> np.ndarray:
    names = tuple(names)
    return np.array([[row.get(n, 0.0) for n in names] for row in rows], dtype=np.float64)


def nonnegative_least_squares(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(3 * n):
        gradient = a.T @ (b - a @ x)
        if passive.all() or gradient[~passive].max(initial=0.0) <= 1e-12 * np.abs(b).max():
            break
        passive[np.argmax(np.where(passive, -np.inf, gradient))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            negative = passive & (z <= 0)
            step = np.min(x[negative] / (x[negative] - z[negative]))
            x = x + step * (z - x)
            passive &= x > 1e-300
            x[~passive] = 0.0
    return x


def _solve(a: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error; ``a`` holds
    the features over the measured seconds (one row per sample)."""
    scale = np.maximum(a.max(axis=0), 1e-300)  # columns of comparable size
    return nonnegative_least_squares(a / scale, np.ones(a.shape[0])) / scale


def fit_engine(samples: Sequence[Tuple[Mapping[str, float], float]], llc_bytes: int,
               outlier: float = 3.0) -> Tuple[EngineModel, Dict[str, float]]:
    """The coefficients minimising the squared relative error over ``samples``
    (``(features, measured seconds)``), all >= 0. Samples whose relative residual
    exceeds ``outlier`` times the median absolute residual (a timing disturbed by
    another process) are dropped and the fit repeated once. A window size no sample
    informs takes its nearest measured neighbour's coefficient; other uninformed
    coefficients stay 0. Returns (model, {'rms_rel_error', 'max_rel_error',
    'dropped'}) over the samples kept."""
    if not samples:
        raise ValueError('fit_engine needs at least one sample')
    features, seconds = zip(*samples)
    seconds = np.asarray(seconds, dtype=np.float64)
    if not np.all(np.isfinite(seconds) & (seconds > 0)):
        raise ValueError('fit_engine: measured seconds must be positive and finite')
    a = design_matrix(features) / seconds[:, None]
    x = _solve(a)
    residual = np.abs(a @ x - 1)
    keep = residual <= outlier * max(np.median(residual), 1e-3)
    if not keep.all():
        x = _solve(a[keep])
    coefficients = dict(zip(COEFFICIENTS, x))
    informed = a[keep].max(axis=0) > 0
    windows = [f'window_mac_s{s}' for s in WINDOW_SIZES]
    known = [k for k in windows if informed[COEFFICIENTS.index(k)]]
    for k in windows:
        if k not in known and known:  # nearest measured window size
            size = _window_size(k)
            coefficients[k] = coefficients[min(known, key=lambda n: abs(_window_size(n) - size))]
    model = EngineModel.from_mapping(coefficients, llc_bytes)
    rel = (a @ np.array([coefficients[n] for n in COEFFICIENTS]) - 1)[keep]
    return model, dict(rms_rel_error=float(np.sqrt(np.mean(rel ** 2))),
                       max_rel_error=float(np.abs(rel).max()), dropped=int((~keep).sum()))
