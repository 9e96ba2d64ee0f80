"""The declaration as data, and the plan derived from it.

``streams.api`` (what users write) builds the nodes of :mod:`streams.topology.nodes`;
:mod:`streams.topology.plan` checks them and derives what a run needs: the segments each
pipeline splits into, every topic (inputs, outputs, dead letters, late, changelog and
repartition topics) and the fingerprint of every stateful operator. The core compiles the
plan's segments; the runtime runs them. Nothing here imports the core or the runtime.
"""
