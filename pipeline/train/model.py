"""ECPA's stage-two model: SwinBERT's multimodal transformer plus VEP/TEP prompts and the ER head.

References: SwinBERT (Lin et al. 2022, "End-to-End Transformers with Sparse Attention for Video
Captioning": BERT encoder over [caption; video tokens], seq2seq mask, learnable sparse video mask);
ECPA (Wang, Liu et al., "Emotion-oriented Cross-modal Prompting and Alignment"): visual emotion
prompts (ER prompt, top-K AU prompts), textual emotion prompts ([CLASS-k] tokens, word masking).

Sequence (length Lt + Lc + Ls):

    [ caption tokens (Lt) | video tokens (V) | ER prompt (1) | AU prompts (K) | class tokens (E) ]
      <---- caption ---->   <------------- context (Lc) ------------------->   <- sentence (Ls) ->

Attention (SwinBERT's seq2seq rule, additive mask from `attention_mask`):
caption -> caption lower-triangular, caption -> context full, context -> context full (with the learnable
sparse mask on video -> video), context -> caption never. So the context's hidden states at every layer
do not depend on the caption: a decoder may compute its per-layer keys/values once per clip.

The [CLASS-k] tokens (TEP, `model.sentence_prompt`):

* `caption` (default; ECPA Eq. 6, P_S^T = F_T (+) [CLASS-k]): the class tokens are joined to the caption:
  they sit after the context and attend to the (non-pad) caption tokens, the context and each other; no
  caption or context token attends to them, so generation stays causal and the context stays
  prefix-cacheable. L_ER (Eq. 8) reads Concat(P_ER^V state, P_S^T state); at inference the emotion is read
  from the class tokens over the *generated* caption (`emotion_for_captions`).
* `context` (the visual-only variant, kept as an ablation): the class tokens are part of the context and
  never see the caption, so L_ER is a purely visual classifier.

The encoder is `transformers.BertEncoder` (standard post-LN BertLayer, sdpa attention, GELU; CPU training with
dropout or the learned mask uses `pipeline.train.attention`'s core, the same maths), fed an
additive mask of shape (B, 1, L, L) built in the compute dtype (bf16 under bf16 autocast, so a fused
attention kernel can take it). Non-standard parts, all outside the encoder layers:

* Video tokens are projected Linear(C -> video_proj) -> Linear(video_proj -> H) and get no position or
  token-type embedding and no LayerNorm (as SwinBERT's img_embedding); prompts are added likewise.
* The learnable sparse attention (SwinBERT) is a V x V logit matrix W, initialised N(0, 1) (SwinBERT's
  nn.Embedding). `model.sparse_mask`:
  - `swinbert` (default): the soft mask M = I + (1 - I) * sigmoid(W) is written into the video -> video
    block of the 0/1 attention mask, which becomes the additive (1 - m) * (-1e4); the L1 regulariser is
    mean |(1 - I) * sigmoid(W)| over all V*V entries.
  - `logsigmoid` (this project's earlier form): additive bias log(sigmoid(W)) on video -> video scores
    (probabilities multiplied by sigmoid(W), then renormalised), no forced diagonal, L1 = mean sigmoid(W).
* Top-K AU prompts are chosen among the distinct ANFL nodes: OpenGraphAU's 14 left/right AUs reuse their
  main AU's node feature, so K is taken over the 27 main AUs ranked by clip confidence (all AUs when the
  store has no L/R AUs); the L/R confidences stay in the store.
* With `use_word_mask` (TEP word-level masking) the word embedding of every [MASK] token is set to zero
  (in training and decoding alike: `embed_caption` does it), before position/token-type embedding and LN.
* The MLM head is BERT's (dense -> GELU -> LayerNorm -> decoder tied to the word embeddings + bias).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from pipeline.config import ModelConfig
from pipeline.train.attention import ATTENTION_NAME, DROPOUT_RNGS, Dropout16

SPARSE_MASKS = ("swinbert", "logsigmoid")
SENTENCE_PROMPTS = ("caption", "context")
EMOTION_READOUTS = ("head", "similarity")
SIMILARITY_TEMPERATURE = 0.1
"""Temperature of the cosine-similarity emotion readout (ER prompt vs each class token state)."""
OPENGRAPHAU_MAIN, OPENGRAPHAU_ALL = 27, 41

NEG = -1e4
"""Additive mask value for a forbidden key (finite, so bf16/fp16 stay NaN-free)."""


def batch_arrays(batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four cached arrays a batch carries: vid (B, V, C), er (B, F, 2048), au_feats (B, Fa, A, 512),
    au_probs (B, Fa, A)."""
    return batch["vid"], batch["er"], batch["au_feats"], batch["au_probs"]


