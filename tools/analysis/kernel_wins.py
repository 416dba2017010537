"""Which kernel candidate won which shape classes, per machine setting.

Reads mmdyn's kernel-choice files (``kernels-*.json`` in ``$MMDYN_KERNEL_CACHE`` or
``~/.cache/mmdyn``; one per CPU, thread count, ISA caps and allocator) and prints, for
every registered op and candidate, the shape classes it won in each setting, and the
candidates that won nowhere. Fill the files first by running the backbones in each
setting (``tools/analysis/kernel_wins_sweep.sh``; docs/speed_engine.md, "Which
candidates win"). ::

    python tools/analysis/kernel_wins.py ~/.cache/mmdyn --out work_dirs/kernel_wins.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mmdyn.analysis.kernel_wins import kernel_wins, never_winning, wins_table  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    parser.add_argument('paths', nargs='+', help='kernel-choice files or folders of them')
    parser.add_argument('--out', default=None, help='JSON with every shape class won')
    args = parser.parse_args(argv)
    import mmdyn.models  # noqa: F401  registers every kernel op
    from mmdyn.ops.kernel_choice import CHOOSER
    candidates = {name: list(op.candidates) for name, op in CHOOSER.ops.items()}
    wins = kernel_wins(args.paths, candidates)
    print(wins_table(wins))
    losers = never_winning(wins)
    print('won nowhere: ' + ('; '.join(f'{op}: {", ".join(names)}'
                                        for op, names in losers.items() if names) or 'none'))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(wins=wins, never_won=losers), indent=1))
    return wins


if __name__ == '__main__':
    main()
