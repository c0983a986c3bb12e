"""Caption decoding for the ECPA / SwinBERT multimodal transformer: greedy and beam search, with a prefix cache.

References: SwinBERT (Lin et al. 2022) decodes a masked-language model autoregressively: the input is
[CLS] w1 .. w_{t-1} [MASK] followed by the video (and here the prompt) tokens; the prediction at the
[MASK] slot becomes w_t; repeat until [SEP] or `max_length` tokens ([CLS] included). Beam search keeps
`beam_size` hypotheses per clip and ranks finished ones by sum(log p) / length**length_penalty.

Two ways to compute the logits at the [MASK] slot, both behind the same search:

* uncached (the reference): `model.encode(batch, tokens)` over the whole [caption; context] sequence
  with `model.attention_mask`, every step.
* prefix cache (`use_cache=True`, the model's own KV step: `ECPA.context_cache`, `ECPA.caption_step`):
  context tokens (video, prompts) never attend to caption tokens, so their per-layer keys/values are
  computed ONCE per batch of clips; each step runs only the newest real caption token and the new [MASK]
  slot through the layers against the cached caption and context keys/values (context keys/values shared by
  a clip's beams). The same context pass then gives the emotion (`ECPA.emotion_from_cache`: only
  [CLS] caption [SEP] and the class tokens run through the layers), not a second full forward.

Both give the same captions (tests/pipeline/test_decoding.py) in eval mode; `decode` switches the model
to eval for its duration and restores the previous mode.

Search details shared by both paths: [PAD], [CLS] and [MASK] are never generated (they are not words);
[UNK] and [SEP] are. With `words_only` (caption.vocabulary=train) only the word pieces of the training
captions (`tokenizer.caption_pieces`) and [SEP] can be generated, and the first token is a word-initial
piece (no '##' continuation, no [SEP]). Returned ids exclude [CLS] and [SEP].
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from pipeline.device import to_device
from pipeline.errors import UserError
from pipeline.train.model import CaptionKV


# ---------------------------------------------------------------------------------------------
# Logit computers: uncached (reference) and prefix-cached
# ---------------------------------------------------------------------------------------------


class _Uncached:
    """Full forward over [caption; context] each step (`model.encode`), beams as repeated batch rows."""

    def __init__(self, model, batch: dict, beam: int, max_length: int):
        self.model = model
        self.beam = beam
        self.batch = {
            k: (v.repeat_interleave(beam, dim=0) if isinstance(v, Tensor) and v.dim() > 0 else v) for k, v in batch.items()
        }

    def logits(self, tokens: Tensor, parent: Tensor | None) -> Tensor:
        """tokens (N, t+1) ending with [MASK] -> logits (N, V) at the [MASK] slot."""
        cap_h, _, _ = self.model.encode(self.batch, tokens)
        return self.model.mlm_logits(cap_h[:, -1])

    def emotion(self, batch: dict, captions: list[list[int]]) -> Tensor | None:
        """The reference: a full forward of [caption; context; class tokens] (`ECPA.emotion_for_captions`)."""
        return self.model.emotion_for_captions(batch, captions)


class _PrefixCache:
    """The model's prefix KV step (`ECPA.context_cache` once per batch, `ECPA.caption_step` per token); the
    same context pass then gives the emotion (`ECPA.emotion_from_cache`)."""

    def __init__(self, model, batch: dict, beam: int, max_length: int):
        self.model = model
        self.cache = model.context_cache(batch, max_length)
        self.kv = CaptionKV(len(model.encoder.layer), beam)

    def logits(self, tokens: Tensor, parent: Tensor | None) -> Tensor:
        """tokens (N, t+1) ending with [MASK], N = B*beam; parent (N,) the row each came from last step."""
        return self.model.caption_step(self.cache, self.kv, tokens, parent)

    def emotion(self, batch: dict, captions: list[list[int]]) -> Tensor | None:
        return self.model.emotion_from_cache(self.cache, captions)


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _banned(model, tokenizer, words_only: bool, V: int, device) -> tuple[Tensor, Tensor]:
    """(V,) bool masks of the ids never generated, and of those never generated first."""
    ban = torch.zeros(V, dtype=torch.bool, device=device)
    ban[[int(model.pad_id), int(model.cls_id), int(model.mask_id)]] = True   # not words
    if not words_only:
        return ban, ban
    if tokenizer is None or tokenizer.caption_pieces is None:
        raise UserError("caption.vocabulary=train needs the word pieces of the training captions "
                        "(caption_pieces.json beside the run's tokenizer.json); retrain, or set caption.vocabulary=all")
    keep = torch.zeros(V, dtype=torch.bool, device=device)
    keep[torch.tensor(tokenizer.caption_pieces, dtype=torch.long, device=device)] = True
    keep[int(model.sep_id)] = True
    ban = ban | ~keep
    first = ban.clone()
    first[int(model.sep_id)] = True                                          # a caption starts with a word
    cont = tokenizer.continuation_ids()
    if cont:
        first[torch.tensor(cont, dtype=torch.long, device=device)] = True   # ... and a word starts without '##'
    return ban, first


def _repeat_ban(tokens: Tensor, n: int, V: int) -> Tensor | None:
    """(N, V) bool: the tokens that would repeat an n-gram already generated in each row (`tokens` (N, t),
    [CLS] first); None when n < 1 (off: SwinBERT's decoding) or no row is long enough."""
    if n < 1 or tokens.shape[1] - 1 < n - 1:
        return None
    ban = torch.zeros(tokens.shape[0], V, dtype=torch.bool)
    for i, row in enumerate(tokens[:, 1:].tolist()):
        prefix = tuple(row[len(row) - n + 1:]) if n > 1 else ()
        for j in range(len(row) - n + 1):
            if tuple(row[j:j + n - 1]) == prefix:
                ban[i, row[j + n - 1]] = True
    return ban.to(tokens.device)


def _check_args(model, tokenizer, beam_size: int, max_length: int) -> None:
    if beam_size < 1:
        raise UserError(f"caption.beam_size must be >= 1, got {beam_size}")
    if max_length < 2:
        raise UserError(f"caption.max_length must be >= 2 ([CLS] plus one word), got {max_length}")
    max_pos = model.position_embeddings.num_embeddings
    if max_length > max_pos:
        raise UserError(f"caption.max_length={max_length} exceeds the model's {max_pos} caption positions")
    if tokenizer is not None:
        ours = (model.cls_id, model.sep_id, model.mask_id, model.pad_id)
        theirs = (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id)
        if ours != theirs:
            raise UserError(
                f"tokenizer special ids (cls, sep, mask, pad) = {theirs} differ from the model's {ours}: "
                "the run's tokenizer.json does not belong to this checkpoint"
            )


def _greedy(step, model, B: int, max_length: int, device, banned: tuple[Tensor, Tensor],
            no_repeat_ngram: int = 0) -> list[list[int]]:
    cls, sep, mask, pad = model.cls_id, model.sep_id, model.mask_id, model.pad_id
    tokens = torch.full((B, 1), cls, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    mask_col = torch.full((B, 1), mask, dtype=torch.long, device=device)
    for cur_len in range(1, max_length):                # the sequence holds at most max_length tokens
        logits = step.logits(torch.cat([tokens, mask_col], dim=1), None)
        logits = logits.masked_fill(banned[cur_len == 1], -math.inf)
        rep = _repeat_ban(tokens, no_repeat_ngram, logits.shape[-1])
        if rep is not None:
            logits = logits.masked_fill(rep, -math.inf)
        nxt = logits.argmax(dim=-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        finished |= nxt == sep
        if bool(finished.all()):
            break
    out = []
    for row in tokens[:, 1:].tolist():
        ids = []
        for t in row:
            if t in (sep, pad):
                break
            ids.append(t)
        out.append(ids)
    return out


def _beam_clip(top_s: list[float], top_i: list[int], b: int, K: int, V: int, rows: list[list[int]], sep: int,
               pad: int, scale: float, finished: list[tuple[float, list[int]]]) -> tuple[list, list, list, bool]:
    """One clip's step of beam search over its 2K best candidates (scores `top_s`, flat ids `top_i` into K x V):
    a candidate ending in [SEP] among the K best joins `finished` (score / `scale` = length**penalty); the
    first K others stay live. Returns (parent rows, tokens, scores) of the K live beams (dead ones padded with
    -inf) and whether the clip is done: K finished and no live beam can beat the worst of them."""
    parents, toks, scores = [], [], []
    for rank, (s, idx) in enumerate(zip(top_s, top_i)):
        j, tok = divmod(idx, V)
        if s == -math.inf:
            break
        if tok == sep:
            if rank < K:
                finished.append((s / scale, rows[b * K + j][1:]))
            continue
        parents.append(b * K + j)
        toks.append(tok)
        scores.append(s)
        if len(parents) == K:
            break
    while len(parents) < K:                               # fewer live candidates than beams: pad dead rows
        parents.append(b * K)
        toks.append(pad)
        scores.append(-math.inf)
    finished.sort(key=lambda h: -h[0])
    del finished[K:]
    best_live = max(scores)
    done = len(finished) >= K and (best_live == -math.inf or finished[-1][0] >= best_live / scale)
    return parents, toks, scores, done


def _beam_best(finished: list[list[tuple[float, list[int]]]], done: list[bool], tokens: Tensor, scores: Tensor,
               K: int, length_penalty: float, sep: int, pad: int) -> list[list[int]]:
    """The best hypothesis per clip; at max length the live beams count as finished (cut, no [SEP])."""
    rows = tokens.tolist()
    flat_scores = scores.view(-1).tolist()
    out = []
    for b, fin in enumerate(finished):
        hyps = list(fin)
        if not done[b]:
            for j in range(K):
                s = flat_scores[b * K + j]
                if s > -math.inf:
                    gen = rows[b * K + j][1:]
                    hyps.append((s / len(gen) ** length_penalty, gen))
        if not hyps:
            out.append([])
            continue
        best = max(hyps, key=lambda h: h[0])[1]
        out.append([t for t in best if t not in (sep, pad)])
    return out


def _beam(step, model, B: int, K: int, max_length: int, length_penalty: float, device,
          banned: tuple[Tensor, Tensor], no_repeat_ngram: int = 0) -> list[list[int]]:
    """Beam search; a finished hypothesis scores sum(log p) / (generated tokens, [SEP] included)**length_penalty.

    A clip stops when it holds K finished hypotheses and its best live beam cannot beat the worst of them
    at the current length (the usual heuristic); at max_length the live beams count as finished."""
    cls, sep, mask, pad = model.cls_id, model.sep_id, model.mask_id, model.pad_id
    N = B * K
    tokens = torch.full((N, 1), cls, dtype=torch.long, device=device)
    mask_col = torch.full((N, 1), mask, dtype=torch.long, device=device)
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0                                  # one live beam at the start: no duplicates
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    parent: Tensor | None = None
    for cur_len in range(1, max_length):                # cur_len = tokens generated after this step
        logits = step.logits(torch.cat([tokens, mask_col], dim=1), parent)
        logp = torch.log_softmax(logits.float(), dim=-1).masked_fill(banned[cur_len == 1], -math.inf)
        V = logp.shape[-1]
        rep = _repeat_ban(tokens, no_repeat_ngram, V)
        if rep is not None:
            logp = logp.masked_fill(rep, -math.inf)
        top_s, top_i = (scores.view(N, 1) + logp).view(B, K * V).topk(2 * K, dim=1)
        top_s, top_i, rows = top_s.tolist(), top_i.tolist(), tokens.tolist()
        new_parent, new_tok, new_score = [], [], []
        for b in range(B):
            if done[b]:
                p, t, s = [b * K + j for j in range(K)], [pad] * K, [-math.inf] * K
            else:
                p, t, s, done[b] = _beam_clip(top_s[b], top_i[b], b, K, V, rows, sep, pad,
                                              cur_len ** length_penalty, finished[b])
            new_parent += p
            new_tok += t
            new_score += s
        parent = torch.tensor(new_parent, dtype=torch.long, device=device)
        tokens = torch.cat([tokens.index_select(0, parent), torch.tensor(new_tok, device=device)[:, None]], dim=1)
        scores = torch.tensor(new_score, device=device).view(B, K)
        if all(done):
            break
    return _beam_best(finished, done, tokens, scores, K, length_penalty, sep, pad)


def decode_with_emotion(
    model,
    batch: dict,
    tokenizer=None,
    *,
    beam_size: int = 1,
    max_length: int = 20,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    with_emotion: bool = True,
    words_only: bool = False,
    no_repeat_ngram: int = 0,
) -> tuple[list[list[int]], Tensor | None]:
    """Captions (token ids without [CLS]/[SEP], one list per clip) and emotion logits (B, E) (None when the
    model has no emotion head). `batch` holds the cached arrays (`vid`, `er`, `au_feats`, `au_probs`);
    tensors are moved to the model's device. `max_length` counts [CLS]; `beam_size` 1 is greedy;
    `words_only`: emit only `tokenizer.caption_pieces` and [SEP], never a '##' piece first;
    `no_repeat_ngram` n > 0: never generate an n-gram of word pieces twice in one caption (0: SwinBERT).
    The emotion is read after the search, from the class tokens over the generated caption, reusing the
    search's context pass (`ECPA.emotion_from_cache`; `use_cache=False`: a full forward,
    `ECPA.emotion_for_captions`; from the context alone in the visual-only variant)."""
    _check_args(model, tokenizer, beam_size, max_length)
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    B = batch["vid"].shape[0]
    banned = _banned(model, tokenizer, words_only, model.vocab_size, device)
    with _eval_mode(model):
        step = (_PrefixCache if use_cache else _Uncached)(model, batch, beam_size, max_length)
        if beam_size == 1:
            ids = _greedy(step, model, B, max_length, device, banned, no_repeat_ngram)
        else:
            ids = _beam(step, model, B, beam_size, max_length, length_penalty, device, banned, no_repeat_ngram)
        emotion = step.emotion(batch, ids) if with_emotion else None
    return ids, (None if emotion is None else emotion.float())


def decode(
    model,
    batch: dict,
    tokenizer=None,
    *,
    beam_size: int = 1,
    max_length: int = 20,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    words_only: bool = False,
) -> list[list[int]]:
    """Token ids of one caption per clip (without [CLS]/[SEP]); see `decode_with_emotion`."""
    return decode_with_emotion(
        model, batch, tokenizer, beam_size=beam_size, max_length=max_length,
        length_penalty=length_penalty, use_cache=use_cache, with_emotion=False, words_only=words_only,
    )[0]


def step_logits(model, batch: dict, tokens: Tensor, *, use_cache: bool) -> list[Tensor]:
    """Logits at the [MASK] slot for every prefix of `tokens` (B, T) fed step by step (teacher forcing):
    element t is (B, V) for input tokens[:, :t+1] + [MASK]. For parity tests of the two paths."""
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    tokens = tokens.to(device)
    B, T = tokens.shape
    out = []
    with _eval_mode(model):
        step = (_PrefixCache if use_cache else _Uncached)(model, batch, 1, T + 1)
        mask_col = torch.full((B, 1), model.mask_id, dtype=torch.long, device=device)
        for t in range(1, T + 1):
            out.append(step.logits(torch.cat([tokens[:, :t], mask_col], dim=1), None))
    return out
