"""Command modules plugged into the ``dlclinic`` CLI (see ``_COMMAND_MODULES`` in ``dlclinic.cli``)."""
