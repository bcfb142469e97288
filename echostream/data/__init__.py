"""Data: manifests (``manifest``), TTS back ends (``tts``), the synthetic corpus (``synth``),
CVSS-C preparation (``cvss``), discrete units (``units``), batching (``sampler``).

Submodules are imported explicitly (``from echostream.data.manifest import read_manifest``);
this package imports nothing, so TTS worker processes stay free of torch.
"""
