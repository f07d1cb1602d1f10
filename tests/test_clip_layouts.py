"""The CLIP fine-tune preset builds the tower its checkpoint was trained as, checked against open_clip's own code.

OpenAI's CLIP ViT-B/16 (the weights FT-CLIP and the paper fine-tune) uses QuickGELU; open_clip's `ViT-B-16`
(e.g. its LAION weights) uses GELU. Both state dicts load into either timm layout without a single missing
key, so only the features tell them apart. open_clip (a test dependency) builds each tower with random
weights (nothing is downloaded); the preset loads the saved state dict; the pooled image features (after
`ln_post`, before the projection) must agree to 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from masksub_exp.config import to_settings
from masksub_exp.models import build_network

from .conftest import compose_cfg


def open_clip_tower(arch: str, path: Path) -> torch.nn.Module:
    """open_clip's model with random weights, saved whole (text tower included) as a user's file would be."""
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    torch.save(model.state_dict(), path)
    visual = model.visual
    visual.proj = None  # pooled features: ln_post of the class token, before CLIP's projection
    return visual


def preset_tower(tmp_path: Path, checkpoint: Path, extra: list[str]) -> torch.nn.Module:
    (tmp_path / "img" / "train").mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(["experiment=clip_ft/vit_b16", f"data.root={tmp_path / 'img'}",
                       f"model.checkpoint={checkpoint}", *extra], tmp_path / "run")
    s = to_settings(cfg)
    return build_network(s.model, s.data).eval()


def pooled(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.forward_head(net.forward_features(x), pre_logits=True)


LAYOUTS = [("ViT-B-16-quickgelu", []), ("ViT-B-16", ["model=vit_b16_clip_gelu"])]


@pytest.mark.parametrize(("arch", "extra"), LAYOUTS, ids=["openai_quickgelu", "open_clip_gelu"])
def test_preset_features_match_open_clip(arch: str, extra: list[str], tmp_path: Path) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = open_clip_tower(arch, tmp_path / "clip.pt")
    net = preset_tower(tmp_path, tmp_path / "clip.pt", extra)
    with torch.no_grad():
        want, got = ref(x), pooled(net, x)
    assert got.shape == want.shape == (2, 768)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_wrong_activation_is_visible(tmp_path: Path) -> None:
    """OpenAI (QuickGELU) weights in the GELU tower load silently but compute another function."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ref = open_clip_tower("ViT-B-16-quickgelu", tmp_path / "clip.pt")
    net = preset_tower(tmp_path, tmp_path / "clip.pt", ["model=vit_b16_clip_gelu"])
    with torch.no_grad():
        gap = (pooled(net, x) - ref(x)).abs().max().item()
    assert gap > 1e-3, f"GELU and QuickGELU towers agree to {gap}: the comparison above could not tell them apart"


def test_openai_torchscript_archive_loads_without_running_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI's CLIP releases are TorchScript archives: a tiny CLIP in that layout (open_clip's model, scripted
    and saved as OpenAI did) gives the tensors torch.jit.load would give, and the timm tower built from them
    computes open_clip's pooled features; torch.jit.load is never called by the loader."""
    import timm
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from masksub_exp.pretrained import load_pretrained, load_state_dict_file
    from masksub_exp.safe_load import is_torchscript_archive, load_torchscript_weights

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, quick_gelu=True,
                           vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
                           text_cfg=CLIPTextCfg(context_length=8, vocab_size=10, width=32, heads=2, layers=1)).eval()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.script(model).save(str(path))
    assert is_torchscript_archive(path)
    reference = torch.jit.load(str(path)).state_dict()  # the test may run it: it wrote the archive itself

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader called torch.jit.load")

    monkeypatch.setattr(torch.jit, "load", tripwire)
    got = load_torchscript_weights(path, label="model.checkpoint")
    assert got.keys() == reference.keys() and "visual.transformer.resblocks.1.attn.in_proj_weight" in got
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert load_state_dict_file(path).keys() == got.keys()

    net = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, img_size=32, patch_size=8,
                            embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    load_pretrained(net, path, log=lambda _: None)
    visual = model.visual
    visual.proj = None  # pooled features: ln_post of the class token, before CLIP's projection
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(pooled(net, x), visual(x), rtol=0, atol=1e-5)
