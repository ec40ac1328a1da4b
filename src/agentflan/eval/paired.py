"""Paired comparisons of evaluation runs: two models scored on the same tasks, item by item.

Every model of a comparison plays the same held-out tasks and items (the same seed draws the same
tasks; a task file is the same file), so two runs are compared on their per-item differences, not
as two separate proportions. The per-item variance that both models share (an easy task, a hard
one) cancels, which makes a paired comparison much more powerful at the same n.

For each pair of runs, suite group (an environment, an Agent-H style, the step-level suite, BFCL),
metric and stratum (all items, then each task kind or category), over the items both runs scored:

* the mean of each run and the mean difference A - B;
* a 95% confidence interval of the difference, by the percentile bootstrap over items (2,000
  resamples, seeded by the cell, so the same logs give the same bytes);
* an exact p-value: McNemar's exact test (a binomial test on the discordant items) for 0/1
  outcomes, a sign-flip permutation test for graded ones (exact up to 12 non-zero differences,
  else 20,000 seeded resamples); identical runs give a difference of 0 and p = 1;
* a Holm-adjusted p over the `all` rows of one pair of runs (the strata are exploratory);
* the smallest difference the run could detect: with 80% power at a two-sided alpha of 0.05, from
  the observed variance of the paired differences, (z_0.975 + z_0.8) * sd / sqrt(n) (where no item
  differs, sd is bounded by the rule of three: at most 3/n of the items discordant); beside it the
  same for two independent samples of that n, which shows what the pairing buys.

Which runs pair: in a suite group, runs that share a protocol are compared in it; the runs in
protocols only one side played (each arm in the protocol it was trained with, beside BFCL's prompt
that both played) are compared across theirs.
Items are matched by `task_id`; an item only one run scored (an error, a shorter run) is left
out and counted.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agentflan.seeds import crc_seed

Z_ALPHA = 1.959964  # two-sided alpha 0.05
Z_POWER = 0.841621  # power 0.8
RESAMPLES = 2000
EXACT_FLIPS = 12
ALPHA = 0.05


@dataclass
class RunOutcomes:
    """One logged run, reduced to what a paired comparison needs: per item, per (metric, stratum), the
    outcome (0/1 or a score in [0, 1])."""

    run: str
    group: str
    protocol: str
    items: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    environment: bool = False  # an environment's episodes: listed before the single-action suites


@dataclass
class Comparison:
    """One row of a paired comparison (see the module docstring)."""

    a: str
    b: str
    group: str
    protocol_a: str
    protocol_b: str
    metric: str
    stratum: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    test: str
    p: float
    p_holm: float | None
    detectable: float
    detectable_unpaired: float
    only_a: int
    only_b: int
    discordant: tuple[int, int] | None = None
    """0/1 outcomes: (items only A got right, items only B got right)."""

    @property
    def significant(self) -> bool:
        return (self.p_holm if self.p_holm is not None else self.p) < ALPHA

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


# ---- statistics -----------------------------------------------------------------------------------------------

def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for `b` and `c` discordant pairs (1.0 when there are none)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return min(1.0, 2 * tail)


def sign_flip_p(diffs: Sequence[float], rng: random.Random, resamples: int = 20000) -> float:
    """Two-sided p-value of a mean paired difference under random sign flips (exact up to 12
    non-zero differences, else `resamples` seeded draws, (hits + 1) / (draws + 1))."""
    nz = [d for d in diffs if d != 0]
    if not nz:
        return 1.0
    observed = abs(sum(nz)) - 1e-12
    if len(nz) <= EXACT_FLIPS:
        hits = sum(abs(sum(d if (mask >> i) & 1 else -d for i, d in enumerate(nz))) >= observed
                   for mask in range(1 << len(nz)))
        return hits / (1 << len(nz))
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in nz)) >= observed for _ in range(resamples))
    return (hits + 1) / (resamples + 1)


def bootstrap_ci(diffs: Sequence[float], rng: random.Random, resamples: int = RESAMPLES,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (resampling items)."""
    n = len(diffs)
    if n == 0:
        return (0.0, 0.0)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return means[math.floor(tail * (resamples - 1))], means[math.ceil((1 - tail) * (resamples - 1))]


