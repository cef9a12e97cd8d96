"""Deliberately empty: its presence makes pytest put ``tests/`` on ``sys.path`` (the default
"prepend" import mode), so test modules can ``import fakes.memfs``.  Fixtures belong in the
conftest of the folder that uses them, never here."""
