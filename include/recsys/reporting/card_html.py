"""The run card: one self-contained HTML page per run (inline CSS, plots as base64 PNG).

:func:`write_run_card` gathers what a run left in its work folder
(``<data_dir>/runs/<interval>/<run>/``): snapshot and split statistics, the input / output
validation reports, ``eval/report.json``, ``gate.json``, plus the MLflow run id, the model
version and the published table (manifest) when known, and writes

* ``run_card.json``: the card's data (also the history point later cards plot), and
* ``run_card.html``: data summary, validation verdict, metrics with deltas vs champion and
  baselines (+ paired bootstrap intervals), slices, plots (metric@k per model, the
  popularity-bias curve, the gate metric over the last runs), the gate table and lineage.

The page references nothing outside itself (no scripts, fonts or external images), so it can be
mailed, attached to MLflow (artifact ``run_card/run_card.html``) or opened from disk. Missing
inputs (e.g. no slices in an older report, no output validation on a FAIL) render as a short
"not available" note. Plots use Matplotlib's object API on the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from include.recsys.core.fmt import as_number, fmt_num
from include.recsys.core.io import atomic_write, write_json
from include.recsys.core.metric_key import metric_key_order
from include.recsys.core.paths import RunPaths
from include.recsys.reporting.card_data import _MODEL_ORDER, collect, load_history

log = logging.getLogger(__name__)


HTML_NAME = RunPaths(Path()).run_card.name  # run_card.html, also its MLflow artifact name


_COLORS = {"candidate": "#1f77b4", "champion": "#2ca02c", "popularity": "#ff7f0e", "recent_popularity": "#9467bd"}

_VERDICT_COLORS = {"PASS": "#2e7d32", "FAIL": "#c62828", "SKIPPED": "#757575"}

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td{white-space:nowrap} td.l,th.l{text-align:left;white-space:normal} .muted{color:#777} .note{color:#777;font-size:12px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.PASS{background:#2e7d32} .FAIL{background:#c62828} .SKIPPED,.SKIP{background:#757575}
tr.row-FAIL td{background:#fdecea} tr.row-SKIP td{color:#777} .pos{color:#2e7d32} .neg{color:#c62828}
.banner{background:#fff3cd;border:1px solid #e0b800;padding:8px 12px;margin:10px 0;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:4px 0} code{font-size:12px}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _counts(*values: Any) -> str:
    """Numbers that share a table cell, ``a / b / c`` (the run card's number style)."""
    return " / ".join(fmt_num(v, "html") for v in values)


def _models(metrics: dict[str, Any]) -> list[str]:
    return [m for m in _MODEL_ORDER if m in metrics] + sorted(m for m in metrics if m not in _MODEL_ORDER)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    # fixed margins (set per plot), not bbox_inches="tight": that draws every figure twice
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def plot_metric_curves(ev: dict[str, Any]) -> str | None:
    """metric@k per model (one panel per metric family) as a data: URI."""
    metrics = ev.get("metrics") or {}
    ks = sorted(int(k) for k in ev.get("ks") or [])
    if not metrics or not ks:
        return None
    families = [f for f in ("ndcg", "recall", "precision", "coverage") if any(f"{f}@{ks[0]}" in m for m in metrics.values())]
    if not families:
        return None
    fig = _figure(3.2 * len(families), 2.6)
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, fam in zip(axes, families):
        for name in _models(metrics):
            ys = [as_number(metrics[name].get(f"{fam}@{k}"), finite=True) for k in ks]
            if all(y is None for y in ys):
                continue
            ax.plot(ks, [float("nan") if y is None else y for y in ys], marker="o", label=name,
                    color=_COLORS.get(name), zorder=3 if name == "candidate" else 2)
        ax.set_title(f"{fam}@k", fontsize=10)
        ax.set_xlabel("k", fontsize=9)
        ax.set_xticks(ks)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.subplots_adjust(left=0.22 / len(families), right=0.99, bottom=0.17, top=0.9, wspace=0.35)
    return _png(fig)


def plot_popularity_curve(ev: dict[str, Any]) -> str | None:
    """Distinct items making each share of all recommendations, per model."""
    curves = ev.get("popularity_curve") or {}
    if not curves:
        return None
    fig = _figure(4.6, 3.0)
    ax = fig.subplots()
    for name in _models(curves):
        c = curves[name] or {}
        shares, items = c.get("shares") or [], c.get("items") or []
        if shares and len(shares) == len(items):
            ax.plot([100 * float(s) for s in shares], items, marker=".", label=f"{name} (top-{c.get('k', '?')})",
                    color=_COLORS.get(name), zorder=3 if name == "candidate" else 2)
    ax.set_xlabel("% of all recommendations", fontsize=9)
    ax.set_ylabel("distinct items", fontsize=9)
    ax.set_yscale("symlog")
    ax.set_title("popularity-bias curve", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.14, right=0.98, bottom=0.15, top=0.9)
    return _png(fig)


def plot_history(points: list[dict[str, Any]], metric: str | None) -> str | None:
    """The gate metric of the last runs (candidate, champion, popularity); marker colour = verdict."""
    if not points or not metric:
        return None
    fig = _figure(7.5, 2.8)
    ax = fig.subplots()
    xs = list(range(len(points)))
    for name in ("candidate", "champion", "popularity"):
        ys = [as_number(p.get(name), finite=True) for p in points]
        if all(y is None for y in ys):
            continue
        ax.plot(xs, [float("nan") if y is None else y for y in ys], label=name, color=_COLORS.get(name),
                linestyle="-" if name == "candidate" else "--", linewidth=1.2)
    cand = [as_number(p.get("candidate"), finite=True) for p in points]
    for x, y, p in zip(xs, cand, points):
        if y is not None:
            ax.scatter([x], [y], color=_VERDICT_COLORS.get(str(p.get("verdict")), "#000"), zorder=3, s=22,
                       marker="X" if p.get("forced") else "o")
    labels = [str(p.get("interval_end") or "")[:10] for p in points]
    step = max(1, len(points) // 10)
    ax.set_xticks(xs[::step])
    ax.set_xticklabels(labels[::step], rotation=30, ha="right", fontsize=7)
    ax.set_title(f"{metric} over the last {len(points)} run(s) (dots: gate verdict; this run last)", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.24, top=0.9)
    return _png(fig)


def _table(
    header: list[str] | None,
    rows: list[list[str]],
    *,
    left: int | set[int] = 1,
    row_classes: list[str] | None = None,
    table_id: str = "",
) -> str:
    """An HTML table; ``left``: the first n columns (or these column indices) left-aligned."""
    lefts = set(range(left)) if isinstance(left, int) else left

    def cell(tag: str, i: int, c: str) -> str:
        return f'<{tag} class="l">{c}</{tag}>' if i in lefts else f"<{tag}>{c}</{tag}>"

    head = f"<tr>{''.join(cell('th', i, h) for i, h in enumerate(header))}</tr>" if header else ""
    body = []
    for j, row in enumerate(rows):
        cls = f' class="{row_classes[j]}"' if row_classes and row_classes[j] else ""
        body.append(f"<tr{cls}>{''.join(cell('td', i, c) for i, c in enumerate(row))}</tr>")
    tid = f' id="{table_id}"' if table_id else ""
    return f"<table{tid}>{head}{''.join(body)}</table>"


def _delta(cand: Any, other: Any, ci: dict[str, Any] | None) -> str:
    c, o = as_number(cand, finite=True), as_number(other, finite=True)
    if c is None or o is None:
        return "&ndash;"
    d = c - o
    rel = f" ({d / o:+.1%})" if o else ""
    cls = "pos" if d > 0 else ("neg" if d < 0 else "")
    text = f'<span class="{cls}">{d:+.4f}{rel}</span>'
    if ci and all(as_number(ci.get(end), finite=True) is not None for end in ("lo", "hi")):
        text += f' <span class="muted">[{ci["lo"]:+.4f}, {ci["hi"]:+.4f}]</span>'
    return text


def _section_data(d: dict[str, Any]) -> str:
    snap = d.get("snapshot") or {}
    st = snap.get("stats") or {}
    sp = (d.get("split") or {}).get("stats") or {}
    ev = d.get("evaluation") or {}
    cand = (ev.get("metrics") or {}).get("candidate") or {}
    rows = [
        ["data window", f"{_e(snap.get('window_start'))} &rarr; {_e(snap.get('window_end'))}"],
        ["snapshot rows / users / items", _counts(st.get("rows"), st.get("users"), st.get("items"))],
        ["rows read / duplicates dropped / inactive dropped",
         _counts(st.get("rows_read"), st.get("duplicates_dropped"), st.get("inactive_rows_dropped"))],
        ["split cutoff", _e(sp.get("cutoff"))],
        ["train rows / holdout rows", _counts(sp.get("train_rows"), sp.get("holdout_rows"))],
        ["holdout users warm / cold (not scored)", _counts(sp.get("holdout_users_warm"), sp.get("holdout_users_cold"))],
        ["users evaluated / without holdout / without recs",
         _counts(cand.get("n_users_evaluated"), cand.get("n_users_no_holdout"), cand.get("n_users_no_recs"))],
        ["catalog (items the model knows)", fmt_num(ev.get("n_catalog"), "html")],
    ]
    return '<h2 id="data">Data</h2>' + _table(None, rows, left=2, table_id="data-table")


def _section_validation(d: dict[str, Any]) -> str:
    out = ['<h2 id="validation">Validation</h2>']
    for kind in ("input", "output"):
        v = (d.get("validation") or {}).get(kind)
        if not v:
            out.append(f'<p><b>{kind}</b>: <span class="muted">not run</span></p>')
            continue
        status = "PASS" if v.get("success") else "FAIL"
        counts = v.get("counts") or {}
        out.append(
            f'<p><b>{kind}</b>: <span class="badge {status}">{"PASSED" if status == "PASS" else "FAILED"}</span> '
            + _e(", ".join(f"{k} {val}" for k, val in counts.items()))
            + "</p>"
        )
        if v.get("failed"):
            out.append(_table(
                ["check", "column", "severity", "observed", "message"],
                [[_e(f["check"]), _e(f["column"]), _e(f["severity"]), _e(json.dumps(f["observed"], default=str)[:80]),
                  _e(str(f["message"] or "")[:200])] for f in v["failed"]],
                left=5,
            ))
        if v.get("data_docs"):
            out.append(f'<p class="note">Data Docs: <code>{_e(v["data_docs"])}</code></p>')
    return "".join(out)


def _section_metrics(d: dict[str, Any]) -> str:
    ev = d.get("evaluation") or {}
    metrics = ev.get("metrics") or {}
    if not metrics:
        return '<h2 id="metrics">Metrics</h2><p class="muted">no evaluation report</p>'
    models = _models(metrics)
    paired = ev.get("paired") or {}
    others = [m for m in ("champion", "popularity", "recent_popularity") if m in metrics]
    keys = metric_key_order(metrics.get("candidate") or {})
    rows = []
    for k in keys:
        row = [_e(k)] + [fmt_num((metrics[m] or {}).get(k), "html") for m in models]
        for o in others:
            ci = (paired.get(f"candidate_vs_{o}") or {}).get(k)
            row.append(_delta(metrics["candidate"].get(k), metrics[o].get(k), ci))
        rows.append(row)
    for k in ("n_users_evaluated", "n_users_no_holdout", "n_users_no_recs"):
        rows.append([_e(k)] + [fmt_num((metrics[m] or {}).get(k), "html") for m in models] + [""] * len(others))
    header = ["metric"] + [_e(m) for m in models] + [f"&Delta; vs {_e(o)}" for o in others]
    conf = next((ci.get("confidence") for p in paired.values() for ci in p.values() if isinstance(ci, dict)), None)
    note = (
        f'<p class="note">&Delta; = candidate &minus; other (relative change); [lo, hi]: paired bootstrap '
        f"{fmt_num(conf, 'html', digits=2) if conf else ''} interval over the same users.</p>"
        if paired else '<p class="note">&Delta; = candidate &minus; other; no paired bootstrap intervals in this report.</p>'
    )
    champ = ev.get("champion_version")
    head = f"<p>champion evaluated: <b>{_e(champ) if champ else 'none yet'}</b> &middot; ks {_e(ev.get('ks'))}</p>"
    return '<h2 id="metrics">Metrics</h2>' + head + _table(header, rows, table_id="metrics-table") + note


def _section_slices(d: dict[str, Any]) -> str:
    ev = d.get("evaluation") or {}
    slices = ev.get("slices") or {}
    metric = (d.get("gate") or {}).get("metric") or "ndcg@10"
    if not slices:
        return '<h2 id="slices">Slices</h2><p class="muted">no slices in this evaluation report</p>'
    models = _models(slices)
    keys = sorted({s for m in models for s in (slices[m] or {})})
    rows = []
    for s in keys:
        cells = [_e(s), fmt_num(((slices.get("candidate") or {}).get(s) or {}).get("n_users"), "html")]
        cells += [fmt_num(((slices[m] or {}).get(s) or {}).get(metric), "html") for m in models]
        c = ((slices.get("candidate") or {}).get(s) or {}).get(metric)
        ch = ((slices.get("champion") or {}).get(s) or {}).get(metric)
        cells.append(_delta(c, ch, None) if "champion" in slices else "&ndash;")
        rows.append(cells)
    header = ["slice", "users"] + [f"{_e(m)} {_e(metric)}" for m in models] + ["&Delta; vs champion"]
    return '<h2 id="slices">Slices</h2>' + _table(header, rows, table_id="slices-table")


def _section_gate(d: dict[str, Any]) -> str:
    g = d.get("gate")
    if not g:
        return '<h2 id="gate">Gate</h2><p class="muted">the gate has not run</p>'
    rows, classes = [], []
    for r in g.get("rules", []):
        res = r.get("result") or ("PASS" if r.get("passed") else "FAIL")
        observed, bound = (fmt_num(r.get(x), "html") for x in ("observed", "bound"))
        rows.append([_e(r.get("name")), _e(r.get("kind")), observed, bound,
                     f'<span class="badge {res}">{_e(res)}</span>', _e(r.get("note"))])
        classes.append(f"row-{res}")
    out = [f'<h2 id="gate">Gate</h2><p>verdict <span class="badge {_e(g.get("verdict"))}">{_e(g.get("verdict"))}</span> '
           f"on <b>{_e(g.get('metric'))}</b>"
           + (f" &middot; spec <code>{_e(g.get('spec_path'))}</code> (sha256 {_e(str(g.get('spec_sha256') or '')[:12])})" if g.get("spec_path") else "")
           + "</p>"]
    if g.get("forced"):
        out.append('<p class="banner">force_publish: published although the gate said '
                   f"{_e(g.get('verdict'))}</p>")
    out.append(_table(
        ["rule", "kind", "observed", "bound", "result", "note"], rows, left={0, 1, 5},
        row_classes=classes, table_id="gate-table",
    ))
    return "".join(out)


def _family(model: dict[str, Any]) -> str:
    """The family train refitted, where its configuration came from, and the families the
    search compared on validation (best NDCG@10 each; left out ones with the reason)."""
    fam = model.get("family")
    if not fam:
        return "unknown"
    text = f"<b>{_e(fam)}</b>"
    if model.get("config_source"):
        text += f" ({_e(model['config_source'])} configuration)"
    tried = model.get("families_tried") or {}
    if tried:
        parts = [f"{_e(f)} {v:.4f}" if v is not None else f"{_e(f)} failed" for f, v in tried.items()]
        text += "; validation ndcg@10 by family: " + ", ".join(parts)
    for f, why in (model.get("families_skipped") or {}).items():
        text += f"; {_e(f)} left out: {_e(why)}"
    return text


def _section_lineage(d: dict[str, Any]) -> str:
    snap = d.get("snapshot") or {}
    pub = d.get("published") or {}
    model = d.get("model") or {}
    mlf = d.get("mlflow") or {}
    rows = [
        ["Airflow DAG / run", f"{_e(d.get('dag_id'))} / <code>{_e(d.get('run_id'))}</code>"],
        ["data interval", f"{_e(d.get('interval_start'))} &rarr; {_e(d.get('interval_end'))}"],
        ["data window", f"{_e(snap.get('window_start'))} &rarr; {_e(snap.get('window_end'))}"],
        ["snapshot sha256", f"<code>{_e(snap.get('sha256'))}</code>"],
        ["MLflow experiment / run", f"{_e(mlf.get('experiment'))} / <code>{_e(mlf.get('run_id'))}</code> (artifact run_card/{HTML_NAME})"],
        ["model / version", f"{_e(model.get('name'))} / {_e(model.get('version') or 'not registered')}"],
        ["champion evaluated against", _e(model.get("champion_version_evaluated") or "none")],
        ["model family", _family(model)],
        ["published table version", _e(pub.get("version") or "not published")],
    ]
    if pub.get("not_served"):
        rows.append(["not served", f"{_e(pub['not_served'])} (version {_e(pub.get('unserved_version'))} kept unserved)"])
    if pub.get("rows") is not None:
        rows.append(["table rows / users", _counts(pub.get("rows"), pub.get("users"))])
    if pub.get("path"):
        rows.append(["table path", f"<code>{_e(pub.get('path'))}</code>"])
    rows.append(["code version", f"<code>{_e(d.get('code_version') or 'unknown')}</code>"])
    return '<h2 id="lineage">Lineage</h2>' + _table(None, rows, left=2, table_id="lineage-table")


def render(d: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The whole page for the card data ``d`` and the previous runs' history points."""
    ev = d.get("evaluation") or {}
    g = d.get("gate") or {}
    verdict = g.get("verdict") or "not gated"
    metric = g.get("metric")
    plots = []
    for title, uri, missing in (
        ("metric@k per model", plot_metric_curves(ev) if ev else None, "no evaluation report"),
        ("popularity-bias curve", plot_popularity_curve(ev) if ev else None, "no popularity curve in this report"),
        ("history", plot_history([*history, d["history_point"]], metric) if metric else None, "no gate metric"),
    ):
        plots.append(
            f'<h3 style="font-size:14px">{_e(title)}</h3>'
            + (f'<img alt="{_e(title)}" src="{uri}">' if uri else f'<p class="muted">{_e(missing)}</p>')
        )
    if metric and not history:
        plots.append('<p class="note">no earlier runs of this DAG with a run card: the history has one point</p>')
    pub = d.get("published") or {}
    head = (
        f"<h1>Run card &middot; {_e(d.get('dag_id'))}</h1>"
        f'<p><span class="badge {_e(verdict)}">gate {_e(verdict)}</span> on {_e(metric)} &middot; run '
        f"<code>{_e(d.get('run_id'))}</code> &middot; interval end {_e(d.get('interval_end'))} &middot; "
        f"published: <b>{_e(pub.get('version') or 'nothing')}</b></p>"
    )
    if g.get("forced"):
        head += f'<p class="banner">FORCED: force_publish overrode a gate {_e(verdict)}</p>'
    if pub.get("not_served"):  # an older run: succeeded, served nothing, says why
        head += f'<p class="banner" id="not-served">NOT SERVED: {_e(pub["not_served"])}</p>'
    if pub.get("older_data"):
        head += f'<p class="banner" id="older-data">{_e(pub["older_data"])}</p>'
    body = "".join([
        head,
        _section_data(d),
        _section_validation(d),
        _section_metrics(d),
        _section_slices(d),
        '<h2 id="plots">Plots</h2>' + "".join(plots),
        _section_gate(d),
        _section_lineage(d),
    ])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Run card {_e(d.get('run_id'))}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_run_card(work: Path, runs_root: Path, **kwargs: Any) -> Path:
    """Collect the data (see :func:`collect`), read the history, write ``run_card.json`` and
    ``run_card.html`` into ``work``; returns the HTML path."""
    t0 = time.perf_counter()
    paths = RunPaths(Path(work))
    data = collect(paths.work, **kwargs)
    metric = data["history_point"].get("metric")
    history = load_history(runs_root, data["dag_id"], data["run_id"], metric)
    write_json(paths.run_card_data, data)
    path = atomic_write(paths.run_card, render(data, history))
    log.info("run card %s (%d history points) written in %.2f s", path, len(history), time.perf_counter() - t0)
    return path
