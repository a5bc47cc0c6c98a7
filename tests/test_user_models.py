"""A user's own network: ``module.path:factory``, an installed package's entry point
(``icl.architectures``) and ``timm:NAME``; what the experiment records of its code, and
every mistake as one line (``ArchError``, exit 3 on the command line).

Modules live in ``tmp_path``: found through the current folder (as ``python -m``) or the
path (as PYTHONPATH); the entry point comes from a tiny installed distribution (a
``.dist-info`` folder on ``sys.path``, read by ``importlib.metadata``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from icl_cli import models
from icl_cli.config import BUILTIN_ARCHS, ModelConfig, arch_help, installed_architectures
from icl_cli.models import ArchError, build_model, has_batch_norm

ROOT = Path(__file__).resolve().parents[1]

NETS = '''
import torch
from torch import nn


def build(input_shape, num_outputs):
    """A small conv net with batch norm."""
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_outputs))


def lazy(input_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_outputs))


def raises(input_shape, num_outputs):
    raise ValueError("this net wants 3 channels")


def wrong_shape(input_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_outputs + 1))


def fails_forward(input_shape, num_outputs):
    return nn.Linear(3, num_outputs)


def not_a_module(input_shape, num_outputs):
    return "a string"


SHARED = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))  # made (random) as it is imported


def singleton(input_shape, num_outputs):
    return SHARED


def positional_only(shape, outputs, /):
    return nn.Linear(1, 1)


class Net(nn.Module):
    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.fc = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_outputs)

    def forward(self, x):
        return self.fc(x.flatten(1))


WIDTH = 3
'''


def forget_modules_in(folder: Path) -> None:
    """Drop the modules imported from ``folder`` from ``sys.modules`` (only those: a
    library module imported meanwhile must stay the one its classes came from)."""
    top = str(folder)
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(top):
            del sys.modules[name]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """sys.path as it was after the test and the modules of ``tmp_path`` forgotten, so
    that each test imports its own files."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield monkeypatch
    forget_modules_in(tmp_path)


def module(folder: Path, name: str, text: str = NETS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def distribution(site: Path, name: str = "my_nets", publishes: str = "my-net = my_nets:build",
                 version: str = "1.0") -> Path:
    """An installed distribution in ``site``: its module and its ``.dist-info`` with an
    entry point in ``icl.architectures``."""
    module(site, name)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\n"
                                   f"Version: {version}\n")
    (info / "entry_points.txt").write_text(f"[console_scripts]\nx = y:z\n\n"
                                           f"[icl.architectures]\n{publishes}\n")
    return site


def test_builtin_names_are_the_registry():
    assert sorted(BUILTIN_ARCHS) == sorted(models.REGISTRY)


# ---------------------------------------------------------------- module:factory


def test_a_factory_in_the_current_folder(tmp_path, isolated):
    module(tmp_path, "cwdnets")
    isolated.chdir(tmp_path)
    net = build_model("cwdnets:build", (1, 12, 12), 5)
    bn = net[1]  # the shape check moved no statistic and left the net as built
    assert net.training and int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert net(torch.zeros(3, 1, 12, 12)).shape == (3, 5) and has_batch_norm(net)
    assert build_model("cwdnets:Net", (1, 12, 12), 5)(torch.zeros(2, 1, 12, 12)).shape == (2, 5)


def test_a_factory_on_the_path_and_lazy_layers_materialised(tmp_path, isolated):
    isolated.syspath_prepend(str(module(tmp_path / "lib", "pathnets").parent))
    net = build_model("pathnets:lazy", (3, 4, 4), 7)
    assert net[1].weight.shape == (7, 48)  # before any optimizer or checkpoint sees it
    state = net.state_dict()
    torch.manual_seed(0)
    build_model("pathnets:lazy", (3, 4, 4), 7).load_state_dict(state)


def test_same_seed_same_weights_whether_or_not_the_module_was_imported(tmp_path, isolated):
    isolated.syspath_prepend(str(module(tmp_path, "seednets").parent))
    nets = []
    for _ in range(2):
        torch.manual_seed(3)
        nets.append(build_model("seednets:build", (1, 8, 8), 4, "ova"))
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_vs_all_refuses_a_factory_that_shares_its_network(tmp_path, isolated):
    isolated.syspath_prepend(str(module(tmp_path, "onenets").parent))
    build_model("onenets:singleton", (1, 8, 8), 1)  # fine for one network
    with pytest.raises(ArchError, match="must make a new network at every call"):
        build_model("onenets:singleton", (1, 8, 8), 3, "ova")


