"""snnTorch -> refsnn: equivalence on spikes, ties at the threshold, refusals, version-semantics probe, CLI."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
snn = pytest.importorskip("snntorch")

from dyadic import dyadic_  # noqa: E402
from torch import nn  # noqa: E402

from refsnn.interop.torch_import import ImportRefused, import_module  # noqa: E402
from refsnn.io import load_model, read_metadata  # noqa: E402

TH, BETA = 0.25, 0.5


def leaky(**kwargs):
    return snn.Leaky(beta=kwargs.pop("beta", BETA), threshold=kwargs.pop("threshold", TH),
                     reset_mechanism=kwargs.pop("reset_mechanism", "zero"), **kwargs)


def sequential(n_in=16, hidden=12, n_out=5, **kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), leaky(init_hidden=True, **kwargs),
                         nn.Linear(hidden, n_out), leaky(init_hidden=True, **kwargs))


class ExplicitState(nn.Module):
    """The snnTorch tutorial style: explicit membranes, a loop over time in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.lif1 = leaky()
        self.fc1 = nn.Linear(3 * 4 * 4, 6)
        self.lif2 = leaky()

    def forward(self, x_seq):
        mem1, mem2, out = None, None, []
        for x in x_seq:
            cur = self.conv1(x)
            mem1 = torch.zeros_like(cur) if mem1 is None else mem1
            spk1, mem1 = self.lif1(cur, mem1)
            cur2 = self.fc1(spk1.flatten(1))
            mem2 = torch.zeros_like(cur2) if mem2 is None else mem2
            spk2, mem2 = self.lif2(cur2, mem2)
            out.append(spk2)
        return torch.stack(out)


def run_sequential(model, x_seq):
    """snnTorch's own forward, step by step, from reset state -> output spikes [T, B, n_out]."""
    for m in model.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    with torch.no_grad():
        return torch.stack([model(x) for x in torch.as_tensor(x_seq, dtype=torch.float32)]).numpy()


def binary(rng, shape, density=0.4):
    return (rng.random(shape) < density).astype(np.uint8)


def test_sequential_round_trip_with_ties(tmp_path):
    model = dyadic_(sequential(), seed=1)
    net, report = import_module(model, "snntorch", input_shape=(1, 4, 4), out=tmp_path / "m.h5", return_report=True)
    assert report.firing == ">" and report.decay == BETA and report.threshold == TH
    assert report.validation["own_forward"] == "identical"
    assert report.validation["dtypes_checked"] == ["float32", "float64"]
    assert all(0 < f < 1 for f in report.validation["spike_fraction"])
    loaded = load_model(tmp_path / "m.h5")
    assert loaded.firing == ">" and loaded.decay == BETA and loaded.dtype == np.float32
    meta = read_metadata(tmp_path / "m.h5")["interop"]
    assert meta["framework"] == "snntorch" and meta["versions"]["snntorch"] == snn.__version__

    # fresh inputs, snnTorch's own forward vs the loaded file
    x = binary(np.random.default_rng(7), (10, 200, 1, 4, 4))
    theirs = run_sequential(model, x)
    mine = loaded.run(x).spikes[-1]
    np.testing.assert_array_equal(mine, theirs)
    # the dyadic weights put membranes exactly on the threshold: the other comparison differs
    trace = loaded.run(x)
    assert any(np.any(m == TH) for m in trace.membranes)
    wrong = load_model(tmp_path / "m.h5")
    wrong.firing = ">="
    assert not np.array_equal(wrong.run(x).spikes[-1], theirs)


def test_explicit_state_module_with_forward_fn():
    model = dyadic_(ExplicitState(), seed=2)
    net, report = import_module(model, "snntorch", input_shape=(1, 8, 8), return_report=True,
                                forward_fn=lambda module, x: module(x))
    assert report.validation["own_forward"] == "identical"
    assert [layer.kind for layer in net.layers] == ["conv2d", "flatten", "linear"]  # flatten inserted
    assert any("flatten" in notice for notice in report.notices)
    x = binary(np.random.default_rng(3), (10, 50, 1, 8, 8))
    with torch.no_grad():
        theirs = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_array_equal(net.run(x).spikes[-1], theirs)


def test_random_float_weights_and_real_samples():
    torch.manual_seed(0)
    model = sequential(n_in=20, hidden=30, n_out=4)
    images = np.random.default_rng(1).random((8, 20))
    net, report = import_module(model, "snntorch", samples=images, return_report=True)
    assert report.validation["samples"] == 8 and report.input_shape == (20,)


