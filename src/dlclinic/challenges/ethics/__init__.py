"""The ethics challenges, one module per id."""
