"""snnTorch -> NIR -> refsnn and refsnn -> NIR -> snnTorch: identical spikes on random inputs (FC and CONV),
through snnTorch's own export_to_nir / import_from_nir (snnTorch fires at m > th, NIR's comparison)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
snn = pytest.importorskip("snntorch")
nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")

from dyadic import dyadic_  # noqa: E402
from snntorch.export_nir import export_to_nir  # noqa: E402
from snntorch.import_nir import import_from_nir  # noqa: E402
from torch import nn  # noqa: E402

from refsnn import SNN, Linear  # noqa: E402
from refsnn.interop.nir import from_nir, to_nir  # noqa: E402
from refsnn.layers import AvgPool2d, Conv2d, Flatten  # noqa: E402

DT = 1e-4     # the step snnTorch's NIR export and import assume
TH = 0.25


def leaky(beta, *shape):
    # per-neuron tensors: snnTorch 1.0's export of a scalar beta gives LIF nodes of shape () that nir's
    # type check rejects; the values are all equal, so refsnn reads one decay and one threshold
    return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.full(shape, TH), reset_mechanism="zero",
                     init_hidden=True)


def fc(beta):
    return nn.Sequential(nn.Linear(16, 12), leaky(beta, 12), nn.Linear(12, 5), leaky(beta, 5)), (16,)


def conv(beta):
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), leaky(beta, 3, 4, 4), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(12, 4), leaky(beta, 4)), (1, 8, 8)


def spikes_of(model, x):
    """[T, B, n] output spikes, batch given at once (Sequential models)."""
    for m in model.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    with torch.no_grad():
        return torch.stack([model(x_t) for x_t in torch.as_tensor(x, dtype=torch.float32)]).numpy()


def spikes_per_sample(model, x):
    """[T, B, n] output spikes of an imported GraphModule, one unbatched sample at a time."""
    result = []
    for b in range(x.shape[1]):
        for m in model.modules():
            if isinstance(m, snn.Leaky):
                m.reset_mem()
        with torch.no_grad():
            steps = [model(x_t) for x_t in torch.as_tensor(x[:, b], dtype=torch.float32)]
        result.append(torch.stack([s[0] if isinstance(s, tuple) else s for s in steps]).numpy())
    return np.stack(result, axis=1)


def random_trains(shape, seed, steps=10, batch=24):
    rng = np.random.default_rng(seed)
    densities = np.linspace(0.05, 0.9, batch).reshape((1, batch) + (1,) * len(shape))
    return (rng.random((steps, batch, *shape)) < densities).astype(np.uint8)


@pytest.mark.parametrize("arch", ["fc", "conv"])
@pytest.mark.parametrize("beta", [0.5, 0.875])
def test_snntorch_to_nir_to_refsnn(arch, beta, tmp_path):
    model, shape = {"fc": fc, "conv": conv}[arch](beta)
    dyadic_(model, seed=7)
    graph = export_to_nir(model, torch.zeros(1, *shape), ignore_dims=[0])
    path = tmp_path / "snntorch.nir"
    nir.write(path, graph)
    net = from_nir(path, DT)
    assert (net.decay, net.threshold, net.firing, net.input_shape) == (beta, TH, ">", shape)
    x = random_trains(shape, seed=8)
    trace = net.run(x)
    assert np.array_equal(trace.spikes[-1], spikes_of(model, x))
    # the comparison matters on these inputs: membranes sit exactly on the threshold
    assert sum(int((m == TH).sum()) for m in trace.membranes) > 0
    assert not np.array_equal(from_nir(path, DT, firing=">=").run(x).spikes[-1], trace.spikes[-1])


def refsnn_net(arch, decay, seed=9):
    rng = np.random.default_rng(seed)
    d = lambda *s: np.round(rng.normal(size=s) * 16) / 64  # noqa: E731
    if arch == "fc":
        return SNN([Linear(d(12, 16), d(12)), Linear(d(5, 12), d(5))], threshold=TH, decay=decay, firing=">")
    return SNN([Conv2d(d(3, 1, 3, 3), d(3), stride=2, padding=1), AvgPool2d(2), Flatten(), Linear(d(4, 12), d(4))],
               threshold=TH, decay=decay, firing=">", input_shape=(1, 8, 8))


@pytest.mark.parametrize("arch", ["fc", "conv"])
@pytest.mark.parametrize("decay", [0.25, 0.75])
def test_refsnn_to_nir_to_snntorch(arch, decay):
    net = refsnn_net(arch, decay)
    model = import_from_nir(to_nir(net, DT))
    x = random_trains(net.input_shape, seed=10, batch=12)
    trace = net.run(x)
    assert sum(int((m == TH).sum()) for m in trace.membranes) > 0
    assert np.array_equal(spikes_per_sample(model, x), trace.spikes[-1])
