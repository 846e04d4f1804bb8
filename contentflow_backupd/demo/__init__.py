"""Demo and benchmark helpers: deterministic ContentFlow-like data and table checksums."""

from contentflow_backupd.demo.datagen import (
    ChangeSummary,
    append_heavy_change,
    create_schema,
    populate,
    sequence_values,
    table_checksums,
    user_table_count,
)

__all__ = [
    "ChangeSummary",
    "append_heavy_change",
    "create_schema",
    "populate",
    "sequence_values",
    "table_checksums",
    "user_table_count",
]
