"""The report's plotly figures: the Pareto front beside the baselines (and adapted networks), cost
against latency, the search's history, the parameters' importances, and the verified front.
"""

from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mbsearch.report.data import ReportData, VerifiedData


def _hover(frame: pd.DataFrame) -> list[str]:
    texts = []
    for row in frame.itertuples():
        blocks = "<br>".join(str(row.blocks).split())
        texts.append(
            f"trial {row.number}<br>val acc {row.val_accuracy:.4f}<br>latency {row.latency_ms:.3f} ms"
            f"<br>{int(row.params):,} params, {row.macs / 1e6:.1f} MMACs<br>{blocks}"
        )
    return texts


_STYLE = {
    "dominated": {"color": "#9aa0a6", "symbol": "circle", "size": 8},
    "infeasible": {"color": "#d93025", "symbol": "x", "size": 9},
    "front": {"color": "#1a73e8", "symbol": "circle", "size": 11},
}


def pareto_figure(data: ReportData) -> go.Figure:
    figure = go.Figure()
    for kind in ("dominated", "infeasible", "front"):
        part = data.points[data.points["kind"] == kind]
        if kind == "front":
            part = part.sort_values("latency_ms")
        figure.add_trace(
            go.Scatter(
                x=part["latency_ms"],
                y=part["val_accuracy"],
                name={"front": "Pareto front"}.get(kind, kind),
                mode="lines+markers" if kind == "front" else "markers",
                marker=_STYLE[kind],
                text=_hover(part),
                hoverinfo="text",
            )
        )
    if data.baselines is not None:
        figure.add_trace(
            go.Scatter(
                x=data.baselines["latency_ms"],
                y=data.baselines["val_accuracy"],
                name="MobileNet baselines",
                mode="markers+text",
                text=data.baselines["name"],
                textposition="top center",
                marker={"color": "#f29900", "symbol": "diamond", "size": 11},
                hovertemplate="%{text}<br>val acc %{y:.4f}<br>latency %{x:.3f} ms<extra></extra>",
            )
        )
    if data.adapted is not None:
        _add_adapted(figure, data.adapted)
    figure.update_layout(
        title="Validation accuracy vs latency",
        xaxis_title="latency (ms, median, batch 1)",
        yaxis_title="validation accuracy",
        xaxis_type="log",
        height=560,
        template="plotly_white",
    )
    latencies = [*data.points["latency_ms"], *([] if data.baselines is None else data.baselines["latency_ms"])]
    latencies += [] if data.adapted is None else list(data.adapted["latency_ms"])
    figure.update_xaxes(tickvals=_log_ticks(min(latencies), max(latencies)))
    return figure


def _add_adapted(figure: go.Figure, adapted: pd.DataFrame) -> None:
    """Each adapted network as a star, joined by a dotted line to the trial it was trimmed from."""
    for row in adapted.itertuples():
        figure.add_trace(
            go.Scatter(
                x=[row.source_latency_ms, row.latency_ms],
                y=[row.source_val_accuracy, row.val_accuracy],
                mode="lines",
                line={"color": "#188038", "dash": "dot"},
                showlegend=False,
                hoverinfo="skip",
            )
        )
    figure.add_trace(
        go.Scatter(
            x=adapted["latency_ms"],
            y=adapted["val_accuracy"],
            name="adapted (NetAdapt)",
            mode="markers",
            marker={"color": "#188038", "symbol": "star", "size": 14},
            text=[
                f"{html.escape(row.name)}<br>from trial {row.source_trial} in {row.iterations} iteration(s)"
                f"<br>val acc {row.val_accuracy:.4f} (after adapt's fine-tunes)<br>latency {row.latency_ms:.3f} ms"
                f"{'' if row.same_device else ' (another device)'}<br>{row.params:,} params"
                for row in adapted.itertuples()
            ],
            hoverinfo="text",
        )
    )


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks that cover [low, high]: plotly's own log ticks read "2 3 4 ... 1" below one decade."""
    ticks, decade = [], 10.0 ** math.floor(math.log10(low))
    while decade <= high * 10:
        ticks += [step * decade for step in (1, 2, 5) if low / 2 <= step * decade <= high * 2]
        decade *= 10
    return ticks


