"""Rank agreement between two scorings of the same architectures: pure functions, no dependencies.

Used by the fidelity benchmark (proxy against reference) and by `verify` (proxy against verified).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either list handled as scipy does). NaN for fewer than two pairs."""
    if len(x) != len(y):
        raise ValueError("kendall_tau needs two lists of the same length")
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks."""
    if len(x) != len(y):
        raise ValueError("spearman_rho needs two lists of the same length")
    rx, ry = _ranks(x), _ranks(y)
    n = len(rx)
    if n < 2:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx and vy else float("nan")


def top_overlap(x: Sequence[float], y: Sequence[float], share: float = 0.25) -> float:
    """Share of the top `share` by y that is also in the top `share` by x (1 = the same top quartile)."""
    if len(x) != len(y):
        raise ValueError("top_overlap needs two lists of the same length")
    count = max(1, round(len(x) * share))
    top_x = set(sorted(range(len(x)), key=lambda i: x[i], reverse=True)[:count])
    top_y = set(sorted(range(len(y)), key=lambda i: y[i], reverse=True)[:count])
    return len(top_x & top_y) / count
