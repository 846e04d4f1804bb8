"""ops.backup: use cases of taking a backup."""
