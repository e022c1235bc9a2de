"""A module that exists but whose own import fails: a missing dependency, not a bad name."""

import no_such_dependency_of_notes  # type: ignore[import-not-found]  # noqa: F401
