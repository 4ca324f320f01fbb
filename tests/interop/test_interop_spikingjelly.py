"""SpikingJelly -> refsnn: LIFNode (decay_input False/True), IFNode, conv + pooling, refusals, CLI."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("spikingjelly")

from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402
from dyadic import dyadic_  # noqa: E402
from torch import nn  # noqa: E402

from refsnn.interop.torch_import import ImportRefused, import_module  # noqa: E402
from refsnn.io import load_model  # noqa: E402

TH = 0.25


def lif(**kwargs):
    return neuron.LIFNode(**{"tau": 2.0, "decay_input": False, "v_threshold": TH, "v_reset": 0.0, **kwargs})


def conv_net(node=lif):
    return nn.Sequential(layer.Conv2d(2, 4, 3, stride=1, padding=1), node(), layer.AvgPool2d(2),
                         layer.Conv2d(4, 4, 3, stride=2, padding=1), node(), layer.Flatten(),
                         layer.Linear(4 * 2 * 2, 5), node())


def run_own(model, x):
    """SpikingJelly's multi-step forward (step_mode 'm') -> output spikes [T, B, n_out]."""
    functional.set_step_mode(model, "m")
    functional.reset_net(model)
    with torch.no_grad():
        out = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    functional.reset_net(model)
    functional.set_step_mode(model, "s")
    return out


@pytest.mark.parametrize("decay_input", [False, True])
def test_conv_round_trip(tmp_path, decay_input):
    model = dyadic_(conv_net(lambda: lif(decay_input=decay_input)), seed=3)
    net, report = import_module(model, "spikingjelly", input_shape=(2, 8, 8), out=tmp_path / "m.h5",
                                return_report=True)
    assert report.firing == ">=" and report.decay == 0.5 and report.validation["own_forward"] == "identical"
    assert any("decay_input=True" in n for n in report.notices) == decay_input
    assert all(f > 0 for f in report.validation["spike_fraction"])
    loaded = load_model(tmp_path / "m.h5")
    assert loaded.firing == ">=" and [l.kind for l in loaded.layers] == [
        "conv2d", "avgpool2d", "conv2d", "flatten", "linear"]
    x = (np.random.default_rng(5).random((8, 100, 2, 8, 8)) < 0.4).astype(np.uint8)
    theirs = run_own(model, x)  # multi-step mode: a different code path from the importer's single steps
    trace = loaded.run(x)
    np.testing.assert_array_equal(trace.spikes[-1], theirs)
    assert any(np.any(m == TH) for m in trace.membranes)  # ties at the threshold occur
    wrong = load_model(tmp_path / "m.h5")
    wrong.firing = ">"
    assert not np.array_equal(wrong.run(x).spikes[-1], theirs)


def test_ifnode_is_alpha_one():
    model = dyadic_(nn.Sequential(layer.Linear(10, 6), neuron.IFNode(v_threshold=TH), layer.Linear(6, 3),
                                  neuron.IFNode(v_threshold=TH)), seed=4)
    net = import_module(model, "spikingjelly")
    assert net.decay == 1.0 and net.firing == ">="


def test_float_weights_and_tau_not_a_power_of_two():
    torch.manual_seed(0)
    model = nn.Sequential(layer.Linear(12, 8), lif(tau=4.0 / 3.0), layer.Linear(8, 3), lif(tau=4.0 / 3.0))
    net = import_module(model, "spikingjelly", n_random=32)
    assert abs(net.decay - 0.25) < 1e-15  # the paper's alpha: tau = 4/3


@pytest.mark.parametrize("node, pattern", [
    (lambda: lif(v_reset=None), r"v_reset=None\) is refused: that is the soft reset"),
    (lambda: lif(v_reset=0.1), r"v_reset=0.1\) is refused"),
    (lambda: neuron.ParametricLIFNode(v_threshold=TH), "time constant is learned"),
])
def test_refusals_name_the_setting(node, pattern):
    model = nn.Sequential(layer.Linear(5, 4), node())
    with pytest.raises(ImportRefused, match=pattern):
        import_module(model, "spikingjelly")


def test_pooling_before_the_neuron_is_refused():
    model = nn.Sequential(layer.Conv2d(1, 2, 3, padding=1), layer.AvgPool2d(2), lif())
    with pytest.raises(ImportRefused, match="before its LIF neuron"):
        import_module(model, "spikingjelly", input_shape=(1, 4, 4))


def test_cli_full_module(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data_scripts"))
    import import_torch
    model = dyadic_(nn.Sequential(layer.Flatten(), layer.Linear(16, 6), lif(), layer.Linear(6, 3), lif()), seed=6)
    torch.save(model, tmp_path / "model.pt")
    out = tmp_path / "imported" / "model.h5"
    args = ["--framework", "spikingjelly", "--model", str(tmp_path / "model.pt"), "--out", str(out.parent),
            "--input-shape", "1,4,4"]
    assert import_torch.main(args) == 2  # a pickled module is loaded only with --full-module
    assert not out.exists()
    assert import_torch.main(args + ["--full-module"]) == 0
    assert load_model(out).input_shape == (1, 4, 4)
