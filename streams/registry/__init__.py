"""Schema registries: the HTTP client a worker uses (Confluent's REST API, which Apicurio
serves too) and the in-memory one of the test driver. Both hand out writer schemas by id and
register output schemas under a subject; :mod:`streams.core.formats` encodes and decodes."""

from streams.registry.client import RegistryClient
from streams.registry.memory import MemoryRegistry

__all__ = ["MemoryRegistry", "RegistryClient"]
