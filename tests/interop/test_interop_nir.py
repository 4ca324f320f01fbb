"""NIR graphs: refsnn -> NIR -> refsnn bit for bit, a graph written by nir itself against an independent
forward-Euler simulation, every refusal, the loader of the command-line tools."""
import warnings

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from refsnn import SNN, Linear  # noqa: E402
from refsnn.interop.nir import (FIRING_METADATA_KEY, NIRError, NIRNotice, NIRRefused, from_nir,  # noqa: E402
                                load_any_model, read_nir, to_nir, write_nir)
from refsnn.io import save_model  # noqa: E402
from refsnn.layers import AvgPool2d, Conv2d, Flatten  # noqa: E402

DT = 1e-4


def dyadic(rng, *shape, scale=16, grid=64):
    return np.round(rng.normal(size=shape) * scale) / grid


def fc_net(decay=0.25, firing=">", seed=0):
    rng = np.random.default_rng(seed)
    return SNN([Linear(dyadic(rng, 12, 16), dyadic(rng, 12)), Linear(dyadic(rng, 5, 12), dyadic(rng, 5))],
               threshold=0.25, decay=decay, firing=firing)


def conv_net(decay=0.5, firing=">", seed=1):
    rng = np.random.default_rng(seed)
    return SNN([Conv2d(dyadic(rng, 3, 1, 3, 3), dyadic(rng, 3), stride=2, padding=1), AvgPool2d(2), Flatten(),
                Linear(dyadic(rng, 4, 12), dyadic(rng, 4))], threshold=0.25, decay=decay, firing=firing,
               input_shape=(1, 8, 8))


def binary(rng, shape, density=0.4):
    return (rng.random(shape) < density).astype(np.uint8)


def assert_same_net(a, b):
    assert (a.threshold, a.decay, a.firing, a.input_shape, a.dtype) == (b.threshold, b.decay, b.firing,
                                                                        b.input_shape, b.dtype)
    assert [layer.kind for layer in a.layers] == [layer.kind for layer in b.layers]
    for la, lb in zip(a.layers, b.layers):
        assert la.config() == lb.config()
        for (name, x), y in zip(la.params().items(), lb.params().values()):
            assert x.dtype == y.dtype and np.array_equal(x, y), name


# --- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, decay, firing", [(fc_net, 0.25, ">"), (fc_net, 0.9, ">"), (fc_net, 0.0, ">"),
                                                 (fc_net, 1.0, ">"), (conv_net, 0.5, ">"), (fc_net, 0.25, ">="),
                                                 (conv_net, 1.0, ">=")])
def test_round_trip_is_bit_identical(make, decay, firing, tmp_path):
    net = make(decay=decay, firing=firing)
    metadata = firing == ">="
    graph = to_nir(net, DT, firing_metadata=metadata)
    assert sum(isinstance(n, nir.IF if decay == 1 else nir.LIF) for n in graph.nodes.values()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRNotice)   # nothing is folded on the way back
        back = from_nir(graph, DT)
        from_file = from_nir(write_nir(net, tmp_path / "net.nir", DT, firing_metadata=metadata), DT)
    assert_same_net(net, back)
    assert_same_net(net, from_file)
    x = binary(np.random.default_rng(2), (8, 6, *net.input_shape))
    for a, b in zip(net.run(x).membranes, from_file.run(x).membranes):
        assert np.array_equal(a, b)


def test_round_trip_has_ties_at_the_threshold():
    """The dyadic weights put membranes exactly on the threshold, where '>' and '>=' differ."""
    net = fc_net()
    trace = from_nir(to_nir(net, DT), DT).run(binary(np.random.default_rng(3), (10, 32, 16)))
    assert sum(int((m == net.threshold).sum()) for m in trace.membranes) > 0


# --- a graph written by nir itself --------------------------------------------------------------------

def euler_reference(x, stages, dt, tau, r, v_leak, threshold):
    """forward Euler of tau dv/dt = v_leak - v + r I, z = 1[v > th], v := 0 after a spike; stages are
    callables I = f(spikes [B, ...]). Returns the output spikes [T, B, n]."""
    states, out = [None] * len(stages), []
    for x_t in x.astype(np.float64):
        s = x_t
        for k, f in enumerate(stages):
            current = f(s)
            v = np.zeros_like(current) if states[k] is None else states[k]
            v = v + (dt / tau) * (v_leak - v + r * current)
            s = (v > threshold).astype(np.float64)
            states[k] = np.where(s > 0, 0.0, v)
        out.append(s.reshape(s.shape[0], -1))
    return np.stack(out)


