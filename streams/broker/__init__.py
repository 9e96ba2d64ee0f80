"""Everything that talks to brokers: the local broker, admin operations, client settings."""
