"""The deployment challenges, one module per id."""
