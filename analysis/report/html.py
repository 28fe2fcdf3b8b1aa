"""The report page: one self-contained HTML file. plotly.js is embedded once in the head;
sample images are embedded as data URIs; nothing is fetched from the network. Every piece of
user text (sweep name, spec, errors, warnings, trial ids) goes through ``html.escape``;
plotly escapes what it embeds in its own JSON.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from analysis.allocation import APPROACHES, compare_approaches
from analysis.fit import held_out_text, prediction_text
from analysis.records import TRIALS, Role, Status
from analysis.report.data import ReportData
from analysis.report.figures import data_unit
from analysis.report.style import sci
from analysis.results import FitResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1280px;padding:0 20px 60px;color:#1a1a1a}
h1{margin-bottom:4px} h2{margin-top:40px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:14px}
.meta dt{font-weight:600} .meta dd{margin:0}
table.data{border-collapse:collapse;font-size:13px;width:100%}
table.data th,table.data td{border-bottom:1px solid #eee;padding:3px 8px;text-align:right;vertical-align:top}
table.data th{cursor:pointer;position:sticky;top:0;background:#f6f6f6;user-select:none}
table.data td.text,table.data th.text{text-align:left} table.data td.id{white-space:nowrap}
.scroll{max-height:520px;overflow:auto;border:1px solid #ddd}
STATUS_CSS
.err{font-family:monospace;font-size:12px;color:#b3400b;text-align:left;max-width:420px;white-space:pre-wrap}
.warn{color:#8a5a00} pre{background:#f6f6f6;padding:10px;overflow:auto;font-size:12px}
.samples{display:flex;flex-wrap:wrap;gap:16px} figure{margin:0;text-align:center;font-size:12px}
figure img{image-rendering:pixelated;width:192px;border:1px solid #ccc}
.note{font-size:13px;color:#555}
"""
CSS = CSS.replace("STATUS_CSS", f".status-{Status.COMPLETED}{{color:#006d4e}}"
                  + ",".join(f".status-{s}" for s in Status if s.bad) + "{color:#b3400b;font-weight:600}")
