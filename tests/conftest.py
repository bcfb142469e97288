"""Shared fixtures: one torch thread, and the ``tiny`` synthetic corpus, built once and reused."""

import json
import warnings
from pathlib import Path

import pytest

from tests.helpers_models import torch_threads

TINY_CORPUS = Path(__file__).resolve().parents[1] / "work" / "synth-tiny"


def tiny_corpus_complete() -> bool:
    build = TINY_CORPUS / "build.json"
    return build.is_file() and json.loads(build.read_text()).get("complete") is True


@pytest.fixture(scope="session")
def synth_tiny() -> Path:
    """``echostream prepare synth --size tiny --out work/synth-tiny`` (240/30/30 pairs; ~90 s on
    2 cores the first time, on a clean clone; then reused: the build is deterministic and
    resumable). Tests that read real synthetic speech, text and tokenizers use it."""
    if not tiny_corpus_complete():
        from echostream.data.synth import prepare_synth

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an engine may be missing: the others are used
            prepare_synth(TINY_CORPUS, "tiny", progress=False)
    return TINY_CORPUS


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads; on a shared machine they only lose
    (``pytestmark = pytest.mark.usefixtures("one_thread")``; a module whose module-scoped
    fixtures run models uses :func:`torch_threads` in a module-scoped fixture)."""
    with torch_threads(1):
        yield
