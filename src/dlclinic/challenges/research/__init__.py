"""The research challenges, one module per id."""
