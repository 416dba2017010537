"""Whole-network latency of a LAS-ResNet (bottleneck depths 50/101/152).

The paper's network latencies (Sec. 4, Tables 2/3) and the simulator's example
(``eval_example.py``) add up per-block predictions; this module does the same for
mmdyn's ``LASResNet`` layout (mmdet ``ResNet``, ``style='pytorch'``: stride on conv2,
a 1x1 projection in the first block of every stage) and adds the stem (7x7/2 conv and
3x3/2 max pooling), which stays dense. BatchNorm and ReLU are taken as folded into
the convs; dilation (mmseg) is not modelled.
"""
import re
from dataclasses import dataclass
from numbers import Real
from typing import Sequence, Tuple, Union

from .hardware import Hardware, load_profile
from .predictor import (BlockLatency, OpLatency, dynamic_block_latency, max_pool,
                        static_block_latency, static_conv)

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEM_CHANNELS = 64
EXPANSION = 4


@dataclass(frozen=True)
class BlockPrediction:
    """One block: where it is, its S and r, its input size and both predictions."""

    stage: int
    index: int
    S: int
    r: float
    in_hw: Tuple[int, int]
    dynamic: BlockLatency
    static: BlockLatency


@dataclass(frozen=True)
class StageLatency:
    blocks: Tuple[BlockPrediction, ...]

    @property
    def dynamic(self) -> float:
        return sum(b.dynamic.total for b in self.blocks)

    @property
    def static(self) -> float:
        return sum(b.static.total for b in self.blocks)

    @property
    def ratio(self) -> float:
        return self.dynamic / self.static


@dataclass(frozen=True)
class NetworkLatency:
    """Predicted backbone latency (seconds). ``dynamic`` and ``static`` include the
    stem; ``blocks_*`` leave it out (the simulator's example counts blocks only)."""

    hardware: str
    depth: int
    input_hw: Tuple[int, int]
    stem: Tuple[OpLatency, ...]
    stages: Tuple[StageLatency, ...]

    @property
    def stem_latency(self) -> float:
        return sum(op.total for op in self.stem)

    @property
    def blocks_dynamic(self) -> float:
        return sum(s.dynamic for s in self.stages)

    @property
    def blocks_static(self) -> float:
        return sum(s.static for s in self.stages)

    @property
    def dynamic(self) -> float:
        return self.stem_latency + self.blocks_dynamic

    @property
    def static(self) -> float:
        return self.stem_latency + self.blocks_static

    @property
    def ratio(self) -> float:
        """r_l of the whole backbone, stem included."""
        return self.dynamic / self.static

    @property
    def blocks_ratio(self) -> float:
        return self.blocks_dynamic / self.blocks_static

    def summary(self) -> str:
        """A small text table in milliseconds."""
        lines = [f'LAS-ResNet-{self.depth} {self.input_hw[0]}x{self.input_hw[1]} on '
                 f'{self.hardware}: dynamic {self.dynamic * 1e3:.3f} ms, static '
                 f'{self.static * 1e3:.3f} ms, ratio {self.ratio:.3f}',
                 f'  {"stem (dense)":<18} {self.stem_latency * 1e3:9.3f} ms']
        for i, s in enumerate(self.stages):
            sizes = sorted({b.S for b in s.blocks})
            sizes = str(sizes[0]) if len(sizes) == 1 else '-'.join(str(b.S) for b in s.blocks)
            label = f'stage {i + 1} (S {sizes})'
            lines.append(f'  {label:<18} {s.dynamic * 1e3:9.3f} ms dynamic, static '
                         f'{s.static * 1e3:9.3f} ms, ratio {s.ratio:.3f}')
        return '\n'.join(lines)


