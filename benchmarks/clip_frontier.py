"""CLIP cleaning defenses compared at similar clean accuracy: each defense at several learning rates.

Cleans one suspect checkpoint with every defense at every learning rate (same pairs, same
epochs), scores CA and ASR on the test split, and prints, per defense, the lowest ASR it reached
while keeping CA within 3, 6 and 10 points of the suspect (``poisonlab.metrics.best_asr_within``).
Writes ``OUT/frontier.csv`` and ``OUT/frontier.png`` (one line per defense through its points).
``par-synthetic`` is PAR on ``--synthetic`` pairs (default ``shapes-outline``). With ``--seeds``
each point is cleaned once per training seed (data order, augmentation draws); the spread of CA
and ASR over seeds is printed per defense and learning rate, and the figure draws the means with
one standard deviation. ``--clean-model`` scores a never-poisoned checkpoint with the same trigger:
its ASR is the floor a trigger reaches without any backdoor (a patch that hides the object).

Usage: python benchmarks/clip_frontier.py --model CKPT --trigger badnet --trigger-param size=7 --target star
       [--defenses finetune cleanclip par par-synthetic] [--lrs 3e-4 1e-3 3e-3] [--epochs 2] [--n 2500]
       [--seeds 0 1 2] [--clean-model CKPT] [--set cleanclip:batch_size=128] [--out bench-out/frontier]
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
from pathlib import Path
from typing import Any

from poisonlab import defenses, triggers
from poisonlab.cli.clip import open_model
from poisonlab.cli.common import load_data
from poisonlab.cli.options import parse_params
from poisonlab.metrics import ClipEvaluator, best_asr_within
from poisonlab.report.figure import plt, save_png
from poisonlab.utils.io import atomic_write

ALLOWANCES = (0.03, 0.06, 0.10)
TARGET_ASR = 0.10  # the cleaning target: ASR at most this with CA at most ALLOWANCES[0] below the suspect


def clean_once(name: str, lr: float, seed: int, a: argparse.Namespace, suspect: Any, data: Any,
               extra: dict[str, Any]) -> Any:
    params = {"seed": seed, **extra}
    method = defenses.create("par" if name == "par-synthetic" else name, family="clip", epochs=a.epochs, lr=lr, **params)
    return method.run(suspect, data, options=defenses.RunOptions(progress=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--trigger", required=True)
    p.add_argument("--trigger-param", action="append", default=[])
    p.add_argument("--target", required=True)
    p.add_argument("--defenses", nargs="+", default=["finetune", "cleanclip", "par", "par-synthetic"])
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="Training seeds of each cleaning run.")
    p.add_argument("--clean-model", help="A never-poisoned checkpoint: its ASR is the trigger's floor.")
    p.add_argument("--n", type=int, default=2500, help="Cleaning pairs (generated, seed 2).")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--synthetic", default="shapes-outline")
    p.add_argument("--test-n", type=int, default=1000)
    p.add_argument("--set", action="append", default=[], metavar="DEFENSE:KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("bench-out/frontier"))
    a = p.parse_args()
    extra: dict[str, dict[str, Any]] = {d: {} for d in a.defenses}
    for item in a.set:
        name, _, pair = item.partition(":")
        extra.setdefault(name, {}).update(parse_params((pair,), "--set"))
    suspect = open_model(a.model)
    trig = triggers.create(a.trigger, **parse_params(tuple(a.trigger_param), "--trigger-param"))
    test = load_data(a.dataset, split="test", size=suspect.image_size, n=a.test_n)
    pairs = {ds: load_data(ds, size=suspect.image_size, n=a.n, seed=2) for ds in {a.dataset, a.synthetic}}

    def score(bundle: Any) -> tuple[float, float]:
        ev = ClipEvaluator(bundle, test)
        return ev.clean_accuracy(), ev.backdoor(trig, a.target)["asr"]

    base = score(suspect)
    print(f"suspect: CA {100 * base[0]:.1f}  ASR {100 * base[1]:.1f}")
    floor = score(open_model(a.clean_model))[1] if a.clean_model else None
    if floor is not None:
        print(f"clean model: ASR {100 * floor:.1f} (the trigger's floor)")
    rows: list[dict[str, Any]] = []
    for name in a.defenses:
        data = pairs[a.synthetic if name == "par-synthetic" else a.dataset]
        for lr in a.lrs:
            for seed in a.seeds:
                result = clean_once(name, lr, seed, a, suspect, data, extra.get(name, {}))
                ca, asr = score(result.model)
                rows.append({"defense": name, "lr": lr, "seed": seed, "ca": ca, "asr": asr,
                             "steps": result.report["steps"], "seconds": result.report["seconds"],
                             "s_img": result.report.get("final_s_img", "")})
                print(f"{name:<14} lr {lr:<7g} seed {seed:<3} CA {100 * ca:5.1f}  ASR {100 * asr:5.1f}  "
                      f"({result.report['steps']} steps)", flush=True)
    summary(rows, base, a.defenses)
    if len(a.seeds) > 1:
        spread(rows, base)
    write_outputs(rows, base, a.defenses, a.out, floor)


def summary(rows: list[dict[str, Any]], base: tuple[float, float], names: list[str]) -> None:
    print("\nlowest ASR with CA at most k points below the suspect's:")
    print("defense        " + "".join(f"  k={round(100 * k):<4}" for k in ALLOWANCES))
    for name in names:
        points = [(r["ca"], r["asr"]) for r in rows if r["defense"] == name]
        cells = [best_asr_within(points, base[0], k) for k in ALLOWANCES]
        print(f"{name:<15}" + "".join("     -  " if c is None else f"  {100 * c:5.1f} " for c in cells))


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def groups(rows: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Rows by (defense, lr), in the order they ran."""
    out: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["defense"], r["lr"]), []).append(r)
    return out


