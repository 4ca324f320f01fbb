"""The Table 2 protocol as one task per (model, eps, chunk): one progress bar, the rows of the attack-by-attack
run, and the ``--scoring`` choice of ``python -m refsnn.attack``."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from refsnn import SNN, Linear
from refsnn.attacks.protocol import ProtocolConfig, evaluation_maps, run_attack, run_protocol


def _net(seed, sizes=(16, 12, 3)):
    rng = np.random.default_rng(seed)
    return SNN([Linear(rng.normal(0, 0.6 / np.sqrt(a), (b, a)), rng.normal(0.05, 0.05, b))
                for a, b in zip(sizes[:-1], sizes[1:])])


def _problem():
    rng = np.random.default_rng(3)
    images, labels = rng.random((9, 16)), rng.integers(0, 3, 9)
    config = ProtocolConfig(attacks=("paper", "strongest"), eps=(0.1, 0.3), T=5, fresh_draws=1, batch_size=4,
                            steps=3, effort=0.05)
    return {"a": _net(0), "b": _net(1)}, images, labels, config


def test_one_progress_bar_over_the_table_and_the_rows_of_the_attack_by_attack_run():
    models, images, labels, config = _problem()
    bars = []

    class Bar:
        def __init__(self, description, total):
            self.total, self.done, self.closed = total, 0, False
            bars.append(self)

        def update(self, k):
            self.done += k

        def close(self):
            self.closed = True

    rows = run_protocol(models, images, labels, config, progress_factory=Bar)
    assert len(bars) == 1
    assert bars[0].total == bars[0].done == 2 * 2 * 2 * 9 and bars[0].closed
    # the per-(model, eps, chunk) tasks give the rows of the attack-by-attack run
    maps = evaluation_maps(images.shape, config.T, config.seed)
    position = 0
    for name, net in models.items():
        for eps in config.eps:
            paper = None
            for attack in config.attacks:
                result = run_attack(net, attack, eps, images, labels, maps, config,
                                    start=paper if attack == "strongest" else None)
                paper = result if attack == "paper" else paper
                row = rows[position]
                position += 1
                assert (row.model, row.attack, row.eps) == (name, attack, eps)
                assert row.adv_wrong == result.adv_wrong.astype(int).tolist()
                assert row.attack_error == result.error and row.original_error == result.clean_error
    assert position == len(rows)


def _cli(tmp_path, *extra):
    from refsnn.architectures import build_network
    from refsnn.attack import main
    from refsnn.io import save_model

    path = tmp_path / "m" / "model.h5"
    if not path.exists():
        path.parent.mkdir()
        save_model(path, build_network("fc", (1, 28, 28), seed=0), config={"T": 4})
    out = tmp_path / ("out" + "".join(extra).replace("-", ""))
    code = main(["--model", str(path), "--dataset", "mnist-subset", "--n", "4", "--eps", "0.3", "--attack", "paper",
                 "--steps", "2", "--batch-size", "2", "--out", str(out), "--no-progress", "--quiet", *extra])
    return code, out


def test_scoring_fresh_puts_the_fresh_draw_table_first(tmp_path):
    code, out = _cli(tmp_path, "--fresh-draws", "2", "--scoring", "fresh")
    assert code == 0
    summary = json.loads((out / "table.json").read_text())
    assert summary["scoring"] == "fresh" and summary["identity"]["scoring"] == "fresh"
    row = summary["rows"][0]
    markdown = (out / "table.md").read_text()
    first_table = markdown.split("## attack: paper")[1].strip().split("\n\n")[0]
    cells = first_table.split("\n")[2].strip("|").split("|")
    assert [c.strip() for c in cells[1:3]] == [f"{100 * row['original_error_fresh']:.1f}",
                                               f"{100 * row['attack_error_fresh']:.1f}"]
    assert "`--scoring attack-draw`, the paper's" in markdown
    default_code, default_out = _cli(tmp_path, "--fresh-draws", "2")
    default = json.loads((default_out / "table.json").read_text())
    assert default_code == 0 and default["scoring"] == "attack-draw" and "scoring" not in default["identity"]


@pytest.mark.parametrize("earlier_result", [False, True])
def test_scoring_fresh_without_fresh_draws_is_one_line_exit_2(tmp_path, capsys, earlier_result):
    if earlier_result:   # another result in the folder: the flag error is still the one reported
        out = tmp_path / "outfreshdraws0scoringfresh"
        out.mkdir()
        (out / "table.json").write_text(json.dumps({"identity": {"other": 1}, "rows": []}))
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path, "--fresh-draws", "0", "--scoring", "fresh")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scoring fresh" in err[0] and "--fresh-draws" in err[0]