def detectable(diffs: Sequence[float]) -> float:
    """The smallest mean difference detectable with 80% power at alpha 0.05 (two-sided), from the
    observed spread of the paired differences (rule of three where none differ)."""
    n = len(diffs)
    if n == 0:
        return math.inf
    sd = statistics.stdev(diffs) if n > 1 else 0.0
    if sd == 0:
        sd = math.sqrt(min(1.0, 3 / n))
    return (Z_ALPHA + Z_POWER) * sd / math.sqrt(n)


def detectable_unpaired(a: Sequence[float], b: Sequence[float]) -> float:
    """The same for two independent samples of these sizes and spreads (what an unpaired design gets)."""
    n = len(a)
    if n == 0:
        return math.inf

    bound = min(0.5, 3 / n)  # rule of three: a rate seen as 0 (or 1) is at most 3/n away from it

    def var(xs: Sequence[float]) -> float:
        v = statistics.pvariance(xs) if len(xs) > 1 else 0.0
        return v if v > 0 else bound * (1 - bound)

    return (Z_ALPHA + Z_POWER) * math.sqrt((var(a) + var(b)) / n)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of `ps` (family-wise error), in the input order."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [0.0] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


# ---- runs and pairs -------------------------------------------------------------------------------------------

def _pairs_of_protocols(a: list[RunOutcomes], b: list[RunOutcomes]) -> list[tuple[RunOutcomes, RunOutcomes]]:
    """The runs of a group to compare: those in a protocol both sides played, in it; then the runs in
    protocols only one side played (each model in the protocol it was trained with), across them."""
    common = {x.protocol for x in a} & {y.protocol for y in b}
    same = [(x, y) for x in a for y in b if x.protocol == y.protocol]
    return same + [(x, y) for x in a if x.protocol not in common for y in b if y.protocol not in common]


def _rng(*key: str) -> random.Random:
    return random.Random(crc_seed("\x1f".join(key)))


def compare_cell(a: RunOutcomes, b: RunOutcomes, metric: str, stratum: str, group: str | None = None) -> Comparison | None:
    """The paired comparison of one metric and stratum (None when no item is scored by both)."""
    key = (metric, stratum)
    ids_a = {i for i, v in a.items.items() if key in v}
    ids_b = {i for i, v in b.items.items() if key in v}
    both = sorted(ids_a & ids_b)
    if not both:
        return None
    xa = [a.items[i][key] for i in both]
    xb = [b.items[i][key] for i in both]
    diffs = [x - y for x, y in zip(xa, xb, strict=True)]
    g = group or a.group
    rng = _rng(a.run, b.run, g, a.protocol, b.protocol, metric, stratum)
    binary = all(x in (0.0, 1.0) for x in (*xa, *xb))
    if binary:
        b_, c_ = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        p, test, disc = mcnemar_exact(b_, c_), "McNemar", (b_, c_)
    else:
        p, test, disc = sign_flip_p(diffs, rng), "sign-flip", None
    lo, hi = bootstrap_ci(diffs, rng)
    n = len(both)
    return Comparison(a=a.run, b=b.run, group=g, protocol_a=a.protocol, protocol_b=b.protocol, metric=metric,
                      stratum=stratum, n=n, mean_a=sum(xa) / n, mean_b=sum(xb) / n, diff=sum(diffs) / n,
                      ci_low=lo, ci_high=hi, test=test, p=p, p_holm=None, detectable=detectable(diffs),
                      detectable_unpaired=detectable_unpaired(xa, xb), only_a=len(ids_a - ids_b),
                      only_b=len(ids_b - ids_a), discordant=disc)


