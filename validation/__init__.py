"""dlclinic's validation suite: how often each check warns on clean data, and how often it catches a planted defect.

Run ``python -m validation --quick`` (minutes) or ``python -m validation`` (release); see
``docs/validation.md`` for the published numbers and :mod:`validation.scenarios` for what
is planted.
"""
