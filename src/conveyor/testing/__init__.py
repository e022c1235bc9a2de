"""The kit users and adapter authors test with.

``conveyor.testing.conformance`` holds the conformance suite every broker adapter must pass;
it needs pytest, so it is not imported here.
"""