SORT_JS = """
document.querySelectorAll('table.data').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === '' || y === '') return (x === '') - (y === '');  // empty cells last
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
        return dir * String(x).localeCompare(String(y));
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def figure_div(key: str, fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}",
                       config=PLOT_CONFIG, default_width="100%")


def page(data: ReportData, fits: list[FitResult], fit_error: str | None, sections: list[tuple[str, str]]) -> str:
    """The whole document; ``sections`` are (title, inner HTML) in order."""
    body = [f"<h1>Sweep {esc(data.name)}</h1>", header(data)]
    for title, inner in sections:
        body.append(f"<section><h2>{esc(title)}</h2>{inner}</section>")
    if fit_error:
        body.insert(2, f'<p class="warn">No scaling-law fit: {esc(fit_error)}</p>')
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>scalinglab: {esc(data.name)}</title><style>{CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
            + "\n".join(body)
            + f'<p class="note">Written by scalinglab on {made}.</p><script>{SORT_JS}</script></body></html>')


def _compute_spent(t, done) -> str:
    paid = TRIALS.flops_paid in t and TRIALS.role in t and bool((t[TRIALS.role] != Role.POINT).any())
    text = f"{sci(done[TRIALS.flops_paid if paid else TRIALS.flops].sum())} FLOPs in completed trials"
    if paid:  # wsd ladders and LR searches: what was paid differs from what the points represent
        points = done[done[TRIALS.role].isin([r.value for r in Role if r.fit_point])]
        text += f", for fit points that represent {sci(points[TRIALS.flops].sum())} FLOPs"
    return text + (" (trials that did not complete are not counted)" if len(done) < len(t) else "")


def header(data: ReportData) -> str:
    t = data.trials
    counts = t[TRIALS.status].value_counts()
    done = t[t[TRIALS.status] == Status.COMPLETED]
    first, last = _span(t)
    started, finished = (x.strftime("%Y-%m-%d %H:%M:%S UTC") if x is not None else "–" for x in (first, last))
    rows = [
        ("family", ", ".join(esc(f) for f in t[TRIALS.family].dropna().unique()) if TRIALS.family in t else "–"),
        ("trials", f"{len(t)}: " + ", ".join(f"{n} {esc(s)}" for s, n in counts.items())),
        ("dates", f"{started} → {finished}"),
        ("compute spent", _compute_spent(t, done) if TRIALS.flops in t else "–"),
        ("wall time", _wall_time(data)),
        ("resources", _resources(data)),
    ]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    spec = (f"<details><summary>spec.yaml</summary><pre>{esc(data.spec_text)}</pre></details>"
            if data.spec_text else "")
    return f'<dl class="meta">{meta}</dl>{spec}'


def _wall_time(data: ReportData) -> str:
    """The runs' own wall time when every run recorded it; else (a driver killed before it
    could) the span from the first trial's start to the last one's finish."""
    t = data.trials
    trial_seconds = f"{t[TRIALS.wall_s].sum():.0f} trial-seconds" if TRIALS.wall_s in t else ""
    recorded = [r.get("wall_s") for r in data.runs]
    if recorded and all(w is not None for w in recorded):
        return f"{sum(float(w) for w in recorded):.0f} s over {len(recorded)} run(s) of the sweep; " + trial_seconds
    first, last = _span(t)
    if first is not None and last is not None:
        span = (last - first).total_seconds()
        why = (f"{sum(w is None for w in recorded)} of {len(recorded)} run(s) stopped before recording their own"
               if recorded else "the folder has no run record")
        return f"{span:.0f} s from the first trial's start to the last one's finish ({why}); " + trial_seconds
    return trial_seconds or "–"


def _span(t: pd.DataFrame) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """(the first trial's start, the last trial's finish), None where the table has none."""
    def pick(column, which):
        s = pd.to_datetime(t[column], utc=True, errors="coerce").dropna() if column in t else pd.Series([])
        return which(s) if len(s) else None
    return pick(TRIALS.started_at, min), pick(TRIALS.finished_at, max)


def _resources(data: ReportData) -> str:
    t, parts = data.trials, []
    if data.runs:
        last = data.runs[-1]
        res = last.get("resources", {})
        parts.append(f"Ray at {esc(last.get('address') or 'embedded local')}: {sci(res.get('CPU', 0))} CPUs, "
                     f"{sci(res.get('GPU', 0))} GPUs")
    per_trial = [TRIALS.workers, TRIALS.cpus_per_worker, TRIALS.gpus_per_worker]
    if set(per_trial) <= set(t.columns):
        per = t.groupby(per_trial).size()
        parts.append("per trial: " + "; ".join(f"{w} worker(s) × {c:g} CPU, {g:g} GPU ({n} trials)"
                                               for (w, c, g), n in per.items()))
    if TRIALS.zero_stage in t and TRIALS.precision in t:
        parts.append("DeepSpeed: " + ", ".join(f"ZeRO-{z} {esc(p)}" for z, p in t[[TRIALS.zero_stage, TRIALS.precision]]
                                              .drop_duplicates().itertuples(index=False)))
    if TRIALS.node_id in t:
        nodes = t[TRIALS.node_id].replace("", pd.NA).dropna().nunique()
        parts.append(f"{nodes} Ray node(s) ran trials")
    return "<br>".join(parts) or "–"


# --- tables -----------------------------------------------------------------------------

def trial_table(t: pd.DataFrame) -> str:
    columns = [("trial", TRIALS.trial_id, True), ("status", TRIALS.status, True), ("shape", None, True),
               ("N", TRIALS.n_params, False), ("D", TRIALS.data_units, False), ("C, FLOPs", TRIALS.flops, False),
               ("final loss", TRIALS.final_loss, False), ("wall, s", TRIALS.wall_s, False),
               (f"{data_unit(t)}/s", TRIALS.data_units_per_s, False), ("node", TRIALS.node_id, True),
               ("error or caveats", TRIALS.error, True)]
    head = "".join(f'<th class="{"text" if text else ""}">{esc(name)}</th>' for name, _, text in columns)
    body = []
    order = [TRIALS.n_params, TRIALS.data_units] if {TRIALS.n_params, TRIALS.data_units} <= set(t) else TRIALS.trial_id
    for row in t.sort_values(order).to_dict("records"):
        cells = []
        for name, col, text in columns:
            value = _shape(row) if col is None else row.get(col, "")
            if col == TRIALS.node_id:
                value = str(value or "")[:8]
            if col == TRIALS.error and not value:  # a completed trial's flags (a GAN's mode collapse)
                value = row.get(TRIALS.caveats, "") or ""
            shown = _cell(value, col)
            css = ("err" if col == TRIALS.error else f"text status-{esc(value)}" if col == TRIALS.status
                   else "text id" if col == TRIALS.trial_id else "text" if text else "")
            cells.append(f'<td class="{css}" data-v="{esc(_sort_key(value))}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<p class="note">Click a column to sort.</p><div class="scroll"><table class="data" id="trials">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _shape(row: dict) -> str:
    """The shape columns of a row (``shape_<field>``), as field=value."""
    prefix = TRIALS.shape("")
    return " ".join(f"{k[len(prefix):]}={v}" for k, v in row.items()
                    if k.startswith(prefix) and v is not None and not (isinstance(v, float) and pd.isna(v)))


def _cell(value, col) -> str:
    if isinstance(value, float):
        if pd.isna(value):
            return "–"
        if col == TRIALS.final_loss:
            return f"{value:.4f}"
        if col == TRIALS.wall_s:
            return f"{value:.1f}"
        return sci(value)
    return esc(value if value is not None else "")


def _sort_key(value) -> str:
    if isinstance(value, float) and pd.isna(value):
        return ""
    return str(value)


def fit_table(fits: list[FitResult]) -> str:
    rows = []
    for f in fits:
        params = "<br>".join(f"{esc(k)} = {sci(v.value, 4)} [{sci(v.low, 4)}, {sci(v.high, 4)}]"
                             for k, v in {**f.params, **f.derived}.items())
        held_text = esc(held_out_text(f) or "–")
        preds = "<br>".join(esc(prediction_text(p)) for p in f.predictions) or "–"
        warnings = "<br>".join(esc(w) for w in f.warnings) or "–"
        r2 = f"{f.r2_log:.4f}" if f.r2_log is not None else "–"
        rows.append(f'<tr><td class="text" data-v="{esc(f.law)}">{esc(f.law)}</td><td data-v="{f.n_points}">{f.n_points}</td>'
                    f'<td class="text">{params}</td><td data-v="{r2}">{r2}</td><td class="text">{held_text}</td>'
                    f'<td class="text">{preds}</td><td class="text warn">{warnings}</td></tr>')
    head = "".join(f'<th class="{c}">{h}</th>' for h, c in (
        ("law", "text"), ("points", ""), ("parameters [95% interval]", "text"), ("R² (log)", ""),
        ("held-out check", "text"), ("predictions [95%]", "text"), ("warnings", "text")))
    return (f'<table class="data" id="fits"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            '<p class="note">Intervals are 2.5th–97.5th percentiles over bootstrap refits. The held-out check '
            'refits without the largest-compute 10% of points (IsoFLOP: the largest budget) and predicts them.</p>'
            + approaches_table(fits))


def approaches_table(fits: list[FitResult]) -> str:
    """Hoffmann et al.'s approaches side by side (analysis.allocation.compare_approaches)."""
    side = compare_approaches(fits)
    if not side:
        return ""
    rows = "".join(f'<tr><td class="text">{esc(APPROACHES[law])}</td><td>{row["a"].text(".3f")}</td>'
                   f'<td>{row["D_per_N"].text(".3g")}</td></tr>' for law, row in side["approaches"].items())
    warn = "".join(f'<p class="warn">{esc(w)}</p>' for w in side["warnings"])
    return (f'<h3>Compute-optimal allocation by each approach, at C = {sci(side["C"])}</h3>'
            '<table class="data" id="approaches"><thead><tr><th class="text">approach</th>'
            '<th>a (N_opt ∝ C^a)</th><th>data units per parameter</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>{warn}')



