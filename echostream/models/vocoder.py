"""CodeHiFiGAN: fairseq's unit HiFi-GAN (the vocoder StreamSpeech uses), without fairseq.

Architecture (fairseq ``text_to_speech/codehifigan.py`` + ``hifigan.py``, speech-resynthesis'
``CodeGenerator``), sized entirely by its JSON config:

    units (U,) ─► dict: Embedding(num_embeddings, embedding_dim)
              ─► [dur_predictor: conv(k)+ReLU, LN, conv(k)+ReLU, LN, Linear → log(1 + d)]
                  each unit repeated d = max(1, round(exp(log_dur) - 1)) times
              ─► conv_pre: Conv1d(model_in_dim, C, 7)
              ─► for each (rate r_i, kernel k_i): LeakyReLU(0.1), ups.i: ConvTranspose1d(
                  C/2^i, C/2^(i+1), k_i, stride r_i, padding (k_i - r_i)/2), then the mean of
                  the MRF resblocks (one per resblock kernel size; each 3 × [LReLU, dilated conv,
                  LReLU, conv] with residuals)
              ─► LeakyReLU(0.01), conv_post: Conv1d(C/2^n, 1, 7), tanh ─► waveform

One unit frame becomes ``prod(upsample_rates)`` samples (320 = 5·4·4·2·2 for 20 ms units at
16 kHz), so the output has ``sum(durations) · 320`` samples.

Parameter names are fairseq's (``dict.weight``, ``dur_predictor.conv1.0.weight``,
``dur_predictor.ln1.*``, ``conv_pre.*``, ``ups.N.*``, ``resblocks.N.convs1.M.*``,
``resblocks.N.convs2.M.*``, ``conv_post.*``). fairseq trains with weight norm, so its checkpoints
store ``weight_g`` / ``weight_v`` (or ``parametrizations.weight.original0/1`` from newer torch)
for every generator convolution. **We fold weight norm at load time**: ``weight = g · v / ‖v‖``
with the norm over every dimension but 0 (``torch._weight_norm(v, g, 0)``, what fairseq's
``remove_weight_norm()`` does before inference), so the modules here are plain convolutions —
this class is for inference; it is not a training recipe for the official model.

:meth:`CodeHiFiGAN.from_fairseq` loads the official mHuBERT km1000 English vocoder
(``g_00500000``: ``{"generator": state_dict}``; ``config.json``) from local files with
``torch.load(weights_only=True)``. Single-speaker, no f0 conditioning (the configs StreamSpeech
uses); multi-speaker / f0 configs are refused with a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.1


@dataclass
class CodeHiFiGANConfig:
    """The fields of fairseq's vocoder ``config.json`` that shape the generator."""

    num_embeddings: int = 1000
    embedding_dim: int = 128
    model_in_dim: int = 128
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 4, 4])
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    )
    # dur_predictor_params: encoder_embed_dim, var_pred_hidden_dim, var_pred_kernel_size,
    # var_pred_dropout (None: no duration predictor, units are per 20 ms frame)
    dur_predictor_params: dict | None = field(
        default_factory=lambda: {
            "encoder_embed_dim": 128,
            "var_pred_hidden_dim": 128,
            "var_pred_kernel_size": 3,
            "var_pred_dropout": 0.5,
        }
    )
    sampling_rate: int = 16000

    @property
    def hop_size(self) -> int:
        """Samples per unit frame (product of the upsample rates)."""
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop

    @classmethod
    def from_dict(cls, cfg: Mapping) -> CodeHiFiGANConfig:
        """From fairseq's JSON dict (unknown training keys are ignored). Raises ValueError for
        what this class does not implement (resblock type 2, multi-speaker, f0)."""
        if str(cfg.get("resblock", "1")) != "1":
            raise ValueError(f"only resblock type '1' is supported, got {cfg['resblock']!r}")
        for key in ("multispkr", "f0", "embedder_params", "multistyle"):
            if cfg.get(key):
                raise ValueError(f"vocoder config uses {key!r}, which is not supported")
        if int(cfg.get("f0_quant_num_bin", 0) or 0) > 0:
            raise ValueError("vocoder config uses quantised f0, which is not supported")
        missing = [k for k in ("num_embeddings", "embedding_dim", "upsample_rates",
                               "upsample_kernel_sizes", "upsample_initial_channel",
                               "resblock_kernel_sizes", "resblock_dilation_sizes")
                   if k not in cfg]  # fmt: skip
        if missing:
            raise ValueError(f"vocoder config lacks {missing}")
        out = cls(
            num_embeddings=int(cfg["num_embeddings"]),
            embedding_dim=int(cfg["embedding_dim"]),
            model_in_dim=int(cfg.get("model_in_dim", 80)),
            upsample_rates=[int(r) for r in cfg["upsample_rates"]],
            upsample_kernel_sizes=[int(k) for k in cfg["upsample_kernel_sizes"]],
            upsample_initial_channel=int(cfg["upsample_initial_channel"]),
            resblock_kernel_sizes=[int(k) for k in cfg["resblock_kernel_sizes"]],
            resblock_dilation_sizes=[[int(d) for d in ds] for ds in cfg["resblock_dilation_sizes"]],
            dur_predictor_params=dict(cfg["dur_predictor_params"])
            if cfg.get("dur_predictor_params")
            else None,
            sampling_rate=int(cfg.get("sampling_rate", 16000)),
        )
        out.validate()
        return out

    def validate(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if self.upsample_initial_channel // 2 ** len(self.upsample_rates) < 1:
            raise ValueError("upsample_initial_channel too small for the number of upsamplings")
        if self.model_in_dim != self.embedding_dim:
            raise ValueError(
                f"model_in_dim {self.model_in_dim} != embedding_dim {self.embedding_dim}: "
                "only unit-only conditioning is supported"
            )
        dp = self.dur_predictor_params
        if dp is not None and dp["encoder_embed_dim"] != self.embedding_dim:
            raise ValueError("dur_predictor_params.encoder_embed_dim != embedding_dim")


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """HiFi-GAN resblock type 1: for each dilation, x + conv2(lrelu(conv1_dilated(lrelu(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_padding(kernel_size))
            for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, T)
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            x = x + conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class DurationPredictor(nn.Module):
    """fairseq's ``VariancePredictor``: (B, U, D) unit embeddings -> (B, U) log(1 + duration)."""

    def __init__(self, in_dim: int, hidden_dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        # conv1/conv2 are Sequential(Conv1d, ReLU) in fairseq: names conv1.0.weight, ...
        self.conv1 = nn.Sequential(
            nn.Conv1d(in_dim, hidden_dim, kernel_size, padding=(kernel_size - 1) // 2), nn.ReLU()
        )
        self.ln1 = nn.LayerNorm(hidden_dim)
        # fairseq pads conv2 by 1 whatever the kernel size (kept: same output for kernel 3)
        self.conv2 = nn.Sequential(
            nn.Conv1d(hidden_dim, hidden_dim, kernel_size, padding=1), nn.ReLU()
        )
        self.ln2 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, U, D) -> (B, U)
        x = self.dropout(self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2)))
        x = self.dropout(self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2)))
        return self.proj(x).squeeze(-1)


