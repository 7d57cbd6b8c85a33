"""Case-level splits and a leakage check.

A *case* is what must never be in two splits: a patient, a video, a CVC sequence. :func:`split_by_case`
assigns whole cases to splits; :func:`find_leakage` reports cases that several splits share (the
original CVC-12k lists share 7 of their 9 test sequences with the training list).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from endofm.errors import DatasetError, InputError

T = TypeVar("T")
CaseKey = Callable[[Any], Hashable] | str | None


def _key_function(case_key: CaseKey) -> Callable[[Any], Hashable]:
    if case_key is None:
        return lambda item: item
    if isinstance(case_key, str):
        return lambda item: item[case_key]
    return case_key


def split_by_case(
    items: Sequence[T],
    case_key: CaseKey,
    fractions: Mapping[str, float],
    seed: int = 0,
    *,
    stratify: CaseKey = None,
) -> dict[str, list[T]]:
    """Split ``items`` so that every case (``case_key(item)``, ``item[case_key]`` for a string, the item
    itself for None) falls into exactly one split; ``fractions`` maps split names to shares of the cases.

    Cases are shuffled with ``seed``; with ``stratify`` (a key of the case's first item) the shares are
    kept within every stratum. Every split gets at least one case when there are enough cases. Items keep
    their input order within a split.
    """
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise InputError(f"fractions must be non-negative shares with a positive sum, got {dict(fractions)}")
    key = _key_function(case_key)
    strat = _key_function(stratify) if stratify is not None else (lambda item: 0)
    cases: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        cases.setdefault(key(item), []).append(i)
    strata: dict[Hashable, list[Hashable]] = {}
    for case, members in cases.items():
        strata.setdefault(strat(items[members[0]]), []).append(case)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    assigned: dict[Hashable, str] = {}
    for stratum in sorted(strata, key=repr):
        group = sorted(strata[stratum], key=repr)
        order = rng.permutation(len(group))
        counts = _allocate(len(group), [fractions[n] for n in names])
        pos = 0
        for name, count in zip(names, counts, strict=True):
            for j in order[pos : pos + count]:
                assigned[group[j]] = name
            pos += count
    result: dict[str, list[T]] = {name: [] for name in names}
    for item in items:
        result[assigned[key(item)]].append(item)
    return result


def _allocate(n: int, shares: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``n`` cases to ``shares``, no empty positive share if n allows."""
    total = float(sum(shares))
    raw = [n * s / total for s in shares]
    counts = [int(x) for x in raw]
    for k in sorted(range(len(raw)), key=lambda k: counts[k] - raw[k])[: n - sum(counts)]:
        counts[k] += 1
    wanted = [k for k, s in enumerate(shares) if s > 0]
    if n >= len(wanted):
        for k in wanted:
            if counts[k] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[k] += 1
    return counts


@dataclass
class LeakageReport:
    """Cases shared between splits: ``shared[(a, b)]`` lists them, ``shared_weight[(a, b)]`` sums the
    items' weight (e.g. frames) in ``b``, ``cases``/``weight`` give each split's totals."""

    shared: dict[tuple[str, str], list[Hashable]] = field(default_factory=dict)
    shared_weight: dict[tuple[str, str], float] = field(default_factory=dict)
    cases: dict[str, int] = field(default_factory=dict)
    weight: dict[str, float] = field(default_factory=dict)

    @property
    def leaks(self) -> bool:
        """True when any two splits share a case."""
        return any(self.shared.values())

    def __str__(self) -> str:
        lines = [
            f"{b} shares {len(cases)} of its {self.cases[b]} cases "
            f"({self.shared_weight[(a, b)]:g} of {self.weight[b]:g} in weight) with {a}"
            for (a, b), cases in self.shared.items()
            if cases
        ]
        return "\n".join(lines) or "no case is in two splits"


def find_leakage(
    splits: Mapping[str, Sequence[Any]],
    case_key: CaseKey = None,
    weight: Callable[[Any], float] | None = None,
) -> LeakageReport:
    """Report the cases that two splits share, for every ordered pair of splits (a before b)."""
    key = _key_function(case_key)
    weigh = weight or (lambda item: 1.0)
    names = list(splits)
    report = LeakageReport()
    per_split: dict[str, dict[Hashable, float]] = {}
    for name in names:
        totals: dict[Hashable, float] = {}
        for item in splits[name]:
            totals[key(item)] = totals.get(key(item), 0.0) + weigh(item)
        per_split[name] = totals
        report.cases[name] = len(totals)
        report.weight[name] = sum(totals.values())
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = [case for case in per_split[b] if case in per_split[a]]
            report.shared[(a, b)] = common
            report.shared_weight[(a, b)] = sum(per_split[b][case] for case in common)
    return report


def check_no_leakage(
    splits: Mapping[str, Sequence[Any]],
    case_key: CaseKey = None,
    weight: Callable[[Any], float] | None = None,
) -> None:
    """Raise :class:`DatasetError` describing the shared cases if any two splits share one."""
    report = find_leakage(splits, case_key, weight)
    if report.leaks:
        raise DatasetError(f"splits leak cases:\n{report}")
