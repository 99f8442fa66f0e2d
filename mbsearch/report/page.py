"""report.html: compute the figure data first (pure), then draw it with plotly into one offline page."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from mbsearch.files import write_atomic
from mbsearch.report.data import ReportData, VerifiedData, compute
from mbsearch.report.figures import cost_figure, history_figure, importance_figure, pareto_figure, verified_figure
from mbsearch.results.finished import FinishedStudy
from mbsearch.results.seed_noise import SeedNoise
from mbsearch.study import records


def _sources_text(sources: dict[str, int] | None) -> str:
    """Says where predicted latencies came from; an extrapolation is never passed off as a table hit."""
    if not sources:
        return ""
    parts = ", ".join(f"{count} {source}" for source, count in sorted(sources.items()))
    warning = (
        f" <strong>{sources['extrapolated']} trial(s) were predicted outside the range the table's regressors were "
        "trained on</strong> (column latency_source 'predicted:extrapolated' in trials.csv); re-time them on the "
        "device ('verify --target') before trusting their place on the front."
        if sources.get("extrapolated")
        else ""
    )
    return f"<p id='latency-sources'>Predicted latencies by source: {html.escape(parts)}.{warning}</p>"


def _device_text(device: dict | None) -> str:
    """Which device the latencies come from: a report names it."""
    if not device:
        return "<p>Latency device: not recorded (a study made before mbsearch recorded device fingerprints).</p>"
    if str(device.get("fingerprint", "")).startswith("lut-"):
        what = f"predicted by the lookup table {device.get('target')} for device {device.get('predicts_for')}"
    else:
        what = f"measured on {device.get('target')}, device {device.get('fingerprint')}"
    # Every field came from a device (an agent's answer): escaped, whatever it holds
    cpu, cores, runtime, threads = (html.escape(str(device.get(key))) for key in ("cpu", "cores", "runtime", "threads"))
    return (
        f"<p id='latency-device'>Latency {html.escape(what)}: {cpu}, {cores} core(s), {runtime}, "
        f"{threads} thread(s).</p>"
    )


def _confirmed_text(frame: pd.DataFrame | None) -> str:
    if frame is None:
        return "<p>No trial re-timed on another target ('run --confirm-on' or 'verify --target' does it).</p>"
    rows = "".join(
        f"<tr><td>{row.number}</td><td>{row.latency_ms:.3f}</td><td>{row.sd_ms:.3f}</td>"
        f"<td>{html.escape(row.source)}</td><td>{row.confirmed_ms:.3f}</td>"
        f"<td>{(row.latency_ms - row.confirmed_ms) / row.confirmed_ms:+.1%}</td><td>{html.escape(row.target)}</td></tr>"
        for row in frame.itertuples()
    )
    within = float(((frame["latency_ms"] - frame["confirmed_ms"]).abs() / frame["confirmed_ms"] <= 0.10).mean())
    outside = int((frame["source"] == "predicted:extrapolated").sum())
    warning = (
        f" {outside} of them were predicted outside the range the table's regressor was trained on "
        "(source 'predicted:extrapolated'): trust their re-timing, not the prediction."
        if outside
        else ""
    )
    return (
        f"<p>{within:.0%} of {len(frame)} re-timed trial(s) within ±10% of the search's latency.{warning}</p>"
        "<table class='front' id='confirmed-table'><tr><th>trial</th><th>search latency ms</th><th>± sd ms</th>"
        f"<th>source</th><th>re-timed ms</th><th>error</th><th>target</th></tr>{rows}</table>"
    )


def _adapted_text(adapted: pd.DataFrame | None) -> str:
    if adapted is None:
        return (
            "<p>No adapted network shown ('mbsearch adapt' trims an exported trial to a latency target; "
            "'report --adapted DIR' puts the result here).</p>"
        )
    rows = "".join(
        f"<tr><td>{html.escape(row.name)}</td><td>{row.source_trial}</td>"
        f"<td>{row.source_latency_ms:.3f} / {row.source_val_accuracy:.4f}</td>"
        f"<td>{row.start_latency_ms:.3f} / {row.start_val_accuracy:.4f}</td>"
        f"<td>{row.latency_ms:.3f} / {row.val_accuracy:.4f}</td><td>{row.goal_ms:.3f} "
        f"({'met' if row.met else 'not met'})</td><td>{row.iterations}</td><td>{row.params:,}</td>"
        f"<td>{'yes' if row.same_device else 'no: not comparable'}</td></tr>"
        for row in adapted.itertuples()
    )
    return (
        "<p>Stars on the plot, each joined to the trial it was trimmed from. Their accuracy is after "
        "NetAdapt's fine-tunes, not the search's proxy budget, so a star above the front is not evidence "
        "that it beats the front: compare it with the trial it came from at the same training budget "
        "(<code>benchmarks/netadapt.py</code> does, against uniform width scaling).</p>"
        "<table class='front' id='adapted-table'><tr><th>network</th><th>from trial</th>"
        "<th>search: ms / val acc</th><th>adapt start: ms / val acc</th><th>adapted: ms / val acc</th>"
        f"<th>goal ms</th><th>iterations</th><th>params</th><th>timed on the study's device</th></tr>{rows}</table>"
    )


def _front_table(data: ReportData) -> str:
    table = data.front[["number", "val_accuracy", "latency_ms", "latency_iqr_ms", "params", "macs", "blocks"]].copy()
    table["val_accuracy"] = table["val_accuracy"].map("{:.4f}".format)
    table["latency_ms"] = table["latency_ms"].map("{:.3f}".format)
    table["latency_iqr_ms"] = table["latency_iqr_ms"].map("{:.3f}".format)
    table["params"] = table["params"].map(lambda v: f"{int(v):,}")
    table["macs"] = table["macs"].map(lambda v: f"{v / 1e6:.1f}M")
    table["number"] = table["number"].map(lambda n: f"{n} (knee)" if n == data.knee_number else str(n))
    if data.settings.get("precision") == "int8" and data.front[records.FLOAT_VAL_ACCURACY].notna().any():
        # --precision int8: the objectives are the int8 graph's; the float network's numbers beside them
        front = data.front
        table = table.rename(columns={"val_accuracy": "int8 val_accuracy", "latency_ms": "int8 latency_ms"})
        table.insert(2, "float val_accuracy", front[records.FLOAT_VAL_ACCURACY].map("{:.4f}".format))
        drop = 100 * (front[records.FLOAT_VAL_ACCURACY] - front["val_accuracy"])
        table.insert(3, "int8 drop (points)", drop.map("{:+.2f}".format))
        table.insert(5, "float latency_ms", front[records.FLOAT_LATENCY_MS].map("{:.3f}".format))
        speedup = front[records.FLOAT_LATENCY_MS] / front["latency_ms"]
        table.insert(6, "int8 speed-up", speedup.map("{:.2f}x".format))
    return table.to_html(index=False, classes="front", border=0)


def _dominance_text(data: ReportData) -> str:
    if data.supernet is not None:
        steps = int(data.settings.get("finetune_steps") or 0)
        tuned = f", each fine-tuned for {steps} steps," if steps else ""
        return (
            "<p>This search scored its candidates with weights inherited from a supernet "
            f"({html.escape(str(data.supernet.get('digest')))}, {data.supernet.get('steps')} training steps){tuned} "
            "BatchNorm recalibrated on training images. A reference MobileNet is no sub-network of the space and "
            "has no inherited score, so the front is set against the baselines only once verified "
            "(<code>mbsearch verify STUDY</code> trains both alike).</p>"
        )
    if data.dominance is None:
        return (
            "<p>No baselines drawn: none are stored for this study's data and device (<code>mbsearch verify "
            "STUDY</code> trains and times them on the study's device), or the report was made with "
            "<code>--no-baselines</code>.</p>"
        )
    items = []
    for row in data.dominance.itertuples():
        if row.dominated:
            gain = f"+{row.accuracy_gain:.1f} accuracy points at no more latency" if row.accuracy_gain else ""
            speed = f"{row.speedup:.2f}x faster at no less accuracy" if row.speedup else ""
            detail = "; ".join(part for part in (gain, speed) if part)
            items.append(f"<li><b>{html.escape(row.name)}</b>: dominated by the front ({detail})</li>")
        else:
            items.append(f"<li>{html.escape(row.name)}: not dominated</li>")
    count = int(data.dominance["dominated"].sum())
    text = f"<p>The front dominates {count} of {len(data.dominance)} baselines.</p><ul>{''.join(items)}</ul>"
    if data.settings.get("precision") == "int8" and data.baselines is not None:
        text = _int8_baselines_text(data.baselines) + text
    return text


def _int8_baselines_text(baselines: pd.DataFrame) -> str:
    """An int8 study's baselines are quantized, scored and timed as its trials are: both sides in int8, with
    the float network's numbers beside them."""
    table = pd.DataFrame({"baseline": baselines["name"]})
    table["float val_accuracy"] = baselines["float_val_accuracy"].map("{:.4f}".format)
    table["int8 val_accuracy"] = baselines["val_accuracy"].map("{:.4f}".format)
    drop = 100 * (baselines["float_val_accuracy"] - baselines["val_accuracy"])
    table["int8 drop (points)"] = drop.map("{:+.2f}".format)
    table["float latency_ms"] = baselines["float_latency_ms"].map("{:.3f}".format)
    table["int8 latency_ms"] = baselines["latency_ms"].map("{:.3f}".format)
    table["int8 speed-up"] = (baselines["float_latency_ms"] / baselines["latency_ms"]).map("{:.2f}x".format)
    return (
        "<p>This search's objectives are int8 accuracy and int8 latency. The baselines are quantized, scored "
        "and timed the same way (ONNX Runtime static quantization, QDQ, per-channel, calibrated on training "
        "images), so front and baselines are compared in int8; their float numbers are beside them.</p>"
        + table.to_html(index=False, classes="front", border=0)
    )


