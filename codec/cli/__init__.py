"""The ``codec`` command line: argument parsing and printing only."""