def cost_figure(data: ReportData) -> go.Figure:
    figure = make_subplots(rows=1, cols=2, subplot_titles=("params", "MACs"))
    trained = data.points[data.points["kind"] != "infeasible"]
    for col, key in ((1, "params"), (2, "macs")):
        for kind in ("dominated", "front"):
            part = trained[trained["kind"] == kind]
            figure.add_trace(
                go.Scatter(
                    x=part[key],
                    y=part["val_accuracy"],
                    mode="markers",
                    marker=_STYLE[kind],
                    name=kind,
                    showlegend=col == 1,
                    text=_hover(part),
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        if data.baselines is not None:
            figure.add_trace(
                go.Scatter(
                    x=data.baselines[key],
                    y=data.baselines["val_accuracy"],
                    mode="markers",
                    marker={"color": "#f29900", "symbol": "diamond", "size": 10},
                    name="baselines",
                    showlegend=col == 1,
                    text=data.baselines["name"],
                ),
                row=1,
                col=col,
            )
        figure.update_xaxes(type="log", title_text=key, row=1, col=col)
    figure.update_yaxes(title_text="validation accuracy", row=1, col=1)
    figure.update_layout(title="Accuracy vs size", height=420, template="plotly_white")
    return figure


def history_figure(data: ReportData) -> go.Figure:
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    history = data.history
    figure.add_trace(
        go.Scatter(
            x=history["number"],
            y=history["val_accuracy"],
            mode="markers",
            name="validation accuracy",
            marker={"color": "#9aa0a6"},
        ),
        secondary_y=False,
    )
    figure.add_trace(
        go.Scatter(
            x=history["number"],
            y=history["hypervolume"],
            mode="lines+markers",
            name="hypervolume",
            line={"color": "#1a73e8"},
        ),
        secondary_y=True,
    )
    figure.update_xaxes(title_text="trial")
    figure.update_yaxes(title_text="validation accuracy", secondary_y=False)
    figure.update_yaxes(title_text="hypervolume (accuracy x ms)", secondary_y=True)
    figure.update_layout(title="Optimisation history", height=420, template="plotly_white")
    return figure


def importance_figure(data: ReportData) -> go.Figure:
    figure = make_subplots(rows=1, cols=2, subplot_titles=tuple(data.importances))
    for col, (objective, values) in enumerate(data.importances.items(), start=1):
        ordered = sorted(values.items(), key=lambda item: item[1])[-12:]
        figure.add_trace(
            go.Bar(
                x=[v for _, v in ordered], y=[k for k, _ in ordered], orientation="h", name=objective, showlegend=False
            ),
            row=1,
            col=col,
        )
    figure.update_layout(title="Parameter importances (PED-ANOVA)", height=460, template="plotly_white")
    return figure


def verified_figure(verified: VerifiedData) -> go.Figure:
    """Two panels, same latency axis: the proxy's view of the verified trials, and the verified view."""
    figure = make_subplots(
        rows=1, cols=2, shared_xaxes=True, subplot_titles=("Proxy accuracy (the search)", "Verified accuracy")
    )
    points = verified.points.sort_values("latency_ms")
    front_numbers = set(verified.front["number"])
    proxy_front_numbers = set(verified.proxy_front["number"])
    for col, column, on_front in ((1, "val_accuracy", proxy_front_numbers), (2, "verified_accuracy", front_numbers)):
        mask = points["number"].isin(on_front)
        for kind, part in (("front", points[mask]), ("dominated", points[~mask])):
            figure.add_trace(
                go.Scatter(
                    x=part["latency_ms"],
                    y=part[column],
                    mode="lines+markers" if kind == "front" else "markers",
                    marker=_STYLE[kind],
                    name=f"{'proxy' if col == 1 else 'verified'} {kind}",
                    text=[f"trial {n}" for n in part["number"]],
                    hovertemplate="%{text}<br>acc %{y:.4f}<br>latency %{x:.3f} ms<extra></extra>",
                ),
                row=1,
                col=col,
            )
    if verified.baselines is not None:
        figure.add_trace(
            go.Scatter(
                x=verified.baselines["latency_ms"],
                y=verified.baselines["val_accuracy"],
                mode="markers",
                name="baselines (verified budget)",
                text=verified.baselines["name"],
                marker={"color": "#f29900", "symbol": "diamond", "size": 10},
                hovertemplate="%{text}<br>acc %{y:.4f}<br>latency %{x:.3f} ms<extra></extra>",
            ),
            row=1,
            col=2,
        )
    figure.update_xaxes(type="log", title="latency (ms)")
    figure.update_yaxes(title="validation accuracy", row=1, col=1)
    figure.update_layout(height=450, title="Proxy front and verified front")
    return figure