def test_wrong_wiring_is_refused():
    model = dyadic_(sequential(), seed=4)

    def forward_fn(module, x):  # a forward that skips the first layer's neuron
        out = []
        for m in module.modules():
            if isinstance(m, snn.Leaky):
                m.reset_mem()
        for xt in x:
            h = module[1](module[0](xt))
            out.append(module[4](module[3]((h > 0).float())))
        return torch.stack(out)

    with pytest.raises(ImportRefused, match="wires them differently"):
        import_module(model, "snntorch", input_shape=(1, 4, 4), forward_fn=forward_fn)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"reset_mechanism": "subtract"}, "reset_mechanism='subtract'"),
    ({"reset_mechanism": "none"}, "reset_mechanism='none'"),
    ({"learn_beta": True}, "learn_beta=True"),
    ({"learn_threshold": True}, "learn_threshold=True"),
    ({"beta": torch.tensor([0.5] * 12)}, "beta has 12 values"),
    ({"graded_spikes_factor": 2.0}, "graded_spikes_factor"),
])
def test_refusals_name_the_setting(kwargs, pattern):
    model = nn.Sequential(nn.Linear(6, 12), snn.Leaky(**{"beta": BETA, "reset_mechanism": "zero", **kwargs}),
                          nn.Linear(12, 3), leaky())
    with pytest.raises(ImportRefused, match=pattern):
        import_module(model, "snntorch")


def test_default_leaky_is_refused():
    model = nn.Sequential(nn.Linear(6, 3), snn.Leaky(beta=0.9))  # snnTorch's default reset is "subtract"
    with pytest.raises(ImportRefused, match="subtract"):
        import_module(model, "snntorch")


def test_structure_refusals():
    with pytest.raises(ImportRefused, match="no LIF neuron after it"):
        import_module(nn.Sequential(nn.Linear(4, 3), leaky(), nn.Linear(3, 2)), "snntorch")
    with pytest.raises(ImportRefused, match="different threshold"):
        import_module(nn.Sequential(nn.Linear(4, 3), leaky(), nn.Linear(3, 2), leaky(threshold=0.5)), "snntorch")
    with pytest.raises(ImportRefused, match="not supported"):
        import_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), leaky()), "snntorch")


def test_probe_detects_reset_that_drops_the_next_input(monkeypatch):
    """Releases differ in what the 'zero' reset clears: before 0.8 the explicit-state path computed
    (1 - R) (beta U + I), dropping the input of the step after a spike. The probe runs the installed
    code, so a neuron behaving that way is refused whatever version it reports."""
    def zero_including_input(self, input_):
        return (1 - self.reset) * self._base_state_function(input_)

    monkeypatch.setattr(snn.Leaky, "_base_zero", zero_including_input)
    model = nn.Sequential(nn.Linear(6, 4), leaky())
    with pytest.raises(ImportRefused, match="discards the input current of the next step"):
        import_module(model, "snntorch")


MODEL_SOURCE = """
import snntorch as snn
from torch import nn


class TinyNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(6, 5), snn.Leaky(beta=0.5, threshold=0.25, reset_mechanism="zero", init_hidden=True),
                         nn.Linear(5, 3), snn.Leaky(beta=0.5, threshold=0.25, reset_mechanism="zero", init_hidden=True))
"""


def test_cli_state_dict_with_module_class(tmp_path, monkeypatch):
    """snnTorch modules do not pickle whole (their surrogates are closures): a state_dict plus the class."""
    import sys
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "data_scripts"))
    (tmp_path / "tiny_snntorch_model.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import import_torch
    import tiny_snntorch_model
    model = dyadic_(tiny_snntorch_model.TinyNet(), seed=5)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "imported" / "model.h5"
    args = ["--framework", "snntorch", "--model", str(tmp_path / "weights.pt"), "--out", str(out.parent)]
    assert import_torch.main(args) == 2  # a state_dict alone does not say which module it belongs to
    assert not out.exists()
    assert import_torch.main(args + ["--module-class", "tiny_snntorch_model:TinyNet"]) == 0
    loaded = load_model(out)
    assert loaded.firing == ">" and loaded.decay == 0.5
    np.testing.assert_array_equal(loaded.layers[0].weight, model[0].weight.detach().numpy())
    sys.modules.pop("tiny_snntorch_model", None)
