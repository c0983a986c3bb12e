"""model.init_from: a bert-base-uncased folder in the Hugging Face layout fills ECPA's transformer through an
explicit key map; the caption-only forward then equals transformers' own BertForMaskedLM."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from pipeline.config import ModelConfig
from pipeline.checkpoints import CheckpointError
from pipeline.train.bert_init import load_bert_init
from pipeline.train.model import ECPA

VOCAB, H, LAYERS, HEADS, FF = 60, 32, 2, 2, 64


def hf_model(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FF, max_position_embeddings=128)
    m = BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # no parameter left at a default (LayerNorm ones/zeros, zero biases)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def ecpa(**over) -> ECPA:
    torch.manual_seed(123)
    cfg = ModelConfig(hidden=H, layers=LAYERS, heads=HEADS, intermediate=FF, video_proj=16, top_k=2,
                      max_caption_len=40, **over)
    return ECPA(cfg, vocab_size=VOCAB, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=3, video_tokens=4,
                video_channels=8, er_dim=10, au_dim=12, num_aus=5).eval()


def text_logits(m: ECPA, ids: torch.Tensor) -> torch.Tensor:
    """Caption tokens alone, bidirectional (BERT's own attention), through ECPA's embedding, encoder and head."""
    L = ids.shape[1]
    with torch.no_grad():
        h = m.encoder(m.embed_caption(ids), attention_mask=torch.zeros(ids.shape[0], 1, L, L)).last_hidden_state
        return m.mlm_logits(h)


IDS = torch.tensor([[2, 11, 25, 7, 40, 3], [2, 59, 5, 3, 0, 0]])


def test_save_pretrained_folder_loads_and_matches_transformers(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    m = ecpa()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    load_bert_init(m, tmp_path)
    with torch.no_grad():
        ref = hf(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    torch.testing.assert_close(text_logits(m, IDS), ref, atol=1e-5, rtol=1e-5)
    # ECPA's own parts stay freshly initialised (SwinBERT's --load_partial_weights)
    after = m.state_dict()
    for k in ("video_proj.0.weight", "class_tokens", "sparse_logits", "emotion_head.weight", "au_prompt.weight"):
        assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["encoder.layer.1.output.dense.weight"], before["encoder.layer.1.output.dense.weight"])


def test_legacy_bin_with_gamma_beta_pooler_and_nsp_head(tmp_path):
    """Older BERT files: pytorch_model.bin, LayerNorm gamma/beta, a pooler and the next-sentence head."""
    hf = hf_model(seed=1)
    sd = {}
    for k, v in hf.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        sd[k] = v
    sd["bert.pooler.dense.weight"] = torch.zeros(H, H)
    sd["bert.pooler.dense.bias"] = torch.zeros(H)
    sd["cls.seq_relationship.weight"] = torch.zeros(2, H)
    sd["cls.seq_relationship.bias"] = torch.zeros(2)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    m = ecpa()
    load_bert_init(m, tmp_path)
    with torch.no_grad():
        ref = hf(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    torch.testing.assert_close(text_logits(m, IDS), ref, atol=1e-5, rtol=1e-5)


def test_unknown_or_missing_keys_and_wrong_shapes_are_refused(tmp_path):
    hf = hf_model()
    sd = dict(hf.state_dict())
    sd["bert.encoder.extra_adapter.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="extra_adapter"):
        load_bert_init(ecpa(), tmp_path)
    sd.pop("bert.encoder.extra_adapter.weight")
    sd.pop("bert.encoder.layer.1.intermediate.dense.weight")
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="encoder.layer.1.intermediate.dense.weight"):
        load_bert_init(ecpa(), tmp_path)
    # a transformer of another size, and a folder without weights, are named
    with pytest.raises(CheckpointError, match="num_hidden_layers=2 vs model.layers=3"):
        m3 = ECPA(ModelConfig(hidden=H, layers=3, heads=HEADS, intermediate=FF, video_proj=16, top_k=2),
                  vocab_size=VOCAB, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=3, video_tokens=4,
                  video_channels=8, er_dim=10, au_dim=12, num_aus=5)
        load_bert_init(m3, tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_bert_init(ecpa(), tmp_path)


def test_init_from_enters_the_train_key_by_content(tmp_path):
    from pipeline.config import Config
    from pipeline.chain.specs import train_slice as config_slice

    a, b = tmp_path / "a", tmp_path / "b"
    hf_model(0).save_pretrained(a)
    hf_model(0).save_pretrained(b)
    cfg = Config()
    base = config_slice(cfg)["model"]["init_from"]
    cfg.model.init_from = str(a)
    key_a = config_slice(cfg)["model"]["init_from"]
    cfg.model.init_from = str(b)
    assert config_slice(cfg)["model"]["init_from"] == key_a != base   # same bytes elsewhere: same key
    hf_model(7).save_pretrained(b)
    assert config_slice(cfg)["model"]["init_from"] != key_a           # other weights: other key
