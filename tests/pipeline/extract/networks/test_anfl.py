"""ANFL (ME-GraphAU / OpenGraphAU stage 1): the official checkpoint layout, the graph maths by hand."""
import math

import pytest
import torch
from PIL import Image

from pipeline.checkpoints import CheckpointError
from pipeline.extract.networks.anfl import (
    AU_DESCRIPTIONS, AU_IDS, AU_NAMES, GNN, SUB_LIST, SUB_SOURCE, anfl_demo, anfl_preprocess, anfl_resnet50, au_confidence,
    load_anfl, neighbour_adjacency, normalize_adjacency,
)
from tests.pipeline.extract.networks.conftest import randomise_bn_stats


def _official_file(tmp_path, model, edit=None):
    """Saved the way ME-GraphAU's train_stage1.py saves: {'epoch', 'state_dict' (DataParallel keys), 'optimizer'}."""
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    if edit:
        edit(sd)
    p = tmp_path / "OpenGprahAU-demo_first_stage.pth"
    torch.save({"epoch": 20, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1, 2]}]}}, p)
    return p


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    m = randomise_bn_stats(anfl_demo(), seed=0).eval()
    with torch.no_grad():  # a trained model's class vectors are not xavier noise around 0
        m.head.main_sc.add_(0.05)
        m.head.sub_sc.add_(0.05)
    return m


def test_official_layout_round_trips_exactly(tmp_path, source):
    p = _official_file(tmp_path, source)
    torch.manual_seed(123)
    model = anfl_demo().eval()
    load_anfl(model, p)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        f0, c0 = source(x)
        f1, c1 = model(x)
    assert f1.shape == (3, 41, 128) and c1.shape == (3, 41)
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    torch.testing.assert_close(c1, c0, rtol=0, atol=0)


def test_key_typo_fails_naming_both_keys(tmp_path, source):
    def typo(sd):
        sd["module.head.gnn.bnv.wieght"] = sd.pop("module.head.gnn.bnv.weight")
    with pytest.raises(CheckpointError) as e:
        load_anfl(anfl_demo(), _official_file(tmp_path, source, typo))
    assert "unknown key(s) head.gnn.bnv.wieght" in str(e.value)
    assert "missing key(s) head.gnn.bnv.weight" in str(e.value)


