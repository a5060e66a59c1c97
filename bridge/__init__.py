"""MQTT provisioning bridge: devices trade their sticker number for a per-device key.

The public surface is small: :mod:`bridge.admin` for vendors, owners and
administrators, :mod:`bridge.protocol` for the wire contract, and the ``bridge``
command line. Everything else is an implementation detail.
"""

__version__ = "0.1.0"
