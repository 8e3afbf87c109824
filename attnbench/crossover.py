"""Crossover ("efficiency length"): the smallest n at which an approximate method beats an exact baseline.

For each approximate method (with its params) and each setting of the other axes, the ratio
method cost / baseline cost is taken at every n where both ran; the first change from "not winning"
(ratio >= 1) to "winning" (ratio < 1) is located by linear interpolation of log ratio against log n,
which is exact when both costs are power laws of n. Nothing is extrapolated: a method that already wins
at the smallest measured n reads "< n_min", one that never wins reads "> n_max".

Noise: a time crossing is only as good as the cells that bracket it. Each cell's speed-up has a range
from the timing quartiles (baseline q1 / method q3 to baseline q3 / method q1, see
``report.time_quartiles``). A crossing is marked "?" ("1.4k?", "< 256?", "> 1k?") and its note says
why, e.g. "noisy bracket: speed-up 0.8–1.3× at n=1k", when at a bracketing n (the two around an
interpolated crossing, the first n for "< n_min", any n for "> n_max") the speed-up's range
straddles 1, so the win could lie on the other side; or, for an interpolated crossing, when a
bracketing cell of the method or the baseline is noisy (IQR over 10% of its median), so the
interpolated n moves with the noise. The crossing is marked rather than withheld: its value is still
the best estimate the run has. Memory is measured once per cell and carries no such mark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from attnbench.frame import (NOISY_IQR, baseline_mask, family_columns, fmt_n, time_cost,
                             time_quartiles, varying)

FAILED = ("oom", "oom-pruned")


@dataclass(frozen=True)
class Crossing:
    kind: Literal["cross", "always", "never", "none"]
    n: float | None  # the interpolated n (kind "cross"), else None
    text: str        # what a table shows: "1.4k", "< 256", "> 4096", "—"
    note: str = ""   # e.g. "loses again at n=8192", "baseline OOM from n=16384"
    bracket: tuple[float, ...] = ()  # the measured n the answer rests on (see the module docstring)


def crossing(ns: list[float], ratios: list[float]) -> Crossing:
    """The smallest n where ``ratio = method / baseline`` drops below 1, given ratios at measured n."""
    pts = sorted((n, r) for n, r in zip(ns, ratios) if n > 0 and r is not None and r == r and r > 0)
    if not pts:
        return Crossing("none", None, "—")
    wins = [r < 1 for _, r in pts]
    first = wins.index(True) if True in wins else None
    note = ""
    if first is not None and not all(wins[first:]):
        again = next(n for (n, _), w in zip(pts[first:], wins[first:]) if not w)
        note = f"loses again at n={fmt_n(again)}"
    if first is None:
        return Crossing("never", None, f"> {fmt_n(pts[-1][0])}", bracket=tuple(n for n, _ in pts))
    if first == 0:
        return Crossing("always", None, f"< {fmt_n(pts[0][0])}", note, (pts[0][0],))
    (n0, r0), (n1, r1) = pts[first - 1], pts[first]
    x0, x1, y0, y1 = math.log(n0), math.log(n1), math.log(r0), math.log(r1)
    x = x0 if y1 == y0 else x0 + (0.0 - y0) * (x1 - x0) / (y1 - y0)
    n_star = math.exp(x)
    return Crossing("cross", n_star, fmt_n(n_star), note, (n0, n1))


def _noisy_bracket(c: Crossing, m: pd.DataFrame, b: pd.DataFrame) -> str:
    """Why the time crossing ``c`` is doubtful, from the method's (``m``) and the baseline's (``b``)
    median and quartiles at the n it rests on ("" when it isn't)."""
    why = []
    for n in c.bracket:
        lo, hi = b.at[n, "_q1"] / m.at[n, "_q3"], b.at[n, "_q3"] / m.at[n, "_q1"]
        if lo == lo and hi == hi and lo < 1 < hi:
            why.append(f"speed-up {lo:#.2g}–{hi:#.2g}× at n={fmt_n(n)}")
        elif c.kind == "cross":
            noisy = [who for who, f in (("method", m), ("baseline", b))
                     if f.at[n, "_q3"] - f.at[n, "_q1"] > NOISY_IQR * f.at[n, "_t"]]
            if noisy:
                why.append(f"{' and '.join(noisy)} IQR over {NOISY_IQR:.0%} at n={fmt_n(n)}")
    return "noisy bracket: " + ", ".join(why) if why else ""


def _cost(df: pd.DataFrame, metric: str) -> pd.Series:
    """Lower is better. Time: median ms (per sequence in capacity mode). Memory: peak MiB, or in
    capacity mode 1 / max_batch, so that "fits more sequences" counts as using less memory."""
    if metric == "time":
        return time_cost(df)
    peak = pd.to_numeric(df.get("peak_mem_mib", pd.Series(math.nan, index=df.index)), errors="coerce")
    if "batching" in df and "max_batch" in df:
        cap = df["batching"] == "capacity"
        peak = peak.where(~cap, 1.0 / pd.to_numeric(df["max_batch"], errors="coerce"))
    return peak


@dataclass(frozen=True)
class Pair:
    """A method's rows on one setting of the other axes beside the baseline's: ``b`` and ``m`` are
    their per-n medians, ``common`` the n both were measured at (ascending; index labels of ``b``
    and ``m``) and ``ns`` the same as floats."""
    key: tuple            # (label, *setting)
    frame: pd.DataFrame   # the method's rows
    base: pd.DataFrame    # the baseline's rows on the same setting
    b: pd.DataFrame
    m: pd.DataFrame
    common: list

    @property
    def ns(self) -> list[float]:
        return [float(n) for n in self.common]

    def ratios(self, col: str) -> list[float]:
        """The method's value over the baseline's at each common n."""
        return [self.m.at[n, col] / self.b.at[n, col] for n in self.common]

    def oom_beyond(self, verb: str) -> str | None:
        """A note when the baseline failed for memory at an n beyond the common range where the
        method still ran."""
        failed = self.base[self.base["status"].isin(FAILED)]["n"]
        ran = set(self.frame.loc[self.frame["status"] == "ok", "n"])
        beyond = sorted(n for n in failed if n in ran and (not self.ns or n > self.ns[-1]))
        return f"baseline OOM from n={fmt_n(beyond[0])}, where this method {verb}" if beyond else None


def pairs(base_rows: pd.DataFrame, others: pd.DataFrame, keys: list[str], label: str, per_n,
          dropna: bool = True):
    """Each method label and setting of ``keys`` in ``others`` that the baseline also has, as a
    :class:`Pair`; ``per_n(frame)`` gives a frame's per-n medians (indexed by n)."""
    base_groups = {k if isinstance(k, tuple) else (k,): g
                   for k, g in base_rows.groupby(keys, dropna=dropna)} if keys else {(): base_rows}
    for key, frame in others.groupby([label, *keys], dropna=dropna):
        key = key if isinstance(key, tuple) else (key,)
        base = base_groups.get(tuple(key[1:]))
        if base is None:
            continue
        b, m = per_n(base), per_n(frame)
        common = b.index.intersection(m.index).sort_values()
        yield Pair(key, frame, base, b, m, list(common))


def crossover_table(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per approximate method label and setting of the other axes: the time and memory
    crossovers against ``baseline``, the n range both were measured on, and the speed-up there."""
    cols = ["method", "time_crossover", "mem_crossover", "measured_n", "speedup_at_max_n", "note",
            "time_crossover_n", "mem_crossover_n", "speedup_at_max_n_lo", "speedup_at_max_n_hi"]
    if df.empty or "n" not in df or "status" not in df:
        return pd.DataFrame(columns=cols)
    base_rows = df[baseline_mask(df, baseline)]
    keys = family_columns(df)
    others = df[~df.index.isin(base_rows.index)]
    if "exact" in others:
        others = others[others["exact"].astype(str).str.lower() != "true"]
    label = "label" if "label" in df else "method"
    if base_rows.empty or others.empty:
        return pd.DataFrame(columns=cols)

    def per_n(frame: pd.DataFrame) -> pd.DataFrame:
        q1, q3 = time_quartiles(frame)
        ok = frame.assign(_t=_cost(frame, "time"), _m=_cost(frame, "memory"), _q1=q1, _q3=q3)
        return ok[ok["status"] == "ok"].groupby("n")[["_t", "_m", "_q1", "_q3"]].median()

    out = []
    for pair in pairs(base_rows, others, keys, label, per_n, dropna=False):
        key, frame, b, m, ns, common = pair.key, pair.frame, pair.b, pair.m, pair.ns, pair.common
        t = crossing(ns, pair.ratios("_t"))
        mem = crossing(ns, pair.ratios("_m"))
        doubt = _noisy_bracket(t, m, b)
        if doubt:
            t = Crossing(t.kind, t.n, t.text + "?", "; ".join(filter(None, [doubt, t.note])),
                         t.bracket)
        notes = [f"time: {t.note}"] if t.note else []
        notes += [f"memory: {mem.note}"] if mem.note else []
        if beyond := pair.oom_beyond("runs"):
            notes.append(beyond)
        if not ns and not notes:
            continue  # nothing measured on both sides: the method's own rows say why
        row = dict(zip([label, *keys], key))
        budget = pd.to_numeric(frame.get("budget_value"), errors="coerce") if "budget_value" in frame \
            else pd.Series(dtype=float)
        row["_order"] = (str(frame["method"].iloc[0]), budget.max() if budget.notna().any() else -1)
        row.update(method=key[0], time_crossover=t.text, mem_crossover=mem.text,
                   measured_n=f"{fmt_n(ns[0])}–{fmt_n(ns[-1])}" if ns else "—",
                   speedup_at_max_n=(b.at[common[-1], "_t"] / m.at[common[-1], "_t"]) if ns
                   else math.nan,
                   speedup_at_max_n_lo=(b.at[common[-1], "_q1"] / m.at[common[-1], "_q3"]) if ns
                   else math.nan,
                   speedup_at_max_n_hi=(b.at[common[-1], "_q3"] / m.at[common[-1], "_q1"]) if ns
                   else math.nan,
                   note="; ".join(notes), time_crossover_n=math.nan if t.n is None else t.n,
                   mem_crossover_n=math.nan if mem.n is None else mem.n)
        out.append(row)
    res = pd.DataFrame(out)
    if res.empty:
        return pd.DataFrame(columns=cols)
    shown = varying(res, keys)
    res = res.assign(_m=[o[0] for o in res["_order"]], _b=[o[1] for o in res["_order"]])
    res = res.sort_values(["_m", "_b", "method", *shown], kind="stable")
    return res[cols[:1] + shown + cols[1:]].reset_index(drop=True)
