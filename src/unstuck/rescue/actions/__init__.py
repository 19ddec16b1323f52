"""One rescue action per file; the file name is the action name. Discovered by ``rescue.base``."""
