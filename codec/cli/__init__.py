"""The ``codec`` command line: each command's arguments and printing, and how ``codec encode``
and ``codec decode`` take their files (pairs, pipes, batches: :mod:`codec.cli.batch`)."""
