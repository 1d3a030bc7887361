"""``python -m stylekit.tiny train``: pretrain the tiny model (see :mod:`stylekit.tiny.pretrain`)."""

from .pretrain import main

main()
