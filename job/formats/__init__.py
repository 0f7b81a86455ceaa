"""Archive and layer formats read as streams: tar (plain and gzip) trees, and one pass shared by many readers."""
