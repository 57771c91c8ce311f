"""The command line: one module per verb; shared flags defined and checked once."""