def test_one_vs_all_is_k_copies(tmp_path, isolated):
    isolated.syspath_prepend(str(module(tmp_path, "ovanets").parent))
    one = build_model("ovanets:build", (1, 8, 8), 1)
    net = build_model("ovanets:build", (1, 8, 8), 4, "ova").eval()
    assert net.heads == 4 and len(net.nets) == 4
    assert sum(p.numel() for p in net.parameters()) == 4 * sum(p.numel() for p in one.parameters())
    xs = [torch.randn(n, 1, 8, 8) for n in (2, 0, 3, 1)]
    with torch.no_grad():
        alone = net.forward_heads(xs)
        for k, x in enumerate(xs):
            assert torch.allclose(alone[k], net(x)[:, k:k + 1])
        assert net(torch.zeros(0, 1, 8, 8)).shape == (0, 4)


@pytest.mark.parametrize("factory, says", [
    ("raises", "raised ValueError: this net wants 3 channels"),
    ("wrong_shape", r"to \(2, 6\); icl needs \(B, K\) logits, here \(2, 5\)"),
    ("fails_forward", "fails on a batch of shape"),
    ("not_a_module", "returned a str, not a torch.nn.Module"),
    ("positional_only", "raised TypeError"),
    ("WIDTH", "is a int, not a callable"),
    ("nothere", "has no 'nothere'"),
])
def test_a_bad_factory_is_one_line(tmp_path, isolated, factory, says):
    isolated.syspath_prepend(str(module(tmp_path, "badnets").parent))
    with pytest.raises(ArchError, match=says) as err:
        build_model(f"badnets:{factory}", (1, 8, 8), 5)
    assert "\n" not in str(err.value) and f"badnets:{factory}" in str(err.value)


def test_a_module_that_is_not_there_says_where_to_run(tmp_path, isolated):
    isolated.chdir(tmp_path)
    with pytest.raises(ArchError, match="no module named 'nowhere_nets'") as err:
        build_model("nowhere_nets:build", (1, 8, 8), 5)
    assert "run icl from the folder that holds nowhere_nets.py" in str(err.value)
    assert "PYTHONPATH" in str(err.value) and str(tmp_path) in str(err.value)


def test_a_module_whose_own_import_fails(tmp_path, isolated):
    module(tmp_path, "needy", "import not_installed_pkg_xyz\n")
    module(tmp_path, "broken", "raise RuntimeError('half written')\n")
    isolated.chdir(tmp_path)
    with pytest.raises(ArchError, match="not_installed_pkg_xyz.*install it"):
        build_model("needy:build", (1, 8, 8), 5)
    with pytest.raises(ArchError, match="raised RuntimeError: half written"):
        build_model("broken:build", (1, 8, 8), 5)


@pytest.mark.parametrize("spec", ["a b:c", "mod:", ":build", "mod:1x", "nope-not-installed"])
def test_malformed_and_unknown_specs(spec):
    with pytest.raises(ArchError) as err:
        build_model(spec, (1, 8, 8), 5)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- recorded source


def test_source_recorded_and_drift_reported(tmp_path, isolated):
    path = module(tmp_path, "driftnets")
    isolated.chdir(tmp_path)
    cfg = models.checked_model(ModelConfig(arch="driftnets:build"), (1, 8, 8), 3)
    assert cfg.source.startswith("driftnets.py sha256:") and len(cfg.source) == 20 + 64
    assert models.arch_drift(cfg) is None and models.arch_drift(cfg.to_dict()) is None
    path.write_text(path.read_text() + "\n# tuned\n")
    drift = models.arch_drift(cfg)
    assert "changed since the experiment was made" in drift and cfg.source[:32] in drift
    assert "\n" not in drift and len(drift) < 200
    kept = models.checked_model(cfg, (1, 8, 8), 3)  # --from: the parent's record stays
    assert kept.source == cfg.source
    assert models.checked_model(ModelConfig(), (1, 28, 28), 10).source is None  # built-in
    assert models.arch_drift(ModelConfig()) is None


