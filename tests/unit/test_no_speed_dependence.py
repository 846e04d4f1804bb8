"""No test depends on speed: the Hypothesis profile of tests/conftest.py is in force for every
test (property tests have no deadline, so a loaded machine cannot fail them)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st


def test_the_hypothesis_profile_has_no_deadline() -> None:
    assert settings().deadline is None
    assert settings.get_profile("backupd").deadline is None


@given(st.integers())
def test_a_property_test_inherits_the_profile(n: int) -> None:
    assert settings().deadline is None
    assert isinstance(n, int)
