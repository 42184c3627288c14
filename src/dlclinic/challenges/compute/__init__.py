"""The compute challenges, one module per id."""