class CodeHiFiGAN(nn.Module):
    """Unit HiFi-GAN generator. ``forward(units (B, U), unit_len (B,))`` -> ``(wav (B, N),
    wav_len (B,))`` float32 in [-1, 1] at ``cfg.sampling_rate``; see :meth:`forward`."""

    def __init__(self, cfg: CodeHiFiGANConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CodeHiFiGANConfig()
        cfg.validate()
        self.cfg = cfg
        c0 = cfg.upsample_initial_channel
        self.dict = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim)
        self.dur_predictor = None
        if cfg.dur_predictor_params is not None:
            p = cfg.dur_predictor_params
            self.dur_predictor = DurationPredictor(
                cfg.embedding_dim,
                int(p["var_pred_hidden_dim"]),
                int(p["var_pred_kernel_size"]),
                float(p.get("var_pred_dropout", 0.0)),
            )
        self.conv_pre = nn.Conv1d(cfg.model_in_dim, c0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        ):
            c_in, c_out = c0 // 2**i, c0 // 2 ** (i + 1)
            self.ups.append(
                nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2)
            )
            for k, dilations in zip(
                cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(ResBlock(c_out, k, dilations))
        self.conv_post = nn.Conv1d(c0 // 2 ** len(cfg.upsample_rates), 1, 7, padding=3)

    @property
    def hop_size(self) -> int:
        return self.cfg.hop_size

    def predict_durations(self, units: Tensor) -> Tensor:
        """units (B, U) int64 -> durations (B, U) int64 ≥ 1, fairseq's rounding:
        ``max(1, round(exp(log_dur) - 1))``. Without a duration predictor: all ones."""
        if self.dur_predictor is None:
            return torch.ones_like(units)
        log_dur = self.dur_predictor(self.dict(units))
        return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)

    def generate(self, frames: Tensor) -> Tensor:
        """frames (B, model_in_dim, T) -> waveform (B, T · hop_size)."""
        x = self.conv_pre(frames)
        n = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(block(x) for block in self.resblocks[i * n : (i + 1) * n]) / n
        x = self.conv_post(F.leaky_relu(x))  # fairseq uses the default slope (0.01) here
        return torch.tanh(x).squeeze(1)

    def forward(
        self,
        units: Tensor,
        unit_len: Tensor | None = None,
        *,
        dur_prediction: bool = True,
        durations: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Synthesise speech from units.

        units: (B, U) int64 in ``[0, num_embeddings)``; unit_len: (B,) (default: all U).
        Each unit is repeated ``durations[b, u]`` times (given; else predicted when
        ``dur_prediction`` and the model has a duration predictor; else once), then the
        generator runs on each sequence alone (exactly fairseq's single-sample inference; no
        padding ever leaks into a neighbour's convolutions).
        Returns wav (B, N_max) zero-padded and wav_len (B,) = sum(durations) · hop_size.
        """
        if units.dim() != 2:
            raise ValueError(f"units must be (B, U), got shape {tuple(units.shape)}")
        batch, max_units = units.shape
        if unit_len is None:
            unit_len = torch.full((batch,), max_units, dtype=torch.long, device=units.device)
        lo, hi = (int(units.min()), int(units.max())) if units.numel() else (0, 0)
        if lo < 0 or hi >= self.cfg.num_embeddings:
            raise ValueError(f"unit ids must be in [0, {self.cfg.num_embeddings}), got {lo}..{hi}")
        wavs = []
        for b in range(batch):
            u = units[b : b + 1, : int(unit_len[b])]
            if u.shape[1] == 0:
                wavs.append(units.new_zeros(0, dtype=torch.float32))
                continue
            if durations is not None:
                dur = durations[b : b + 1, : u.shape[1]].clamp(min=0)
            elif dur_prediction:
                dur = self.predict_durations(u)
            else:
                dur = torch.ones_like(u)
            frames = self.dict(u).repeat_interleave(dur.reshape(-1), dim=1)  # (1, T, D)
            if frames.shape[1] == 0:
                wavs.append(units.new_zeros(0, dtype=torch.float32))
                continue
            wavs.append(self.generate(frames.transpose(1, 2))[0])
        wav_len = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
        out = torch.zeros(batch, int(wav_len.max()) if batch else 0)
        for b, w in enumerate(wavs):
            out[b, : w.shape[0]] = w
        return out, wav_len

    # ------------------------------------------------------------------ fairseq checkpoints

    @staticmethod
    def fold_weight_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Replace every ``X.weight_g`` + ``X.weight_v`` (old ``torch.nn.utils.weight_norm``) or
        ``X.parametrizations.weight.original0`` + ``original1`` (new parametrizations) pair by
        ``X.weight = g · v / ‖v‖`` (norm over all dims but 0, as both weight-norm APIs use with
        their default ``dim=0``). Other entries are kept as they are."""
        out: dict[str, Tensor] = {}
        pairs: dict[str, dict[str, Tensor]] = {}
        for name, value in state_dict.items():
            for g_suffix, v_suffix in ((".weight_g", ".weight_v"),
                                       (".parametrizations.weight.original0",
                                        ".parametrizations.weight.original1")):  # fmt: skip
                if name.endswith(g_suffix):
                    pairs.setdefault(name[: -len(g_suffix)], {})["g"] = value
                    break
                if name.endswith(v_suffix):
                    pairs.setdefault(name[: -len(v_suffix)], {})["v"] = value
                    break
            else:
                out[name] = value
        for prefix, gv in pairs.items():
            if set(gv) != {"g", "v"}:
                raise ValueError(f"{prefix}: weight norm needs both g and v, got only {set(gv)}")
            g, v = gv["g"].float(), gv["v"].float()
            out[f"{prefix}.weight"] = torch._weight_norm(v, g, 0)
        return out

    def load_fairseq_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a fairseq generator state dict (weight-normed or already folded). Raises
        ValueError listing missing / unexpected / mis-shaped parameters."""
        folded = self.fold_weight_norm(state_dict)
        own = self.state_dict()
        missing = sorted(set(own) - set(folded))
        unexpected = sorted(set(folded) - set(own))
        shapes = [
            f"{k}: checkpoint {tuple(folded[k].shape)} vs model {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(folded))
            if folded[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                "vocoder checkpoint does not match its config: "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}; "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}; "
                f"shape mismatches {shapes[:8]}"
            )
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in folded.items()})

    @classmethod
    def from_fairseq(
        cls, checkpoint_path: str | os.PathLike, config_path: str | os.PathLike
    ) -> CodeHiFiGAN:
        """Load fairseq's ``g_XXXXXXXX`` (``{"generator": state_dict}``) and its ``config.json``
        from local paths, without fairseq. Returns the model in eval mode (weight norm folded)."""
        config_path, checkpoint_path = Path(config_path), Path(checkpoint_path)
        try:
            cfg_dict = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{config_path}: vocoder config not found") from None
        except ValueError as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
        try:
            cfg = CodeHiFiGANConfig.from_dict(cfg_dict)
        except ValueError as err:
            raise ValueError(f"{config_path}: {err}") from None
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"{checkpoint_path}: vocoder checkpoint not found")
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        state = ckpt.get("generator", ckpt) if isinstance(ckpt, Mapping) else None
        if not isinstance(state, Mapping):
            raise ValueError(f"{checkpoint_path}: expected a dict with key 'generator'")
        model = cls(cfg)
        try:
            model.load_fairseq_state_dict(state)
        except ValueError as err:
            raise ValueError(f"{checkpoint_path}: {err}") from None
        return model.eval()
