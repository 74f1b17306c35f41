"""Resume in the shared Ray Train shell (raylib.trainer), shown with PDRFE (the policy network
goes through the same ``raylib.trainer.fit``; its run names are checked below): a run whose worker a test-side callback SIGKILLs after epoch 0 fails
(max_failures=0); a rerun under the same storage path and (derived) name resumes after
epoch 0; a rerun of the finished run trains nothing and returns the same weights; the
checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import psutil
import pytest
import torch
from ray import cloudpickle
from ray.train import TrainingFailedError, UserCallback

from raylib.graph.build import build_graph, split_edges
from raylib.graph.data import GraphData
from raylib.graph.encoders import HashingNgramEncoder
from raylib.graph.models import SPECS
from raylib.graph.synthetic import synthetic_tables
from raylib.graph.train import TrainConfig
from raylib.graph.train import fit as fit_graph
from raylib.trainer import STATE_FILE, fingerprint, run_name, storage_uri

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callback runs on the Train controller



class KillAfterEpoch(UserCallback):
    """Once ``epoch`` is reported: writes the workers' metrics to ``log`` and SIGKILLs every
    worker process (by the pid each reports), waiting until they are gone."""

    def __init__(self, epoch: int, log: str):
        self.epoch, self.log = epoch, log

    def after_report(self, run_context, metrics, checkpoint):
        if metrics[0]["epoch"] != self.epoch:
            return
        with open(self.log, "w") as f:
            json.dump(metrics, f)
        workers = [psutil.Process(m["pid"]) for m in metrics]
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        psutil.wait_procs(workers, timeout=60)


def _same_weights(a: torch.nn.Module, b: dict) -> bool:
    return a.state_dict().keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


def _kill_resume_rerun(train, epochs: int, tmp_path):
    """``train(callbacks)`` -> (network, loss history, start epoch, checkpoint path), the same
    run every call. Checks kill after epoch 0 -> failure, resume at epoch 1, a finished
    rerun that trains nothing; returns the metrics the killed run reported."""
    log = str(tmp_path / "killed.json")
    with pytest.raises(TrainingFailedError):
        train([KillAfterEpoch(0, log)])
    killed = json.load(open(log))
    assert killed[0]["pid"] > 0 and killed[0]["node_id"] and killed[0]["start_epoch"] == 0

    network, history, start, path = train([])
    assert start == 1  # resumed from the killed run's epoch-0 checkpoint
    assert len(history) == epochs and history[0] == killed[0]["loss"]
    state = torch.load(os.path.join(path, STATE_FILE), weights_only=True)
    assert state["epoch"] == epochs - 1 and state["history"] == history
    assert {"model", "optimizer", "epoch", "history"} <= state.keys()
    assert _same_weights(network, state["model"])

    again, again_history, again_start, again_path = train([])
    assert again_start == epochs  # nothing left to train
    assert again_history == history and _same_weights(again, state["model"])
    assert torch.load(os.path.join(again_path, STATE_FILE), weights_only=True)["epoch"] == epochs - 1
    return killed


def test_pdrfe_resumes_after_a_killed_worker(tmp_path):
    inter, cust, skills = synthetic_tables(60, 10, 800, seed=4)
    g = build_graph(inter, cust, skills)
    data = GraphData.from_graph(g, HashingNgramEncoder(16).encode(g.utterances), split_edges(g.num_edges))
    cfg = TrainConfig(dim=8, fanouts=(5, 3), epochs=2, batch_size=64, lr=1e-2, edges_per_epoch=300)
    spec = SPECS["PDRFE (w/ factorized conv)"]
    storage = str(tmp_path / "ray_train")
    metrics = []

    def train(callbacks):
        trained = fit_graph(spec, data, cfg, num_workers=1, storage_path=storage, callbacks=callbacks)
        metrics.append(trained.metrics)
        m = trained.metrics
        return trained.model, m["loss_history"], m["start_epoch"], trained.checkpoint_path

    killed = _kill_resume_rerun(train, cfg.epochs, tmp_path)
    assert killed[0]["edges_per_worker"] == [300]  # edges_per_epoch caps the epoch
    resumed, rerun = metrics
    assert resumed["edges_per_worker"] == [300] and resumed["world_size"] == 1 and resumed["device"] == "cpu"
    assert rerun["edges_per_worker"] == [0]


def test_run_names_follow_model_settings_and_data():
    rows = {"x": np.arange(10), "y": np.ones((10, 3), np.float32)}
    key = {"model": "rp", "settings": {"epochs": 2}, "data": fingerprint(rows)}
    assert run_name("RP", key) == run_name("RP", dict(reversed(key.items())))
    assert run_name("RP", key).startswith("rp-")
    changed = {**rows, "y": rows["y"] * 2}
    assert fingerprint(changed) != fingerprint(rows)
    assert run_name("RP", {**key, "data": fingerprint(changed)}) != run_name("RP", key)
    assert run_name("RP", {**key, "settings": {"epochs": 3}}) != run_name("RP", key)


def test_storage_path_keeps_uris_and_makes_local_paths_absolute():
    uri = "s3://bucket/out/ray_train"
    assert storage_uri(uri) == uri
    assert storage_uri("out/ray_train") == os.path.join(os.getcwd(), "out/ray_train")
    assert os.path.isdir(storage_uri(None))
