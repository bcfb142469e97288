"""Text-to-speech back ends for the synthetic corpus: espeak-ng, pico2wave, mbrola.

* **espeak-ng** is driven in-process through ``ctypes`` on the shared library and data shipped in
  the ``espeakng-loader`` wheel (no apt needed). It is the French workhorse: several base voices
  (``fr``, ``fr-be``, ``fr-ch``) × voice variants (``+m3``, ``+f2``, ...) × speed × pitch.
* **pico2wave** (Debian ``libttspico-utils``, non-free) gives the natural-sounding ``fr-FR`` and
  ``en-US`` voices. ``en-US`` is the English *target* voice (one consistent speaker, as in
  CVSS-C): pocketsphinx recognises it, espeak English it does not (see DESIGN.md).
* **mbrola** (Debian ``mbrola``, ``mbrola-fr1``, ``mbrola-fr4`` from contrib, plus Debian's
  ``espeak-ng`` program whose ``mb-fr1``/``mb-fr4`` voices map text to mbrola phonemes; the
  wheel's data lacks those maps) when all of them are installed.

Every voice returns ``(pcm, sample_rate)`` with ``pcm`` a float32 mono numpy array in [-1, 1];
:func:`synthesize` resamples to the requested rate with soxr. :func:`french_voice_for` picks a
voice deterministically from an utterance id, so rebuilding a corpus gives identical audio.
Optional engines raise :class:`TTSUnavailable` with the apt command that provides them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

APT_HINT = (
    "apt-get update; sed -i 's/^Components: main$/Components: main contrib non-free/' "
    "/etc/apt/sources.list.d/debian.sources; apt-get update; "
    "apt-get install -y libttspico-utils mbrola mbrola-fr1 mbrola-fr4"
)


class TTSUnavailable(RuntimeError):
    """An optional TTS engine (binary, library or voice) is not installed here."""


@dataclass(frozen=True)
class Voice:
    """One synthesis setting. ``engine`` is ``espeak``, ``pico`` or ``mbrola``.

    ``name``: espeak voice (``fr``, ``fr-be+m3``), pico language (``fr-FR``, ``en-US``) or mbrola
    voice (``fr1``, ``fr4``). ``rate`` in words per minute (espeak/mbrola; espeak default 175),
    ``pitch`` 0-100 (espeak/mbrola; default 50). Pico ignores both.
    """

    engine: str
    name: str
    rate: int = 175
    pitch: int = 50

    @property
    def tag(self) -> str:
        """Short printable description, e.g. ``espeak:fr-be+m3:r160:p45``."""
        if self.engine == "pico":
            return f"pico:{self.name}"
        return f"{self.engine}:{self.name}:r{self.rate}:p{self.pitch}"


# --------------------------------------------------------------------------- espeak-ng (ctypes)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Espeak:
    """The espeak-ng library of this process (it keeps global state: one per process)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:  # pragma: no cover - the wheel is a hard dependency
            raise TTSUnavailable("espeak-ng needs the `espeakng-loader` wheel") from err
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.data_path = espeakng_loader.get_data_path()
        lib = self.lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise TTSUnavailable(f"espeak_Initialize failed (data at {self.data_path})")
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.libc = ctypes.CDLL(None)
        self.libc.srand.argtypes = [ctypes.c_uint]
        self._chunks: list[np.ndarray] = []

        def on_audio(wav, num_samples, _events):  # called from inside espeak_Synth
            if wav and num_samples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
            return 0

        self._callback = _SYNTH_CALLBACK(on_audio)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _set_voice(self, name: str) -> None:
        if name != self._voice:
            if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise TTSUnavailable(f"espeak-ng has no voice {name!r}")
            self._voice = name

    def _synth_here(self, text: str, name: str, rate: int, pitch: int) -> np.ndarray:
        self._set_voice(name)
        seed = _hash(text, name, str(rate), str(pitch)) % (1 << 31)
        self.lib.espeak_ng_SetRandSeed(seed)  # its own generator (Klatt, noise)
        self.libc.srand(seed)  # espeak_Initialize seeds libc rand() from the clock
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        err = self.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err} on {text[:60]!r}")
        self.lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)

    def phonemes(self, text: str, name: str) -> str:
        """espeak-ng's ASCII phoneme mnemonics of ``text`` in voice ``name`` (as ``espeak-ng
        -q -x``: stress marks ``'``/``,``), clauses joined by spaces. No audio is made."""
        self._set_voice(name)
        fn = self.lib.espeak_TextToPhonemes
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        data = ctypes.create_string_buffer(text.encode("utf-8"))
        cursor = ctypes.c_char_p(ctypes.addressof(data))
        clauses = []
        while cursor.value:  # each call translates one clause and moves the cursor past it
            clauses.append((fn(ctypes.byref(cursor), _CHARS_UTF8, 0) or b"").decode())
        return " ".join(c for c in clauses if c)

    def synth(self, text: str, name: str, rate: int, pitch: int) -> np.ndarray:
        """int16 samples at ``self.sample_rate``, identical for identical arguments.

        Two things make plain espeak-ng output irreproducible, and both are handled here:
        ``espeak_Initialize`` seeds libc's ``rand()`` from the clock (breath/noise of some
        variants), and the wave generator keeps state from one utterance to the next (output
        depends on what was said before, even after re-initialising). So the random
        generators are seeded from a hash of the arguments, and each utterance is synthesised
        in a forked child of this process, which itself never synthesises: every child starts
        from the same state. Cost: ~25 ms per utterance for the fork.
        """
        self._set_voice(name)  # loading the voice here is cheap to share and keeps it fresh
        if not hasattr(os, "fork"):  # pragma: no cover - non-POSIX
            return self._synth_here(text, name, rate, pitch)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesise, send int16 bytes (or an error message), exit
            status = 0
            try:
                os.close(read_fd)
                payload = b"A" + self._synth_here(text, name, rate, pitch).tobytes()
            except BaseException as err:  # reported to the parent
                payload, status = b"E" + repr(err).encode(), 1
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(write_fd, view) :]
            finally:
                os._exit(status)
        os.close(write_fd)
        parts = []
        with os.fdopen(read_fd, "rb") as f:
            while chunk := f.read(1 << 16):
                parts.append(chunk)
        os.waitpid(pid, 0)
        payload = b"".join(parts)
        if not payload.startswith(b"A"):
            message = payload[1:].decode(errors="replace")
            raise RuntimeError(f"espeak-ng synthesis failed: {message}")
        return np.frombuffer(payload[1:], dtype=np.int16).copy()


