"""Parameters and FLOPs of SAR-ResNet against the dense ResNet (SAR paper, Han et al.,
IEEE TIP 2021, complexity tables).

FLOPs are multiply-accumulates (MACs), the mmengine/fvcore convention used throughout
mmdyn; "GFLOPs" below are 1e9 MACs. SAR FLOPs come from the backbone's own records
(``SARResNet.records``) after one forward with masks forced to each activation rate;
the dense ResNet's are computed from its convolutions (:func:`resnet_flops`).
"""
from typing import Optional, Sequence, Tuple

import torch
from mmdet.models.backbones import ResNet
from torch import nn

from mmdyn.models.backbones import SARResNet
from mmdyn.models.backbones.resnet_parts import (conv_flops, conv_output_size,
                                                 plain_block_flops)

DEFAULT_RATES = (1.0, 0.5, 0.3)


def dense_part_flops(resnet: ResNet, input_hw) -> dict:
    """Per-sample MACs of a static mmdet ``ResNet`` per part (stem, layer1, ...) for an
    input of ``input_hw`` = (H, W)."""
    stem = [m for m in (resnet.stem if resnet.deep_stem else [resnet.conv1])
            if isinstance(m, nn.Conv2d)]
    size, flops = tuple(int(n) for n in input_hw), {'stem': 0}
    for conv in stem:
        size = conv_output_size(size, conv)
        flops['stem'] += conv_flops(conv, size)
    size = conv_output_size(size, resnet.maxpool)  # same arithmetic as a conv
    for name in resnet.res_layers:
        flops[name] = 0
        for block in getattr(resnet, name):
            block_flops, size = plain_block_flops(block, size)
            flops[name] += block_flops
    return flops


def resnet_flops(backbone: ResNet, input_hw) -> float:
    """Per-sample MACs of a dense mmdet ``ResNet`` backbone (stem + every block)."""
    return float(sum(dense_part_flops(backbone, input_hw).values()))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (every ``nn.Parameter``, trainable or not; no buffers)."""
    return sum(p.numel() for p in module.parameters())


def last_channels(backbone: ResNet) -> int:
    """Channels of the backbone's last stage output."""
    block = getattr(backbone, backbone.res_layers[-1])
    if isinstance(block, nn.Sequential):
        block = block[-1]
    else:  # a SAR stage as the last stage: its width is the transition's
        block = block.transition
    return block.conv3.out_channels if hasattr(block, 'conv3') else block.conv2.out_channels


def classifier_cost(in_channels: int, num_classes: int) -> Tuple[int, int]:
    """(params, MACs) of a GAP + ``Linear(in_channels, num_classes)`` head (the
    pooling's additions are not MACs)."""
    return in_channels * num_classes + num_classes, in_channels * num_classes


def _rate_key(rate: float) -> str:
    return str(float(rate))


