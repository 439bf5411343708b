"""FL-TAC (Ping et al. 2024): one low-rank adapter per task on each device, clustered and averaged on the server.

- Tasks are the tuning domains (``EngineConfig.domains``, e.g. pydocs, licenses, docstrings): every device trains
  one LoRA (on every block) per task it holds, on that task's blocks only, and uploads each adapter.
- The server flattens all uploads, runs k-means with K = number of tasks (k-means++ seeding, seeded per round),
  and averages within each cluster (``federation.aggregation.fltac``; with ``lora_aggregation="exact"`` the
  cluster's mean B·A, re-factorised). The server never uses task labels to
  aggregate: a device's adapter slot gets back the average of the cluster its upload fell into. Round 1 starts
  every slot from the same initial adapter.
- Logged each round in ``RoundResult.metrics``: ``clustering_accuracy`` (Hungarian matching of clusters to the true
  tasks, ``federation.aggregation.clustering_accuracy``), ``clusters`` (non-empty clusters) and the full-model
  perplexity per task ``ppl_<domain>``: task t is evaluated with the cluster holding most of task t's uploads
  (evaluation may use labels; aggregation does not). ``full_perplexity`` pools the tasks' tokens, so it is
  comparable with a single-adapter method's perplexity on the same evaluation blocks.
- The global state (``Server.global_state``) is the plain average of all uploads, kept for reference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import cast

from federation.aggregation import clustering_accuracy, fedavg, fltac
from federation.client import ClientUpdate
from federation.methods.base import DeviceConfig, DeviceDecision, Method, State


class FLTAC(Method):
    name = "fltac"
    lora_on_all_layers = True
    multi_task = True

    def init_global_state(self, seed: int) -> State:
        self._seed = seed
        self._initial = super().init_global_state(seed)
        self.slot_states: dict[tuple[int, int], State] = {}
        """(device, task) → the cluster average that device's task adapter starts from next round."""
        self.task_states: dict[int, State] = {t: self._initial for t in range(self.num_tasks)}
        """Task → the adapter evaluated for it (the cluster holding most of its uploads)."""
        self._metrics: dict[str, float] = {}
        self._round = 0
        return self._initial

    def configure(self, round_idx: int, decisions: Sequence[DeviceDecision], global_state: State) -> list[DeviceConfig]:
        self._round, self._metrics = round_idx, {}
        return super().configure(round_idx, decisions, global_state)

    def configure_device(self, device: int, decision: DeviceDecision, global_state: State) -> list[DeviceConfig]:
        """One job per task the device holds, each starting from the cluster average its slot got last round."""
        lora, spec = self.lora_for(decision), self.device_spec(decision)
        return [DeviceConfig(device, spec, self.download(self.slot_states.get((device, task), self._initial), lora), lora,
                             self.objective(), task) for task in self.device_tasks[device]]

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        """k-means over the uploads (K = number of tasks, at most one cluster per upload), per-cluster averages."""
        k = min(self.num_tasks, len(updates))
        clusters, labels = fltac([u.state for u in updates], k, seed=self._seed + self._round)
        if self.config.lora_aggregation == "exact":  # same clusters, equal weights, products averaged
            clusters = [self.average([u.state for u, lab in zip(updates, labels) if lab == c], [1.0] * int((labels == c).sum()))
                        for c in range(len(clusters))]
        tasks = cast(list[int], [u.task for u in updates])  # every job of FL-TAC names its task (configure_device)
        for update, label, task in zip(updates, labels, tasks):
            self.slot_states[(update.device, task)] = clusters[label]
        for task in set(tasks):
            majority = Counter(int(label) for label, t in zip(labels, tasks) if t == task).most_common(1)[0][0]
            self.task_states[task] = clusters[majority]
        self._metrics = {"clustering_accuracy": clustering_accuracy(labels, tasks), "clusters": float(len(clusters))}
        return fedavg([u.state for u in updates], [1.0] * len(updates))

    def evaluation_states(self, global_state: State) -> dict[int | None, State]:
        return {task: state for task, state in self.task_states.items()}

    def round_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> tuple[dict, State]:
        """The slots' and tasks' cluster averages (each distinct state once, tensors ``<index>/<key>``), the last
        round and its metrics."""
        index: dict[int, int] = {}
        tensors: State = {}

        def ref(state: State) -> int:
            if id(state) not in index:
                index[id(state)] = len(index)
                tensors.update({f"{index[id(state)]}/{k}": v for k, v in state.items()})
            return index[id(state)]

        slots = [[device, task, ref(s)] for (device, task), s in self.slot_states.items()]
        tasks = [[task, ref(s)] for task, s in self.task_states.items()]
        return {"round": self._round, "metrics": self._metrics, "slots": slots, "tasks": tasks}, tensors

    def load_state_dict(self, state: dict, tensors: State) -> None:
        states: dict[int, State] = {}
        for name, tensor in tensors.items():
            idx, key = name.split("/", 1)
            states.setdefault(int(idx), {})[key] = tensor
        self.slot_states = {(int(device), int(task)): states[i] for device, task, i in state["slots"]}
        self.task_states = {int(task): states[i] for task, i in state["tasks"]}
        self._round, self._metrics = int(state["round"]), {k: float(v) for k, v in state["metrics"].items()}
