"""ECPA's stage-two model: SwinBERT's multimodal transformer plus VEP/TEP prompts and the ER head.

References: SwinBERT (Lin et al. 2022, "End-to-End Transformers with Sparse Attention for Video
Captioning": BERT encoder over [caption; video tokens], seq2seq mask, learnable sparse video mask);
ECPA (Wang, Liu et al., "Emotion-oriented Cross-modal Prompting and Alignment"): visual emotion
prompts (ER prompt, top-K AU prompts), textual emotion prompts ([CLASS-k] tokens, word masking).

Sequence (length Lt + Lc):

    [ caption tokens (Lt, [CLS] w1 .. [SEP] pad) | video tokens (V) | ER prompt (1) | AU prompts (K) | class tokens (E) ]
      <------------------ caption ------------>   <---------------------- context (Lc) ------------------------->

Attention (SwinBERT's seq2seq rule, additive mask from `attention_mask`):
caption -> caption lower-triangular, caption -> context full, context -> context full (times the learnable
sparse mask on video -> video), context -> caption never. So the context's hidden states at every layer
do not depend on the caption: a decoder may compute its per-layer keys/values once per clip.

The encoder is `transformers.BertEncoder` (standard post-LN BertLayer, eager/sdpa attention, GELU), fed an
additive float mask of shape (B, 1, L, L). Non-standard parts, all outside the encoder layers:

* Video tokens are projected Linear(C -> video_proj) -> Linear(video_proj -> H) and get no position or
  token-type embedding and no LayerNorm (as SwinBERT's img_embedding); prompts are added likewise.
* The learnable sparse attention (SwinBERT) is a V x V logit matrix W. SwinBERT multiplies sigmoid(W) into
  the 0/1 mask before the (1 - m) * -1e4 conversion; here the soft mask enters as the additive bias
  log(sigmoid(W)) on video -> video scores, i.e. the attention probabilities are multiplied by sigmoid(W)
  before renormalising. W starts at +`SPARSE_INIT` (mask ~0.95). The L1 regulariser is mean(sigmoid(W)).
* With `use_word_mask` (TEP word-level masking) the word embedding of every [MASK] token is set to zero
  (in training and decoding alike: `embed_caption` does it), before position/token-type embedding and LN.
* The MLM head is BERT's (dense -> GELU -> LayerNorm -> decoder tied to the word embeddings + bias).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from pipeline.config import ModelConfig

SPARSE_INIT = 3.0
"""Initial logit of the learnable sparse video mask (sigmoid(3) ~ 0.95: nearly full attention at start)."""

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
    ):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.cls_id, self.sep_id, self.mask_id, self.pad_id = vocab_size, cls_id, sep_id, mask_id, pad_id
        self.num_emotions = num_emotions
        self.video_tokens = video_tokens
        self.num_aus = num_aus
        if cfg.use_au_prompts and not 1 <= cfg.top_k <= num_aus:
            raise ValueError(f"model.top_k={cfg.top_k} must be within 1..{num_aus} (AUs in the store)")
        H = cfg.hidden
        self.bert_config = BertConfig(
            vocab_size=vocab_size, hidden_size=H, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate, hidden_act="gelu", hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout, max_position_embeddings=max(cfg.max_caption_len, 64),
            type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=pad_id,
        )
        self.bert_config._attn_implementation = "sdpa"

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
            nn.Parameter(torch.full((video_tokens, video_tokens), SPARSE_INIT)) if cfg.sparse_attention else None
        )

        self.encoder = BertEncoder(self.bert_config)

        # ---- heads ----
        self.mlm_transform = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.LayerNorm(H, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        n_er_in = int(cfg.use_er_prompt) + int(cfg.use_class_tokens)
        self.emotion_head = nn.Linear(n_er_in * H, num_emotions) if n_er_in else None

        self.apply(self._init_weights)

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
    def num_prompts(self) -> int:
        """Prompt tokens after the video tokens: ER prompt, K AU prompts, E class tokens (those switched on)."""
        c = self.cfg
        return int(c.use_er_prompt) + (c.top_k if c.use_au_prompts else 0) + (self.num_emotions if c.use_class_tokens else 0)

    def prompt_slices(self, Lc_video: int) -> dict[str, slice]:
        """Where each prompt kind sits inside the context (indices relative to the context start)."""
        out, i = {}, Lc_video
        if self.cfg.use_er_prompt:
            out["er"] = slice(i, i + 1)
            i += 1
        if self.cfg.use_au_prompts:
            out["au"] = slice(i, i + self.cfg.top_k)
            i += self.cfg.top_k
        if self.cfg.use_class_tokens:
            out["cls"] = slice(i, i + self.num_emotions)
            i += self.num_emotions
        return out

    # ------------------------------------------------------------------ prompts
    def top_au(self, au_feats: Tensor, au_probs: Tensor) -> tuple[Tensor, Tensor]:
        """Top-K AUs by clip confidence (mean of au/probs over F_au). Returns their clip-level node features
        (B, K, 512; mean over F_au) and their indices (B, K)."""
        conf = au_probs.float().mean(dim=1)                     # (B, A)
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
        if self.class_tokens is not None:
            parts.append(self.class_tokens[None].expand(B, -1, -1).to(parts[0].dtype))
        ctx = self.ctx_dropout(torch.cat(parts, dim=1))
        valid = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
        return ctx, valid

    def context_attention_bias(self, Lc_video: int, Lc: int) -> Tensor | None:
        """Additive (Lc, Lc) bias for context -> context scores: log(sigmoid(W)) on the video -> video block,
        0 elsewhere. None when sparse attention is off."""
        if self.sparse_logits is None:
            return None
        if Lc_video != self.video_tokens:
            raise ValueError(f"sparse mask is {self.video_tokens} x {self.video_tokens}, got {Lc_video} video tokens")
        bias = self.sparse_logits.new_zeros(Lc, Lc)
        bias[:Lc_video, :Lc_video] = F.logsigmoid(self.sparse_logits)
        return bias

    def sparse_l1(self) -> Tensor | None:
        """SwinBERT's sparsity regulariser: mean of the soft video mask sigmoid(W)."""
        return None if self.sparse_logits is None else torch.sigmoid(self.sparse_logits).mean()

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

    def attention_mask(self, Lt: int, ctx_valid: Tensor) -> Tensor:
        """(B, 1, Lt+Lc, Lt+Lc) additive float mask (0 = attend, NEG = blocked), SwinBERT's seq2seq rule:
        caption -> caption lower-triangular; caption -> valid context; context -> valid context (plus the
        sparse bias on video -> video); context -> caption never."""
        B, Lc = ctx_valid.shape
        dev = ctx_valid.device
        L = Lt + Lc
        allow = torch.zeros(B, L, L, dtype=torch.bool, device=dev)
        allow[:, :Lt, :Lt] = torch.tril(torch.ones(Lt, Lt, dtype=torch.bool, device=dev))
        allow[:, :, Lt:] = ctx_valid[:, None, :]
        mask = torch.zeros(B, L, L, device=dev)
        mask.masked_fill_(~allow, NEG)
        bias = self.context_attention_bias(self.video_tokens, Lc) if self.sparse_logits is not None else None
        if bias is not None:
            mask = mask.clone()
            mask[:, Lt:, Lt:] = mask[:, Lt:, Lt:] + bias.float()
        return mask[:, None]

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., V): BERT's MLM head with the decoder tied to the word embeddings."""
        return self.mlm_transform(hidden) @ self.word_embeddings.weight.t() + self.mlm_bias

    def emotion_logits(self, ctx_hidden: Tensor) -> Tensor | None:
        """(B, E) emotion logits from last-layer context hidden states (B, Lc, H): Linear(concat(P_ER, P_S)),
        P_ER = the ER prompt's state, P_S = the mean of the class tokens' states. None with neither prompt."""
        if self.emotion_head is None:
            return None
        sl = self.prompt_slices(ctx_hidden.shape[1] - self.num_prompts)
        feats = []
        if "er" in sl:
            feats.append(ctx_hidden[:, sl["er"]].mean(dim=1))
        if "cls" in sl:
            feats.append(ctx_hidden[:, sl["cls"]].mean(dim=1))
        return self.emotion_head(torch.cat(feats, dim=-1))

    def encode(self, batch: dict, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the whole sequence: returns (caption hidden (B, Lt, H), context hidden (B, Lc, H), context embeddings)."""
        cap = self.embed_caption(input_ids)
        ctx, valid = self.embed_context(batch)
        x = torch.cat([cap, ctx.to(cap.dtype)], dim=1)
        mask = self.attention_mask(input_ids.shape[1], valid).to(x.dtype)
        h = self.encoder(x, attention_mask=mask).last_hidden_state
        Lt = input_ids.shape[1]
        return h[:, :Lt], h[:, Lt:], ctx

    def context_hidden(self, batch: dict) -> Tensor:
        """Last-layer context hidden states (B, Lc, H) computed from the context alone. Equal to the context
        part of `encode` for any caption, because context never attends to captions."""
        ctx, valid = self.embed_context(batch)
        mask = self.attention_mask(0, valid).to(ctx.dtype)
        return self.encoder(ctx, attention_mask=mask).last_hidden_state

    def forward(self, batch: dict, input_ids: Tensor, mlm_labels: Tensor | None = None) -> dict:
        """Training forward. `input_ids` (B, Lt) already MLM-masked, `mlm_labels` (B, Lt) with -100 where not
        predicted. Returns:
          mlm_logits (N, V) at the predicted positions, mlm_targets (N,),
          emotion_logits (B, E) or None,
          au_prompts (B, K, H) or None (the prompts as fed, before the encoder),
          word_prompts (B, Lt, H) word vectors of the caption as fed (word_ids: those ids), word_valid (B, Lt) bool (real words,
          not [CLS]/[SEP]/[PAD]),
          sparse_l1 scalar or None."""
        cap_h, ctx_h, ctx_emb = self.encode(batch, input_ids)
        out: dict = {}
        if mlm_labels is not None:
            sel = mlm_labels != -100
            out["mlm_logits"] = self.mlm_logits(cap_h[sel])
            out["mlm_targets"] = mlm_labels[sel]
        out["emotion_logits"] = self.emotion_logits(ctx_h)
        sl = self.prompt_slices(ctx_emb.shape[1] - self.num_prompts)
        out["au_prompts"] = ctx_emb[:, sl["au"]] if "au" in sl else None
        out["word_prompts"] = self.word_vectors(input_ids)
        out["word_ids"] = input_ids
        out["word_valid"] = (input_ids != self.cls_id) & (input_ids != self.sep_id) & (input_ids != self.pad_id)
        out["sparse_l1"] = self.sparse_l1()
        return out


def build_model(cfg: ModelConfig, tokenizer, *, num_emotions: int, shapes) -> ECPA:
    """ECPA for a tokenizer (`pipeline.tokenizer.CaptionTokenizer`) and a store's `StoreShapes`."""
    return ECPA(
        cfg, vocab_size=tokenizer.vocab_size, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
        mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, num_emotions=num_emotions,
        video_tokens=shapes.tokens, video_channels=shapes.channels, er_dim=shapes.er_dim,
        au_dim=shapes.au_dim, num_aus=shapes.aus,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ECPA", "build_model", "count_parameters", "NEG", "SPARSE_INIT"]
