"""Local stand-ins for the backend, for development and tests: callback receiver, storage."""
