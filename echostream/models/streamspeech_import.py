"""Import of StreamSpeech (fairseq) checkpoints onto an EchoStream model, without fairseq.

:func:`import_streamspeech` maps a StreamSpeech ``.pt`` (fairseq checkpoint: ``{"args" |
"cfg", "model": state_dict, "optimizer_history", "extra_state", ...}``) onto an
:class:`~echostream.models.echostream.EchoStreamModel`. It is unpickled *without fairseq*:
``torch.load`` runs with :class:`_SafeUnpickler`, whose ``find_class`` returns only tensor
rebuilders, a few builtin containers and, for every other global (fairseq, omegaconf,
argparse, numpy, ``os.system``, ...), an inert stand-in class that records its arguments and
state. Nothing named in the file is imported or executed.

Key names come from reading StreamSpeech (github.com/ictnlp/StreamSpeech, commit 375a73a):

- ``researches/ctc_unity/models/streamspeech_model.py`` (``StreamSpeechModel``): the unit
  decoder is ``decoder`` (``CTCTransformerUnitDecoder``), the T2U encoder
  ``synthesizer_encoder`` (``UniTransformerEncoderNoEmb``: ``layers.N``, ``layer_norm``),
  multitask decoders are ``{task}_decoder`` with the task names of
  ``configs/fr-en/config_mtl_asr_st_ctcst.yaml``: ``target_unigram`` (MT, a
  ``TransformerDecoder``), ``source_unigram`` (ASR, ``CTCDecoder``: ``proj``),
  ``ctc_target_unigram`` (ST CTC, ``CTCDecoder`` — released with 0 layers — or
  ``CTCDecoderWithTransformerLayer``: ``layers.N``, ``layer_norm``, ``proj``);
- ``researches/ctc_unity/modules/transformer_layer.py`` / ``transformer_decoder.py`` and
  fairseq's ``MultiheadAttention``: ``self_attn.{q,k,v,out}_proj``, ``self_attn_layer_norm``,
  ``encoder_attn.*``, ``encoder_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``
  (EchoStream's :class:`~echostream.models.layers.TransformerLayer` uses the same names);
  ``embed_tokens`` + tied ``output_projection`` (``--share-decoder-input-output-embed``);
  sinusoidal positions from ``padding_idx + 1 = 2`` (EchoStream's ``POSITION_OFFSET``);
- ``researches/chunk_unity/models/s2t_conformer.py`` (``ChunkS2TConformerEncoder``):
  ``subsample`` (``Conv1dSubsampler``, kernels 5,5, GLU: ``conv_layers.{0,1}``), ``linear``,
  ``conformer_layers.N`` (``researches/chunk_unity/modules/conformer_layer.py``: ``ffn1``/
  ``ffn2`` (``layer_norm``, ``w_1``, ``w_2``), ``self_attn_layer_norm``, ``self_attn``
  (ESPnet rel-pos: ``linear_{q,k,v,out,pos}``, ``pos_bias_{u,v}``), ``conv_module``
  (``layer_norm``, ``pointwise_conv1``/``pointwise_conv2`` as ``Conv1d(k=1)``,
  ``depthwise_conv``, ``batch_norm``), ``final_layer_norm``).

Id conventions (fairseq ``Dictionary``: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
symbols from 4; EchoStream: ``<pad>``/blank 0, ``<unk>`` 1, BOS 2, EOS 3, pieces from 4, the
same pieces in the same order as fairseq's spm dictionary):

- MT decoder ``embed_tokens`` (tied output): EchoStream row ← fairseq row: pad 0 ← 1,
  unk 1 ← 3, BOS 2 ← 2 (``</s>``: fairseq feeds ``</s>`` as the first decoder input), EOS 3 ← 2,
  piece i ← i. fairseq's ``<s>`` row (never fed, never a target) is dropped. With it, EchoStream
  feeding BOS computes exactly what fairseq computes feeding ``</s>``; logits are fairseq's
  gathered the same way (BOS's logit duplicates EOS's; BOS is never generated).
- Text CTC heads (ASR ``proj``, ST CTC ``proj``; fairseq's ``CtcCriterion`` blank is index 0,
  ``<s>``): class 0 (blank) ← 0, unk 1 ← 3, BOS 2 ← 1 (``<pad>``, never emitted), EOS 3 ← 2,
  piece i ← i — a permutation of the rows (and biases).
- Unit CTC head: StreamSpeech's ``speech_to_speech_ctc`` task builds the unit dictionary as
  4 specials + ``"0" .. "K-1"`` (unit u at 4 + u) and then ``add_symbol("<blank>")`` (4 + K,
  the CTC blank): EchoStream class 0 (blank) ← 4 + K, class u + 1 ← 4 + u; the four special
  rows are dropped. A dictionary without ``<blank>`` (K + 4 rows) takes the blank from ``<s>``.

The encoder is mapped for the baseline (``cfg.model == "streamspeech"``) only, and only where
it has a counterpart: Conformer layers and the input ``linear``. Not mapped: the subsampler
(Conv1d + GLU versus EchoStream's causal Conv2d), the conv module's BatchNorm (EchoStream uses
LayerNorm, left at init). Approximated: ``depthwise_conv`` — StreamSpeech's kernel is centred
(k//2 future frames within a chunk), EchoStream's is causal, so the current-and-past taps are
moved to the causal positions and the future taps are dropped. An imported baseline encoder is
therefore a warm start, not StreamSpeech's function; decoders and CTC heads are exact.
"""