def _margins(dominance: pd.DataFrame, noise_points: float | None, seed_noise: SeedNoise | None = None) -> str:
    """Each baseline's margin against the verified front, in points and in speed-up, with the noise: the
    validation sampling's, and where measured (report --seed-noise) the training seed's on top."""
    band = (
        seed_noise.margin_band(noise_points)
        if seed_noise is not None and seed_noise.sd_points == seed_noise.sd_points
        else None
    )
    items = []
    for row in dominance.itertuples():
        gain = (
            "no front point as fast"
            if pd.isna(row.accuracy_gain)
            else f"{row.accuracy_gain:+.2f} points at no more latency"
        )
        if band is not None and not pd.isna(row.accuracy_gain):
            gain += f" ({'beyond' if abs(row.accuracy_gain) > band else 'within'} the ±{band:.2f}-point noise)"
        # a speed-up exists only where some front point is at least as accurate (never "nanx")
        speed = (
            "no verified network is at least as accurate"
            if pd.isna(row.speedup)
            else f"{row.speedup:.2f}x faster at no less accuracy"
        )
        verdict = "dominated" if row.dominated else "not dominated"
        items.append(f"<li><b>{html.escape(row.name)}</b>: {verdict}; {gain}; {speed}</li>")
    noise = ""
    if noise_points is not None and band is None:
        noise = (
            f"<p>Noise: a difference of two accuracies on these validation images has a 95% sampling interval of "
            f"about ±{noise_points:.2f} points; seed-to-seed noise of the training is not measured here "
            "(<code>mbsearch report --seed-noise 2</code> measures it) and adds to it, so margins inside that band "
            "are not evidence.</p>"
        )
    elif band is not None and seed_noise is not None:
        runs = "; ".join(
            f"{html.escape(name)}: {', '.join(f'{100 * a:.2f}' for a in values)}"
            for name, values in seed_noise.accuracies.items()
        )
        noise = (
            f"<p>Noise: the training seed moves one verified accuracy by a standard deviation of "
            f"{seed_noise.sd_points:.2f} points (pooled over the knee and two baselines, retrained with more seeds: "
            f"{runs}); with the validation sampling's ±{noise_points or 0:.2f}, a margin's 95% band is "
            f"±{band:.2f} points. Margins within it are not evidence.</p>"
        )
    return f"<ul>{''.join(items)}</ul>{noise}"


