"""Policy training per Ray Train worker as the routing log grows (run by hand):

    .venv/bin/selflearn simulate --preset large --interactions 20000 --config ROUTING_1M.yaml --out /tmp/worlds/route1m
    .venv/bin/python benchmarks/bench_policy_scale.py /tmp/worlds/route1m --sizes 100000 1000000 4000000 100000 \
        --json benchmarks/results/policy_scale_4m.json

The routing log is read and featurized once (``encode`` and ``training_arrays``, as
``learn_hybrid`` does for the LP). For each size N, in the order given (repeat the first
size last to see the machine's drift), the LP network (IPS, Eq. 2) trains one epoch on the
first N rows on one CPU Ray Train worker reading its Ray Data shard
(``raylib.routing.train.train_network``): requests/s is the job's own figure (rows of the
epoch over its wall time), and the worker's peak RSS and USS are sampled every 0.5 s from the
``RayTrainWorker`` process. A size above the log's rows repeats the log (row i is row
i mod rows): the per-row work and the shard pipeline at that size are what is measured, not
the content. The driver's featurizing of the whole log is not part of the figure (the
``train-policy`` job still reads the log whole on its driver: ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow.parquet as pq


class WorkerMemory(threading.Thread):
    """Peak RSS and peak USS (MiB) of the processes whose command line names
    ``RayTrainWorker``. RSS counts the object store's shared pages the worker has touched
    (its shard's blocks are read zero-copy from there); USS is the worker's own memory."""

    def __init__(self, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.every_s, self.peak_mib, self.peak_uss_mib = every_s, 0.0, 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            for proc in psutil.process_iter(["cmdline"]):
                if "RayTrainWorker" not in " ".join(proc.info["cmdline"] or []):
                    continue
                try:
                    full = proc.memory_full_info()
                except psutil.Error:
                    continue
                self.peak_mib = max(self.peak_mib, full.rss / 2**20)
                self.peak_uss_mib = max(self.peak_uss_mib, full.uss / 2**20)


def main() -> None:
    import ray

    from raylib.routing.features import Vocabulary, encode
    from raylib.routing.hybrid import network_features
    from raylib.routing.learn import LearnSettings, logged_columns
    from raylib.routing.train import TrainSettings, train_network, training_arrays

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("world", help="simulator output holding routing_log/")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 4_000_000, 100_000])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    files = sorted(glob.glob(os.path.join(args.world, "routing_log", "**", "*.parquet"), recursive=True))
    log = pq.ParquetDataset(files).read()
    vocab = Vocabulary.fit(log)
    feats = network_features(encode(log, vocab), log, None)
    actions, propensity, reward = logged_columns(log)
    arrays = training_arrays(feats, actions, propensity, reward)
    config = LearnSettings().network_config(vocab, TrainSettings())
    settings = TrainSettings(epochs=1, baseline=float(reward.mean()))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    rows = []
    for i, n in enumerate(args.sizes):
        take = np.arange(n) % log.num_rows
        data = {k: v[take] for k, v in arrays.items()}
        memory = WorkerMemory()
        memory.start()
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as storage:
            began = time.perf_counter()
            result = train_network(config, data, "ips", settings, num_workers=1, storage_path=storage,
                                   name=f"bench-{i}-{n}")
            seconds = time.perf_counter() - began
        memory.stopped.set()
        memory.join()
        rows.append({"requests": n, "log_rows": log.num_rows, "requests_per_s_per_worker": result.speed["requests_per_s"],
                     "fit_seconds": seconds, "worker_peak_rss_mib": memory.peak_mib,
                     "worker_peak_uss_mib": memory.peak_uss_mib,
                     "load_average_1min": max(load, os.getloadavg()[0])})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"objective": "ips", "epochs": 1, "workers": 1, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