def test_stage_two_keys_are_not_silently_accepted(tmp_path, source):
    def stage2(sd):  # an ME-GraphAU *stage-2* file has an edge branch stage 1 does not know
        sd["module.head.edge_extractor.FAM.q_proj.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="edge_extractor"):
        load_anfl(anfl_demo(), _official_file(tmp_path, source, stage2))


def test_resnet50_variant_has_the_official_key_names_and_shapes():
    with torch.device("meta"):  # names and shapes only, no init cost
        sd = anfl_resnet50().state_dict()
    expected = {  # from OpenGraphAU model/ANFL.py + model/resnet.py (MEFARG, backbone='resnet50')
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer4.2.bn3.running_var": (2048,),
        "global_linear.fc.weight": (512, 2048),
        "global_linear.bn.running_mean": (512,),
        "head.main_class_linears.0.fc.weight": (512, 512),
        "head.main_class_linears.26.bn.num_batches_tracked": (),
        "head.gnn.U.weight": (512, 512),
        "head.gnn.V.bias": (512,),
        "head.gnn.bnv.running_mean": (27,),
        "head.main_sc": (27, 512),
        "head.sub_sc": (14, 512),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith(("backbone.fc", "head.main_class_linears.27", "head.gnn.bne", "fc."))
                   for k in sd)
    assert sum(k.startswith("head.main_class_linears.") and k.endswith("fc.weight") for k in sd) == 27


def test_au_order_and_sub_au_sources_agree():
    assert len(AU_NAMES) == 41 and AU_NAMES[:3] == ["AU1", "AU2", "AU4"] and AU_NAMES[26] == "AU39"
    assert AU_NAMES[27:29] == ["AUL1", "AUR1"] and AU_NAMES[-1] == "AUR14"
    # each L/R AU takes the node feature of the main AU with the same number, except the original's
    # L12/R12 pair, which its code computes from node 8 (AU11, "Nasolabial deepener", as it names them)
    for i, main in enumerate(SUB_SOURCE):
        if AU_IDS[27 + i] in ("L12", "R12"):
            assert AU_IDS[main] == "11" and "Nasolabial deepener" in AU_DESCRIPTIONS[27 + i]
        else:
            assert AU_IDS[27 + i][1:] == AU_IDS[main]
            assert AU_DESCRIPTIONS[27 + i].split(" ", 1)[1] == AU_DESCRIPTIONS[main]
    assert [AU_IDS[i] for i in SUB_LIST] == ["1", "2", "4", "6", "10", "11", "14"]


def test_neighbour_selection_and_normalisation_by_hand():
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 3 nodes
    # dot products: [[1,0,1],[0,1,1],[1,1,2]]; k=2 keeps entries >= the row's 2nd largest (1, 1, 1)
    a = neighbour_adjacency(v, k=2)
    assert a.tolist() == [[[1, 0, 1], [0, 1, 1], [1, 1, 1]]]
    s6 = 1 / math.sqrt(6)  # degrees 2, 2, 3 -> a_ij / sqrt(d_i d_j)
    expected = torch.tensor([[[0.5, 0, s6], [0, 0.5, s6], [s6, s6, 1 / 3]]])
    torch.testing.assert_close(normalize_adjacency(a), expected)


def test_graph_layer_formula_by_hand():
    gnn = GNN(in_channels=2, num_nodes=3, neighbor_num=2).eval()
    with torch.no_grad():  # U = 0, V = identity, bnv = identity (eval, mean 0, var 1 - eps)
        gnn.U.weight.zero_(); gnn.U.bias.zero_()
        gnn.V.weight.copy_(torch.eye(2)); gnn.V.bias.zero_()
        gnn.bnv.running_var.fill_(1 - gnn.bnv.eps)
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    s6 = 1 / math.sqrt(6)
    # v + A_norm @ v, with A_norm from the test above (all positive, so ReLU keeps it)
    expected = torch.tensor([[[1 + 0.5 + s6, s6], [s6, 1 + 0.5 + s6], [1 + s6 + 1 / 3, 1 + s6 + 1 / 3]]])
    torch.testing.assert_close(gnn(v), expected)


def test_confidence_is_cosine_with_relu_class_vectors():
    v = torch.tensor([[[3.0, 4.0], [3.0, 4.0]]])
    sc = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])  # the second becomes (0, 2) -> (0, 1)
    torch.testing.assert_close(au_confidence(v, sc), torch.tensor([[0.6, 0.8]]))


def test_sub_aus_use_their_main_node_and_own_class_vectors(source):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        feats, conf = source(x)
    for i, main in enumerate(SUB_LIST):
        for side in (0, 1):
            j = 2 * i + side
            assert torch.equal(feats[:, 27 + j], feats[:, main])
            torch.testing.assert_close(conf[:, 27 + j], au_confidence(feats[:, main:main + 1], source.head.sub_sc[j:j + 1])[:, 0])
    assert (conf >= 0).all() and (conf <= 1 + 1e-6).all()
    # eval-mode batch norms: a clip's result does not depend on its batch neighbours
    with torch.inference_mode():
        f1, c1 = source(x[1:])
    torch.testing.assert_close(c1, conf[1:], rtol=1e-5, atol=1e-6)


def test_preprocess_matches_the_original_pil_eval_transform():
    from torchvision import transforms

    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 224, 224, generator=g) * 255).round().to(torch.uint8)
    original = transforms.Compose([  # OpenGraphAU utils.image_eval
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])(Image.fromarray(img.permute(1, 2, 0).numpy()))
    ours = anfl_preprocess(img[None].float() / 255, 224)[0]
    assert ours.shape == (3, 224, 224)
    # PIL and torch antialiased bilinear differ by rounding only: < 2 grey levels after /std
    assert (ours - original).abs().max() < 2 / 255 / 0.224


def test_preprocess_small_faces_keeps_size_and_normalises():
    x = torch.full((2, 3, 64, 64), 0.5)
    y = anfl_preprocess(x, 64)
    assert y.shape == (2, 3, 64, 64)
    torch.testing.assert_close(y[0, :, 10, 10], (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
