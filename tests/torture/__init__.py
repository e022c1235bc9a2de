"""The torture suite: faults, races, kills and restarts, checked by ``checker.check``."""
