"""UnitVocoder: a small, streaming unit-to-waveform vocoder (units → ConvNeXt → iSTFT).

Our own vocoder for EchoStream's k-means units (``echostream.data.units``: deduplicated, 20 ms
frames), designed for CPU speed and exact streaming (the design choice and its measurements are
in ``echostream/pretrained/vocoder-tiny/README.md``)::

    units (B, U) ─► Embedding(K, D) ─► unit encoder: causal Conv1d(k) + GELU + LN, residual, ×L_u
                 ─► h (B, U, D) ─► duration head: Linear → log d (d = 20 ms frames per unit)
    h repeated d times (20 ms frames) ⊕ [position in the unit, log length]
                 ─► Linear → frame net: causal ConvNeXt blocks ×L_f (depthwise conv k, LN,
                    pointwise MLP, layer scale) ─► LN ─► Linear → for each of the 2 STFT frames
                    of 10 ms in the 20 ms frame: log-magnitude, phase (n_fft/2 + 1 bins each)
                 ─► irfft · Hann ─► overlap-add (hop 160, n_fft 640)
                 ─► waveform (B, 320 · sum(d)) at 16 kHz, clipped to [-1, 1]

Every convolution is causal; look-ahead comes from a *delay*: the network runs on its input
followed by R zero vectors and output ``t`` is read at position ``t + R`` (R = ``unit_lookahead``
units before the duration head, ``frame_lookahead`` 20 ms frames before the head). That
definition is the same for whole sequences and streams, so :meth:`UnitVocoder.stream` — fed the
units in any chunking, with ``final=True`` at the end — returns exactly the samples of
:meth:`UnitVocoder.forward` (to float rounding, ≤ 1e-5), **including the first and last
samples**: no crossfade is needed. A sample is emitted once every frame that overlaps it is
known: latency = ``unit_lookahead`` units + ``frame_lookahead`` frames + 15 ms (1.5 STFT hops)
of overlap-add. ``stream`` runs the streams of a batch one after the other (exact and simple;
the model is small enough that batching would only save Python overhead).

Durations: each unit lasts ``d ≥ 1`` unit frames of 20 ms (320 samples). Training uses the gold
run lengths of the frame-level units; inference predicts ``d = clamp(round(exp(log_d)), 1,
max_duration)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echostream.files import atomic_torch_save
from echostream.state import StreamState

CHECKPOINT_FORMAT = "echostream-unit-vocoder"


@dataclass
class UnitVocoderConfig:
    """Sizes of :class:`UnitVocoder` (defaults: the shipped ``vocoder-tiny``)."""

    num_units: int = 1000
    unit_dim: int = 128  # embedding and unit-encoder width
    unit_layers: int = 3
    unit_kernel: int = 3
    unit_lookahead: int = 2  # units of look-ahead of the unit encoder / duration head
    frame_dim: int = 192
    frame_layers: int = 6
    frame_kernel: int = 7
    frame_lookahead: int = 2  # 20 ms frames of look-ahead of the frame net
    ffn_mult: int = 3
    unit_hop: int = 320  # samples per unit frame (20 ms at 16 kHz)
    hop_length: int = 160  # iSTFT hop (10 ms); unit_hop must be a multiple
    n_fft: int = 640  # iSTFT frame (40 ms, Hann); must be 4 · hop_length
    sample_rate: int = 16000
    max_duration: int = 50  # cap on a predicted duration, in unit frames

    def validate(self) -> None:
        if self.unit_hop % self.hop_length:
            raise ValueError("unit_hop must be a multiple of hop_length")
        if self.n_fft != 4 * self.hop_length:
            raise ValueError("n_fft must be 4 · hop_length (constant Hann overlap-add gain)")
        for name in ("num_units", "unit_dim", "unit_layers", "unit_kernel", "frame_dim",
                     "frame_layers", "frame_kernel", "ffn_mult", "max_duration"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.unit_lookahead < 0 or self.frame_lookahead < 0:
            raise ValueError("look-aheads must be >= 0")

    @property
    def stft_per_frame(self) -> int:
        """STFT frames (hop_length) per unit frame (unit_hop)."""
        return self.unit_hop // self.hop_length


@dataclass(frozen=True)
class UnitVocoderState(StreamState):
    """Fixed-size caches of one or more streams (stack/select like any StreamState)."""

    unit_cache: Tensor  # (B, L_u, D, k_u - 1) last inputs of each unit-encoder conv
    frame_cache: Tensor  # (B, L_f, C, k_f - 1) last inputs of each depthwise conv
    ola: Tensor  # (B, n_fft - hop) overlap-add partial sums not yet final
    units_in: Tensor  # (B,) unit positions fed to the unit encoder (flush zeros included)
    frames_in: Tensor  # (B,) 20 ms positions fed to the frame net (flush zeros included)
    samples_out: Tensor  # (B,) samples emitted so far


def _causal_conv(x: Tensor, conv: nn.Conv1d, cache: Tensor | None) -> tuple[Tensor, Tensor]:
    """x (B, C, T) -> (conv over [cache | x] (B, C', T), new cache = last k-1 inputs).
    cache None: zeros (start of a sequence)."""
    k = conv.kernel_size[0]
    if cache is None:
        cache = x.new_zeros(x.shape[0], x.shape[1], k - 1)
    if x.shape[2] == 0:
        return x.new_zeros(x.shape[0], conv.out_channels, 0), cache
    full = torch.cat([cache, x], dim=2)
    return conv(full), full[:, :, full.shape[2] - (k - 1) :]


class UnitLayer(nn.Module):
    """x + LN(GELU(causal conv(x))) over units; x (B, D, U)."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, cache = _causal_conv(x, self.conv, cache)
        y = self.norm(F.gelu(y).transpose(1, 2)).transpose(1, 2)
        return x + y, cache


class ConvNeXtBlock(nn.Module):
    """Causal ConvNeXt block (Vocos' backbone): x + γ·MLP(LN(dwconv(x))); x (B, C, T)."""

    def __init__(self, dim: int, kernel: int, mult: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, mult * dim)
        self.pw2 = nn.Linear(mult * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, cache = _causal_conv(x, self.dwconv, cache)
        y = self.pw2(F.gelu(self.pw1(self.norm(y.transpose(1, 2))))) * self.gamma
        return x + y.transpose(1, 2), cache


class UnitVocoder(nn.Module):
    """``forward(units (B, U), unit_len (B,), durations=None)`` -> ``(wav (B, N), wav_len (B,))``
    with ``wav_len = 320 · sum(durations)``; ``init_state`` / ``stream`` for incremental units."""

    def __init__(self, cfg: UnitVocoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or UnitVocoderConfig()
        cfg.validate()
        self.cfg = cfg
        d, c = cfg.unit_dim, cfg.frame_dim
        self.embed = nn.Embedding(cfg.num_units, d)
        self.unit_layers = nn.ModuleList(
            UnitLayer(d, cfg.unit_kernel) for _ in range(cfg.unit_layers)
        )
        self.duration_head = nn.Linear(d, 1)
        self.frame_in = nn.Linear(d + 2, c)
        self.frame_layers = nn.ModuleList(
            ConvNeXtBlock(c, cfg.frame_kernel, cfg.ffn_mult, 1.0 / cfg.frame_layers)
            for _ in range(cfg.frame_layers)
        )
        self.head_norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, cfg.stft_per_frame * 2 * (cfg.n_fft // 2 + 1))
        # Hann (periodic): sum over frames of w² is 1.5 at hop n_fft/4 for every sample
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.ola_gain = float((self.window**2).reshape(4, -1).sum(0).mean())

    # ------------------------------------------------------------------ pieces

    def _unit_net(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, D, T) embeddings -> (h (B, D, T), cache (B, L_u, D, k-1)), causal."""
        caches = []
        for i, layer in enumerate(self.unit_layers):
            x, c = layer(x, None if cache is None else cache[:, i])
            caches.append(c)
        return x, torch.stack(caches, dim=1)

    def _frame_net(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, C, T) projected 20 ms frame features -> (spectra (B, T·s, 2·bins) of the
        s = stft_per_frame STFT frames per frame, cache), causal."""
        caches = []
        for i, layer in enumerate(self.frame_layers):
            x, c = layer(x, None if cache is None else cache[:, i])
            caches.append(c)
        spec = self.head(self.head_norm(x.transpose(1, 2)))  # (B, T, s·2·bins)
        b, t, _ = spec.shape
        bins2 = 2 * (self.cfg.n_fft // 2 + 1)
        return spec.reshape(b, t * self.cfg.stft_per_frame, bins2), torch.stack(caches, dim=1)

    def log_durations(self, h: Tensor) -> Tensor:
        """h (B, U, D) -> predicted log durations (B, U) in unit frames."""
        return self.duration_head(h).squeeze(-1)

    def durations_from_log(self, log_d: Tensor) -> Tensor:
        """(B, U) log durations -> int64 durations in [1, max_duration]."""
        return torch.round(torch.exp(log_d)).clamp(1, self.cfg.max_duration).long()

    def _frame_features(self, h: Tensor, dur: Tensor) -> Tensor:
        """One stream: h (U, D), dur (U,) -> (sum(dur), D + 2) features of the 20 ms frames:
        h of the unit, (j + 0.5) / n and log(n) / 4 with n = dur of the unit, j = 0 .. n-1."""
        n = dur
        feats = h.repeat_interleave(n, dim=0)
        n_rep = n.repeat_interleave(n).to(h.dtype)
        starts = torch.cumsum(n, 0) - n
        j = torch.arange(feats.shape[0], device=h.device) - starts.repeat_interleave(n)
        pos = torch.stack([(j.to(h.dtype) + 0.5) / n_rep, torch.log(n_rep) / 4], dim=1)
        return torch.cat([feats, pos], dim=1)

    def _spectra_to_frames(self, spec: Tensor) -> Tensor:
        """(B, T, 2·bins) head output -> windowed time frames (B, T, n_fft)."""
        if spec.shape[1] == 0:
            return spec.new_zeros(spec.shape[0], 0, self.cfg.n_fft)
        log_mag, phase = spec.chunk(2, dim=-1)
        mag = torch.exp(log_mag.clamp(max=math.log(100.0)))
        frames = torch.fft.irfft(torch.polar(mag, phase), n=self.cfg.n_fft, dim=-1)
        return frames * self.window / self.ola_gain

    def _overlap_add(self, frames: Tensor) -> Tensor:
        """(B, T, n_fft) -> (B, hop·(T - 1) + n_fft) summed at hop spacing."""
        b, t, n = frames.shape
        hop = self.cfg.hop_length
        if t == 0:
            return frames.new_zeros(b, n - hop)
        out = F.fold(frames.transpose(1, 2), (1, hop * (t - 1) + n), (1, n), stride=(1, hop))
        return out.reshape(b, -1)

    # ------------------------------------------------------------------ whole sequences

    def encode_units(self, units: Tensor, unit_len: Tensor) -> Tensor:
        """units (B, U) -> h (B, U, D) (positions past unit_len are not meaningful)."""
        r = self.cfg.unit_lookahead
        mask = torch.arange(units.shape[1], device=units.device) < unit_len.unsqueeze(1)
        x = self.embed(units.clamp(min=0)) * mask.unsqueeze(-1)  # (B, U, D), zero padding
        x = F.pad(x.transpose(1, 2), (0, r))  # R zero positions of look-ahead flush
        h, _ = self._unit_net(x, None)
        return h[:, :, r:].transpose(1, 2)

    def forward(
        self, units: Tensor, unit_len: Tensor | None = None, durations: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """units (B, U) int64 in [0, num_units), unit_len (B,), durations (B, U) int64 ≥ 1
        (gold run lengths; None: predicted). Returns wav (B, N_max) zero-padded, wav_len (B,)."""
        wav, wav_len, _, _ = self.synthesize(units, unit_len, durations)
        return wav, wav_len

    def synthesize(
        self, units: Tensor, unit_len: Tensor | None = None, durations: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """As :meth:`forward`, also returning (for training) the predicted log durations
        (B, U) and the head output (B, T, 2·bins): log-magnitudes | phases of the STFT frames
        (T = 2 · max sum(durations); frame j is centred on output sample 160·j + 80)."""
        self._check_units(units)
        b, u = units.shape
        if unit_len is None:
            unit_len = torch.full((b,), u, dtype=torch.long, device=units.device)
        h = self.encode_units(units, unit_len)  # (B, U, D)
        log_d = self.log_durations(h)
        dur = self.durations_from_log(log_d) if durations is None else durations.long()
        feats = [self._frame_features(h[i, : unit_len[i]], dur[i, : unit_len[i]]) for i in range(b)]
        n_frames = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        t = int(n_frames.max()) if b else 0
        r = self.cfg.frame_lookahead
        x = torch.zeros(b, t + r, self.cfg.frame_dim, device=units.device)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = self.frame_in(f)
        spec, _ = self._frame_net(x.transpose(1, 2), None)
        s = self.cfg.stft_per_frame
        spec = spec[:, r * s :]  # (B, T·s, 2·bins)
        t, n_frames = t * s, n_frames * s  # STFT frames
        frames = self._spectra_to_frames(spec)  # (B, T·s, n_fft)
        valid = torch.arange(t, device=units.device) < n_frames.to(units.device).unsqueeze(1)
        frames = frames * valid.unsqueeze(-1)  # no contribution from padding frames
        hop, offset = self.cfg.hop_length, (self.cfg.n_fft - self.cfg.hop_length) // 2
        wav = self._overlap_add(frames)[:, offset : offset + hop * t].clamp(-1.0, 1.0)
        wav_len = n_frames * hop
        wav = wav * (torch.arange(wav.shape[1], device=wav.device) < wav_len.unsqueeze(1))
        return wav, wav_len, log_d, spec

    def _check_units(self, units: Tensor) -> None:
        if units.dim() != 2:
            raise ValueError(f"units must be (B, U), got shape {tuple(units.shape)}")
        if units.numel() and (int(units.min()) < 0 or int(units.max()) >= self.cfg.num_units):
            raise ValueError(
                f"unit ids must be in [0, {self.cfg.num_units}), got "
                f"{int(units.min())}..{int(units.max())}"
            )

    # ------------------------------------------------------------------ streaming

    def init_state(self, batch_size: int) -> UnitVocoderState:
        cfg = self.cfg
        z = torch.zeros
        return UnitVocoderState(
            unit_cache=z(batch_size, cfg.unit_layers, cfg.unit_dim, cfg.unit_kernel - 1),
            frame_cache=z(batch_size, cfg.frame_layers, cfg.frame_dim, cfg.frame_kernel - 1),
            ola=z(batch_size, cfg.n_fft - cfg.hop_length),
            units_in=z(batch_size, dtype=torch.long),
            frames_in=z(batch_size, dtype=torch.long),
            samples_out=z(batch_size, dtype=torch.long),
        )

    def stream(
        self,
        units: Tensor,
        unit_len: Tensor | None,
        state: UnitVocoderState,
        final: bool = False,
    ) -> tuple[Tensor, Tensor, UnitVocoderState]:
        """New units (B, N) (``unit_len`` (B,) of them valid per stream, any number incl. 0) ->
        the new final samples wav (B, S_max) zero-padded, wav_len (B,), and the next state.
        ``final=True`` flushes the look-ahead: the concatenation of all outputs equals
        :meth:`forward` of the whole unit sequence with predicted durations."""
        self._check_units(units)
        b = units.shape[0]
        if state.batch_size != b:
            raise ValueError(f"state has {state.batch_size} streams, units {b}")
        if unit_len is None:
            unit_len = torch.full((b,), units.shape[1], dtype=torch.long)
        outs, states = [], []
        for i, (one, n) in enumerate(zip(state.unstack(), unit_len.tolist(), strict=True)):
            if n == 0 and not final:  # nothing new: no samples, same state (exact shortcut)
                outs.append(units.new_zeros(0, dtype=torch.float32))
                states.append(one)
                continue
            wav, st = self._stream_one(units[i, :n], one, final)
            outs.append(wav)
            states.append(st)
        wav_len = torch.tensor([w.shape[0] for w in outs], dtype=torch.long)
        wav = torch.zeros(b, int(wav_len.max()) if b else 0)
        for i, w in enumerate(outs):
            wav[i, : w.shape[0]] = w
        return wav, wav_len, UnitVocoderState.stack(states)

    def _stream_one(
        self, units: Tensor, state: UnitVocoderState, final: bool
    ) -> tuple[Tensor, UnitVocoderState]:
        """One stream: units (N,), state of batch 1 -> (new samples (S,), next state)."""
        cfg = self.cfg
        hop, r_u, r_f = cfg.hop_length, cfg.unit_lookahead, cfg.frame_lookahead
        # ---- units: causal encoder; output at position p is unit p - r_u
        x = self.embed(units).unsqueeze(0).transpose(1, 2)  # (1, D, N)
        if final:
            x = F.pad(x, (0, r_u))
        h, unit_cache = self._unit_net(x, state.unit_cache)
        first = int(state.units_in)
        keep = max(0, r_u - first)  # positions < r_u produce no unit
        h = h[0, :, keep:].transpose(0, 1)  # (M, D)
        dur = self.durations_from_log(self.log_durations(h))
        # ---- frames: causal net; output at position q is frame q - r_f
        feats = self._frame_features(h, dur)
        xf = self.frame_in(feats).transpose(0, 1).unsqueeze(0)  # (1, C, T)
        if final:
            xf = F.pad(xf, (0, r_f))
        spec, frame_cache = self._frame_net(xf, state.frame_cache)
        first_f = int(state.frames_in)
        s = cfg.stft_per_frame
        spec = spec[:, s * max(0, r_f - first_f) :]  # (1, T'·s, 2·bins)
        frames = self._spectra_to_frames(spec)
        # ---- overlap-add on the virtual timeline v = n + offset (frame j covers
        # [hop·j, hop·j + n_fft)); after J frames, v < hop·J is final, the buffer holds the
        # partial sums of [hop·J, hop·J + n_fft - hop)
        offset = (cfg.n_fft - hop) // 2
        done = s * max(0, int(state.frames_in) - r_f)  # J: STFT frames already overlap-added
        t = frames.shape[1]
        ola = self._overlap_add(frames)  # (1, hop·t + n_fft - hop)
        ola[:, : cfg.n_fft - hop] += state.ola
        ready = hop * t + ((cfg.n_fft - hop) if final else 0)
        new = ola[0, :ready][max(0, offset - hop * done) :].clamp(-1.0, 1.0)  # output: v ≥ offset
        rest = torch.zeros_like(state.ola) if final else ola[:, hop * t :]
        if final:  # the whole output has hop · (all frames) samples
            new = new[: max(0, hop * (done + t) - int(state.samples_out))]
        next_state = UnitVocoderState(
            unit_cache=unit_cache,
            frame_cache=frame_cache,
            ola=rest,
            units_in=state.units_in + x.shape[2],
            frames_in=state.frames_in + xf.shape[2],
            samples_out=state.samples_out + new.shape[0],
        )
        return new, next_state

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike, **metadata: object) -> None:
        """Write ``{"format", "config", "model", **metadata}`` (tensors and plain data only, so
        :meth:`load` can use ``torch.load(weights_only=True)``), atomically."""
        payload = {"format": CHECKPOINT_FORMAT, "config": asdict(self.cfg),
                   "model": self.state_dict(), **metadata}  # fmt: skip
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnitVocoder:
        """Load a file written by :meth:`save` (e.g. ``echostream/pretrained/vocoder-tiny/
        vocoder.pt``); returns the model in eval mode. The metadata is in ``model.metadata``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: unit vocoder checkpoint not found")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not an EchoStream unit vocoder checkpoint")
        model = cls(UnitVocoderConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["model"])
        model.metadata = {k: v for k, v in ckpt.items() if k not in ("model", "format")}
        return model.eval()
