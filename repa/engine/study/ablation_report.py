"""The ablation table (terminal, Markdown, CSV, LaTeX) and one plot per metric against step."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from statistics import mean, stdev

from repa.engine.study.ablation import Ablation, Run
from repa.engine.record import read_records
from repa.storage import save_figure, write_atomic, writing


def value_at(records: list[dict], step: int, metric: str, ema_std: float | None = None) -> float | None:
    """The metric at `step`: the latest `repa evaluate` result of that EMA (None: the classic one; a curve
    point drawn during training does not count), else a training scalar."""
    for record in reversed(records):
        if record.get("step") != step:
            continue
        if "eval" in record:
            if not record.get("during_training") and record.get("ema_std") == ema_std and metric in record["eval"]:
                return float(record["eval"][metric])
            continue
        if metric in record:
            return float(record[metric])
    return None


def ema_label(std: float | None) -> str:
    return "classic" if std is None else f"{std:g}"


def collect(ablation: Ablation, runs: list[Run], statuses: dict[str, str], max_steps: dict[str, int]) -> list[dict]:
    """One row per (run, report step): axis labels, seed, step, status, metric values."""
    rows = []
    for run in runs:
        records = read_records(Path(run.run_dir))
        failure = Path(run.run_dir) / "ablation_failure.txt"
        for step in ablation.steps or [max_steps[run.run_id]]:
            for std in ablation.ema_choices():
                row = {**run.labels, "seed": str(run.seed), "step": str(step), "run": run.run_id,
                       "status": statuses[run.run_id], "reason": failure.read_text() if failure.is_file() else ""}
                if ablation.ema_stds:
                    row["ema"] = ema_label(std)
                for metric in ablation.table.metrics:
                    row[metric] = value_at(records, step, metric, std)
                rows.append(row)
    return rows


def _cell(values: list[float]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None, 0
    return mean(values), (stdev(values) if len(values) > 1 else None), len(values)


def _fmt(m, s) -> str:
    if m is None:
        return "-"
    return f"{m:.4g} ± {s:.2g}" if s is not None else f"{m:.4g}"


def _cell_text(m, s, n: int, group: list[dict]) -> str:
    """The value, or why it is missing; a mean over fewer runs than the cell holds says so."""
    failed = [r for r in group if r["status"] == "failed"]
    reason = f"failed: {failed[0]['reason'][:60]}" if failed else ""
    if m is None:
        return reason or "-"
    if n < len(group):
        waiting = len(group) - n - len(failed)
        notes = [f"{n}/{len(group)} runs"] + ([reason] if reason else []) + ([f"{waiting} not done"] if waiting else [])
        return f"{_fmt(m, s)} ({'; '.join(notes)})"
    return _fmt(m, s)


def pivot(ablation: Ablation, rows: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, body, long-form cells): rows x columns x metrics, mean ± std over the rest (seeds)."""
    row_dims, col_dims = ablation.table.rows, ablation.table.columns
    row_keys = list(dict.fromkeys(tuple(r[d] for d in row_dims) for r in rows))
    col_keys = list(dict.fromkeys(tuple(r[d] for d in col_dims) for r in rows))
    header = [*row_dims] + [f"{m} @ {', '.join(c)}" if c else m for m in ablation.table.metrics for c in col_keys]
    body, cells = [], []
    for rk in row_keys:
        line = list(rk)
        members = [r for r in rows if tuple(r[d] for d in row_dims) == rk]
        for metric in ablation.table.metrics:
            for ck in col_keys:
                group = [r for r in members if tuple(r[d] for d in col_dims) == ck]
                m, s, n = _cell([r[metric] for r in group])
                line.append(_cell_text(m, s, n, group))
                cells.append({**dict(zip(row_dims, rk)), **dict(zip(col_dims, ck)), "metric": metric,
                              "mean": m, "std": s, "n": n})
        body.append(line)
    return header, body, cells


def markdown(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def latex(header, body) -> str:
    escape = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("&", r"\&")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule", " & ".join(map(escape, header)) + r" \\",
             r"\midrule"]
    lines += [" & ".join(map(escape, row)) + r" \\" for row in body]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def long_csv(cells: list[dict]) -> str:
    buffer = io.StringIO()
    if cells:
        writer = csv.DictWriter(buffer, fieldnames=list(cells[0]))
        writer.writeheader()
        writer.writerows(cells)
    return buffer.getvalue()


def plot(ablation: Ablation, runs: list[Run], folder: Path) -> list[Path]:
    """metric vs step, one line per run (all evaluated/logged steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in ablation.table.metrics:
        figure, axes = plt.subplots(figsize=(6, 4))
        for run in runs:
            points = sorted({r["step"]: v for r in read_records(Path(run.run_dir))  # the classic EMA's
                             if not r.get("during_training") and "ema_std" not in r
                             for v in [r.get("eval", {}).get(metric, r.get(metric))] if v is not None}.items())
            if points:
                label = ", ".join(f"{k}={v}" for k, v in run.labels.items()) + f", seed {run.seed}"
                axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axes.set_xlabel("training step")
        axes.set_ylabel(metric)
        axes.set_title(f"{ablation.name}: {metric}")
        axes.legend(fontsize=7)
        figure.tight_layout()
        written.append(save_figure(figure, folder / f"{metric}.png"))
        plt.close(figure)
    return written


def write_reports(ablation: Ablation, runs: list[Run], rows: list[dict], folder: Path):
    header, body, cells = pivot(ablation, rows)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "table.md", markdown(header, body))
    write_atomic(folder / "table.tex", latex(header, body))
    write_atomic(folder / "table.csv", long_csv(cells))
    plots = plot(ablation, runs, folder / "plots")
    return header, body, plots