def _verified_text(verified: VerifiedData | None, val_size: int | None = None) -> str:
    if verified is None:
        return (
            "<p>No trial verified yet: accuracies above come from the search's own evaluator only (brief "
            "training, or inherited supernet weights). "
            "<code>mbsearch verify STUDY</code> retrains the front at a longer budget.</p>"
        )
    budget = verified.budget
    tau = "n/a (fewer than 3 verified)" if verified.tau is None else f"{verified.tau:.3f}"
    dominance_html = ""
    if verified.dominance is not None:
        count = int(verified.dominance["dominated"].sum())
        accuracy = float(verified.front["val_accuracy"].mean()) if not verified.front.empty else 0.5
        noise = 100 * 1.96 * math.sqrt(2 * accuracy * (1 - accuracy) / val_size) if val_size else None
        dominance_html = (
            f"<p>On verified accuracy, the verified front dominates {count} of {len(verified.dominance)} "
            f"baselines (trained at the same budget and seed rule).</p>"
            f"{_margins(verified.dominance, noise, verified.noise)}"
        )
    return (
        f"<p>{len(verified.points)} trial(s) verified at {budget.get('epochs')} epoch(s) x "
        f"{budget.get('train_size')} images (batch {budget.get('batch_size')}, lr {budget.get('lr')}). "
        f"Kendall τ between proxy and verified accuracy over them: <b>{tau}</b> "
        "(1 = the proxy ranked them exactly as the longer training does). Verified front: "
        f"{len(verified.front)} point(s).</p>{dominance_html}"
    )


