"""ops.health: health objectives, inputs and the report."""
