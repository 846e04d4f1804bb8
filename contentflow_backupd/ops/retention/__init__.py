"""ops.retention: what to keep and delete; object lock dates."""
