"""Every network, softmax and one-vs-all: the shapes the steps rely on."""

import pytest
import torch

from icl_cli.models import REGISTRY, build_model

SHAPES = {"mnist-cnn": (1, 28, 28), "tiny": (1, 12, 12), "resnet8": (3, 32, 32),
          "resnet32": (3, 32, 32)}


@pytest.mark.parametrize("mode", ["softmax", "ova"])
@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_any_batch_size_even_empty_gives_one_logit_per_class(arch, mode):
    net = build_model(arch, SHAPES[arch], 10, mode).eval()
    with torch.no_grad():
        for n in (0, 3):  # FGSM asks for the logits of "those that fooled": maybe none
            assert net(torch.zeros(n, *SHAPES[arch])).shape == (n, 10)
