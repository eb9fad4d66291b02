"""The hub's domain core: what a node and a GPU are, the rules about them, and the events that
say what happened. Pure: no web framework, templates, database or network I/O, and the clock is
injected. The hub's I/O modules and :mod:`frontend` import it; it imports only the wire types
(:mod:`node_agent.protocol`). See ``docs/architecture.md``."""
