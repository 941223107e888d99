# The in-process app and registry fixtures, shared with the API tests.
from tests.api.conftest import client, registry

__all__ = ["client", "registry"]
