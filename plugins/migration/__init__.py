"""Live migration strategies (``--migration-mode``), see issue 8."""
