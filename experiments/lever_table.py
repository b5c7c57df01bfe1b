"""The lever table of experiments/levers/README.md, from the scores and logs experiments/levers.sh keeps in
experiments/levers/scores/.

    python experiments/lever_table.py > experiments/levers/table.md
"""

import json
import re
from pathlib import Path

O = Path("experiments/levers/scores")
LEVERS = {"shipped": "the model shipped before (round 2; no more steps)", "ce": "one more on-policy round (cross-entropy on greedy "
          "tokens)", "kl": "distillation: KL(last layer ‖ exit 4) on the model's own text", "tvd": "distillation: "
          "total variation", "ce-aligned": "sample-aligned windows, cross-entropy", "kl-aligned": "sample-aligned "
          "windows, KL"}


def train_minutes(name):
    log = O / f"{name}.train.log"
    if not log.exists():
        return ""
    times = re.findall(r"(\d+) ms/step", log.read_text())
    return f"{sum(int(t) for t in times) * 10 / 60000:.0f}" if times else ""  # a progress line every 10 steps


def main():
    print("| lever | wall-clock minutes, 150 steps (cores shared) | dev agreement | predicted, d=3 | predicted, calibrated cost rule, d <= 12 | "
          "exit-4 val loss | last layer vs twin (14 held-out files) |\n|---|---|---|---|---|---|---|")
    for name, what in LEVERS.items():
        dev, ev = O / f"{name}.dev.json", O / f"{name}.eval.json"
        if not (dev.exists() and ev.exists()):
            continue
        d, e = json.loads(dev.read_text()), json.loads(ev.read_text())
        rows = d["rows"]
        rule = next(k for k in rows if k.startswith("draft_cost") and "gamma 1.0" not in k and k.endswith("d=12"))
        ours, twin = list(e["per_exit"].values())
        gaps = [100 * (a / b - 1) for a, b in zip(ours["last_layer_loss_by_file"], twin["last_layer_loss_by_file"])]
        print(f"| {what} | {train_minutes(name)} | {d['agreement']:.3f} | {rows['fixed d=3'][0]:.2f}x | "
              f"{rows[rule][0]:.2f}x ({rule.split(',')[0].replace('draft_cost', 'r')}) | {ours['loss'][3]:.3f} | {sum(gaps) / len(gaps):+.1f}% "
              f"({min(gaps):+.1f} to {max(gaps):+.1f}) |")


if __name__ == "__main__":
    main()
