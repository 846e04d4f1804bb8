"""ops.repo: repository administration: keys, privileges check, catalog rebuild, scope."""
