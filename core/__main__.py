"""``python -m virtiofsd``: the same entry point as the ``virtiofsd`` command."""

from virtiofsd.cli import main

raise SystemExit(main())