def test_graph_written_by_nir_loads_and_matches_euler(tmp_path):
    """nir's own from_list/write, with r != tau/dt and v_leak != 0 (folded, with notices) and a SumPool2d
    (its 2x2 area folded into the next weight): spikes equal an independent Euler simulation. dt, tau,
    r and v_leak are dyadic so the folds are exact."""
    rng = np.random.default_rng(4)
    dt, tau, r, v_leak, th = 0.5, 2.0, 2.0, 0.25, 0.25   # decay 0.75, input scale 0.5, leak term 1/16
    wc, bc = dyadic(rng, 2, 1, 3, 3), dyadic(rng, 2)
    wf, bf = dyadic(rng, 3, 8), dyadic(rng, 3)
    full = lambda shape, v: np.full(shape, v)  # noqa: E731
    lif = lambda shape: nir.LIF(tau=full(shape, tau), r=full(shape, r), v_leak=full(shape, v_leak),  # noqa: E731
                                v_threshold=full(shape, th), v_reset=full(shape, 0.0))
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([1, 8, 8])}),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=wc, stride=2, padding=1, dilation=1, groups=1, bias=bc),
        "lif1": lif((2, 4, 4)),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=wf, bias=bf),
        "lif2": lif((3,)),
        "out": nir.Output(output_type={"output": np.array([3])}),
    }, edges=[("in", "conv"), ("conv", "lif1"), ("lif1", "pool"), ("pool", "flat"), ("flat", "fc"),
              ("fc", "lif2"), ("lif2", "out")], type_check=False)
    path = tmp_path / "by_nir.nir"
    nir.write(path, graph)
    with pytest.warns(NIRNotice) as notices:
        net = from_nir(path, dt)
    assert len(notices) == 3   # two neuron folds and the sum pool
    assert (net.decay, net.threshold, net.firing) == (0.75, th, ">")

    def conv(s):
        return Conv2d(wc, bc, stride=2, padding=1).forward(s) if s.ndim == 4 else None

    def fc(s):
        c, h, w = s.shape[1:]
        pooled = s.reshape(s.shape[0], c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))
        return pooled.reshape(s.shape[0], -1) @ wf.T + bf

    x = binary(rng, (10, 16, 1, 8, 8), 0.5)
    expected = euler_reference(x, [conv, fc], dt, tau, r, v_leak, th)
    assert expected.sum() > 0 and (1 - expected).sum() > 0
    assert np.array_equal(net.run(x).spikes[-1].reshape(expected.shape), expected)


# --- refusals: each names what refsnn cannot represent -------------------------------------------------

def lif_node(n=3, tau=2e-4, r=2.0, v_leak=0.0, th=0.25, v_reset=0.0):
    arr = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,) if np.ndim(n) == 0 else n).copy()  # noqa: E731
    return nir.LIF(tau=arr(tau), r=arr(r), v_leak=arr(v_leak), v_threshold=arr(th), v_reset=arr(v_reset))


def affine(o=3, i=4, seed=0):
    rng = np.random.default_rng(seed)
    return nir.Affine(weight=dyadic(rng, o, i), bias=dyadic(rng, o))


def chain(*nodes, shape=(4,), out=(3,), edges=None):
    names = ["in"] + [f"n{i}" for i in range(len(nodes))] + ["out"]
    all_nodes = {"in": nir.Input(input_type={"input": np.array(shape)}),
                 **{f"n{i}": node for i, node in enumerate(nodes)},
                 "out": nir.Output(output_type={"output": np.array(out)})}
    return nir.NIRGraph(nodes=all_nodes, edges=edges or list(zip(names[:-1], names[1:])), type_check=False)


def conv_node(**kw):
    rng = np.random.default_rng(5)
    args = dict(input_shape=(4, 4), weight=dyadic(rng, 2, 1, 3, 3), stride=1, padding=1, dilation=1, groups=1,
                bias=dyadic(rng, 2))
    args.update(kw)
    return nir.Conv2d(**args)


def recurrent():
    return chain(affine(3, 4), lif_node(), affine(3, 3, 1), edges=[("in", "n0"), ("n0", "n1"), ("n1", "n2"),
                                                                   ("n2", "n1"), ("n1", "out")])


def branching():
    return chain(affine(3, 4), lif_node(), affine(3, 4, 1), lif_node(),
                 edges=[("in", "n0"), ("n0", "n1"), ("in", "n2"), ("n2", "n3"), ("n1", "out"), ("n3", "out")])


def subgraph():
    inner = chain(affine(3, 3), lif_node(), shape=(3,))
    return chain(affine(3, 4), inner)


