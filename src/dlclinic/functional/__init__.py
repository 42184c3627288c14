"""Pure numpy/torch maths used by the checks: no I/O, no models, no reports."""