def compare(a_runs: list[RunOutcomes], b_runs: list[RunOutcomes], combine: Combine | None = None) -> list[Comparison]:
    """Every paired comparison of run A against run B (their logs grouped by suite group), and of
    what `combine` pools over each side's runs, with Holm's adjustment over the `all` rows."""
    rows: list[Comparison] = []
    first = {r.group for r in [*a_runs, *b_runs] if r.environment}  # environments, then the other suites
    groups = sorted({r.group for r in a_runs} & {r.group for r in b_runs}, key=lambda g: (g not in first, g))
    for g in groups:
        for x, y in _pairs_of_protocols([r for r in a_runs if r.group == g], [r for r in b_runs if r.group == g]):
            cells = {k for v in x.items.values() for k in v} & {k for v in y.items.values() for k in v}
            for metric, stratum in sorted(cells, key=lambda c: (c[0], c[1] != "all", c[1])):
                row = compare_cell(x, y, metric, stratum)
                if row is not None:
                    rows.append(row)
    rows += _combined_rows(a_runs, b_runs, combine)
    primary = [i for i, r in enumerate(rows) if r.stratum == "all"]
    for i, p in zip(primary, holm([rows[i].p for i in primary]), strict=True):
        rows[i].p_holm = p
    return rows


Combine = Callable[[list[RunOutcomes]], list[RunOutcomes]]
"""What the suites pool over one model's runs (`eval.suites.combined_runs`: Agent-H's HScore per item)."""


def _combined_rows(a_runs: list[RunOutcomes], b_runs: list[RunOutcomes], combine: Combine | None) -> list[Comparison]:
    """Rows of what `combine` pools over each side's runs, for each pooled group both sides have."""
    if combine is None:
        return []
    theirs = {r.group: r for r in combine(b_runs)}
    rows = []
    for ca in combine(a_runs):
        cb = theirs.get(ca.group)
        if cb is None:
            continue
        cells = {k for v in ca.items.values() for k in v} & {k for v in cb.items.values() for k in v}
        for metric, stratum in sorted(cells):
            row = compare_cell(ca, cb, metric, stratum)
            if row is not None:
                rows.append(row)
    return rows


def compare_runs(runs: dict[str, list[RunOutcomes]], baseline: str | None = None,
                 pairs: Sequence[tuple[str, str]] | None = None, combine: Combine | None = None) -> list[Comparison]:
    """Paired comparisons of the runs (name -> its logs, in the order given): the `pairs` (A, B)
    given, else every run against `baseline`, else every pair (A before B); runs that share no item
    give no row."""
    names = list(runs)
    if pairs is None and baseline is not None:
        pairs = [(n, baseline) for n in names if n != baseline]
    elif pairs is None:
        pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    return [row for a, b in pairs if a in runs and b in runs for row in compare(runs[a], runs[b], combine)]


# ---- reports --------------------------------------------------------------------------------------------------

PRIMARY = ("success", "hscore", "accuracy", "retrieve", "score")
"""The metrics a verdict sentence is about (the tables show every metric)."""


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _detect(x: float) -> str:
    return f"{100 * x:.1f}" if x <= 1 else ">100"


