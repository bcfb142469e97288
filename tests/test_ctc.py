"""CTC head, greedy CTC (whole and incremental) and the block-causal ST CTC decoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from echostream.config import CTCDecoderConfig
from echostream.models.ctc import (
    BLANK,
    NO_TOKEN,
    CTCGreedyState,
    CTCHead,
    STCTCDecoder,
    STCTCState,
    greedy_ctc,
    greedy_ctc_stream,
    ids_to_lists,
)
from echostream.text.tokenizer import PAD_ID

D_ENC, VOCAB = 32, 20


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def one_hot_logits(classes: list[list[int]], num_classes: int = VOCAB) -> torch.Tensor:
    width = max(len(c) for c in classes)
    padded = [c + [BLANK] * (width - len(c)) for c in classes]
    return F.one_hot(torch.tensor(padded), num_classes).float() * 5.0


def split_ragged(x: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator, most: int = 5):
    """Yield (chunk (B, N, ...), chunk_len (B,), is_last (B,)) with random ragged sizes incl. 0."""
    pos = torch.zeros_like(lengths)
    while True:
        n = torch.minimum(torch.randint(0, most + 1, lengths.shape, generator=gen), lengths - pos)
        chunk = x.new_zeros(x.shape[0], int(n.max()), *x.shape[2:])
        for b in range(x.shape[0]):
            chunk[b, : n[b]] = x[b, pos[b] : pos[b] + n[b]]
        pos = pos + n
        yield chunk, n, pos == lengths
        if bool((pos == lengths).all()):
            return


def make_decoder(block: int, left: int, layers: int = 2) -> STCTCDecoder:
    cfg = CTCDecoderConfig(
        num_layers=layers, num_heads=4, ffn_dim=64, dropout=0.0, left_context_length=left
    )
    return STCTCDecoder(D_ENC, cfg, VOCAB, block_size=block).eval()


# --------------------------------------------------------------------------- head and greedy


def test_text_head_uses_ids_as_classes_with_pad_as_blank():
    torch.manual_seed(0)
    head = CTCHead(D_ENC, VOCAB)
    logits = head(torch.randn(2, 7, D_ENC))
    assert logits.shape == (2, 7, VOCAB) and head.num_classes == VOCAB and BLANK == PAD_ID
    lengths = torch.tensor([7, 5])
    targets = torch.tensor([[5, 19, 4], [4, 4, 99]])  # 99: padding, ignored
    target_len = torch.tensor([3, 2])
    got = head.loss(logits, lengths, targets, target_len)
    ref = F.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1),
        torch.tensor([[5, 19, 4], [4, 4, 0]]),
        lengths,
        target_len,
        blank=0,
        reduction="sum",
    )
    torch.testing.assert_close(got, ref)
    empty = head.loss(logits, lengths, targets[:, :0], torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(empty) and empty > 0
    with pytest.raises(ValueError, match="blank"):
        head.loss(logits, lengths, torch.tensor([[5, 0], [4, 4]]), torch.tensor([2, 2]))


def test_unit_head_prepends_the_blank():
    torch.manual_seed(0)
    head = CTCHead(D_ENC, 10, prepend_blank=True, bias=False)
    logits = head(torch.randn(1, 6, D_ENC))
    assert logits.shape == (1, 6, 11) and head.proj.bias is None
    got = head.loss(logits, torch.tensor([6]), torch.tensor([[0, 9]]), torch.tensor([2]))
    ref = F.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1),
        torch.tensor([[1, 10]]),
        torch.tensor([6]),
        torch.tensor([2]),
        reduction="sum",
    )
    torch.testing.assert_close(got, ref)
    classes = one_hot_logits([[0, 1, 1, 0, 10, 0]], num_classes=11)
    assert ids_to_lists(*greedy_ctc(classes, torch.tensor([6]), id_offset=1)) == [[0, 9]]


def test_greedy_ctc_golden():
    # text: class = id, class 0 (= <pad>) is the blank
    logits = one_hot_logits([[0, 3, 3, 0, 3, 5, 5, 0, 1], [2, 2, 2, 7], []])
    ids, counts = greedy_ctc(logits, torch.tensor([9, 4, 0]))
    assert ids_to_lists(ids, counts) == [[3, 3, 5, 1], [2, 7], []]
    assert ids.shape == (3, 4) and ids[1, 2:].eq(NO_TOKEN).all()
    # frames past the length never count
    ids, counts = greedy_ctc(logits, torch.tensor([5, 1, 0]))
    assert ids_to_lists(ids, counts) == [[3, 3], [2], []]
    # suppressed ids are never chosen: the runner-up wins; the blank cannot be suppressed
    logits = torch.zeros(1, 2, VOCAB)
    logits[0, :, 3] = 3.0
    logits[0, :, 5] = 2.0
    assert ids_to_lists(*greedy_ctc(logits, torch.tensor([2]))) == [[3]]
    assert ids_to_lists(*greedy_ctc(logits, torch.tensor([2]), suppress=[3])) == [[5]]
    with pytest.raises(ValueError, match="blank"):
        greedy_ctc(logits, torch.tensor([2]), suppress=[PAD_ID])


@pytest.mark.parametrize("id_offset", [0, 1])
def test_greedy_ctc_stream_equals_whole_sequence(id_offset):
    gen = torch.Generator().manual_seed(id_offset)
    # few classes so that repeats and blanks cross chunk boundaries often
    classes = torch.randint(0, 4, (3, 40), generator=gen)
    logits = F.one_hot(classes, VOCAB).float() + 0.1 * torch.rand(3, 40, VOCAB, generator=gen)
    lengths = torch.tensor([40, 23, 1])
    whole = ids_to_lists(*greedy_ctc(logits, lengths, id_offset))
    state = CTCGreedyState.initial(3)
    got: list[list[int]] = [[], [], []]
    for chunk, n, _ in split_ragged(logits, lengths, gen, most=3):
        ids, counts, state = greedy_ctc_stream(chunk, n, state, id_offset)
        for b, new in enumerate(ids_to_lists(ids, counts)):
            got[b] += new
    assert got == whole and sum(map(len, whole)) > 10
    assert ids_to_lists(state.tokens, state.num_tokens) == whole


def test_greedy_ctc_stream_merges_a_repeat_split_across_calls():
    # a repeat split over two calls is emitted once; a blank between them separates them
    state = CTCGreedyState.initial(1)
    for part in ([0, 3], [3], [], [0, 3]):
        _, _, state = greedy_ctc_stream(
            one_hot_logits([part]) if part else torch.zeros(1, 0, VOCAB),
            torch.tensor([len(part)]),
            state,
        )
    assert ids_to_lists(state.tokens, state.num_tokens) == [[3, 3]]


# --------------------------------------------------------------------------- ST CTC decoder


@pytest.mark.parametrize(("block", "left", "layers"), [(1, 0, 2), (4, 5, 2), (3, 32, 2), (4, 8, 0)])
def test_st_ctc_stream_equals_forward(block, left, layers):
    torch.manual_seed(0)
    model = make_decoder(block, left, layers)
    enc = torch.randn(3, 26, D_ENC)
    enc_len = torch.tensor([26, 17, 6])
    ref, ref_len = model(enc, enc_len)
    assert ref.shape == (3, 26, VOCAB) and torch.equal(ref_len, enc_len)
    state = model.init_state(3)
    outs: list[list[torch.Tensor]] = [[], [], []]
    gen = torch.Generator().manual_seed(1)
    for chunk, n, last in split_ragged(enc, enc_len, gen, most=6):
        logits, out_len, state = model.stream(chunk, n, state, final=last)
        assert isinstance(state, STCTCState)
        assert state.pending.shape[1] < block and bool((state.pending_len < block).all())
        assert state.cache_k.shape == (3, layers, 4, left, D_ENC // 4)  # fixed size
        for b in range(3):
            outs[b].append(logits[b, : out_len[b]])
    for b in range(3):
        got = torch.cat(outs[b])
        assert got.shape[0] == enc_len[b]
        torch.testing.assert_close(got, ref[b, : enc_len[b]], atol=1e-5, rtol=0)
    assert torch.equal(state.num_frames, enc_len)


def test_st_ctc_holds_back_incomplete_block_until_final():
    torch.manual_seed(0)
    model = make_decoder(block=4, left=4)
    enc = torch.randn(1, 6, D_ENC)
    state = model.init_state(1)
    _, n, state = model.stream(enc[:, :3], torch.tensor([3]), state)
    assert n.tolist() == [0] and state.pending_len.tolist() == [3]
    _, n, state = model.stream(enc[:, 3:6], torch.tensor([3]), state)
    assert n.tolist() == [4] and state.pending_len.tolist() == [2]
    logits, n, state = model.stream(enc[:, :0], torch.tensor([0]), state, final=True)
    assert n.tolist() == [2] and state.pending_len.tolist() == [0]
    torch.testing.assert_close(logits[0], model(enc, torch.tensor([6]))[0][0, 4:6])


def test_st_ctc_sees_own_block_and_bounded_left_context_only():
    # one layer, block 4, left context 3: block b sees frames [4b - 3, 4b + 4)
    torch.manual_seed(0)
    model = make_decoder(block=4, left=3, layers=1)
    enc = torch.randn(1, 16, D_ENC)
    lens = torch.tensor([16])
    ref = model(enc, lens)[0]
    for frame, changed_blocks in ((4, {1}), (5, {1, 2}), (7, {1, 2}), (8, {2}), (9, {2, 3})):
        x = enc.clone()
        x[0, frame] += torch.randn(D_ENC)  # (not a constant: LayerNorm would cancel it)
        out = model(x, lens)[0]
        for blk in range(4):
            same = torch.equal(out[0, 4 * blk : 4 * blk + 4], ref[0, 4 * blk : 4 * blk + 4])
            assert same == (blk not in changed_blocks), (frame, blk)


def test_st_ctc_padding_never_leaks():
    torch.manual_seed(0)
    model = make_decoder(block=3, left=4)
    enc = torch.randn(3, 11, D_ENC)
    lens = torch.tensor([11, 7, 2])
    ref = model(enc, lens)[0]
    noisy = enc.clone()
    for b, n in enumerate(lens.tolist()):
        noisy[b, n:] = float("nan") if b == 1 else 1e4
    out = model(noisy, lens)[0]
    for b, n in enumerate(lens.tolist()):
        assert torch.equal(out[b, :n], ref[b, :n])
    # the same in streaming: garbage in the padded part of a chunk changes nothing
    state = model.init_state(3)
    a = model.stream(enc, lens, state, final=True)[0]
    c = model.stream(noisy, lens, state, final=True)[0]
    for b, n in enumerate(lens.tolist()):
        assert torch.equal(a[b, :n], c[b, :n])


def test_st_ctc_states_of_streams_started_apart_stack():
    torch.manual_seed(0)
    model = make_decoder(block=2, left=5)
    x = torch.randn(2, 13, D_ENC)
    # stream 0 has seen 9 frames, stream 1 has seen 3 (one pending)
    s0 = model.stream(x[:1, :9], torch.tensor([9]), model.init_state(1))[2]
    s1 = model.stream(x[1:, :3], torch.tensor([3]), model.init_state(1))[2]
    both = STCTCState.stack([s0, s1])
    logits, n, _ = model.stream(torch.stack([x[0, 9:13], x[1, 3:7]]), torch.tensor([4, 4]), both)
    for b, (start, state) in enumerate(((9, s0), (3, s1))):
        alone, m, _ = model.stream(x[b : b + 1, start : start + 4], torch.tensor([4]), state)
        assert int(n[b]) == int(m[0])
        torch.testing.assert_close(logits[b, : n[b]], alone[0, : m[0]], atol=1e-5, rtol=0)
    assert [s.batch_size for s in both.unstack()] == [1, 1]


def test_st_ctc_zero_layers_is_a_plain_head_and_width_checked():
    model = make_decoder(block=4, left=0, layers=0)
    enc = torch.randn(2, 5, D_ENC)
    torch.testing.assert_close(model(enc, torch.tensor([5, 5]))[0], model.head(enc))
    with pytest.raises(ValueError, match="num_heads"):
        STCTCDecoder(30, CTCDecoderConfig(num_heads=4), VOCAB)
