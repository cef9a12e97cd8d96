"""Reading the answers of a daemon under test."""

from __future__ import annotations

from typing import Any

import pytest
from virtiofsd.testing import FuseReplyError


def fuse_error(call: Any, *args: Any, **kwargs: Any) -> int:
    """The errno of the error reply ``call(*args, **kwargs)`` must receive."""
    with pytest.raises(FuseReplyError) as failure:
        call(*args, **kwargs)
    return failure.value.errno
