"""dlclinic.core."""
