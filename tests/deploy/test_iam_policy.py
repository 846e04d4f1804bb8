"""deploy/aws IAM policies: valid JSON, limited to the repository's bucket prefix, and the
no-delete variant really has no delete right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "deploy" / "aws"
BUCKET = "arn:aws:s3:::example-backups"
PREFIX = "backups/prod"
POLICIES = ["iam-policy.json", "iam-policy-no-delete.json"]
# What storage/s3.py calls, as IAM actions (GetObjectLockConfiguration is a bucket action).
NEEDED = {
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:GetBucketObjectLockConfiguration",
    "s3:PutObject",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:AbortMultipartUpload",
    "s3:PutObjectRetention",
    "s3:GetObjectRetention",
}


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((AWS / name).read_text())
    return doc


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def allowed(doc: dict[str, Any]) -> set[str]:
    return {a for s in doc["Statement"] if s["Effect"] == "Allow" for a in as_list(s["Action"])}


@pytest.mark.parametrize("name", POLICIES)
def test_policy_is_valid_and_limited_to_the_prefix(name: str) -> None:
    doc = load(name)
    assert doc["Version"] == "2012-10-17"
    assert allowed(doc) >= NEEDED
    for statement in doc["Statement"]:
        actions = as_list(statement["Action"])
        assert all(a.startswith("s3:") and "*" not in a for a in actions), statement
        if statement["Effect"] != "Allow":
            assert statement["Effect"] == "Deny"
            continue
        for resource in as_list(statement["Resource"]):
            if resource == BUCKET:  # bucket-level: listing must be confined to the prefix
                if {"s3:ListBucket", "s3:ListBucketVersions"} & set(actions):
                    prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                    assert all(p == PREFIX or p.startswith(f"{PREFIX}/") for p in prefixes)
            else:
                assert resource == f"{BUCKET}/{PREFIX}/*", resource
    denied = {a for s in doc["Statement"] if s["Effect"] == "Deny" for a in as_list(s["Action"])}
    assert "s3:BypassGovernanceRetention" in denied
    assert "s3:BypassGovernanceRetention" not in allowed(doc)


def test_the_full_policy_can_delete_and_the_no_delete_one_cannot() -> None:
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion"} <= allowed(load("iam-policy.json"))
    no_delete = load("iam-policy-no-delete.json")
    every_action = {a for s in no_delete["Statement"] for a in as_list(s["Action"])}
    assert not [a for a in every_action if a.lower().startswith("s3:deleteobject")]
    assert allowed(load("iam-policy.json")) - allowed(no_delete) == {
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
    }
