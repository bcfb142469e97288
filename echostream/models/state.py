"""Transitional alias: the stream-state base class moved to :mod:`echostream.state`."""

from echostream.state import StreamState  # noqa: F401