REFUSALS = {
    "per-neuron tau": (lambda: chain(affine(), lif_node(tau=[2e-4, 4e-4, 2e-4])), "per-neuron tau"),
    "per-neuron threshold": (lambda: chain(affine(), lif_node(th=[0.25, 0.5, 0.25])), "per-neuron v_threshold"),
    "v_reset": (lambda: chain(affine(), lif_node(v_reset=-0.25)), "v_reset = -0.25"),
    "threshold <= 0": (lambda: chain(affine(), lif_node(th=0.0)), "threshold > 0"),
    "tau < dt": (lambda: chain(affine(), lif_node(tau=5e-5)), "tau < dt"),
    "non-finite": (lambda: chain(affine(), lif_node(tau=np.inf, r=np.inf)), "non-finite"),
    "recurrent edge": (recurrent, "recurrent edge"),
    "non-sequential": (branching, "non-sequential graph"),
    "subgraph": (subgraph, "subgraph"),
    "CubaLIF": (lambda: chain(affine(), nir.CubaLIF(tau_syn=np.ones(3), tau_mem=np.ones(3), r=np.ones(3),
                                                   v_leak=np.zeros(3), v_threshold=np.ones(3))), "CubaLIF node"),
    "LI": (lambda: chain(affine(), nir.LI(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3))), "LI node"),
    "Delay": (lambda: chain(affine(), nir.Delay(delay=np.ones(3)), lif_node()), "Delay node"),
    "Scale": (lambda: chain(affine(), nir.Scale(scale=np.ones(3)), lif_node()), "Scale node"),
    "v_leak within a channel": (lambda: chain(conv_node(), lif_node((2, 4, 4), v_leak=np.arange(32).reshape(2, 4, 4)),
                                              shape=(1, 4, 4), out=(2, 4, 4)), "v_leak"),
    "r within a channel": (lambda: chain(conv_node(), lif_node((2, 4, 4), r=1 + np.arange(32).reshape(2, 4, 4)),
                                         shape=(1, 4, 4), out=(2, 4, 4)), "r (input scale"),
    "dilation": (lambda: chain(conv_node(dilation=2), lif_node((2, 2, 2)), shape=(1, 4, 4), out=(2, 2, 2)),
                 "dilation"),
    "groups": (lambda: chain(conv_node(groups=2), lif_node((2, 4, 4)), shape=(1, 4, 4), out=(2, 4, 4)), "groups"),
    "padding same": (lambda: chain(conv_node(padding="same"), lif_node((2, 4, 4)), shape=(1, 4, 4),
                                   out=(2, 4, 4)), "'same'"),
    "pool padding": (lambda: chain(conv_node(), lif_node((2, 4, 4)),
                                   nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                                 padding=np.array([1, 1])), shape=(1, 4, 4)), "padding"),
    "sum pool 3x3": (lambda: chain(conv_node(), lif_node((2, 4, 4)),
                                   nir.SumPool2d(kernel_size=np.array([3, 3]), stride=np.array([1, 1]),
                                                 padding=np.array([0, 0])), shape=(1, 4, 4)), "power of two"),
    "partial flatten": (lambda: chain(conv_node(), lif_node((2, 4, 4)), nir.Flatten(input_type=None, start_dim=1),
                                      shape=(1, 4, 4)), "flattens all"),
    "two affines": (lambda: chain(affine(), affine(3, 3), lif_node()), "without a neuron between"),
    "neuron without affine": (lambda: chain(lif_node(4), shape=(4,), out=(4,)), "does not follow"),
    "no neuron at the end": (lambda: chain(affine(), lif_node(), affine(2, 3)), "no neuron after it"),
    "decays differ": (lambda: chain(affine(), lif_node(), affine(3, 3), lif_node(tau=4e-4)), "differ in decay"),
    "thresholds differ": (lambda: chain(affine(), lif_node(), affine(3, 3), lif_node(th=0.5)),
                          "differ in v_threshold"),
    "flatten missing": (lambda: chain(conv_node(), lif_node((2, 4, 4)), affine(3, 32), lif_node(),
                                      shape=(1, 4, 4)), "a Flatten node must come first"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal(case):
    build, message = REFUSALS[case]
    with pytest.raises(NIRRefused, match=None) as error:
        from_nir(build(), DT)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_refusal_survives_the_file(tmp_path):
    path = tmp_path / "tau.nir"
    nir.write(path, REFUSALS["per-neuron tau"][0]())
    with pytest.raises(NIRRefused, match="per-neuron tau"):
        from_nir(path, DT)


def test_to_nir_refusals():
    with pytest.raises(NIRRefused, match="v > v_threshold.*firing_metadata=True"):
        to_nir(fc_net(firing=">="), DT)
    with pytest.raises(NIRRefused, match="decay 0.1 is not 1 - dt/tau"):
        to_nir(fc_net(decay=0.1), DT)
    net = fc_net()
    subtracting = SNN(net.layers, threshold=net.threshold, decay=net.decay, firing=net.firing, reset="subtract")
    with pytest.raises(NIRRefused, match="reset='subtract'"):  # NIR's nodes reset to v_reset, not by subtraction
        to_nir(subtracting, DT)


@pytest.mark.parametrize("dt", [0, -1e-4, float("nan"), float("inf"), "1e-4", True, None])
def test_bad_dt(dt):
    with pytest.raises(NIRError, match="dt must be a finite number > 0"):
        from_nir(to_nir(fc_net(), DT), dt)


def test_firing_argument_and_metadata():
    plain = to_nir(fc_net(), DT)
    assert read_nir(plain, DT).firing == ">"                      # NIR's comparison
    assert read_nir(plain, DT, firing=">=").firing == ">="        # a simulator that fires at threshold
    recorded = to_nir(fc_net(firing=">="), DT, firing_metadata=True)
    assert read_nir(recorded, DT).firing == ">="
    with pytest.raises(NIRError, match="contradicts"):
        read_nir(recorded, DT, firing=">")
    recorded.nodes["lif1"].metadata = {}                          # recorded on one neuron only
    with pytest.raises(NIRError, match="in every neuron node or in none"):
        read_nir(recorded, DT)
    plain.nodes["lif1"].metadata = {FIRING_METADATA_KEY: "=>"}
    with pytest.raises(NIRError, match="must be one of"):
        read_nir(plain, DT)
    with pytest.raises(NIRError, match="firing must be"):
        read_nir(plain, DT, firing="ge")


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such NIR file"):
        from_nir(tmp_path / "missing.nir", DT)
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    with pytest.raises(NIRError, match="not a readable NIR file"):
        from_nir(tmp_path / "junk.nir", DT)
    with pytest.raises(NIRError, match="takes a nir.NIRGraph"):
        from_nir(42, DT)


def test_load_any_model(tmp_path):
    net = fc_net()
    nir_path = write_nir(net, tmp_path / "m.nir", DT)
    h5_path = save_model(tmp_path / "m.h5", net)
    assert_same_net(load_any_model(nir_path, dt=DT), net)
    assert_same_net(load_any_model(h5_path), net)
    with pytest.raises(NIRError, match="give the time step with --dt"):
        load_any_model(nir_path)
    with pytest.raises(NIRError, match="applies to .nir models only"):
        load_any_model(h5_path, dt=DT)


# --- the command-line tools take .nir models with --dt ------------------------------------------------

def test_verify_check_reads_nir(tmp_path, capsys):
    from verify.cases import Case, write_cases
    from verify.check import main as check_main

    net = fc_net()
    model = write_nir(net, tmp_path / "m.nir", DT)
    rng = np.random.default_rng(6)
    x_lower = binary(rng, (3, 4, 16))
    x_upper = np.maximum(x_lower, binary(rng, (3, 4, 16), 0.3))
    rates = net.forward(x_lower)                       # claimed for the whole box: unsound
    cases = write_cases(tmp_path / "cases.h5", [Case("corner", x_lower, x_upper, claimed_lower=rates,
                                                      claimed_upper=rates)], producer="tests")
    assert check_main(["--model", str(model), "--dt", str(DT), "--cases", str(cases)]) == 1
    assert "[UNSOUND]" in capsys.readouterr().out
    assert check_main(["--model", str(model), "--cases", str(cases)]) == 2
    err = capsys.readouterr().err
    assert "give the time step with --dt" in err and len(err.strip().splitlines()) == 1


def test_certify_reads_nir(tmp_path, capsys):
    from refsnn.certify import main as certify_main

    rng = np.random.default_rng(7)
    net = SNN([Flatten(), Linear(dyadic(rng, 8, 784), dyadic(rng, 8)), Linear(dyadic(rng, 10, 8), dyadic(rng, 10))],
              threshold=0.25, decay=0.5, firing=">", input_shape=(1, 28, 28))
    model = write_nir(net, tmp_path / "m.nir", DT)
    args = ["--model", str(model), "--dataset", "mnist-subset", "--eps", "0.01", "--n", "4", "--method", "ibp",
            "--out", str(tmp_path / "cert"), "--quiet"]
    assert certify_main(args + ["--dt", str(DT)]) == 0
    assert certify_main(args) == 2
    assert "give the time step with --dt" in capsys.readouterr().err
