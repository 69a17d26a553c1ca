"""``python -m tame_core ...`` is the ``tame`` command (this is what torchrun launches)."""

from .cli import main

raise SystemExit(main())
