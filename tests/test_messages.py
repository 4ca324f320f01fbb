"""What the commands tell the user: the certify set line, and paths that are right for a wheel install."""
from __future__ import annotations

import numpy as np
import pytest

from refsnn import Flatten, Linear, SNN, data
from refsnn.io import save_model


@pytest.fixture
def tiny_model(tmp_path):
    rng = np.random.default_rng(0)
    net = SNN([Flatten(), Linear(rng.normal(size=(10, 784)) / 8, np.zeros(10))], threshold=0.25, decay=0.25,
              input_shape=(1, 28, 28))
    return save_model(tmp_path / "model.h5", net)


def test_certify_any_k_prints_k_not_an_eps_without_effect(tiny_model, tmp_path, capsys):
    from refsnn.certify import main

    assert main(["--model", str(tiny_model), "--dataset", "mnist-subset", "--set", "spike-any-k", "--k", "1",
                 "--eps", "0.3", "--n", "2", "--method", "ibp", "--out", str(tmp_path / "anyk"), "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "spike-any-k k=1 (per-step)" in first and "eps" not in first
    assert "eps" not in (tmp_path / "anyk" / "certify.md").read_text().split("\n")[2]
    assert main(["--model", str(tiny_model), "--dataset", "mnist-subset", "--eps", "0.3", "--n", "2",
                 "--method", "ibp", "--out", str(tmp_path / "digital"), "--quiet"]) == 0
    assert "digital eps=0.3 (paper)" in capsys.readouterr().out.splitlines()[0]


@pytest.fixture
def wheel_install(monkeypatch, tmp_path):
    """refsnn/data.py as a wheel puts it: in site-packages, no data_scripts/ or docs/ beside it."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(data, "HOME_DATA_DIR", tmp_path / "home")
    monkeypatch.setattr(data, "__file__", str(tmp_path / "venv" / "site-packages" / "refsnn" / "data.py"))
    return tmp_path


def test_wheel_install_messages_name_no_missing_paths(wheel_install):
    assert data.source_checkout() is None
    roots = data.candidate_data_dirs()
    assert [why for _, why in roots] == ["../shared/data from the working dir", "home data dir"]   # no <site-packages>/..
    for name in ("mnist", "nmnist"):
        with pytest.raises(FileNotFoundError) as info:
            data.load_dataset(name, "test")
        message = str(info.value)
        assert "from a checkout of the refsnn source repository" in message
        assert "repo root" not in message
    assert "docs/FORMAT.md of the refsnn source repository" in data.repo_path("docs/FORMAT.md")


def test_checkout_messages_give_runnable_absolute_commands(monkeypatch, tmp_path):
    root = data.source_checkout()
    assert root is not None and (root / "data_scripts" / "convert_to_hdf5.py").is_file()
    monkeypatch.chdir(tmp_path)   # the relative data_scripts/ path would be wrong from here
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("mnist", "test", data_dir=tmp_path / "empty")
    assert f"`python {root / 'data_scripts' / 'convert_to_hdf5.py'} mnist --data-dir" in str(info.value)
    assert data.repo_path("docs/FORMAT.md") == str(root / "docs" / "FORMAT.md")