def render(data: ReportData) -> str:
    """One self-contained page: plotly's JavaScript is inlined once, in the head, so it opens offline and
    every figure finds it wherever it sits (a figure placed above the one that carried the library was
    left blank: the verified front, once it led the page)."""
    figures = [
        ("pareto-plot", pareto_figure(data)),
        ("cost-plot", cost_figure(data)),
        ("history-plot", history_figure(data)),
    ]
    if data.importances:
        figures.append(("importance-plot", importance_figure(data)))
    if data.verified is not None:
        figures.append(("verified-plot", verified_figure(data.verified)))
    parts = [
        figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})
        for div_id, figure in figures
    ]
    plotly_js = get_plotlyjs()
    settings = ", ".join(f"{key}={value}" for key, value in data.settings.items() if value is not None)
    counts = ", ".join(f"{count} {state.lower()}" for state, count in data.counts.items() if count)
    verified_html = _verified_text(data.verified, data.settings.get("val_size"))
    if data.verified is not None:  # what was verified leads; the proxy's claims follow, labelled as such
        lead = f"<h2>Verified front (the longer training)</h2>\n{verified_html}\n{parts[-1]}\n"
        lead += "<h2>Proxy front (brief training: the search's own view)</h2>"
        verified_section, rest = "", parts[1:-1]
    else:
        lead, verified_section, rest = "", f"<h2>Verified</h2>\n{verified_html}", parts[1:]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table.front td,table.front th
{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;font-size:13px}} code{{background:#f1f3f4}}</style>
<script type="text/javascript">{plotly_js}</script>
</head><body>
<h1>{html.escape(data.title)}</h1>
<p>Trials: {html.escape(counts)}. Pareto front: {len(data.front)} point(s).</p>
<p><small>{html.escape(settings)}</small></p>
{_device_text(data.device)}
{_sources_text(data.sources)}
{lead}
{parts[0]}
<h2>Against the MobileNet baselines{" (proxy)" if data.verified is not None else ""}</h2>
{_dominance_text(data)}
<h2>Pareto front</h2>
{_front_table(data)}
{verified_section}
<h2>Adapted (NetAdapt)</h2>
{_adapted_text(data.adapted)}
<h2>Predicted against measured latency</h2>
{_confirmed_text(data.confirmed)}
{"".join(rest)}
</body></html>
"""


def write_report(
    finished: FinishedStudy,
    baselines: pd.DataFrame | None,
    verify_budget: dict | None = None,
    verified_baselines: pd.DataFrame | None = None,
    adapted: pd.DataFrame | None = None,
    noise: SeedNoise | None = None,
) -> Path:
    path = finished.study_dir / "report.html"
    write_atomic(path, render(compute(finished, baselines, verify_budget, verified_baselines, adapted, noise)))
    return path


def report_study(
    finished: FinishedStudy, baselines: bool, data_dir: Path | None = None, adapted: pd.DataFrame | None = None
) -> tuple[Path, list[str]]:
    """Write the study's report.html from what the study and the stored baselines hold (nothing is trained or
    timed) and say what is missing, with the command that fills it."""
    from mbsearch.results.baselines import stored_study_baselines
    from mbsearch.results.seed_noise import stored_seed_noise
    from mbsearch.study import records

    frame = verified_frame = None
    missing: list[str] = []
    if baselines:
        stored = stored_study_baselines(finished, finished.study_dir.parent, data_dir)
        frame, verified_frame, missing = stored.proxy, stored.verified, list(stored.missing)
    budget = records.verify_budget(finished.study)
    noise = stored_seed_noise(finished) if verified_frame is not None else None
    return write_report(finished, frame, budget, verified_frame, adapted, noise), missing
