"""Case-level splits never put a case in two splits; the leakage check finds the original CVC leak."""

from __future__ import annotations

import pytest

from endofm.data.datasets.cvc import CVCSequence
from endofm.data.datasets.splits import check_no_leakage, find_leakage, split_by_case
from endofm.errors import DatasetError, InputError

# The original Endo-FM CVC-12k lists, as (start, length) pairs.
ORIGINAL_TRAIN = [(104, 23), (529, 18), (448, 19), (26, 25), (343, 21), (178, 22), (429, 19), (200, 6),
                  (127, 25), (253, 25), (364, 20), (592, 21), (228, 25), (68, 11), (467, 12), (206, 22),
                  (79, 25), (479, 25), (51, 17), (572, 20)]  # fmt: skip
ORIGINAL_TEST = [(51, 17), (318, 25), (429, 19), (1, 25), (178, 22), (253, 25), (343, 21), (68, 11), (200, 6)]


def _frames(case_count: int = 12) -> list[dict]:
    return [{"case": f"c{c}", "frame": f, "label": c % 2} for c in range(case_count) for f in range(3)]


def test_split_by_case_keeps_cases_whole_and_is_deterministic():
    items = _frames()
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    splits = split_by_case(items, "case", fractions, seed=3)
    assert sorted(map(len, splits.values())) == [9, 9, 18]
    assert sum(map(len, splits.values())) == len(items)
    assert not find_leakage(splits, "case").leaks
    check_no_leakage(splits, "case")
    assert splits == split_by_case(items, "case", fractions, seed=3)
    assert splits != split_by_case(items, "case", fractions, seed=4)


def test_split_by_case_stratifies_and_fills_every_split():
    items = _frames(6)
    splits = split_by_case(items, lambda item: item["case"], {"a": 0.8, "b": 0.1, "c": 0.1}, stratify="label")
    assert all(splits.values())
    strat = split_by_case(items, "case", {"train": 0.5, "test": 0.5}, seed=1, stratify="label")
    for part in strat.values():
        assert {item["label"] for item in part} == {0, 1}
    with pytest.raises(InputError):
        split_by_case(items, "case", {"train": -1.0})


def test_leakage_report_finds_the_original_cvc_leak():
    splits = {
        "train": [CVCSequence("indexed", s, n) for s, n in ORIGINAL_TRAIN],
        "test": [CVCSequence("indexed", s, n) for s, n in ORIGINAL_TEST],
    }
    report = find_leakage(splits, case_key=lambda s: (s.start, s.length), weight=lambda s: s.length)
    assert report.leaks
    assert len(report.shared[("train", "test")]) == 7 and report.cases["test"] == 9
    assert report.shared_weight[("train", "test")] == 121 and report.weight["test"] == 171
    assert "test shares 7 of its 9 cases (121 of 171 in weight) with train" in str(report)
    with pytest.raises(DatasetError, match="7 of its 9"):
        check_no_leakage(splits, case_key=lambda s: (s.start, s.length))
