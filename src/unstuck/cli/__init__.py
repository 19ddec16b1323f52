"""The ``unstuck`` command line: ``demo`` (and, as they land, ``analyze`` and ``report``)."""
