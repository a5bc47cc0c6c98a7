"""Imported once by the reliability tests' fork server: pays torch's lazy imports and
first-call costs (optimizers, autograd on inputs, h5py, matplotlib, MLflow's client) and
loads the tiny test data, so that every forked ``icl`` process starts warm."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402, F401
import torch  # noqa: E402

from icl_cli.config import DataConfig  # noqa: E402
from icl_cli.steps.common import _load_cached  # noqa: E402

torch.set_num_threads(1)
_net = torch.nn.Linear(4, 2)
for _opt in (torch.optim.SGD(_net.parameters(), lr=0.1, momentum=0.9),
             torch.optim.Adam(_net.parameters(), lr=0.1)):
    _net(torch.ones(3, 4)).sum().backward()
    _opt.step()
_x = torch.zeros(2, 4, requires_grad=True)
torch.optim.Adam([_x], lr=0.1).step()
_load_cached(DataConfig(train_size=200, val_size=100))

# MLflow, imported as icl imports it (quiet, bounded HTTP): a child that tracks (the
# default) would otherwise import it anew, ~1 CPU-second each.
from store.tracking import _import_mlflow  # noqa: E402

_import_mlflow()

# Walk the command line once (parsing, help, catalog reads, the error path), so that a
# child that drops root privileges never needs to import anything more.
import tempfile  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from icl_cli.cli import register  # noqa: E402
from store import Store  # noqa: E402

with tempfile.TemporaryDirectory() as _tmp:
    Store.init(_tmp).close()
    for _argv in (["status", "-w", _tmp, "--json"], ["status", "-w", _tmp],
                  ["synthesize", "--help"], ["synthesize", "-w", _tmp, "-r", "1"],
                  ["verify", "-w", _tmp], ["frob"]):
        CliRunner().invoke(register(), _argv)
