"""Example apps, each with a broker-free test (``test_app.py``) beside it; their real-broker
tests are in ``tests/integration/test_examples.py``."""
