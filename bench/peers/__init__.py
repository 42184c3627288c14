"""Benchmarks of dlclinic side by side with peer libraries (issue 10); run ``bash scripts/bench.sh``."""
