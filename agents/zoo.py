"""RL Baselines3 Zoo on the FedPEAT envs, with MaskablePPO and the packaged settings.

    python -m agents.zoo train --algo ppo_mask --env FedPEAT-v1 --num-threads 1       [any rl_zoo3.train option]
    python -m agents.zoo enjoy --algo ppo_mask --env FedPEAT-v1 --no-render -n 200    [any rl_zoo3.enjoy option]

rl_zoo3 2.9 no longer lists sb3-contrib's MaskablePPO among its algorithms (``python -m rl_zoo3.train --algo ppo_mask``
stops with "invalid choice: 'ppo_mask'"). This entry point adds it under the Zoo's former name ``ppo_mask`` and then
runs the Zoo's own ``train`` or ``enjoy`` with the remaining arguments. It imports ``fedpeat_env`` and
``agents.device_set`` (the ids and the ``device-set`` policy alias: no ``--gym-packages`` needed) and, when no
``--conf-file`` is given to ``train``, reads the package's tuned file of the algorithm (``ZOO_FILES``), wherever the
package is installed. The plain ``python -m rl_zoo3.train --algo ppo`` works as well (``--gym-packages fedpeat_env
agents.device_set --conf-file agents/hyperparams/ppo.yml``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

ZOO_ALGOS = {"ppo_mask": "sb3_contrib:MaskablePPO"}
"""Algorithms added to the Zoo's ``ALGOS``, by the Zoo's name."""
ZOO_FILES = {"ppo": "ppo", "a2c": "a2c", "ppo_mask": "maskable-ppo"}
"""The Zoo's algorithm name → the package's tuned file (``agents/hyperparams/<name>.yml``)."""
COMMANDS = ("train", "enjoy")


def register_zoo_algorithms() -> None:
    """Add ``ZOO_ALGOS`` to rl_zoo3's ``ALGOS`` (the dict its ``train`` and ``enjoy`` read their choices from)."""
    from rl_zoo3 import utils

    for name, target in ZOO_ALGOS.items():
        module, attr = target.split(":")
        utils.ALGOS.setdefault(name, getattr(importlib.import_module(module), attr))


def zoo_arguments(command: str, args: Sequence[str]) -> list[str]:
    """``args`` for the Zoo's ``command``, with the package's tuned file of ``--algo`` added to ``train`` when no
    ``--conf-file`` is given."""
    args = list(args)
    if command != "train" or "--conf-file" in args or "-conf" in args:
        return args
    from agents.hyperparams import hyperparams_file

    algo = args[args.index("--algo") + 1] if "--algo" in args[:-1] else "ppo"
    if algo in ZOO_FILES:
        args += ["--conf-file", str(hyperparams_file(ZOO_FILES[algo]))]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m agents.zoo {train,enjoy} ARGS``: the Zoo's command with ``ZOO_ALGOS`` and the FedPEAT ids."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m agents.zoo {{{','.join(COMMANDS)}}} [rl_zoo3 options], e.g. "
                         f"python -m agents.zoo train --algo ppo_mask --env FedPEAT-v1")
    command, args = argv[0], zoo_arguments(argv[0], argv[1:])
    import agents.device_set  # noqa: F401  (the device-set policy alias)
    import fedpeat_env  # noqa: F401  (registers the FedPEAT ids)

    register_zoo_algorithms()
    zoo = importlib.import_module(f"rl_zoo3.{command}")
    sys.argv = [f"rl_zoo3.{command}", *args]
    getattr(zoo, command)()


if __name__ == "__main__":
    main()
