"""ops.verify: reading back backups and the repository; continuous verification; the sweep."""