_ESPEAK: _Espeak | None = None


def _espeak() -> _Espeak:
    """This process's espeak-ng (initialised on first use; never synthesises itself)."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    return _ESPEAK


def espeak_synth(text: str, voice: str = "fr", rate: int = 175, pitch: int = 50):
    """Synthesise with espeak-ng. Returns ``(pcm float32 (N,), sample_rate)`` (22050 Hz)."""
    engine = _espeak()
    pcm = engine.synth(text, voice, rate, pitch)
    return pcm.astype(np.float32) / 32768.0, engine.sample_rate


def espeak_phonemes(text: str, voice: str = "en-us") -> str:
    """espeak-ng's phonemes of ``text`` (ASCII mnemonics, e.g. ``h@l'oU`` for "hello")."""
    return _espeak().phonemes(text, voice)


# --------------------------------------------------------------------------- pico2wave


def pico_available() -> bool:
    return shutil.which("pico2wave") is not None


def pico_synth(text: str, lang: str = "en-US"):
    """Synthesise with SVOX pico (``pico2wave -l LANG``). Returns ``(pcm float32, 16000)``."""
    exe = shutil.which("pico2wave")
    if exe is None:
        raise TTSUnavailable(f"pico2wave is not installed (Debian libttspico-utils): {APT_HINT}")
    with tempfile.TemporaryDirectory(prefix="pico-") as tmp:
        wav = Path(tmp) / "out.wav"  # pico2wave insists on a .wav name
        proc = subprocess.run(
            [exe, "-l", lang, "-w", str(wav), "--", text], capture_output=True, text=True
        )
        if proc.returncode != 0 or not wav.exists():
            raise RuntimeError(f"pico2wave -l {lang} failed: {proc.stderr.strip()}")
        pcm, sr = sf.read(str(wav), dtype="float32", always_2d=False)
    return pcm, sr


# --------------------------------------------------------------------------- mbrola (via espeak)

MBROLA_DIR = Path("/usr/share/mbrola")


def mbrola_available(name: str = "fr1") -> bool:
    """True when mbrola, its voice ``name`` and the ``espeak-ng`` program (whose ``mb-<name>``
    voice maps French text to mbrola phonemes; the wheel's data lacks those maps) exist."""
    return (
        shutil.which("mbrola") is not None
        and shutil.which("espeak-ng") is not None
        and (MBROLA_DIR / name / name).is_file()
    )


def mbrola_synth(text: str, name: str = "fr1", rate: int = 175, pitch: int = 50):
    """French through an mbrola diphone voice (``fr1`` male, ``fr4`` female): Debian's
    ``espeak-ng -v mb-<name>`` (which runs ``mbrola``). Returns ``(pcm float32, 16000)``."""
    if not mbrola_available(name):
        raise TTSUnavailable(
            f"mbrola voice {name!r} needs the mbrola, mbrola-{name} and espeak-ng Debian "
            f"packages: {APT_HINT} espeak-ng"
        )
    with tempfile.TemporaryDirectory(prefix="mbrola-") as tmp:
        wav = Path(tmp) / "out.wav"
        # amplitude 60 (default 100): fr4 clips at full amplitude
        cmd = ["espeak-ng", "-v", f"mb-{name}", "-s", str(rate), "-p", str(pitch), "-a", "60"]
        proc = subprocess.run([*cmd, "-w", str(wav), "--", text], capture_output=True, text=True)
        if proc.returncode != 0 or not wav.exists():
            raise RuntimeError(f"espeak-ng -v mb-{name} failed: {proc.stderr.strip()}")
        pcm, sr = sf.read(str(wav), dtype="float32", always_2d=False)
    return pcm, sr


# --------------------------------------------------------------------------- front door


def synthesize(text: str, voice: Voice, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with ``voice``; returns float32 mono PCM at ``sample_rate``, shape (N,)."""
    if voice.engine == "espeak":
        pcm, sr = espeak_synth(text, voice.name, voice.rate, voice.pitch)
    elif voice.engine == "pico":
        pcm, sr = pico_synth(text, voice.name)
    elif voice.engine == "mbrola":
        pcm, sr = mbrola_synth(text, voice.name, voice.rate, voice.pitch)
    else:
        raise ValueError(f"unknown TTS engine {voice.engine!r} (espeak, pico, mbrola)")
    pcm = np.asarray(pcm, dtype=np.float32)
    if sr != sample_rate and pcm.size:
        pcm = soxr.resample(pcm, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.clip(pcm, -1.0, 1.0)


ESPEAK_FR_BASES = ("fr", "fr-be", "fr-ch")
ESPEAK_FR_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4")


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "little")


def french_voices(engines: tuple[str, ...] = ("espeak", "pico", "mbrola")) -> list[str]:
    """The French engines usable here among ``engines`` (espeak always; others if installed)."""
    usable = []
    for engine in engines:
        if engine == "espeak":
            usable.append("espeak")
        elif engine == "pico" and pico_available():
            usable.append("pico")
        elif engine == "mbrola":
            usable += [f"mbrola:{n}" for n in ("fr1", "fr4") if mbrola_available(n)]
    return usable


def french_voice_for(utt_id: str, engines: list[str], seed: int = 0) -> Voice:
    """A deterministic French voice for ``utt_id``: an engine from ``engines`` (as returned by
    :func:`french_voices`), then for espeak a base voice, variant, rate (140-200 wpm) and pitch
    (35-70); for mbrola a rate and pitch. Same id and seed → same voice, on any machine."""
    h = _hash("french-voice", str(seed), utt_id)
    engine = engines[h % len(engines)]
    h //= len(engines)
    rate = 140 + (h % 61)
    h //= 61
    pitch = 35 + (h % 36)
    h //= 36
    if engine == "pico":
        return Voice("pico", "fr-FR")
    if engine.startswith("mbrola:"):
        return Voice("mbrola", engine.split(":", 1)[1], rate, pitch)
    base = ESPEAK_FR_BASES[h % len(ESPEAK_FR_BASES)]
    h //= len(ESPEAK_FR_BASES)
    variant = ESPEAK_FR_VARIANTS[h % len(ESPEAK_FR_VARIANTS)]
    return Voice("espeak", base + variant, rate, pitch)


def english_target_voice(allow_fallback: bool = True) -> Voice:
    """The single English target voice: pico2wave en-US; espeak-ng ``en-us`` only as a fallback
    (with a warning: pocketsphinx cannot recognise it, so ASR-BLEU becomes meaningless)."""
    if pico_available():
        return Voice("pico", "en-US")
    if not allow_fallback:
        raise TTSUnavailable(f"pico2wave (English target voice) is not installed: {APT_HINT}")
    warnings.warn(
        "pico2wave is not installed: English targets fall back to espeak-ng en-us, which the "
        f"ASR used for ASR-BLEU does not recognise. Install it with: {APT_HINT}",
        stacklevel=2,
    )
    return Voice("espeak", "en-us", 175, 50)
