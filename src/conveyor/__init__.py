"""Conveyor: a Python task queue that never loses a job."""
