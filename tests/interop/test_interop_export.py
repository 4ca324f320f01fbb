"""Round trip: import an snnTorch model, export a PyTorch bound routine's claims, run verify.check."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
snn = pytest.importorskip("snntorch")

from dyadic import dyadic_  # noqa: E402
from torch import nn  # noqa: E402

from refsnn.interop import export_bounds, import_module  # noqa: E402
from verify.cases import read_cases  # noqa: E402
from verify.check import main as check_main  # noqa: E402

T_CERT, N_IN = 3, 6


def small_model():
    model = nn.Sequential(
        nn.Linear(N_IN, 5), snn.Leaky(beta=0.5, threshold=0.25, reset_mechanism="zero", init_hidden=True),
        nn.Linear(5, 3), snn.Leaky(beta=0.5, threshold=0.25, reset_mechanism="zero", init_hidden=True))
    return dyadic_(model, seed=11, scale=24, bias_scale=8)


def rates_torch(model, x):
    """snnTorch forward over time: x [T, B, n_in] -> mean output spikes [B, n_out]."""
    for m in model.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    return torch.stack([model(xt) for xt in x]).mean(0)


def boxes(seed=0, batch=4, free=5):
    rng = np.random.default_rng(seed)
    center = (rng.random((T_CERT, batch, N_IN)) < 0.5).astype(np.uint8)
    x_lower, x_upper = center.copy(), center.copy()
    for b in range(batch):
        flat = rng.choice(T_CERT * N_IN, size=free, replace=False)
        t, i = np.unravel_index(flat, (T_CERT, N_IN))
        x_lower[t, b, i], x_upper[t, b, i] = 0, 1
    return x_lower, x_upper


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("interop") / "model.h5"
    model = small_model()
    net = import_module(model, "snntorch", out=path, steps=T_CERT)
    return model, net, path


def test_unsound_toy_routine_is_reported_with_a_witness(imported, tmp_path):
    model, net, model_path = imported
    x_lower, x_upper = boxes()

    def midpoint_bounds(lo, up, C):  # deliberately unsound: the output at one member, claimed for the box
        rates = rates_torch(model, lo)
        return rates, rates

    export_bounds(midpoint_bounds, [{"name": "toy", "x_lower": x_lower, "x_upper": x_upper, "eps": 0.1}],
                  tmp_path / "CASES.h5", producer="toy-midpoint 0.0", method="midpoint", net=net)
    [case] = read_cases(tmp_path / "CASES.h5", net)
    assert case.dtype == "float32" and case.method == "midpoint" and case.claimed_lower.shape == (4, 3)
    # the claim is wrong only if the box holds another output; make sure it does
    rng = np.random.default_rng(1)
    members = np.where(rng.random((64,) + x_lower.shape) < 0.5, x_upper, x_lower)
    outputs = np.stack([net.forward(m) for m in members])
    assert np.any(outputs != net.forward(x_lower))
    code = check_main(["--model", str(model_path), "--cases", str(tmp_path / "CASES.h5"),
                       "--json", str(tmp_path / "report.json")])
    assert code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    [case_report] = report["cases"]
    assert case_report["status"] == "UNSOUND" and case_report["violations"]
    violation = case_report["violations"][0]
    witness = np.array(violation["witness"]["input"])
    b = violation["sample"]
    assert np.all(x_lower[:, b] <= witness) and np.all(witness <= x_upper[:, b])
    true_rates = net.forward(witness[:, None])[0]
    spec, claimed = violation["spec"], violation["claimed"]
    assert (true_rates[spec] < claimed) if violation["side"] == "lower" else (true_rates[spec] > claimed)
    # the witness replayed in snnTorch gives the same output: the claim is wrong in the original too
    with torch.no_grad():
        torch_rates = rates_torch(model, torch.as_tensor(witness[:, None], dtype=torch.float32))[0].numpy()
    np.testing.assert_array_equal(torch_rates, true_rates)


def test_sound_routine_with_margins_and_membranes(imported, tmp_path):
    model, net, model_path = imported
    x_lower, x_upper = boxes(seed=2, batch=3)
    labels = np.array([0, 1, 2])

    def trivial_bounds(lo, up, C):  # rates lie in [0, 1], so C f lies in [sum C-, sum C+]
        return {"lower": C.clamp(max=0).sum(-1), "upper": C.clamp(min=0).sum(-1),
                "membranes_lower": {0: torch.full((T_CERT, lo.shape[1], 5), -1e3)},
                "membranes_upper": [torch.full((T_CERT, lo.shape[1], 5), 1e3)],
                "certified": torch.zeros(lo.shape[1])}

    C = np.eye(3)[labels][:, None, :] - np.eye(3)[None]  # [B, 3, 3] margins f_y - f_j
    export_bounds(trivial_bounds, [{"name": "trivial", "x_lower": torch.as_tensor(x_lower),
                                    "x_upper": x_upper, "C": C, "labels": labels}],
                  tmp_path / "CASES.h5", producer="trivial")
    assert check_main(["--model", str(model_path), "--cases", str(tmp_path / "CASES.h5"),
                       "--json", str(tmp_path / "report.json")]) == 0
    [case_report] = json.loads((tmp_path / "report.json").read_text())["cases"]
    assert case_report["status"] == "SOUND"


def test_export_input_errors(tmp_path):
    x_lower, x_upper = boxes()
    with pytest.raises(TypeError, match="must return"):
        export_bounds(lambda lo, up, C: 3, [{"x_lower": x_lower, "x_upper": x_upper}], tmp_path / "c.h5")
    with pytest.raises(ValueError, match="unknown keys"):
        export_bounds(lambda lo, up, C: {"lowr": lo}, [{"x_lower": x_lower, "x_upper": x_upper}], tmp_path / "c.h5")
    with pytest.raises(ValueError, match="missing 'x_upper'"):
        export_bounds(lambda lo, up, C: (None, None), [{"x_lower": x_lower}], tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()