def sar_complexity(depth: int, setting: str, input_hw, rates: Sequence[float] = DEFAULT_RATES,
                   mask_size=(7, 7, 2), classifier: Optional[int] = None,
                   seed: int = 0) -> dict:
    """Parameters and per-sample FLOPs of SAR-ResNet-``depth`` with ``setting`` (e.g.
    ``'G2s2a2b1'``) for a ``input_hw`` input, with masks forced to each rate in
    ``rates``, next to the dense ResNet of the same depth.

    With ``classifier=N`` both models get an N-way GAP + fc head (ImageNet-size
    comparison); without, backbone only (detection input). Returns a JSON-ready dict;
    per-rate entries are keyed by ``str(float(rate))``.
    """
    height, width = (int(n) for n in input_hw)
    rates = [float(r) for r in rates]
    sar = SARResNet(depth=depth, sar_setting=setting, mask_size=tuple(mask_size),
                    min_input_size=min(height, width), execution_mode='sparse',
                    init_cfg=None)
    sar.eval()  # mmdet's ResNet.eval() may return None: do not chain
    dense = ResNet(depth=depth, init_cfg=None)
    dense.eval()

    head_params = head_flops = 0
    if classifier:
        channels = last_channels(dense)
        if last_channels(sar) != channels:
            raise RuntimeError('SAR-ResNet and ResNet end with different widths')
        head_params, head_flops = classifier_cost(channels, int(classifier))

    x = torch.zeros(1, 3, height, width)
    flops, activation, dense_flops = {}, {}, None
    try:
        with torch.no_grad():
            for rate in rates:
                sar.set_forced_activation(rate, seed=seed)
                sar(x)
                record = sar.records
                flops[_rate_key(rate)] = float(record.executed_flops.mean()) + head_flops
                activation[_rate_key(rate)] = float(torch.stack(
                    [b.activation_rate.mean() for b in record.blocks]).mean())
                dense_flops = record.dense_flops + head_flops
    finally:
        sar.set_forced_activation(None)

    sar_params = count_parameters(sar) + head_params
    resnet_params = count_parameters(dense) + head_params
    resnet_total = resnet_flops(dense, (height, width)) + head_flops
    return dict(
        depth=depth, setting=setting, input=[height, width], mask_size=list(mask_size),
        classifier=int(classifier) if classifier else None, rates=rates,
        sar=dict(params=sar_params, dense_flops=dense_flops, flops=flops,
                 gflops={k: v / 1e9 for k, v in flops.items()},
                 activation_rate=activation),
        resnet=dict(params=resnet_params, flops=resnet_total, gflops=resnet_total / 1e9),
        ratios=dict(params=sar_params / resnet_params,
                    flops={k: v / resnet_total for k, v in flops.items()}),
    )


def format_table(rows: Sequence[dict], ratio_rate: float = 0.5) -> str:
    """Markdown table of :func:`sar_complexity` results: one ResNet row per (depth,
    input, classifier), followed by its SAR rows. The FLOPs ratio column is at
    ``ratio_rate`` (or the lowest rate when that one was not run)."""
    rows = list(rows)
    rates = []
    for row in rows:
        rates += [r for r in row['rates'] if r not in rates]
    if float(ratio_rate) not in rates and rates:
        ratio_rate = min(rates)
    key = _rate_key(ratio_rate)
    header = (['model', 'setting', 'input', 'params (M)']
              + [f'GFLOPs r={r:g}' for r in rates] + [f'FLOPs / ResNet at r={ratio_rate:g}'])
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join([':--', ':--', ':--'] + ['--:'] * (len(header) - 3)) + '|']

    def size(row):
        head = f' + fc{row["classifier"]}' if row['classifier'] else ''
        return f'{row["input"][0]}x{row["input"][1]}{head}'

    seen = set()
    for row in rows:
        group = (row['depth'], tuple(row['input']), row['classifier'])
        if group not in seen:
            seen.add(group)
            res = row['resnet']
            lines.append('| ' + ' | '.join(
                [f'ResNet-{row["depth"]}', '-', size(row), f'{res["params"] / 1e6:.2f}']
                + [f'{res["gflops"]:.2f}'] * len(rates) + ['1.00']) + ' |')
        sar = row['sar']
        cells = [f'{sar["gflops"][_rate_key(r)]:.2f}' if _rate_key(r) in sar['gflops']
                 else '-' for r in rates]
        ratio = row['ratios']['flops'].get(key)
        lines.append('| ' + ' | '.join(
            [f'SAR-ResNet-{row["depth"]}', row['setting'], size(row),
             f'{sar["params"] / 1e6:.2f}'] + cells
            + [f'{ratio:.2f}' if ratio is not None else '-']) + ' |')
    return '\n'.join(lines)


def backbone_conv_macs(backbone, input_hw) -> float:
    """Conv multiply-adds of one image through a static backbone, counted operator by
    operator by mmengine's FlopAnalyzer (independent of mmdyn's own records)."""
    from mmengine.analysis import FlopAnalyzer
    was_training = backbone.training
    backbone.eval()
    x = torch.zeros(1, 3, *input_hw)
    analyzer = FlopAnalyzer(backbone, (x, )).unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    macs = float(analyzer.by_operator()['conv'])
    backbone.train(was_training)
    return macs
