"""Evaluation: latency as SimulEval defines it (``latency``), BLEU / chrF / WER (``quality``),
English ASR for ASR-BLEU (``asr``, needs pocketsphinx)."""

from echostream.evaluation.latency import (
    InstanceLog,
    average_lagging,
    average_proportion,
    average_token_delay,
    compute_rtf,
    corpus_latency,
    differentiable_average_lagging,
    instance_latency,
    length_adaptive_average_lagging,
    read_instances_log,
    write_instances_log,
    write_simuleval_output_dir,
)
from echostream.evaluation.quality import (
    asr_bleu,
    bleu,
    chrf,
    edit_distance,
    quality_report,
    word_error_rate,
)

__all__ = [
    "InstanceLog",
    "asr_bleu",
    "average_lagging",
    "average_proportion",
    "average_token_delay",
    "bleu",
    "chrf",
    "compute_rtf",
    "corpus_latency",
    "differentiable_average_lagging",
    "edit_distance",
    "instance_latency",
    "length_adaptive_average_lagging",
    "quality_report",
    "read_instances_log",
    "word_error_rate",
    "write_instances_log",
    "write_simuleval_output_dir",
]
