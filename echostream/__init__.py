"""EchoStream: simultaneous French→English speech-to-speech translation (Emformer + StreamSpeech policy)."""

__version__ = "0.1.0"
