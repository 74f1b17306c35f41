"""The synthetic assistant world: logs in the real schema plus the ground truth behind them.

    summary = simulate(out, preset="small", seed=0, config=None, traffic_seed=None)
    world = World.from_dir(out)
"""

from raylib.sim.config import PRESETS, resolve
from raylib.sim.simulate import simulate
from raylib.sim.world import World

__all__ = ["PRESETS", "World", "resolve", "simulate"]
