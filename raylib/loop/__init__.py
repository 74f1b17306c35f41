"""The self-learning loop end to end on simulated traffic (``selflearn demo``; the
entrypoint, which starts Ray and deploys the Serve application, is
``jobs/self_learning_loop.py``).

    simulate -> mine rewrites -> train PDRFE -> train the hybrid policy -> OPE + guard-rails
      (on the held-out test split of the training logs; ``child.Jobs.evaluate_policy``)
      -> serve (Ray Serve) -> rounds of simulated traffic through the HTTP endpoints
         (POST /v1/rewrite, POST /v1/route; decisions logged with propensities; rewards
         drawn by the simulator's world and written as a `feedback` table)
      -> retrain from the decision logs -> redeploy (POST /v1/admin/reload) -> next round

Round 0 is the system before self-learning: no rewrites, the simulator's logging router.
Each later round serves the latest published rewrite table and policy and measures, on
HELD-OUT traffic of the same world (a new traffic seed):
  * defect_rate: the expected defect rate of the requests users make (first attempts and
    follow-ups; ``raylib.rewrite.evaluate.defect_rates``) with the served rewrites
    applied; the same requests without rewrites are reported too;
  * true_reward: the true value of the served routing policy, mean_i sum_k pi(k|x_i) r_ik
    with r the simulator's expected rewards (``raylib.routing.assess.true_value``), on ONE
    fixed evaluation set of requests (the same for every round, so rounds compare
    policies, not request samples);
  * served_reward: the same on the round's own requests, with pi the distribution the
    router logged with each decision (``logging_true_value``).
After a round the policy is retrained on every decision log so far (each row carries the
propensity it was logged with), guard-railed, published, and reloaded; the rewrite table
is re-mined on the traffic window so far (training traffic + rounds 1..r) and published
over the previous version: today's rewrites win, rewrites the window no longer supports are
withdrawn (``raylib.rewrite.publish``).

Finally the PDRFE customer/skill embeddings are measured as optional router features
(inputs of the policy network, ``train_policy --embeddings``): the last policy training is
repeated with them and the true values of both are compared on the same test requests.

Every artifact is a store version (OUT/store: rewrites, embeddings, policy, plus the loop's
decisions per round and its report). Each stage leaves OUT/stages/<stage>.json with its
parameters and outputs; a rerun with the same settings reuses finished stages, so a killed
loop resumes where it stopped. Writes OUT/report.md, OUT/summary.json and PNGs.

Modules: ``settings`` (the knobs), ``stages`` (markers and resume), ``child`` (the child
jobs), ``service`` (the Serve HTTP client), ``rounds`` (served rounds and their
measurements), ``loop`` (the order of it all and the summary), ``report`` (markdown, plots).
"""

from raylib.loop.loop import Loop
from raylib.loop.settings import DEFAULT_WORLD, LoopSettings

__all__ = ["DEFAULT_WORLD", "Loop", "LoopSettings"]
