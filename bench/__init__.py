"""``make bench``: the project's figures, each against a baseline measured in the same run (see README.md).

This package imports nothing on purpose: ``bench.apps.bare`` runs inside worker processes that must
not load any project code.
"""
