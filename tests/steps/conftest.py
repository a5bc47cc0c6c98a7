"""Markers of the tests in this folder that pyproject.toml does not list."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ddp: several torch.distributed (gloo) ranks under torchrun, on CPU")
