"""EchoStream: simultaneous French→English speech-to-speech translation.

Emformer encoder + StreamSpeech policy, in pure PyTorch.
"""

__version__ = "0.1.0"
