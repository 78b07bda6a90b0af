"""The chaos benchmark: `make loadtest` (python -m loadtest.chaos)."""