from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
import re
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from echostream.config import EchoStreamConfig
from echostream.models.checkpoint import CheckpointError
from echostream.models.echostream import EchoStreamModel

__all__ = ["ImportReport", "import_streamspeech", "load_fairseq_checkpoint"]


# =========================================================================== fairseq unpickling


class _StandIn:
    """Inert placeholder for a global named in a pickle (a class or function we do not trust).

    Calling it (REDUCE/NEWOBJ) records the arguments; BUILD stores the state as attributes,
    so e.g. an ``argparse.Namespace`` stand-in answers ``args.encoder_layers``.
    """

    _origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_args"] = args
        self.__dict__["_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        slots = isinstance(state, tuple) and len(state) == 2
        if slots and (state[1] is None or isinstance(state[1], dict)):
            state = state[0] if state[1] is None else {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self.__dict__["_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (SETITEMS)
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: Any) -> None:  # list subclasses (APPENDS)
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self._origin}>"


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): codecs.encode,  # bytes in pickle protocol 2
    **{
        ("builtins", n): getattr(builtins, n)
        for n in ("set", "frozenset", "slice", "complex", "bytearray", "list", "dict", "tuple")
    },
}
for _name in ("_rebuild_tensor_v3", "_rebuild_parameter_with_state"):
    if hasattr(torch._utils, _name):
        _ALLOWED_GLOBALS[("torch._utils", _name)] = getattr(torch._utils, _name)


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only tensor rebuilders, torch dtypes and builtin containers; every other
    global becomes a :class:`_StandIn` subclass named after it (nothing is imported)."""

    stand_ins: ClassVar[dict[str, type]] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]  # (vars: no lazy submodule import by name)
        origin = f"{module}.{name}"
        cls = _SafeUnpickler.stand_ins.get(origin)
        if cls is None:
            cls = type(name, (_StandIn,), {"_origin": origin, "__module__": __name__})
            _SafeUnpickler.stand_ins[origin] = cls
        return cls


def _safe_pickle_module() -> types.ModuleType:
    module = types.ModuleType("echostream_safe_pickle")
    module.Unpickler = _SafeUnpickler
    module.load = lambda f, **kw: _SafeUnpickler(f, **kw).load()
    module.loads = lambda b, **kw: _SafeUnpickler(io.BytesIO(b), **kw).load()
    module.__dict__["UnpicklingError"] = pickle.UnpicklingError
    return module


def load_fairseq_checkpoint(path: str | os.PathLike) -> dict:
    """Unpickle a fairseq checkpoint without fairseq (see :class:`_SafeUnpickler`) -> its dict
    (``model`` holds the state dict; ``args``/``cfg`` are stand-in objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(
            path, map_location="cpu", pickle_module=_safe_pickle_module(), weights_only=False
        )
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot read as a torch/fairseq checkpoint: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return data


# =========================================================================== StreamSpeech import


@dataclass
class ImportReport:
    """What :func:`import_streamspeech` did, for humans (``str(report)``) and tests."""

    source: str
    mapped: list[tuple[str, str, str]] = field(default_factory=list)  # src, dst, note
    unmapped_source: list[tuple[str, str]] = field(default_factory=list)  # src, reason
    shape_mismatches: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # buffers / bookkeeping, no weights
    left_at_init: list[str] = field(default_factory=list)  # EchoStream params not written
    permutations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def mapped_targets(self) -> set[str]:
        return {dst for _, dst, _ in self.mapped}

    def __str__(self) -> str:
        lines = [f"StreamSpeech import from {self.source}"]
        lines.append(f"  mapped: {len(self.mapped)} source tensors")
        for src, dst, note in self.mapped:
            lines.append(f"    {src} -> {dst}" + (f"  [{note}]" if note else ""))
        lines.append(f"  source tensors without counterpart: {len(self.unmapped_source)}")
        for src, reason in self.unmapped_source:
            lines.append(f"    {src}: {reason}")
        lines.append(f"  shape mismatches (not mapped): {len(self.shape_mismatches)}")
        for src, dst, have, want in self.shape_mismatches:
            lines.append(f"    {src} {list(have)} -> {dst} {list(want)}")
        lines.append(f"  ignored (buffers, bookkeeping): {len(self.ignored)}")
        for src in self.ignored:
            lines.append(f"    {src}")
        lines.append(f"  EchoStream parameters left at init: {len(self.left_at_init)}")
        for dst in self.left_at_init:
            lines.append(f"    {dst}")
        if self.permutations:
            lines.append("  id permutations:")
            lines += [f"    {p}" for p in self.permutations]
        if self.notes:
            lines.append("  notes:")
            lines += [f"    {n}" for n in self.notes]
        return "\n".join(lines)


# fairseq Dictionary specials
FS_BOS, FS_PAD, FS_EOS, FS_UNK, FS_NSPECIAL = 0, 1, 2, 3, 4


def mt_vocab_index(vocab_size: int) -> list[int]:
    """EchoStream MT row i <- fairseq row index[i] (pad<-pad, unk<-unk, BOS<-</s>, EOS<-</s>)."""
    return [FS_PAD, FS_UNK, FS_EOS, FS_EOS, *range(FS_NSPECIAL, vocab_size)]


def text_ctc_index(vocab_size: int) -> list[int]:
    """EchoStream text CTC class i <- fairseq row index[i] (blank<-<s>, unk<-unk, BOS<-<pad>,
    EOS<-</s>, piece i <- i): a permutation."""
    return [FS_BOS, FS_UNK, FS_PAD, FS_EOS, *range(FS_NSPECIAL, vocab_size)]


def unit_ctc_index(num_units: int, fairseq_rows: int) -> list[int] | None:
    """EchoStream unit class c <- fairseq row index[c]: blank <- ``<blank>`` (4 + K, appended by
    StreamSpeech's CTC task) or ``<s>`` (0) when there is no ``<blank>``; unit u <- 4 + u."""
    if fairseq_rows == num_units + FS_NSPECIAL + 1:
        blank = num_units + FS_NSPECIAL
    elif fairseq_rows == num_units + FS_NSPECIAL:
        blank = FS_BOS
    else:
        return None
    return [blank, *range(FS_NSPECIAL, FS_NSPECIAL + num_units)]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern
    target: str | None  # replacement template (re.sub) or None: no counterpart
    kind: str = "copy"  # copy | mt_vocab | text_ctc | unit_vocab | squeeze | causal_dw | ignore
    reason: str = ""


def _rules(cfg: EchoStreamConfig) -> list[_Rule]:
    def r(pattern: str, target: str | None, kind: str = "copy", reason: str = "") -> _Rule:
        return _Rule(re.compile(pattern), target, kind, reason)

    rules = [
        # MT decoder (multitask "target_unigram")
        r(
            r"^target_unigram_decoder\.embed_tokens\.weight$",
            "mt_decoder.embed_tokens.weight",
            "mt_vocab",
        ),
        r(
            r"^target_unigram_decoder\.output_projection\.weight$",
            "mt_decoder.embed_tokens.weight",
            "tied",
        ),
        r(r"^target_unigram_decoder\.layers\.(\d+)\.(.+)$", r"mt_decoder.layers.\1.\2"),
        r(r"^target_unigram_decoder\.layer_norm\.(weight|bias)$", r"mt_decoder.layer_norm.\1"),
        # T2U encoder
        r(r"^synthesizer_encoder\.layers\.(\d+)\.(.+)$", r"t2u.layers.\1.\2"),
        r(r"^synthesizer_encoder\.layer_norm\.(weight|bias)$", r"t2u.layer_norm.\1"),
        # unit decoder (the main decoder)
        r(r"^decoder\.output_projection\.weight$", "unit_decoder.head.proj.weight", "unit_vocab"),
        r(r"^decoder\.embed_tokens\.weight$", "unit_decoder.head.proj.weight", "tied"),
        r(r"^decoder\.layers\.(\d+)\.(.+)$", r"unit_decoder.layers.\1.\2"),
        r(r"^decoder\.layer_norm\.(weight|bias)$", r"unit_decoder.layer_norm.\1"),
        # CTC heads / ST CTC decoder
        r(r"^source_unigram_decoder\.proj\.(weight|bias)$", r"asr_ctc.proj.\1", "text_ctc"),
        r(r"^ctc_target_unigram_decoder\.proj\.(weight|bias)$", r"st_ctc.head.proj.\1", "text_ctc"),
        r(r"^ctc_target_unigram_decoder\.layers\.(\d+)\.(.+)$", r"st_ctc.layers.\1.\2"),
        r(r"^ctc_target_unigram_decoder\.layer_norm\.(weight|bias)$", r"st_ctc.layer_norm.\1"),
        # bookkeeping buffers
        r(r"(^|\.)(version|_float_tensor)$", None, "ignore"),
        r(r"\.embed_positions\.", None, "ignore"),
    ]
    if cfg.model == "streamspeech":
        layer = r"^encoder\.conformer_layers\.(\d+)\."
        rules += [
            r(r"^encoder\.linear\.(weight|bias)$", r"encoder.body.input_proj.\1"),
            r(
                layer + r"conv_module\.(pointwise_conv1|pointwise_conv2)\.weight$",
                r"encoder.body.layers.\1.conv_module.\2.weight",
                "squeeze",
            ),
            r(
                layer + r"conv_module\.depthwise_conv\.weight$",
                r"encoder.body.layers.\1.conv_module.depthwise_conv.weight",
                "causal_dw",
            ),
            r(
                layer + r"conv_module\.batch_norm\..+$",
                None,
                "none",
                "BatchNorm: EchoStream's conv module uses LayerNorm (conv_module.norm) so that "
                "streaming is exact",
            ),
            r(layer + r"(.+)$", r"encoder.body.layers.\1.\2"),
            r(
                r"^encoder\.subsample\..+$",
                None,
                "none",
                "StreamSpeech's Conv1d+GLU subsampler (kernels 5,5) has no counterpart in "
                "EchoStream's causal Conv2d subsampling",
            ),
        ]
    else:
        rules.append(
            r(
                r"^encoder\..+$",
                None,
                "none",
                "EchoStream's encoder is an Emformer: StreamSpeech's Conformer encoder "
                "has no counterpart (train the new encoder)",
            )
        )
    return rules


def _state_dict_of(source: Any) -> tuple[dict[str, Tensor], Any, str]:
    """-> (fairseq state dict, args/cfg object or None, description of the source)."""
    if isinstance(source, (str, os.PathLike)):
        data = load_fairseq_checkpoint(source)
        return data["model"], data.get("args") or data.get("cfg"), str(source)
    if isinstance(source, dict):
        if isinstance(source.get("model"), dict):
            return source["model"], source.get("args") or source.get("cfg"), "<state dict>"
        return source, None, "<state dict>"
    raise TypeError(f"import_streamspeech expects a path or a dict, got {type(source).__name__}")


def import_streamspeech(
    source: str | os.PathLike | dict,
    cfg: EchoStreamConfig,
    gcmvn: str | os.PathLike | None = None,
) -> tuple[EchoStreamModel, ImportReport]:
    """Build an :class:`EchoStreamModel` from ``cfg`` and copy StreamSpeech's weights onto it.

    ``source``: a StreamSpeech/fairseq ``.pt`` path, a fairseq checkpoint dict (with
    ``"model"``) or a bare state dict. ``gcmvn``: StreamSpeech's ``gcmvn.npz`` (``mean``,
    ``std``) for the encoder's CMVN (fairseq keeps it outside the checkpoint). Returns the model
    (eval mode) and an :class:`ImportReport` (``print(report)``). See the module docstring for
    the key mapping and the id permutations.
    """
    state, _, description = _state_dict_of(source)
    model = EchoStreamModel(cfg)
    own = model.state_dict()
    report = ImportReport(source=description)
    rules = _rules(cfg)
    new_values: dict[str, Tensor] = {}
    tied: list[tuple[str, str]] = []

    for key, value in state.items():
        if not isinstance(value, Tensor):
            report.ignored.append(f"{key} (not a tensor)")
            continue
        rule = next((rule for rule in rules if rule.pattern.search(key)), None)
        if rule is None:
            report.unmapped_source.append((key, "no counterpart in EchoStream"))
            continue
        if rule.kind == "ignore":
            report.ignored.append(key)
            continue
        if rule.target is None:
            report.unmapped_source.append((key, rule.reason))
            continue
        target = rule.pattern.sub(rule.target, key)
        if rule.kind == "tied":
            tied.append((key, target))
            continue
        if target not in own:
            report.unmapped_source.append((key, f"no parameter {target} in this EchoStream model"))
            continue
        converted, note = _convert(rule.kind, value.detach().float(), cfg, own[target].shape)
        if converted is None or converted.shape != own[target].shape:
            shape = tuple(converted.shape) if converted is not None else tuple(value.shape)
            report.shape_mismatches.append((key, target, shape, tuple(own[target].shape)))
            continue
        new_values[target] = converted.to(own[target].dtype)
        report.mapped.append((key, target, note))

    # Tied weights: fairseq stores the shared tensor under both names.
    mapped_from = {dst: src for src, dst, _ in report.mapped}
    for key, target in tied:
        partner = mapped_from.get(target)
        if partner is not None and torch.equal(state[key], state[partner]):
            report.mapped.append((key, target, f"tied: same tensor as {partner}"))
        elif target.startswith("unit_decoder"):
            report.unmapped_source.append(
                (key, "the non-autoregressive unit decoder never embeds units")
            )
        elif partner is not None:
            report.unmapped_source.append(
                (key, f"differs from {partner}; EchoStream ties these weights, {partner} used")
            )
        else:
            report.unmapped_source.append((key, f"its partner for {target} was not mapped"))

    model.load_state_dict({**own, **new_values}, strict=True)
    report.left_at_init = [name for name, _ in model.named_parameters() if name not in new_values]
    _describe_permutations(report, cfg, state)
    mapped_src = {src for src, _, _ in report.mapped}
    if any(src.startswith("ctc_target_unigram_decoder.layers.") for src in mapped_src):
        report.notes.append(
            "ST CTC decoder layers: StreamSpeech's attend bidirectionally (uni_encoder is not "
            "set for multitask decoders), EchoStream's block-causally (block = encoder "
            "segment/chunk, bounded left context): same weights, streaming attention"
        )
    if any(src.startswith("encoder.") for src in mapped_src):
        report.notes.append(
            "encoder: a warm start, not StreamSpeech's function (subsampler not mapped, conv "
            "module LayerNorm at init instead of BatchNorm, depthwise kernels made causal)"
        )
    if any(src.startswith("decoder.layers.") for src in mapped_src):
        report.notes.append(
            "unit decoder: EchoStream's frames cross-attend to T2U positions <= their own "
            "(StreamSpeech's training mask with k2=0, n2=1); StreamSpeech's offline inference "
            "attends to all positions"
        )
    if gcmvn is not None:
        from echostream.audio.features import GlobalCMVN

        stats = np.load(gcmvn)
        model.encoder.set_cmvn(
            GlobalCMVN(
                torch.from_numpy(stats["mean"]).float(), torch.from_numpy(stats["std"]).float()
            )
        )
        report.notes.append(f"CMVN statistics from {gcmvn}")
    else:
        report.notes.append("CMVN left at identity (pass gcmvn=StreamSpeech's gcmvn.npz)")
    report.notes.append(
        "tokenizers: EchoStream's spm ids are fairseq's with pad/unk/bos/eos at 0/1/2/3; train "
        "(or convert) spm models whose pieces 4.. are StreamSpeech's dictionary order"
    )
    return model.eval(), report


def _convert(
    kind: str, value: Tensor, cfg: EchoStreamConfig, want: torch.Size
) -> tuple[Tensor | None, str]:
    """Apply a rule's transform -> (tensor or None when impossible, note for the report)."""
    if kind == "copy":
        return value, ""
    if kind == "squeeze":  # Conv1d(kernel 1) (out, in, 1) -> Linear (out, in)
        return (value.squeeze(-1) if value.dim() == 3 and value.shape[-1] == 1 else None), (
            "Conv1d(k=1) -> Linear"
        )
    if kind == "causal_dw":  # (D, 1, k) centred -> causal taps, future taps dropped
        if value.dim() != 3 or value.shape != want:
            return None, ""
        k = value.shape[-1]
        out = torch.zeros_like(value)
        out[..., k - 1 - k // 2 :] = value[..., : k // 2 + 1]
        return out, "centred kernel -> causal: past+current taps moved, future taps dropped"
    rows = value.shape[0]
    if kind == "mt_vocab":
        if rows != cfg.vocab.tgt_vocab_size:
            return None, ""
        return value[mt_vocab_index(rows)], "rows gathered: fairseq ids -> EchoStream ids"
    if kind == "text_ctc":
        if rows != want[0]:
            return None, ""
        return value[text_ctc_index(rows)], "rows permuted: blank <s>(0) -> 0"
    if kind == "unit_vocab":
        index = unit_ctc_index(cfg.vocab.num_units, rows)
        if index is None:
            return None, ""
        return value[index], f"rows gathered: blank <- fairseq row {index[0]}, unit u <- 4+u"
    raise ValueError(f"unknown rule kind {kind!r}")


def _describe_permutations(report: ImportReport, cfg: EchoStreamConfig, state: dict) -> None:
    targets = report.mapped_targets
    if "mt_decoder.embed_tokens.weight" in targets:
        report.permutations.append(
            "MT decoder embed_tokens (tied output): EchoStream row <- fairseq row: pad 0<-1, "
            "unk 1<-3, BOS 2<-2 (</s>, fairseq's first decoder input), EOS 3<-2, i<-i for i>=4; "
            "fairseq <s> (0) dropped"
        )
    for name in ("asr_ctc.proj.weight", "st_ctc.head.proj.weight"):
        if name in targets:
            report.permutations.append(
                f"{name.rsplit('.', 1)[0]} (weight, bias): class <- fairseq row: blank 0<-0 "
                "(<s>, fairseq's CTC blank), unk 1<-3, BOS 2<-1 (<pad>), EOS 3<-2, i<-i"
            )
    if "unit_decoder.head.proj.weight" in targets:
        rows = state["decoder.output_projection.weight"].shape[0]
        index = unit_ctc_index(cfg.vocab.num_units, rows)
        blank = "<blank>" if index[0] != FS_BOS else "<s> (no <blank> in the dictionary)"
        report.permutations.append(
            f"unit CTC head: blank 0 <- fairseq row {index[0]} ({blank}), unit u (class u+1) <- "
            f"row 4+u; fairseq specials 0-3 dropped"
        )
