"""Shared test helpers: ``from tests.helpers import cli_runs``."""
