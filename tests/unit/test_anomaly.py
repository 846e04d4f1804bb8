"""Size anomaly rule as tables, plus hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contentflow_backupd.ops.backup.anomaly import SizeVerdict, check_size, format_bytes

BAND: dict[str, float] = {"low": 0.5, "high": 2.0, "min_history": 3}


def judge(current: int, history: list[int]) -> SizeVerdict:
    """The default band: 0.5x to 2x, at least 3 earlier backups."""
    return check_size(current, history, low=0.5, high=2.0, min_history=3)


@pytest.mark.parametrize(
    ("current", "history", "anomaly", "median", "ratio"),
    [
        # not enough history: no judgement, whatever the size
        (10**9, [], False, None, None),
        (10**9, [100, 100], False, None, None),
        (0, [100, 100], False, None, None),
        # inside the band, edges included
        (100, [100, 100, 100], False, 100.0, 1.0),
        (50, [100, 100, 100], False, 100.0, 0.5),
        (200, [100, 100, 100], False, 100.0, 2.0),
        # outside the band
        (49, [100, 100, 100], True, 100.0, 0.49),
        (201, [100, 100, 100], True, 100.0, 2.01),
        (0, [100, 100, 100], True, 100.0, 0.0),
        # the median, not the mean: one outlier in the history does not move it
        (100, [100, 10**9, 90, 110], False, 105.0, 100 / 105),
        (100, [1, 100, 100], False, 100.0, 1.0),
        # zero median
        (0, [0, 0, 0], False, 0.0, 1.0),
        (1, [0, 0, 0], True, 0.0, None),
        (1, [0, 0, 5], True, 0.0, None),
    ],
)
def test_check_size_table(
    current: int, history: list[int], anomaly: bool, median: float | None, ratio: float | None
) -> None:
    verdict = judge(current, history)
    assert verdict.anomaly is anomaly
    assert verdict.median == median
    if ratio is None:
        assert verdict.ratio is None
    else:
        assert verdict.ratio == pytest.approx(ratio)
    assert verdict.reason


def test_reasons_say_what_happened() -> None:
    assert "2 earlier backup(s), 3 needed" in judge(5, [1, 2]).reason
    high = judge(300 * 1024, [100 * 1024] * 3)
    assert high.reason == "300.0 KiB is 3.00x the median 100.0 KiB (above 2x)"
    low = judge(10, [100] * 3)
    assert low.reason == "10 B is 0.10x the median 100 B (below 0.5x)"
    assert "earlier backups were empty" in judge(7, [0, 0, 0]).reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"current": -1, "history": [1, 1, 1]}, "negative"),
        ({"current": 1, "history": [1, -1, 1]}, "negative"),
        ({"current": 1, "history": [1], "low": 0.0}, "band"),
        ({"current": 1, "history": [1], "low": 3.0, "high": 2.0}, "band"),
        ({"current": 1, "history": [1], "min_history": 0}, "min_history"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], message: str) -> None:
    args = {**BAND, **kwargs}
    with pytest.raises(ValueError, match=message):
        check_size(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


sizes = st.integers(min_value=0, max_value=10**13)
histories = st.lists(sizes, min_size=0, max_size=12)


@given(current=sizes, history=histories, min_history=st.integers(1, 8))
def test_short_history_is_never_judged(current: int, history: list[int], min_history: int) -> None:
    verdict = check_size(current, history, low=0.5, high=2.0, min_history=min_history)
    if len(history) < min_history:
        assert not verdict.anomaly
        assert verdict.median is None
    else:
        assert verdict.median is not None


@given(current=sizes, history=st.lists(sizes, min_size=1, max_size=12), data=st.data())
def test_anomaly_iff_outside_band(current: int, history: list[int], data: st.DataObject) -> None:
    low = data.draw(st.floats(0.01, 1.0))
    high = data.draw(st.floats(low, 100.0))
    verdict = check_size(current, history, low=low, high=high, min_history=1)
    assert verdict.median is not None
    if verdict.median > 0:
        assert verdict.ratio is not None
        assert verdict.anomaly == (not low <= verdict.ratio <= high)
    else:
        assert verdict.anomaly == (current > 0)


@given(history=st.lists(sizes, min_size=3, max_size=12), data=st.data())
def test_history_order_does_not_matter(history: list[int], data: st.DataObject) -> None:
    current = data.draw(sizes)
    shuffled = data.draw(st.permutations(history))
    assert judge(current, history) == judge(current, shuffled)


@given(history=st.lists(st.integers(1, 10**12), min_size=3, max_size=12))
def test_a_backup_the_size_of_the_median_is_normal(history: list[int]) -> None:
    first = judge(0, history)
    assert first.median is not None
    verdict = judge(round(first.median), history)
    assert not verdict.anomaly


@given(history=st.lists(sizes, min_size=3, max_size=12), a=sizes, b=sizes)
def test_growing_further_never_ends_a_high_anomaly(history: list[int], a: int, b: int) -> None:
    small, big = sorted((a, b))
    first = judge(small, history)
    if first.anomaly and first.median is not None and small > first.median:
        assert judge(big, history).anomaly
