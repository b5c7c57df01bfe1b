"""The before/after tables of docs/results.md from measure.py's JSON files.

    python experiments/smollm2/table.py out/smollm2/measure/before_test.json out/smollm2/measure/run_test.json
"""

import json
import sys

EXITS = (4, 8, 12, 16, 20, 24, 28, 29)


def main(before_path, after_path):
    before, after = (json.load(open(p)) for p in (before_path, after_path))
    tb, ta = before["teacher_forced"], after["teacher_forced"]
    print(f"teacher-forced, {tb['tokens']} targets of the {before['split']} split")
    print()
    print("| exit E | loss before | loss after | agreement before | agreement after |")
    print("|---|---|---|---|---|")
    for E in EXITS:
        print(f"| {E} | {tb['loss'][E - 1]:.2f} | {ta['loss'][E - 1]:.2f} | {tb['agreement'][E - 1]:.1%} | "
              f"{ta['agreement'][E - 1]:.1%} |")
    lb, la = tb["loss"][-1], ta["loss"][-1]
    print(f"| 30 (last layer) | {lb:.3f} | {la:.3f} ({(la - lb) / lb:+.1%}) | | |")
    if "decoding" in before and "decoding" in after:
        db, da = before["decoding"], after["decoding"]
        print()
        print(f"decoding, {db['generated_tokens']} / {da['generated_tokens']} greedy tokens")
        print()
        print("| | before | after |")
        print("|---|---|---|")
        print(f"| layers a token needs, of 30: mean, median | {db['layers_needed_mean']:.1f}, "
              f"{db['layers_needed_median']:.0f} | {da['layers_needed_mean']:.1f}, {da['layers_needed_median']:.0f} |")
        print(f"| tokens that need all 30 layers | {db['share_needing_all']:.0%} | {da['share_needing_all']:.0%} |")
        for E in (8, 16, 24):
            print(f"| tokens settled by exit {E} | {db['share_by_exit'][str(E)]:.0%} | "
                  f"{da['share_by_exit'][str(E)]:.0%} |")
        print("| self-speculative acceptance, exit 4 / 8 / 12 / 16 / 20 / 24 (d = 4) | "
              + " / ".join(f"{db['acceptance'][str(E)]:.1%}" for E in (4, 8, 12, 16, 20, 24)) + " | "
              + " / ".join(f"{da['acceptance'][str(E)]:.1%}" for E in (4, 8, 12, 16, 20, 24)) + " |")
        print(f"| speedup at exit {db['timed_exit']}, d = {db['num_speculations']}; output identical | "
              f"{db['speedup']:.2f}x; {'yes' if db['identical'] else 'NO'} | "
              f"{da['speedup']:.2f}x; {'yes' if da['identical'] else 'NO'} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
