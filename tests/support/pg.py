"""Real PostgreSQL clusters for tests: the same disposable clusters the demo uses."""

from contentflow_backupd.demo.cluster import PgCluster, find_pg_bin, free_port, running_cluster

__all__ = ["PgCluster", "find_pg_bin", "free_port", "running_cluster"]
