"""ops.restore: logical and physical restore, disaster recovery."""
