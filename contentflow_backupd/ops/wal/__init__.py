"""ops.wal: WAL archiving, streaming and restore points."""