def _p(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _label(c: Comparison) -> str:
    return f"`{c.protocol_a}`" if c.protocol_a == c.protocol_b else f"`{c.protocol_a}` / `{c.protocol_b}`"


def table(rows: Sequence[Comparison], *, strata: bool = True) -> str:
    """Markdown: one row per comparison (A - B in points, 95% CI, p, Holm's p, detectable difference)."""
    head = ["A - B", "suite", "protocols", "metric", "kind", "n", "A %", "B %", "A - B (95% CI)", "test", "p",
            "p (Holm)", "detectable (paired / unpaired)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        if not strata and c.stratum != "all":
            continue
        bold = "**" if c.stratum == "all" and c.significant else ""
        out.append("| " + " | ".join([
            f"{c.a} - {c.b}", c.group, _label(c), c.metric, c.stratum, str(c.n), f"{100 * c.mean_a:.1f}",
            f"{100 * c.mean_b:.1f}", f"{bold}{_pts(c.diff)} [{_pts(c.ci_low)}, {_pts(c.ci_high)}]{bold}",
            c.test + (f" ({c.discordant[0]}/{c.discordant[1]})" if c.discordant else ""), _p(c.p), _p(c.p_holm),
            f"{_detect(c.detectable)} / {_detect(c.detectable_unpaired)}"]) + " |")
    return "\n".join(out) + "\n"


def sentence(c: Comparison) -> str:
    """One sentence: the difference, its interval, p, whether it is significant at this n, and what
    this n could detect."""
    what = (f"{c.group} {c.metric}" + (f" ({c.stratum})" if c.stratum != "all" else "")
            + (f" in `{c.protocol_a}`" if c.protocol_a == c.protocol_b else f" in `{c.protocol_a}` / `{c.protocol_b}`"))
    p = c.p_holm if c.p_holm is not None else c.p
    verdict = ("significant" if p < ALPHA else "not significant") + f" at alpha = {ALPHA}"
    adj = " (Holm-adjusted)" if c.p_holm is not None else ""
    return (f"{what}: {c.a} - {c.b} = {_pts(c.diff)} points [95% CI {_pts(c.ci_low)}, {_pts(c.ci_high)}] over "
            f"{c.n} paired items, {c.test} p = {_p(p)}{adj}: {verdict}; the smallest difference {c.n} items "
            f"detect with 80% power is {_detect(c.detectable)} points.")


def summary(rows: Sequence[Comparison]) -> str:
    """Markdown: one sentence per primary comparison (the `all` rows of the `PRIMARY` metrics),
    significant ones in bold."""
    lines = [f"- {'**' if c.significant else ''}{sentence(c)}{'**' if c.significant else ''}"
             for c in rows if c.stratum == "all" and c.metric in PRIMARY]
    return "\n".join(lines) + "\n" if lines else ""


def headline(rows: Sequence[Comparison], a: str, b: str) -> str:
    """One sentence: on which primary comparisons of A against B the difference is significant at the
    n that was run, and on which it is not."""
    mine = [c for c in rows if c.a == a and c.b == b and c.stratum == "all" and c.metric in PRIMARY]
    if not mine:
        return f"{a} and {b} share no scored item: no paired comparison."

    groups = Counter((c.group, c.metric) for c in mine)

    def name(c: Comparison) -> str:  # the protocols named where a suite was played in several
        protocols = f"`{c.protocol_a}`" + ("" if c.protocol_a == c.protocol_b else f" / `{c.protocol_b}`")
        where = f" in {protocols}" if groups[(c.group, c.metric)] > 1 else ""
        return f"{c.group} {c.metric}{where} ({_pts(c.diff)} points, n = {c.n})"

    sig = [name(c) for c in mine if c.significant]
    not_sig = [name(c) for c in mine if not c.significant]
    parts = []
    if sig:
        parts.append(f"significant at alpha = {ALPHA} (Holm) on {', '.join(sig)}")
    if not_sig:
        parts.append(f"not significant on {', '.join(not_sig)}")
    return f"Paired, {a} - {b}: the difference is " + "; ".join(parts) + "."


def notes() -> str:
    """How to read the paired tables (for reports)."""
    return ("Paired over the items both models scored (matched by task id). `A - B` is in percentage points "
            "with a 95% bootstrap interval over items; p is McNemar's exact test for 0/1 outcomes (discordant "
            "items A-only/B-only in brackets) or a sign-flip permutation test for graded ones; Holm's adjustment "
            "runs over the `all` rows of each pair (task kinds and categories below them are exploratory). "
            "`detectable` is the smallest difference this n detects with 80% power at alpha 0.05, paired and, for "
            "comparison, unpaired. Bold: significant after Holm's adjustment.\n")
