"""Alerts: rules over the domain events, evaluated with Alertmanager's semantics, delivered
through Apprise.

- :mod:`hub.alerts.config`: the ``[alerts]`` TOML (channels, rules, users), parsed and checked.
- :mod:`hub.alerts.engine`: pure evaluation on an injected clock: ``for_s``, one firing and
  one resolved message per (rule, subject), ``repeat_s``, grouping, quiet hours, silences.
- :mod:`hub.alerts.conditions`: the subscriber that turns domain events into rule conditions.
- :mod:`hub.alerts.delivery`: Apprise, one worker thread per channel, off the event loop.
- :mod:`hub.alerts.persist`: firing alerts in the hub's state file (no re-send after a restart).
- :mod:`hub.alerts.service`: wires them into the hub; :mod:`hub.alerts.web`: ``/alerts`` and the API.
"""
