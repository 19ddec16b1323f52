"""One rule per file; the file name is the cause code. Discovered by ``unstuck.diagnose.base``."""
