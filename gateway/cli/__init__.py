"""The ``optgate`` command line: one module per group of commands."""
