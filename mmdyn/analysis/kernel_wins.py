"""Which kernel candidate wins which shape classes, per machine setting.

Every choice the engine measures is stored in a per-machine kernel-choice file
(:mod:`mmdyn.ops.kernel_choice`) whose ``machine`` key names the CPU, the thread count,
the ISA caps and the allocator. This module reads such files and counts, for every
registered op and candidate, the shape classes it won in each setting, so that a
candidate that wins nowhere can be seen (and removed), and the rest documented with
where they win.
"""
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Union


def read_choice_file(path: Union[str, Path]) -> dict:
    """``{'machine': key, 'choices': {entry: candidate}}`` of one kernel-choice file
    (crossover entries left out)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        machine, choices = content['machine'], content['choices']
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f'{path} is not a kernel-choice file ({error})') from error
    return dict(machine=machine, choices={e: c for e, c in choices.items()
                                          if not e.startswith('crossover:')})


def setting_label(machine: Mapping) -> str:
    """``'2 threads'``, ``'1 thread, ONEDNN_MAX_CPU_ISA=AVX2, ...'`` (ISA caps and a
    tuned allocator named)."""
    threads = machine.get('threads')
    parts = [f'{threads} thread{"s" if threads != 1 else ""}']
    parts += [f'{k}={v}' for k, v in sorted(machine.get('isa_caps', {}).items()) if v]
    if machine.get('allocator', 'default') != 'default':
        parts.append(f'allocator {machine["allocator"]}')
    return ', '.join(parts)


def choice_files(paths: Iterable[Union[str, Path]]) -> List[Path]:
    """The kernel-choice files named, or found (``kernels-*.json``) in the folders."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise ValueError(f'{path}: no such file or folder')
        found += sorted(path.glob('kernels-*.json')) if path.is_dir() else [path]
    if not found:
        raise ValueError(f'no kernel-choice file in {[str(p) for p in paths]}')
    return found


def kernel_wins(paths: Sequence[Union[str, Path]],
                candidates: Mapping[str, Sequence[str]]) -> Dict[str, dict]:
    """``{setting: {op: {candidate: [shape classes won]}}}`` over the kernel-choice
    files in ``paths``; every candidate of ``candidates`` (``{op: names}``) is listed,
    with an empty list where it won nothing. Settings that occur in several files
    are merged."""
    out: Dict[str, dict] = {}
    for path in choice_files(paths):
        content = read_choice_file(path)
        setting = out.setdefault(setting_label(content['machine']), {
            op: {name: [] for name in names} for op, names in candidates.items()})
        for entry, winner in content['choices'].items():
            op, _, shape = entry.partition(':')
            if op in setting and winner in setting[op]:
                setting[op][winner].append(shape)
    return out


def never_winning(wins: Mapping[str, dict]) -> Dict[str, List[str]]:
    """``{op: candidates}`` that won no shape class in any setting of ``wins``."""
    ops = {op for setting in wins.values() for op in setting}
    return {op: sorted(name for name in next(iter(wins.values()))[op]
                       if not any(setting[op][name] for setting in wins.values()))
            for op in sorted(ops)}


def wins_table(wins: Mapping[str, dict]) -> str:
    """A markdown table: one row per op and candidate, one column per setting, each
    cell the number of shape classes won (of the op's classes measured there)."""
    settings = list(wins)
    lines = ['| op | candidate | ' + ' | '.join(settings) + ' |',
             '|---|---|' + '---|' * len(settings)]
    first = wins[settings[0]]
    for op in first:
        for name in first[op]:
            cells = []
            for s in settings:
                total = sum(len(v) for v in wins[s][op].values())
                cells.append(f'{len(wins[s][op][name])} / {total}' if total else '–')
            lines.append(f'| {op} | {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
