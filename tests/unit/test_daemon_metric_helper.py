"""``tests/support/daemon.py: Daemon.metric()`` matches a subset of labels, so that tests keep
working when every per-cluster series gains a ``cluster`` label (docs/design/fleet.md, step 3)."""

from __future__ import annotations

import pytest

from tests.support.daemon import pick_sample

SAMPLES = {
    ("backupd_leader", (("cluster", "main"),)): 1.0,
    ("backupd_backup_runs_total", (("cluster", "main"), ("kind", "full"), ("result", "success"))): 2.0,
    ("backupd_backup_runs_total", (("cluster", "main"), ("kind", "full"), ("result", "failure"))): 1.0,
    ("backupd_build_info", (("version", "0.1.0"),)): 1.0,
    ("backupd_wal_archived_segments_total", ()): 7.0,
    ("backupd_wal_archived_segments_total", (("cluster", "main"),)): 5.0,
}


@pytest.mark.parametrize(
    ("name", "labels", "value"),
    [
        ("backupd_leader", {}, 1.0),  # one sample has the labels asked and more
        ("backupd_leader", {"cluster": "main"}, 1.0),
        ("backupd_leader", {"cluster": "other"}, None),
        ("backupd_backup_runs_total", {"kind": "full", "result": "success"}, 2.0),
        ("backupd_build_info", {"version": "0.1.0"}, 1.0),
        ("backupd_build_info", {"version": "9.9.9"}, None),
        ("backupd_wal_archived_segments_total", {}, 7.0),  # the exact label set wins
        ("backupd_absent", {}, None),
    ],
)
def test_a_subset_of_labels_picks_the_sample(name: str, labels: dict[str, str], value: float | None) -> None:
    assert pick_sample(SAMPLES, name, labels) == value


def test_an_ambiguous_question_fails_the_test() -> None:
    with pytest.raises(AssertionError, match="several samples"):
        pick_sample(SAMPLES, "backupd_backup_runs_total", {"kind": "full"})