def spread(rows: list[dict[str, Any]], base: tuple[float, float]) -> None:
    """Mean and standard deviation over seeds, and how many seeds met <= 10% ASR within 3 CA points."""
    print("\nover seeds: CA mean +- sd, ASR mean +- sd, min-max ASR, seeds with ASR <= 10% and CA >= suspect - 3")
    for (name, lr), runs in groups(rows).items():
        (ca, ca_sd), (asr, asr_sd) = (mean_sd([100 * r[k] for r in runs]) for k in ("ca", "asr"))
        met = sum(r["asr"] <= TARGET_ASR and r["ca"] >= base[0] - ALLOWANCES[0] for r in runs)
        lo, hi = min(100 * r["asr"] for r in runs), max(100 * r["asr"] for r in runs)
        print(f"{name:<14} lr {lr:<7g} CA {ca:5.1f} +- {ca_sd:3.1f}  ASR {asr:5.1f} +- {asr_sd:3.1f}  "
              f"[{lo:.1f}, {hi:.1f}]  {met}/{len(runs)}")


def write_outputs(rows: list[dict[str, Any]], base: tuple[float, float], names: list[str], out: Path,
                  floor: float | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(out / "frontier.csv", "w") as f:
        f.write(buf.getvalue())
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter([100 * base[0]], [100 * base[1]], marker="x", s=60, color="black", label="suspect")
    ax.axvline(100 * base[0] - 3, ls="--", lw=0.8, color="grey")
    if floor is not None:
        ax.axhline(100 * floor, ls=":", lw=0.8, color="black", label="clean model's ASR")
    by_lr = groups(rows)
    for name in names:
        stats = [(lr, *mean_sd([100 * r["ca"] for r in runs]), *mean_sd([100 * r["asr"] for r in runs]))
                 for (n, lr), runs in by_lr.items() if n == name]
        line = ax.errorbar([s[1] for s in stats], [s[3] for s in stats], xerr=[s[2] for s in stats],
                           yerr=[s[4] for s in stats], marker="o", capsize=2, label=name)[0]
        for lr, ca, _, asr, _ in stats:
            ax.annotate(f"{lr:g}", (ca, asr), fontsize=6, color=line.get_color(), xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out / "frontier.png")
    print(f"\nwrote {out / 'frontier.csv'} and {out / 'frontier.png'}")


if __name__ == "__main__":
    main()
