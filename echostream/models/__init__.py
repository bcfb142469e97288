"""EchoStream models: the speech encoder, CTC heads, decoders and the assembled system.

``build_model(cfg)`` builds :class:`EchoStreamModel` (Emformer or chunk-Conformer encoder by
``cfg.model``); checkpoints: :func:`save_checkpoint`, :func:`load_checkpoint`,
:func:`import_streamspeech` (in :mod:`echostream.models.checkpoint` and
:mod:`echostream.models.streamspeech_import`).
"""

from echostream.models.echostream import (
    EchoStreamModel,
    ModelOutputs,
    TranslationResult,
    build_model,
)

__all__ = [
    "CheckpointError",
    "EchoStreamModel",
    "ImportReport",
    "ModelOutputs",
    "TranslationResult",
    "build_model",
    "import_streamspeech",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str):
    # Checkpoint helpers are imported on first use (they are not needed to build a model).
    if name in ("CheckpointError", "load_checkpoint", "save_checkpoint"):
        from echostream.models import checkpoint

        return getattr(checkpoint, name)
    if name in ("ImportReport", "import_streamspeech"):
        from echostream.models import streamspeech_import

        return getattr(streamspeech_import, name)
    raise AttributeError(f"module 'echostream.models' has no attribute {name!r}")
