"""MT decoder: teacher-forced forward vs token-by-token decoding with growing encoder memory,
padding, tied embeddings, state stacking, greedy and beam search."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from echostream.config import TransformerDecoderConfig
from echostream.models.mt_decoder import BOS_ID, EOS_ID, PAD_ID, MTDecoder, MTDecoderState
from echostream.state import StreamState

D_ENC, VOCAB = 24, 20
CFG = TransformerDecoderConfig(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_decoder(layers: int = 2) -> MTDecoder:
    torch.manual_seed(0)
    return MTDecoder(dataclasses.replace(CFG, num_layers=layers), VOCAB, D_ENC).eval()


def frames(enc: torch.Tensor, start: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    out = enc.new_zeros(enc.shape[0], int(n.max()), enc.shape[2])
    for b in range(enc.shape[0]):
        out[b, : n[b]] = enc[b, start[b] : start[b] + n[b]]
    return out


def decode_incrementally(model, tokens, tok_len, enc, enc_len, seed):
    """Feed tokens one at a time (streams past their length wait, with tok_len 0), extending
    the memory by a random number of frames (0..3, ragged) before every token. Returns logits,
    hidden (B, U, ...) and the enc_visible that the parallel forward must be given."""
    gen = torch.Generator().manual_seed(seed)
    batch, length = tokens.shape
    state = model.init_state(batch)
    seen = torch.zeros(batch, dtype=torch.long)
    visible = torch.zeros(batch, length, dtype=torch.long)
    logits = torch.zeros(batch, length, VOCAB)
    hidden = torch.zeros(batch, length, model.d_model)
    for u in range(length):
        n = torch.minimum(torch.randint(0, 4, (batch,), generator=gen), enc_len - seen)
        state = model.extend_memory(frames(enc, seen, n), n, state)
        seen = seen + n
        visible[:, u] = seen
        active = (u < tok_len).long()
        out, h, state = model.stream(tokens[:, u : u + 1], active, state)
        logits[:, u], hidden[:, u] = out[:, 0], h[:, 0]
    return logits, hidden, visible, state


def test_token_by_token_with_growing_memory_equals_teacher_forced():
    model = make_decoder()
    torch.manual_seed(1)
    enc = torch.randn(3, 16, D_ENC)
    enc_len = torch.tensor([16, 10, 3])
    tokens = torch.randint(3, VOCAB, (3, 8))
    tokens[:, 0] = BOS_ID
    tok_len = torch.tensor([8, 5, 2])
    logits, hidden, visible, state = decode_incrementally(model, tokens, tok_len, enc, enc_len, 0)
    ref_logits, ref_hidden = model(tokens, tok_len, enc, enc_len, enc_visible=visible)
    assert ref_logits.shape == (3, 8, VOCAB) and ref_hidden.shape == (3, 8, 32)
    for b, n in enumerate(tok_len.tolist()):
        torch.testing.assert_close(logits[b, :n], ref_logits[b, :n], atol=1e-5, rtol=0)
        torch.testing.assert_close(hidden[b, :n], ref_hidden[b, :n], atol=1e-5, rtol=0)
    assert torch.equal(state.num_tokens, tok_len)
    assert torch.equal(state.mem_len, visible[:, -1])
    # the memory really was partial for some tokens, and that mattered
    full_logits, _ = model(tokens, tok_len, enc, enc_len)
    assert (visible < enc_len.unsqueeze(1)).any()
    assert not torch.allclose(full_logits[0, :3], ref_logits[0, :3])


def test_token_with_no_memory_yet_is_finite_and_matches():
    model = make_decoder()
    enc = torch.randn(1, 4, D_ENC)
    tokens = torch.tensor([[BOS_ID, 5]])
    state = model.init_state(1)
    first, _, state = model.step(tokens[:, 0], state)  # no frame yet
    state = model.extend_memory(enc, torch.tensor([4]), state)
    second, _, state = model.step(tokens[:, 1], state)
    ref, _ = model(
        tokens, torch.tensor([2]), enc, torch.tensor([4]), enc_visible=torch.tensor([[0, 4]])
    )
    assert torch.isfinite(first).all()
    torch.testing.assert_close(torch.stack([first[0], second[0]]), ref[0], atol=1e-5, rtol=0)


def test_enc_visible_limits_what_each_position_sees():
    model = make_decoder()
    enc = torch.randn(1, 10, D_ENC)
    enc_len = torch.tensor([10])
    tokens = torch.tensor([[BOS_ID, 4, 5, 6]])
    tok_len = torch.tensor([4])
    visible = torch.tensor([[2, 5, 5, 10]])
    ref, _ = model(tokens, tok_len, enc, enc_len, visible)
    changed = enc.clone()
    changed[0, 5:] += torch.randn(5, D_ENC)  # frames 5..9: only position 3 sees them
    out, _ = model(tokens, tok_len, changed, enc_len, visible)
    assert torch.equal(out[0, :3], ref[0, :3])
    assert not torch.allclose(out[0, 3], ref[0, 3])
    # enc_visible beyond enc_len is clipped; None means everything
    everything, _ = model(tokens, tok_len, enc, enc_len)
    clipped, _ = model(tokens, tok_len, enc, enc_len, torch.full((1, 4), 99))
    torch.testing.assert_close(everything, clipped, atol=0, rtol=0)


def test_padding_never_leaks():
    model = make_decoder()
    enc = torch.randn(3, 9, D_ENC)
    enc_len = torch.tensor([9, 4, 1])
    tokens = torch.randint(3, VOCAB, (3, 6))
    tok_len = torch.tensor([6, 3, 1])
    visible = torch.tensor([[1, 2, 3, 9, 9, 9], [1, 4, 4, 4, 4, 4], [1, 1, 1, 1, 1, 1]])
    ref, ref_h = model(tokens, tok_len, enc, enc_len, visible)
    enc2, tokens2, visible2 = enc.clone(), tokens.clone(), visible.clone()
    for b in range(3):
        enc2[b, enc_len[b] :] = float("nan")
        tokens2[b, tok_len[b] :] = -7  # not even a valid id
        visible2[b, tok_len[b] :] = 0
    out, out_h = model(tokens2, tok_len, enc2, enc_len, visible2)
    for b, n in enumerate(tok_len.tolist()):
        assert torch.equal(out[b, :n], ref[b, :n]) and torch.equal(out_h[b, :n], ref_h[b, :n])
    # incremental: padded frames of a memory chunk and padded tokens change nothing either
    state = model.extend_memory(enc, enc_len, model.init_state(3))
    state2 = model.extend_memory(enc2, enc_len, model.init_state(3))
    a, _, _ = model.stream(tokens, tok_len, state)
    c, _, _ = model.stream(tokens2, tok_len, state2)
    for b, n in enumerate(tok_len.tolist()):
        assert torch.equal(a[b, :n], c[b, :n])


def test_embeddings_are_tied_and_scaled():
    model = make_decoder(layers=1)
    names = [n for n, _ in model.named_parameters()]
    assert "embed_tokens.weight" in names and not any("output" in n for n in names)
    enc = torch.randn(1, 3, D_ENC)
    logits, hidden = model(torch.tensor([[BOS_ID, 7]]), torch.tensor([2]), enc, torch.tensor([3]))
    torch.testing.assert_close(logits, hidden @ model.embed_tokens.weight.T)
    assert torch.equal(model.embed_tokens.weight[PAD_ID], torch.zeros(32))


def test_states_of_streams_started_apart_stack_and_select():
    model = make_decoder()
    enc = torch.randn(2, 12, D_ENC)
    tokens = torch.randint(3, VOCAB, (2, 7))
    # stream 0: 5 tokens and 8 frames so far; stream 1: 2 tokens and 3 frames
    s0 = model.extend_memory(enc[:1, :8], torch.tensor([8]), model.init_state(1))
    s0 = model.stream(tokens[:1, :5], torch.tensor([5]), s0)[2]
    s1 = model.extend_memory(enc[1:, :3], torch.tensor([3]), model.init_state(1))
    s1 = model.stream(tokens[1:, :2], torch.tensor([2]), s1)[2]
    both = MTDecoderState.stack([s1, s0])
    assert both.self_k.shape[3] == 5 and both.num_tokens.tolist() == [2, 5]
    both = model.extend_memory(torch.stack([enc[1, 3:5], enc[0, 8:10]]), torch.tensor([2, 1]), both)
    logits, _, both = model.stream(
        torch.stack([tokens[1, 2:4], tokens[0, 5:7]]), torch.tensor([2, 2]), both
    )
    # what each token saw: stream 1 [3, 3, 5, 5] frames, stream 0 [8] * 5 + [9, 9]
    for row, (b, visible) in enumerate(((1, [3, 3, 5, 5]), (0, [8] * 5 + [9, 9]))):
        n_tok = int(both.num_tokens[row])
        ref, _ = model(
            tokens[b : b + 1, :n_tok],
            torch.tensor([n_tok]),
            enc[b : b + 1],
            torch.tensor([12]),
            torch.tensor([visible]),
        )
        torch.testing.assert_close(logits[row], ref[0, -2:], atol=1e-5, rtol=0)
        assert int(both.mem_len[row]) == visible[-1]
    picked = both.select([1])
    assert picked.batch_size == 1 and picked.num_tokens.tolist() == [7]


# --------------------------------------------------------------------------- search


def overfit(model: MTDecoder, enc, enc_len, targets: list[list[int]], steps: int = 150):
    rows = [[BOS_ID, *t] for t in targets]
    width = max(len(r) for r in rows)
    prev = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])
    gold = torch.tensor([t + [EOS_ID] + [-100] * (width - len(t) - 1) for t in targets])
    tok_len = torch.tensor([len(r) for r in rows])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logits, _ = model(prev, tok_len, enc, enc_len)
        loss = F.cross_entropy(logits.flatten(0, 1), gold.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def test_greedy_and_beam_recover_overfitted_targets():
    model = make_decoder(layers=1)
    torch.manual_seed(2)
    enc = torch.randn(2, 6, D_ENC)
    enc_len = torch.tensor([6, 4])
    targets = [[5, 9, 9, 13, 4], [17, 6, 11]]
    assert overfit(model, enc, enc_len, targets) < 0.05
    tokens, lengths = model.greedy_decode(enc, enc_len, max_len_a=0.0, max_len_b=8)
    assert [tokens[b, : lengths[b]].tolist() for b in range(2)] == targets
    assert tokens[1, 3:].eq(PAD_ID).all()
    best, scores = model.beam_search(enc, enc_len, beam=4, max_len_a=0.0, max_len_b=8)
    assert best == targets
    assert all(-0.1 < s <= 0 for s in scores)
    # a budget of 2 tokens cuts the hypothesis
    tokens, lengths = model.greedy_decode(enc, enc_len, max_len_a=0.0, max_len_b=2)
    assert lengths.tolist() == [2, 2] and tokens.tolist() == [t[:2] for t in targets]
    best, _ = model.beam_search(enc[:1], enc_len[:1], beam=2, max_len_a=0.0, max_len_b=2)
    assert best == [targets[0][:2]]


@dataclasses.dataclass(frozen=True)
class PrefixState(StreamState):
    prefix: torch.Tensor  # (B, T) tokens fed so far


class TableDecoder(MTDecoder):
    """A decoder whose next-token distribution is a table over prefixes (tests search only)."""

    # prefix after BOS -> {token: prob}; the other tokens share what is left
    TABLE: ClassVar[dict[tuple[int, ...], dict[int, float]]] = {
        (): {5: 0.55, 6: 0.45},
        (5,): {7: 0.36, 8: 0.34, EOS_ID: 0.3},
        (6,): {EOS_ID: 0.95},
        (5, 7): {EOS_ID: 0.9},
        (5, 8): {EOS_ID: 0.9},
    }

    def init_state(self, batch_size):
        return PrefixState(torch.zeros(batch_size, 0, dtype=torch.long))

    def extend_memory(self, enc_new, enc_new_len, state):
        return state

    def step(self, tokens, state):
        prefix = torch.cat([state.prefix, tokens.unsqueeze(1)], 1)
        logits = torch.full((tokens.shape[0], VOCAB), -1e9)
        for b, row in enumerate(prefix.tolist()):
            probs = self.TABLE.get(tuple(row[1:]), {EOS_ID: 1.0})
            rest = (1.0 - sum(probs.values())) / (VOCAB - 2 - len(probs))
            for t in range(VOCAB):
                if t not in (BOS_ID, PAD_ID):
                    logits[b, t] = torch.tensor(probs.get(t, max(rest, 1e-12))).log()
        return logits, torch.zeros(tokens.shape[0], 32), PrefixState(prefix)


def test_beam_search_beats_greedy_on_a_garden_path():
    model = TableDecoder(CFG, VOCAB, D_ENC)
    enc, enc_len = torch.zeros(1, 4, D_ENC), torch.tensor([4])
    tokens, lengths = model.greedy_decode(enc, enc_len, max_len_a=0.0, max_len_b=5)
    assert tokens[0, : lengths[0]].tolist() == [5, 7]  # 0.55 · 0.36 · 0.9 = 0.178
    best, scores = model.beam_search(
        enc, enc_len, beam=4, max_len_a=0.0, max_len_b=5, len_penalty=0.0
    )
    assert best == [[6]]  # 0.45 · 0.95 = 0.43
    assert scores[0] == pytest.approx(float(torch.tensor(0.45 * 0.95).log()), abs=1e-5)
    # with beam 1 the search is greedy
    assert model.beam_search(enc, enc_len, beam=1, max_len_a=0.0, max_len_b=5, len_penalty=0.0)[
        0
    ] == [[5, 7]]
    # length normalisation: score / length (EOS counted)
    _, scores = model.beam_search(enc, enc_len, beam=4, max_len_a=0.0, max_len_b=5)
    assert scores[0] == pytest.approx(float(torch.tensor(0.45 * 0.95).log()) / 2, abs=1e-5)
