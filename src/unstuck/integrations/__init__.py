"""Ways in: the plain-loop Guard here; framework callbacks in their own lazily imported modules."""
