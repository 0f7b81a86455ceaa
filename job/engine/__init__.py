"""The transfer engine: list, schedule, pipe each file (count, hash, progress, resume), then commit or abort."""
