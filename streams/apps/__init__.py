"""Apps shipped with streams, declared with the public API like any user's app."""