def _per_block(value, stage_blocks, name, check):
    """One value per block from a scalar, or 4 per-stage entries (scalar or list)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return [[check(value, name)] * n for n in stage_blocks]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) \
            or len(value) != len(stage_blocks):
        raise ValueError(f'{name} must be one value or one entry per stage '
                         f'({len(stage_blocks)} stages), got {value!r}')
    out = []
    for stage, (entry, n) in enumerate(zip(value, stage_blocks)):
        if isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)):
            if len(entry) != n:
                raise ValueError(f'{name}[{stage}] lists {len(entry)} values but stage '
                                 f'{stage + 1} has {n} blocks')
            out.append([check(v, f'{name}[{stage}]') for v in entry])
        else:
            out.append([check(entry, f'{name}[{stage}]')] * n)
    return out


def _check_size(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}: a patch size S must be a positive int, got {value!r}')
    return value


def _check_rate(value, name):
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f'{name}: an activation rate must be in [0, 1], got {value!r}')
    return float(value)


_BLOCK_NAME = re.compile(r'^layer(\d+)\.(?:refine\.)?(\d+)$')


def rates_from_record(blocks, stage_blocks: Sequence[int]) -> list:
    """Per-stage lists of activation rates from the block records of one recorded
    forward (``backbone.records.blocks``: each block's ``name`` ``layer<s>.<k>`` (LAS)
    or ``layer<s>.refine.<k>`` (SAR) and hard ``mask`` [B, G, rows, cols]), the
    fraction of patches (cells) selected, averaged over the batch and groups; laid out
    as ``stage_blocks`` (LAS-ResNet-101: (3, 4, 23, 3); SAR-ResNet-50: its refinement
    blocks, (2, 3, 5)), the form ``rates`` takes in :func:`predict_las_resnet` and
    :func:`~mmdyn.latency.sar.predict_sar_resnet`."""
    rates = [[None] * n for n in stage_blocks]
    for block in blocks:
        found = _BLOCK_NAME.match(str(block.name))
        stage, index = (int(found[1]) - 1, int(found[2])) if found else (-1, -1)
        if not 0 <= stage < len(stage_blocks) or not 0 <= index < stage_blocks[stage]:
            raise ValueError(f'a record of block {block.name!r} does not fit the layout '
                             f'{tuple(stage_blocks)} (blocks per stage)')
        rates[stage][index] = float(block.mask.float().mean())
    missing = [f'stage {s + 1} block {k}' for s, row in enumerate(rates)
               for k, rate in enumerate(row) if rate is None]
    if missing:
        raise ValueError(f'the record has no block for {", ".join(missing)}')
    return rates


def _half(size: int, stride: int = 2) -> int:
    return (size - 1) // stride + 1  # a strided conv / pooling with 'same' padding


def predict_las_resnet(hw: Union[Hardware, str], depth: int = 101,
                       input_hw: Tuple[int, int] = (800, 1216),
                       granularity: Sequence = (8, 4, 7, 1),
                       rates: Union[float, Sequence] = 0.5) -> NetworkLatency:
    """Predicted latency of LAS-ResNet-``depth`` and of its static twin.

    Args:
        hw (Hardware | str): a hardware model or a profile name (``'v100'``).
        depth (int): 50, 101 or 152. Default: 101.
        input_hw (tuple[int, int]): input image height and width. Default: (800, 1216).
        granularity: S per stage (4 entries), an entry may list one S per block,
            as ``LASResNet(granularity=...)``. Default: (8, 4, 7, 1).
        rates: activation rate r of every block: one number, or 4 per-stage entries
            (a number or a list per block). Default: 0.5.
    """
    if isinstance(hw, str):
        hw = load_profile(hw)
    if depth not in STAGE_BLOCKS:
        raise ValueError(f'depth={depth!r} is not a bottleneck LAS-ResNet; choose one of '
                         f'{sorted(STAGE_BLOCKS)}')
    if len(input_hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                 for v in input_hw):
        raise ValueError(f'input_hw must be two positive ints, got {input_hw!r}')
    stage_blocks = STAGE_BLOCKS[depth]
    sizes = _per_block(granularity, stage_blocks, 'granularity', _check_size)
    block_rates = _per_block(rates, stage_blocks, 'rates', _check_rate)

    h, w = input_hw
    stem = (static_conv(hw, 3, STEM_CHANNELS, h, w, 7, 2, name='stem_conv'), )
    h, w = _half(h), _half(w)
    stem += (max_pool(hw, STEM_CHANNELS, h, w, 3, 2, name='stem_pool'), )
    h, w = _half(h), _half(w)

    channels, stages = STEM_CHANNELS, []
    for stage, n_blocks in enumerate(stage_blocks):
        mid = STEM_CHANNELS * 2 ** stage
        out = mid * EXPANSION
        blocks = []
        for k in range(n_blocks):
            stride = 2 if stage > 0 and k == 0 else 1
            args = (hw, channels, mid, out, h, w)
            S, r = sizes[stage][k], block_rates[stage][k]
            blocks.append(BlockPrediction(
                stage, k, S, r, (h, w),
                dynamic_block_latency(*args, S, r, stride, downsample=k == 0,
                                      dense_route=True),
                static_block_latency(*args, stride, downsample=k == 0)))
            if stride == 2:
                h, w = _half(h), _half(w)
            channels = out
        stages.append(StageLatency(tuple(blocks)))
    return NetworkLatency(hw.name, depth, tuple(input_hw), stem, tuple(stages))