def test_checked_model_refuses_before_anything_is_recorded(tmp_path, isolated):
    isolated.syspath_prepend(str(module(tmp_path, "checknets").parent))
    with pytest.raises(ArchError, match="here \\(2, 1\\)"):
        models.checked_model(ModelConfig(arch="checknets:wrong_shape", mode="ova"), (1, 8, 8), 3)
    state = torch.random.get_rng_state()
    models.checked_model(ModelConfig(arch="checknets:build"), (1, 8, 8), 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the check draws nothing
    models.check_spec("checknets:build")
    with pytest.raises(ArchError):
        models.check_spec("checknets:nothere")


# ---------------------------------------------------------------- entry points


def test_an_installed_entry_point(tmp_path, isolated):
    isolated.syspath_prepend(str(distribution(tmp_path / "site")))
    assert "my-net" in installed_architectures() and "my-net" in arch_help()
    net = build_model("my-net", (1, 8, 8), 3)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    source = models.arch_source("my-net")
    assert source.startswith("my-nets 1.0, my_nets.py sha256:")


def test_the_listing_agrees_with_importlib_metadata(tmp_path, isolated):
    from importlib.metadata import entry_points

    isolated.syspath_prepend(str(distribution(tmp_path / "a", "nets_a", "net-a = nets_a:build")))
    isolated.syspath_prepend(str(distribution(tmp_path / "b", "nets_b",
                                              "net-b = nets_b:build\ntiny = nets_b:build")))
    found = sorted({ep.name for ep in entry_points(group="icl.architectures")}
                   - set(BUILTIN_ARCHS))
    assert found == installed_architectures() and {"net-a", "net-b"} <= set(found)
    assert "tiny" not in installed_architectures()  # a built-in name wins


def test_an_entry_point_published_twice_or_broken(tmp_path, isolated):
    isolated.syspath_prepend(str(distribution(tmp_path / "a", "twin_a", "twin = twin_a:build")))
    isolated.syspath_prepend(str(distribution(tmp_path / "b", "twin_b", "twin = twin_b:build")))
    with pytest.raises(ArchError, match="several installed packages.*twin-a 1.0.*twin-b 1.0"):
        build_model("twin", (1, 8, 8), 3)
    isolated.syspath_prepend(str(distribution(tmp_path / "c", "gone", "gone-net = gone:nope")))
    with pytest.raises(ArchError, match="loading gone:nope .*raised AttributeError"):
        build_model("gone-net", (1, 8, 8), 3)


def test_the_listing_imports_neither_torch_nor_importlib_metadata(tmp_path):
    site = distribution(tmp_path / "site")
    code = ("import sys, icl_cli.config as c; h = c.arch_help(); "
            "print('my-net' in h, 'torch' in sys.modules, 'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin"})
    assert out.stdout.split() == ["True", "False", "False"], out.stderr


# ---------------------------------------------------------------- timm


def test_timm_cnn_with_batch_norm_sized_from_the_data():
    timm = pytest.importorskip("timm")
    net = build_model("timm:test_resnet", (1, 12, 12), 10)
    assert has_batch_norm(net) and net(torch.zeros(2, 1, 12, 12)).shape == (2, 10)
    ova = build_model("timm:test_resnet", (1, 12, 12), 3, "ova")
    assert ova.heads == 3 and ova.eval()(torch.zeros(2, 1, 12, 12)).shape == (2, 3)
    assert models.arch_source("timm:test_resnet") == f"timm {timm.__version__}"


def test_timm_transformer_gets_the_image_size():
    pytest.importorskip("timm")
    net = build_model("timm:test_vit", (3, 32, 32), 4)
    assert net.patch_embed.img_size == (32, 32)
    with pytest.raises(ArchError, match="fails on a batch of shape .*divisible"):
        build_model("timm:test_vit", (1, 12, 12), 4)  # patches of 16 on 12 x 12


def test_timm_input_gradient_in_eval_mode_moves_no_batch_norm_statistic():
    pytest.importorskip("timm")
    from icl_cli.algo.ascent import frozen

    net = build_model("timm:test_resnet", (3, 16, 16), 5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    with frozen(net):
        net(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_timm_local_weights_only_nothing_downloads(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from timm.models import _builder

    def no_network(*a, **k):
        raise AssertionError("timm tried to download")

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        if hasattr(_builder, name):
            monkeypatch.setattr(_builder, name, no_network)
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=1000)  # 3 channels, 1000 classes
    weights = tmp_path / "w.pth"
    torch.save(source.state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    spec = models.normalized_arch("timm:test_resnet@w.pth")
    assert spec == f"timm:test_resnet@{weights}"
    net = build_model(spec, (1, 16, 16), 10)  # stem and classifier adapted by timm
    name = next(k for k in source.state_dict() if k.startswith("layer") and "conv" in k)
    assert torch.equal(net.state_dict()[name], source.state_dict()[name])
    assert models.arch_source(spec).endswith(f"w.pth sha256:{models._sha256(weights)}")
    with pytest.raises(ArchError, match="does not exist"):
        build_model("timm:test_resnet@missing.pth", (1, 16, 16), 10)
    with pytest.raises(ArchError, match="has no model 'no_such_net'"):
        build_model("timm:no_such_net", (1, 16, 16), 10)


def test_timm_absent_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ArchError, match=r"pip install 'icl-toolkit\[timm\]'"):
        build_model("timm:resnet18", (1, 8, 8), 3)
