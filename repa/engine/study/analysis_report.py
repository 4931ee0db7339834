"""What `repa analyze` writes: analysis.csv and analysis.json (every score), plots (alignment vs
block, vs t, vs training step, runs overlaid), and the tables it prints."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from repa.storage import save_figure, write_atomic, writing

COLUMNS = ("run", "step", "t", "block", "representation", "reference", "score", "value")


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return out.getvalue()


def series_key(row: dict) -> str:
    """The name of one curve: a score, against the encoder it compares with."""
    return row["score"] + (f" vs {row['reference']}" if row["reference"] else "")


def column_key(row: dict, references: set) -> str:
    """A table column: the score alone when every comparison is with one encoder (named in the title)."""
    return row["score"] if len(references) <= 1 else series_key(row)


def middle_t(rows: list[dict]) -> float | None:
    times = sorted({r["t"] for r in rows if r["t"] is not None})
    return min(times, key=lambda t: abs(t - 0.5)) if times else None


def focus_block(rows: list[dict], depths: dict[str, list[int]]) -> int | None:
    """The block plotted against t and step: the first run's aligned depth, else the middle block."""
    for run in dict.fromkeys(r["run"] for r in rows if r["run"]):
        if depths.get(run):
            return depths[run][0]
    blocks = sorted({r["block"] for r in rows if r["block"] is not None})
    return blocks[len(blocks) // 2] if blocks else None


def latest_steps(rows: list[dict]) -> dict[str, int]:
    latest = {}
    for r in rows:
        if r["run"]:
            latest[r["run"]] = max(latest.get(r["run"], r["step"]), r["step"])
    return latest


def _curve(rows, series, run, x_key, **fixed):
    points = sorted((r[x_key], r["value"]) for r in rows if r["run"] == run and series_key(r) == series
                    and all(r[k] == v for k, v in fixed.items()) and not math.isnan(r["value"]))
    return [p[0] for p in points], [p[1] for p in points]


def plot(rows: list[dict], depths: dict[str, list[int]], folder: Path) -> list[Path]:
    """One figure per score: vs block (latest checkpoint, middle t), vs t and vs step (focus block)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hidden = [r for r in rows if r["run"]]
    if not hidden:
        return []
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    runs, latest = list(dict.fromkeys(r["run"] for r in hidden)), latest_steps(hidden)
    t_mid, block = middle_t(hidden), focus_block(hidden, depths)
    written = []
    for series in dict.fromkeys(series_key(r) for r in hidden):
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for run in runs:
            axes[0].plot(*_curve(hidden, series, run, "block", step=latest[run], t=t_mid), marker="o",
                         label=f"{run} (step {latest[run]})")
            axes[1].plot(*_curve(hidden, series, run, "t", step=latest[run], block=block), marker="o", label=run)
            axes[2].plot(*_curve(hidden, series, run, "step", t=t_mid, block=block), marker="o", label=run)
        titles = (f"vs block (t = {t_mid}, latest checkpoint)", f"vs t (block {block}, latest checkpoint)",
                  f"vs training step (block {block}, t = {t_mid})")
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax, title, xlabel in zip(axes, titles, ("block", "t (0: data, 1: noise)", "training step")):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(series)
            ax.legend(fontsize=7)
        figure.tight_layout()
        written.append(save_figure(figure, folder / f"{series.replace(' ', '_')}.png"))
        plt.close(figure)
    return written


def write_outputs(rows: list[dict], notes: list[str], settings: dict, runs: dict, folder: Path,
                  depths: dict[str, list[int]]) -> list[Path]:
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "analysis.csv", to_csv(rows))
    document = {"settings": settings, "runs": runs, "notes": notes,
                "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                         for r in rows]}
    write_atomic(folder / "analysis.json", json.dumps(document, indent=1) + "\n")
    return [folder / "analysis.csv", folder / "analysis.json"] + plot(rows, depths, folder / "plots")


def tables(rows: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, body): per run, blocks x scores at the latest checkpoint and the middle t;
    then the encoders' own scores."""
    out = []
    hidden = [r for r in rows if r["run"]]
    t_mid, latest = middle_t(hidden), latest_steps(hidden)
    references = {r["reference"] for r in hidden if r["reference"]}
    against = f"; CKNNA against {next(iter(references))}" if len(references) == 1 else ""
    for run in dict.fromkeys(r["run"] for r in hidden):
        chosen = [r for r in hidden if r["run"] == run and r["step"] == latest[run] and r["t"] == t_mid]
        series = list(dict.fromkeys(column_key(r, references) for r in chosen))
        values = {(r["block"], column_key(r, references)): r["value"] for r in chosen}
        blocks = sorted({r["block"] for r in chosen})
        body = [[str(b)] + [_fmt(values.get((b, s))) for s in series] for b in blocks]
        out.append((f"{run}: step {latest[run]}, t = {t_mid}{against}", ["block"] + series, body))
    encoders = [r for r in rows if not r["run"]]
    if encoders:
        series = list(dict.fromkeys(series_key(r) for r in encoders))
        values = {(r["representation"], series_key(r)): r["value"] for r in encoders}
        names = list(dict.fromkeys(r["representation"] for r in encoders))
        out.append(("encoders, on the analysed images", ["encoder"] + series,
                    [[n] + [_fmt(values.get((n, s))) for s in series] for n in names]))
    return out


def _fmt(value) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.4f}"
