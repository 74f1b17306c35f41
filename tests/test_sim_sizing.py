"""``selflearn simulate --interactions N``: a world sized by its traffic (raylib.sim.sizing)."""

import json

import pytest

from jobs.simulate import main
from raylib.sim.sizing import customers_for


def test_customers_for_rounds_up_and_never_returns_zero():
    assert customers_for(1000, 10.0) == 100
    assert customers_for(1001, 10.0) == 101
    assert customers_for(1, 50.0) == 1
    with pytest.raises(ValueError):
        customers_for(0, 10.0)
    with pytest.raises(ValueError):
        customers_for(100, 0.0)


def test_interactions_flag_sizes_the_world_by_customers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("routing: {n_requests: 100}\n")
    assert main(["--out", str(tmp_path / "w"), "--interactions", "6000", "--config", str(config)]) == 0
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["target_interactions"] == 6000
    expected_customers = customers_for(6000, summary["pilot_interactions_per_customer"])
    assert summary["n_customers"] == expected_customers
    assert abs(summary["n_interactions"] - 6000) < 0.1 * 6000  # a fresh draw of the pilot's world


def test_interactions_flag_refuses_a_customer_count_of_its_own(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("population: {n_customers: 10}\n")
    assert main(["--out", str(tmp_path / "w"), "--interactions", "100", "--config", str(config)]) == 2
    assert "--interactions sets population.n_customers" in capsys.readouterr().err