class ECPA(nn.Module):
    """The multimodal transformer with ECPA's prompts.

    Built from the model config plus the shapes of the store and the tokenizer (see `build_model`)."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        vocab_size: int,
        cls_id: int,
        sep_id: int,
        mask_id: int,
        pad_id: int,
        num_emotions: int,
        video_tokens: int,
        video_channels: int,
        er_dim: int = 2048,
        au_dim: int = 512,
        num_aus: int = 41,
        emotion_readout: str = "head",
    ):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.cls_id, self.sep_id, self.mask_id, self.pad_id = vocab_size, cls_id, sep_id, mask_id, pad_id
        self.num_emotions = num_emotions
        self.video_tokens = video_tokens
        self.num_aus = num_aus
        if cfg.sparse_mask not in SPARSE_MASKS:
            raise ValueError(f"model.sparse_mask={cfg.sparse_mask!r}: one of {', '.join(SPARSE_MASKS)}")
        if cfg.sentence_prompt not in SENTENCE_PROMPTS:
            raise ValueError(f"model.sentence_prompt={cfg.sentence_prompt!r}: one of {', '.join(SENTENCE_PROMPTS)}")
        if cfg.dropout_rng not in DROPOUT_RNGS:
            raise ValueError(f"model.dropout_rng={cfg.dropout_rng!r}: one of {', '.join(DROPOUT_RNGS)}")
        if emotion_readout not in EMOTION_READOUTS:
            raise ValueError(f"emotion_readout={emotion_readout!r}: one of {', '.join(EMOTION_READOUTS)}")
        self.emotion_readout = emotion_readout
        # OpenGraphAU's L/R AUs repeat their main AU's node: top-K ranks the distinct nodes only
        self.distinct_aus = OPENGRAPHAU_MAIN if num_aus == OPENGRAPHAU_ALL else num_aus
        if cfg.use_au_prompts and not 1 <= cfg.top_k <= self.distinct_aus:
            raise ValueError(f"model.top_k={cfg.top_k} must be within 1..{self.distinct_aus} "
                             f"(distinct AU nodes in the store)")
        H = cfg.hidden
        self.bert_config = BertConfig(
            vocab_size=vocab_size, hidden_size=H, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate, hidden_act="gelu", hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout, max_position_embeddings=max(cfg.max_caption_len, 64),
            type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=pad_id,
        )
        self.bert_config._attn_implementation = ATTENTION_NAME   # SDPA, with pipeline.train.attention's CPU core

        # ---- caption embedding (BertEmbeddings' maths, with an explicit position offset) ----
        self.word_embeddings = nn.Embedding(vocab_size, H, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(self.bert_config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(2, H)
        self.emb_norm = nn.LayerNorm(H, eps=1e-12)
        self.emb_dropout = nn.Dropout(cfg.dropout)

        # ---- video tokens: C -> video_proj -> H, no position embedding ----
        self.video_proj = nn.Sequential(nn.Linear(video_channels, cfg.video_proj), nn.Linear(cfg.video_proj, H))
        self.ctx_dropout = nn.Dropout(cfg.dropout)

        # ---- VEP ----
        self.er_prompt = (
            nn.Sequential(nn.Linear(er_dim, H), nn.GELU(), nn.Linear(H, H)) if cfg.use_er_prompt else None
        )
        self.au_prompt = nn.Linear(au_dim, H) if cfg.use_au_prompts else None
        # ---- TEP: [CLASS-k] tokens ----
        self.class_tokens = nn.Parameter(torch.randn(num_emotions, H) * 0.02) if cfg.use_class_tokens else None

        # ---- learnable sparse attention over video tokens ----
        self.sparse_logits = (
            nn.Parameter(torch.empty(video_tokens, video_tokens)) if cfg.sparse_attention else None
        )

        self.encoder = BertEncoder(self.bert_config)
        for layer in self.encoder.layer:   # read by pipeline.train.attention's core
            layer.attention.self.dropout_rng = cfg.dropout_rng
        self.grad_checkpoint = False
        """Recompute each layer's activations in the backward pass (train.grad_checkpoint): less memory."""

        # ---- heads ----
        self.mlm_transform = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        n_er_in = int(cfg.use_er_prompt) + int(cfg.use_class_tokens)
        self.emotion_head = nn.Linear(n_er_in * H, num_emotions) if n_er_in else None

        self.apply(self._init_weights)
        if self.sparse_logits is not None:
            nn.init.normal_(self.sparse_logits, 0.0, 1.0)   # SwinBERT: nn.Embedding's N(0, 1)
        if cfg.dropout_rng == "fast":   # every hidden dropout draws its mask as the attention core does
            for mod in list(self.modules()):
                for name, child in mod.named_children():
                    if type(child) is nn.Dropout:
                        setattr(mod, name, Dropout16(child.p))

    # ------------------------------------------------------------------ init
    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ layout
    @property
    def classes_in_context(self) -> bool:
        """Class tokens sit in the context (visual-only ablation) rather than joined to the caption."""
        return self.cfg.use_class_tokens and self.cfg.sentence_prompt == "context"

    @property
    def num_sentence_tokens(self) -> int:
        """Class tokens joined to the caption (after the context); 0 in the visual-only variant."""
        return self.num_emotions if self.cfg.use_class_tokens and not self.classes_in_context else 0

    @property
    def num_prompts(self) -> int:
        """Prompt tokens in the context after the video tokens: ER prompt, K AU prompts, and the E class
        tokens only in the visual-only variant."""
        c = self.cfg
        return (int(c.use_er_prompt) + (c.top_k if c.use_au_prompts else 0)
                + (self.num_emotions if self.classes_in_context else 0))

    def prompt_slices(self, Lc_video: int) -> dict[str, slice]:
        """Where each context prompt kind sits inside the context (indices relative to the context start)."""
        out, i = {}, Lc_video
        if self.cfg.use_er_prompt:
            out["er"] = slice(i, i + 1)
            i += 1
        if self.cfg.use_au_prompts:
            out["au"] = slice(i, i + self.cfg.top_k)
            i += self.cfg.top_k
        if self.classes_in_context:
            out["cls"] = slice(i, i + self.num_emotions)
            i += self.num_emotions
        return out

    # ------------------------------------------------------------------ prompts
    def top_au(self, au_feats: Tensor, au_probs: Tensor) -> tuple[Tensor, Tensor]:
        """Top-K distinct AU nodes by clip confidence (mean of au/probs over F_au; OpenGraphAU's L/R AUs, which
        repeat a main AU's node, are not candidates). Returns their clip-level node features (B, K, 512; mean
        over F_au) and their indices into the store's AU axis (B, K)."""
        conf = au_probs.float().mean(dim=1)[:, : self.distinct_aus]  # (B, A')
        idx = conf.topk(self.cfg.top_k, dim=1).indices          # (B, K)
        node = au_feats.float().mean(dim=1)                     # (B, A, 512)
        return node.gather(1, idx[..., None].expand(-1, -1, node.shape[-1])), idx

    def au_prompts(self, batch: dict) -> Tensor | None:
        """AU prompts FC(node features of the top-K AUs): (B, K, H), or None when switched off."""
        if self.au_prompt is None:
            return None
        feats, _ = self.top_au(batch["au_feats"], batch["au_probs"])
        return self.au_prompt(feats)

    def er_prompt_vec(self, batch: dict) -> Tensor | None:
        """ER prompt MLP(pool(ResNet50-ER frame features)): (B, 1, H), or None when switched off."""
        if self.er_prompt is None:
            return None
        er = batch["er"].float()                                # (B, F, 2048)
        pooled = er.amax(dim=1) if self.cfg.er_pool == "max" else er.mean(dim=1)
        return self.er_prompt(pooled)[:, None]

    # ------------------------------------------------------------------ public interface
    def embed_context(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(B, Lc, H) context embeddings [video (no position emb); ER prompt; K AU prompts; class tokens] and
        the (B, Lc) bool valid mask (all True: every clip has the same token count)."""
        vid = batch["vid"]
        B = vid.shape[0]
        dtype = self.video_proj[0].weight.dtype
        parts = [self.video_proj(vid.to(dtype))]
        er = self.er_prompt_vec(batch)
        if er is not None:
            parts.append(er.to(parts[0].dtype))
        au = self.au_prompts(batch)
        if au is not None:
            parts.append(au.to(parts[0].dtype))
        if self.classes_in_context:
            parts.append(self.class_tokens[None].expand(B, -1, -1).to(parts[0].dtype))
        ctx = self.ctx_dropout(torch.cat(parts, dim=1))
        valid = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
        return ctx, valid

    def sparse_video_mask(self) -> Tensor | None:
        """SwinBERT's soft video -> video mask M = I + (1 - I) * sigmoid(W) (V, V); None when off."""
        if self.sparse_logits is None:
            return None
        eye = torch.eye(self.video_tokens, device=self.sparse_logits.device, dtype=self.sparse_logits.dtype)
        return eye + (1 - eye) * torch.sigmoid(self.sparse_logits)

    def sparse_l1(self) -> Tensor | None:
        """The sparsity regulariser: swinbert mean |(1 - I) * sigmoid(W)|; logsigmoid mean sigmoid(W)."""
        if self.sparse_logits is None:
            return None
        soft = torch.sigmoid(self.sparse_logits.float())
        if self.cfg.sparse_mask == "swinbert":
            eye = torch.eye(self.video_tokens, device=soft.device, dtype=soft.dtype)
            return ((1 - eye) * soft).abs().mean()
        return soft.mean()

    def word_vectors(self, input_ids: Tensor) -> Tensor:
        """Word embeddings of `input_ids`, [MASK] rows set to zero under `use_word_mask`: (B, Lt, H)."""
        w = self.word_embeddings(input_ids)
        if self.cfg.use_word_mask:
            w = w * (input_ids != self.mask_id)[..., None].to(w.dtype)
        return w

    def embed_caption(self, input_ids: Tensor, position_offset: int = 0) -> Tensor:
        """(B, Lt, H): word (+ word mask) + position (starting at `position_offset`) + token-type 0, LN, dropout."""
        Lt = input_ids.shape[1]
        pos = torch.arange(position_offset, position_offset + Lt, device=input_ids.device)
        x = self.word_vectors(input_ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.emb_dropout(self.emb_norm(x))

    def attention_mask(self, Lt: int, ctx_valid: Tensor, *, cap_valid: Tensor | None = None, n_sentence: int = 0,
                       dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, 1, L, L) additive mask in `dtype` (0 = attend, -1e4 = blocked), L = Lt + Lc + n_sentence.

        SwinBERT's seq2seq rule: caption -> caption lower-triangular; caption -> valid context; context ->
        valid context (times the sparse mask on video -> video); context -> caption never. The n_sentence class
        tokens after the context attend to the valid caption tokens (`cap_valid`, default all), the context
        and each other; nothing else attends to them."""
        B, Lc = ctx_valid.shape
        dev = ctx_valid.device
        L = Lt + Lc + n_sentence
        ctx_end = Lt + Lc
        allow = torch.zeros(B, L, L, dtype=torch.bool, device=dev)
        allow[:, :Lt, :Lt] = torch.tril(torch.ones(Lt, Lt, dtype=torch.bool, device=dev))
        allow[:, :, Lt:ctx_end] = ctx_valid[:, None, :]
        if n_sentence:
            cap = torch.ones(B, Lt, dtype=torch.bool, device=dev) if cap_valid is None else cap_valid.bool()
            allow[:, ctx_end:, :Lt] = cap[:, None, :]
            allow[:, ctx_end:, ctx_end:] = True
        V = self.video_tokens
        if self.sparse_logits is None:
            return torch.zeros(B, 1, L, L, dtype=dtype, device=dev).masked_fill_(~allow[:, None], NEG)
        if V > Lc:
            raise ValueError(f"sparse mask is {V} x {V}, got a context of {Lc} tokens")
        pad = (Lt, L - Lt - V, Lt, L - Lt - V)               # the V x V block at the video tokens
        if self.cfg.sparse_mask == "swinbert":   # soft 0/1 mask, then (1 - m) * NEG, as SwinBERT
            soft = F.pad(self.sparse_video_mask().to(dtype), pad, value=1.0)
            return ((1 - allow.to(dtype) * soft) * NEG)[:, None]
        mask = torch.zeros(B, L, L, dtype=dtype, device=dev).masked_fill_(~allow, NEG)
        return (mask + F.pad(F.logsigmoid(self.sparse_logits.float()).to(dtype), pad, value=0.0))[:, None]

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., V): BERT's MLM head with the decoder tied to the word embeddings."""
        return self.mlm_transform(hidden) @ self.word_embeddings.weight.t() + self.mlm_bias

    def prompt_states(self, ctx_hidden: Tensor, sent_hidden: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """(P_ER^V state (B, H) or None, class-token states (B, E, H) or None) from the last layer: the ER
        prompt from the context, the class tokens from the sentence part (or the context, visual-only)."""
        sl = self.prompt_slices(ctx_hidden.shape[1] - self.num_prompts)
        er = ctx_hidden[:, sl["er"]].mean(dim=1) if "er" in sl else None
        if "cls" in sl:
            cls = ctx_hidden[:, sl["cls"]]
        else:
            cls = sent_hidden if sent_hidden is not None and sent_hidden.shape[1] else None
        return er, cls

    def emotion_logits(self, ctx_hidden: Tensor, sent_hidden: Tensor | None = None) -> Tensor | None:
        """(B, E) emotion logits. Readout `head`: Linear(Concat(P_ER, P_S)), P_ER = the ER prompt's state,
        P_S = the mean of the class tokens' states (Eq. 8). Readout `similarity` (the Table VI ER-sentence
        alternatives): cos(P_ER, state of [CLASS-k]) / SIMILARITY_TEMPERATURE. None with neither prompt."""
        if self.emotion_head is None:
            return None
        er, cls = self.prompt_states(ctx_hidden, sent_hidden)
        if self.cfg.use_class_tokens and cls is None:
            raise ValueError("the class tokens' states are needed: pass the sentence hidden states")
        if self.emotion_readout == "similarity":
            cos = torch.einsum("beh,bh->be", F.normalize(cls.float(), dim=-1), F.normalize(er.float(), dim=-1))
            return cos / SIMILARITY_TEMPERATURE
        feats = [f for f in (er, None if cls is None else cls.mean(dim=1)) if f is not None]
        return self.emotion_head(torch.cat(feats, dim=-1))

    def run_encoder(self, x: Tensor, mask: Tensor) -> Tensor:
        """The BERT layers over x with the additive mask; with `grad_checkpoint` in training, each layer's
        activations are recomputed in the backward pass instead of kept (same values, same gradients)."""
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            for layer in self.encoder.layer:
                x = checkpoint(layer, x, mask, use_reentrant=False)
            return x
        return self.encoder(x, attention_mask=mask).last_hidden_state

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        dev = x.device.type
        return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype

    def encode_all(self, batch: dict, input_ids: Tensor) -> dict[str, Tensor | None]:
        """The whole sequence [caption; context; class tokens]: last-layer states `cap` (B, Lt, H), `ctx`
        (B, Lc, H), `sent` (B, E, H) or None, and the context embeddings `ctx_emb` as fed."""
        cap = self.embed_caption(input_ids)
        ctx, valid = self.embed_context(batch)
        parts = [cap, ctx.to(cap.dtype)]
        n_sent = self.num_sentence_tokens
        if n_sent:
            parts.append(self.class_tokens[None].expand(cap.shape[0], -1, -1).to(cap.dtype))
        x = torch.cat(parts, dim=1)
        Lt, Lc = input_ids.shape[1], ctx.shape[1]
        mask = aligned_bias(self.attention_mask(Lt, valid, cap_valid=input_ids != self.pad_id, n_sentence=n_sent,
                                                dtype=self._compute_dtype(x)))   # once per batch, every layer reads it
        h = self.run_encoder(x, mask)
        return {"cap": h[:, :Lt], "ctx": h[:, Lt:Lt + Lc], "sent": h[:, Lt + Lc:] if n_sent else None, "ctx_emb": ctx}

    def encode(self, batch: dict, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the whole sequence: returns (caption hidden (B, Lt, H), context hidden (B, Lc, H), context embeddings)."""
        h = self.encode_all(batch, input_ids)
        return h["cap"], h["ctx"], h["ctx_emb"]

    def context_hidden(self, batch: dict) -> Tensor:
        """Last-layer context hidden states (B, Lc, H) computed from the context alone. Equal to the context
        part of `encode` for any caption, because context never attends to captions."""
        ctx, valid = self.embed_context(batch)
        mask = self.attention_mask(0, valid, dtype=self._compute_dtype(ctx))
        return self.encoder(ctx, attention_mask=mask).last_hidden_state

    def caption_ids(self, captions: list[list[int]], max_len: int | None = None) -> Tensor:
        """[CLS] w1 .. wn [SEP] [PAD].. rows (B, Lt) for captions given as word-piece ids."""
        Lt = max(len(c) for c in captions) + 2 if captions else 2
        if max_len is not None:
            Lt = min(Lt, max_len)
        dev = self.word_embeddings.weight.device
        out = torch.full((len(captions), Lt), self.pad_id, dtype=torch.long, device=dev)
        for i, c in enumerate(captions):
            row = [self.cls_id, *c[: Lt - 2], self.sep_id]
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long, device=dev)
        return out

    @torch.no_grad()
    def emotion_for_captions(self, batch: dict, captions: list[list[int]]) -> Tensor | None:
        """(B, E) emotion logits at inference. With the class tokens joined to the caption (Eq. 6), they read
        the given (generated) captions; otherwise (visual-only variant, or no class tokens) the context alone."""
        if self.emotion_head is None:
            return None
        if not self.num_sentence_tokens:
            return self.emotion_logits(self.context_hidden(batch))
        h = self.encode_all(batch, self.caption_ids(captions, self.bert_config.max_position_embeddings))
        return self.emotion_logits(h["ctx"], h["sent"])

    # ------------------------------------------------------------------ decoding: the prefix KV step
    # Context tokens never attend to caption tokens, so each layer's context keys/values are computed once per
    # clip (`context_cache`, which also keeps the context's last-layer states: the emotion and the ER prompt
    # read them). Caption tokens attend causally, so a real caption token's keys/values never change once
    # computed; `caption_step` runs only the newest real token(s) and the [MASK] slot through the layers against
    # the cached caption and context keys/values. The layer maths is BertLayer's (post-LN: attention ->
    # output.dense -> dropout -> LayerNorm(+residual) -> intermediate -> output.dense -> LayerNorm(+residual)),
    # on its own submodules; the additive masks are cut from `attention_mask`, so the rules live in one place.

    @torch.no_grad()
    def context_cache(self, batch: dict, max_length: int) -> "ContextCache":
        """One pass of the context (video tokens, prompts) through the layers: per-layer keys/values, the
        last-layer context states, and the caption masks for captions up to `max_length` tokens."""
        ctx, valid = self.embed_context(batch)                     # (B, Lc, H), (B, Lc)
        B, Lc, H = ctx.shape
        T = max_length
        full = self.attention_mask(T, valid).to(ctx.dtype)         # (B, 1, T+Lc, T+Lc), the model's own rules
        mask_ctx = full[:, :, T:, T:].contiguous()                 # (B, 1, Lc, Lc) context -> context
        ks, vs = [], []
        x = ctx
        for layer in self.encoder.layer:
            sa = layer.attention.self
            q, k, v = (_heads(lin(x), sa) for lin in (sa.query, sa.key, sa.value))   # (B, h, Lc, d)
            ks.append(k)
            vs.append(v)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_ctx, scale=sa.scaling)
            x = _ffn(layer, a.transpose(1, 2).reshape(B, Lc, H), x)
        return ContextCache(k=ks, v=vs, hidden=x, valid=valid,
                            mask_cap_cap=full[:, :, :T, :T].contiguous(),   # (B, 1, T, T) caption -> caption
                            mask_cap_ctx=full[:, :, :T, T:].contiguous())   # (B, 1, T, Lc) caption -> context

    @torch.no_grad()
    def caption_step(self, cache: "ContextCache", kv: "CaptionKV", tokens: Tensor, parent: Tensor | None) -> Tensor:
        """Logits (N, V) at the [MASK] slot of `tokens` (N, t+1) = B clips x `kv.beams` rows, ending with [MASK];
        `parent` (N,): the row each came from last step (beam search reorders the cached caption keys/values).
        A clip's context keys/values are shared by its beams."""
        N, L = tokens.shape
        B, K = cache.hidden.shape[0], kv.beams
        done = kv.length
        if parent is not None and done:
            kv.reorder(parent)
        x = self.embed_caption(tokens[:, done:], position_offset=done)     # newest real token(s) + [MASK]: (N, n, H)
        n, H = x.shape[1], x.shape[-1]
        m_cap = cache.mask_cap_cap[:, :, done:L, :L][:, None]              # (B, 1, 1, n, L)
        m_ctx = cache.mask_cap_ctx[:, :, done:L][:, None]                  # (B, 1, 1, n, Lc)
        for i, layer in enumerate(self.encoder.layer):
            sa = layer.attention.self
            q, k, v = (_heads(lin(x), sa) for lin in (sa.query, sa.key, sa.value))   # (N, h, n, d)
            k_all, v_all = kv.extend(i, k, v)                               # (N, h, L, d)
            h, d = q.shape[1], q.shape[3]
            qb = q.view(B, K, h, n, d)
            s_cap = (qb @ k_all.view(B, K, h, L, d).transpose(-1, -2)) * sa.scaling + m_cap     # (B, K, h, n, L)
            q_shared = qb.permute(0, 2, 1, 3, 4).reshape(B, h, K * n, d)
            s_ctx = (q_shared @ cache.k[i].transpose(-1, -2)) * sa.scaling                      # (B, h, K*n, Lc)
            s_ctx = s_ctx.view(B, h, K, n, -1).permute(0, 2, 1, 3, 4) + m_ctx                  # (B, K, h, n, Lc)
            p = torch.softmax(torch.cat([s_cap, s_ctx], dim=-1), dim=-1)
            a = p[..., :L] @ v_all.view(B, K, h, L, d)                                          # (B, K, h, n, d)
            a_ctx = p[..., L:].permute(0, 2, 1, 3, 4).reshape(B, h, K * n, -1) @ cache.v[i]    # (B, h, K*n, d)
            a = a + a_ctx.view(B, h, K, n, d).permute(0, 2, 1, 3, 4)
            x = _ffn(layer, a.reshape(N, h, n, d).transpose(1, 2).reshape(N, n, H), x)
        kv.drop_mask_slot()
        return self.mlm_logits(x[:, -1])

    @torch.no_grad()
    def emotion_from_cache(self, cache: "ContextCache", captions: list[list[int]]) -> Tensor | None:
        """(B, E) emotion logits from the cached context pass, as `emotion_for_captions` computes them without
        a second context pass: with the class tokens joined to the caption (Eq. 6) only [CLS] caption [SEP]
        and the class tokens run through the layers, against the cached context keys/values; otherwise the
        emotion reads the cached last-layer context states."""
        if self.emotion_head is None:
            return None
        if not self.num_sentence_tokens:
            return self.emotion_logits(cache.hidden)
        ids = self.caption_ids(captions, self.bert_config.max_position_embeddings)         # (B, Lt)
        B, Lt = ids.shape
        E, Lc = self.num_sentence_tokens, cache.hidden.shape[1]
        cap = self.embed_caption(ids)
        x = torch.cat([cap, self.class_tokens[None].expand(B, -1, -1).to(cap.dtype)], dim=1)   # (B, Lt+E, H)
        full = self.attention_mask(Lt, cache.valid, cap_valid=ids != self.pad_id, n_sentence=E, dtype=x.dtype)
        rows = torch.cat([torch.arange(Lt), torch.arange(Lt + Lc, Lt + Lc + E)]).to(x.device)
        cols = torch.cat([rows, torch.arange(Lt, Lt + Lc, device=x.device)])           # [caption; class; context]
        mask = full[:, :, rows][:, :, :, cols]                                              # (B, 1, Lt+E, Lt+E+Lc)
        for i, layer in enumerate(self.encoder.layer):
            sa = layer.attention.self
            q, k, v = (_heads(lin(x), sa) for lin in (sa.query, sa.key, sa.value))
            a = F.scaled_dot_product_attention(q, torch.cat([k, cache.k[i]], dim=2), torch.cat([v, cache.v[i]], dim=2),
                                               attn_mask=mask, scale=sa.scaling)            # (B, h, Lt+E, d)
            x = _ffn(layer, a.transpose(1, 2).reshape(B, Lt + E, -1), x)
        return self.emotion_logits(cache.hidden, x[:, Lt:])

    def forward(self, batch: dict, input_ids: Tensor, mlm_labels: Tensor | None = None) -> dict:
        """Training forward. `input_ids` (B, Lt) already MLM-masked, `mlm_labels` (B, Lt) with -100 where not
        predicted. Returns:
          mlm_logits (N, V) at the predicted positions, mlm_targets (N,) (positions from batch["mlm_index"],
          the flat (B*Lt) indices the collate computed on the host, when given),
          emotion_logits (B, E) or None, er_state (B, H) / class_states (B, E, H) (last layer) or None,
          au_prompts (B, K, H) or None (the prompts as fed, before the encoder),
          word_prompts (B, Lt, H) word vectors of the caption as fed (word_ids: those ids), word_valid (B, Lt) bool (real words,
          not [CLS]/[SEP]/[PAD]),
          sparse_l1 scalar or None."""
        h = self.encode_all(batch, input_ids)
        cap_h, ctx_h, ctx_emb = h["cap"], h["ctx"], h["ctx_emb"]
        out: dict = {}
        if mlm_labels is not None:
            idx = batch.get("mlm_index")
            if idx is None:   # counted on the device: a host sync (the training loader gives mlm_index)
                idx = (mlm_labels != -100).flatten().nonzero().squeeze(1)
            out["mlm_logits"] = self.mlm_logits(cap_h.flatten(0, 1).index_select(0, idx))      # (N, V)
            out["mlm_targets"] = mlm_labels.flatten().index_select(0, idx)                     # (N,)
        out["emotion_logits"] = self.emotion_logits(ctx_h, h["sent"])
        out["er_state"], out["class_states"] = self.prompt_states(ctx_h, h["sent"])
        sl = self.prompt_slices(ctx_emb.shape[1] - self.num_prompts)
        out["au_prompts"] = ctx_emb[:, sl["au"]] if "au" in sl else None
        out["word_prompts"] = self.word_vectors(input_ids)
        out["word_ids"] = input_ids
        out["word_valid"] = (input_ids != self.cls_id) & (input_ids != self.sep_id) & (input_ids != self.pad_id)
        out["sparse_l1"] = self.sparse_l1()
        return out


BIAS_ALIGN = 16
"""Elements the rows of an attention bias are aligned to: CUDA's fused (memory-efficient / cuDNN) SDPA kernels
read a bias whose row stride is a multiple of 16 bytes in place, and copy (pad) any other bias at every call."""


def aligned_bias(mask: Tensor, always: bool = False) -> Tensor:
    """The additive mask (B, 1, L, L) as a view whose rows start on `BIAS_ALIGN`-element boundaries (storage
    (B, 1, L, ceil(L / 16) * 16)), so a fused attention kernel on the GPU takes it (and its gradient, for the
    learned sparse mask) without a padded copy in every layer, forward and backward. Same values; the head
    axis stays 1 (broadcast, never materialised). Only on CUDA (or with `always`, for the CPU test): elsewhere
    the mask is returned as it is."""
    L = mask.shape[-1]
    if not (always or mask.device.type == "cuda") or L % BIAS_ALIGN == 0:
        return mask
    Lp = -(-L // BIAS_ALIGN) * BIAS_ALIGN
    out = mask.new_empty(*mask.shape[:-1], Lp)[..., :L]
    return out.copy_(mask)


def _heads(t: Tensor, sa) -> Tensor:
    """(N, L, H) -> (N, heads, L, d) for a BertSelfAttention `sa`."""
    N, L, _ = t.shape
    return t.view(N, L, sa.num_attention_heads, sa.attention_head_size).transpose(1, 2)


def _ffn(layer, attn: Tensor, x: Tensor) -> Tensor:
    """BertLayer after the attention core: output projection + LN(residual), feed-forward + LN(residual)."""
    h = layer.attention.output(attn, x)
    return layer.output(layer.intermediate(h), h)


@dataclass
class ContextCache:
    """What one context pass leaves for decoding (`ECPA.context_cache`): per-layer context keys/values
    (B, heads, Lc, d), the last-layer context states (B, Lc, H), the context's valid mask (B, Lc), and the
    additive caption -> caption (B, 1, T, T) and caption -> context (B, 1, T, Lc) masks."""
    k: list[Tensor]
    v: list[Tensor]
    hidden: Tensor
    valid: Tensor
    mask_cap_cap: Tensor
    mask_cap_ctx: Tensor


class CaptionKV:
    """The caption keys/values cached so far, per layer (N, heads, t, d), N = clips x `beams` rows."""

    def __init__(self, layers: int, beams: int = 1):
        self.beams = beams
        self.k: list[Tensor | None] = [None] * layers
        self.v: list[Tensor | None] = [None] * layers

    @property
    def length(self) -> int:
        """Caption positions cached (real tokens only)."""
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def reorder(self, parent: Tensor) -> None:
        self.k = [k.index_select(0, parent) for k in self.k]
        self.v = [v.index_select(0, parent) for v in self.v]

    def extend(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Layer i's cached keys/values followed by this step's: (N, heads, t + n, d) each."""
        if self.k[i] is not None:
            k, v = torch.cat([self.k[i], k], dim=2), torch.cat([self.v[i], v], dim=2)
        self.k[i], self.v[i] = k, v
        return k, v

    def drop_mask_slot(self) -> None:
        """Forget the [MASK] slot's keys/values: that slot is replaced by the chosen token next step."""
        self.k = [k[:, :, :-1] for k in self.k]
        self.v = [v[:, :, :-1] for v in self.v]


def build_model(cfg: ModelConfig, tokenizer, *, num_emotions: int, shapes, emotion_readout: str = "head") -> ECPA:
    """ECPA for a tokenizer (`pipeline.train.tokenizer.CaptionTokenizer`) and a store's `StoreShapes`."""
    return ECPA(
        cfg, vocab_size=tokenizer.vocab_size, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
        mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, num_emotions=num_emotions,
        video_tokens=shapes.tokens, video_channels=shapes.channels, er_dim=shapes.er_dim,
        au_dim=shapes.au_dim, num_aus=shapes.aus, emotion_readout=emotion_readout,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ECPA", "ContextCache", "CaptionKV", "build_model", "count_parameters", "NEG", "SPARSE_MASKS", "SENTENCE_PROMPTS"]