def adaptive_summary(state: dict) -> str:
    """The adaptive design in words: its target's interval, what it spent, why it stopped."""
    est = state.get("estimate")
    where = (f"{est['value']:.4g} [{est['low']:.4g}, {est['high']:.4g}] (95%), a width of {est['width']:.2%} of the "
             f"estimate from {est['points']} runs" if est else "not fitted yet")
    reach = f"; the target lies {state['reach']:.3g}x beyond the largest candidate" if state.get("reach") else ""
    stopped = state.get("stopped_because") or "not stopped yet (the sweep was interrupted: --resume continues it)"
    return (f"<p>Target: {esc(state.get('target', ''))}: {esc(where)}{esc(reach)}. {len(state.get('chosen', []))} "
            f"runs chosen ({state.get('rounds', 0)} decisions after the seed design), "
            f"{state.get('spent_flops', 0):.3g} FLOPs. Stopped: {esc(stopped)}. Each decision is a row of "
            "<code>decisions.parquet</code> (docs/adaptive.md).</p>")


def sample_grids(data: ReportData) -> str:
    t = data.trials.set_index(TRIALS.trial_id)
    order = sorted(data.samples, key=lambda tid: (float(t[TRIALS.n_params].get(tid, 0)) if TRIALS.n_params in t else 0,
                                                   float(t[TRIALS.data_units].get(tid, 0)) if TRIALS.data_units in t
                                                   else 0, tid))
    blocks = []
    for tid in order:
        figs = []
        for caption, png in data.samples[tid]:
            if not png.startswith(PNG_SIGNATURE):
                figs.append(f'<figure><figcaption class="warn">{esc(caption)}: not a PNG, left out</figcaption></figure>')
                continue
            uri = "data:image/png;base64," + base64.b64encode(png).decode()
            figs.append(f'<figure><img alt="{esc(caption)}" src="{uri}"><figcaption>{esc(caption)}</figcaption></figure>')
        n = sci(float(t[TRIALS.n_params][tid])) if TRIALS.n_params in t and tid in t.index else "?"
        blocks.append(f"<h3>{esc(tid)} (N={n})</h3><div class=\"samples\">{''.join(figs)}</div>")
    return "".join(blocks)
