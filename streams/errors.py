"""Errors meant for people: each carries one line saying what is wrong and what to do."""


class StreamsError(Exception):
    """An error the CLI prints as a single line (no traceback) before exiting non-zero."""

    exit_code = 2


class ConfigError(StreamsError):
    """A configuration value is missing or malformed."""


class BrokerError(StreamsError):
    """The Kafka broker cannot be reached, started or used."""


class RegistryServerError(BrokerError):
    """The local Schema Registry server (streams.broker.registry) cannot be built or started."""


class DeclarationError(StreamsError):
    """An app's declaration (its topics, pipelines, operators) cannot run as written."""


class StateMismatchError(StreamsError):
    """A pipeline's stored state was built by a different declaration than the one running."""


class RestoreError(StreamsError):
    """A changelog record cannot be applied: state cannot be rebuilt until it is fixed."""


class DependencyError(StreamsError):
    """An installed library lacks what streams relies on: a version outside the range tested."""


class SchemaRegistryError(StreamsError):
    """The schema registry cannot be reached, refuses a schema, or answers nonsense."""


class UnknownSchemaError(LookupError):
    """The schema registry holds no schema with the id a message names."""
