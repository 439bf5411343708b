"""Bad input to every ``fedpeat`` command: one message naming the option and what is allowed, exit code 2, no
traceback, nothing written, and all of it before any work (each case is a few milliseconds once the libraries are
imported; a slow case means the check comes too late)."""

from __future__ import annotations

import json

import pytest
from stable_baselines3.common.base_class import BaseAlgorithm
from transformers import PreTrainedModel

import agents.train  # noqa: F401  (the libraries the commands import, loaded once here rather than in the first case)
from experiments import cli
from experiments.cli import app
from federation.engine import RoundRunner
from tests.helpers import cli_runner, cli_text

runner = cli_runner()
cli.console.width = 200  # one line per message

WITH_OUT_DIR = ("run", "compare", "claims", "train", "benchmark", "sim2real", "regime", "demo", "pretrain")
"""Commands with a directory --out (a default under the working directory, or the committed assets): each case
points it into the test's directory, so that a late failure shows as a written file."""

# (arguments, fragment of the message). {tmp}: the test's directory, with `not-json.txt` (text), `a-file` (a file
# where a directory is expected) and `agent/config.json` (the first file of a trained agent's directory, no model);
# {int}: typer's message for a value that is not an integer.
CASES = [
    # run: wrong type, out of range, unknown name, unrealisable ε, more devices than blocks, options that do not apply
    ("run --devices 0", "--devices must be >= 1, got 0"),
    ("run --devices ten", "Invalid value for '--devices': {int}"),
    ("run --method nope", "Invalid value for '--method': method must be one of ('fed-ft', 'fedpetuning', 'fedpeat',"),
    ("run --compression 1.5", "compression must be in [0, 1), got 1.5"),
    ("run --compression 0.99", "compression=0.99 keeps no middle block of 8; the largest allowed is 0.8750"),
    ("run --method fedpft --compression 0.5", "fedpft's sub-model is set by keep_ratio; compression must be 0, got 0.5"),
    ("run --devices 5000", "--devices must be at most 778, the training blocks of pydocs at 128 tokens; got 5000: use "
                           "fewer devices, a smaller --block-size or more --domain"),
    ("run --devices 2000 --server-fraction 0.5", "--devices must be at most 389, the training blocks of pydocs at 128 "
                                                "tokens after the server's share of 0.5; got 2000"),
    ("run -o nonexistent=1", "method option 'nonexistent' is not a setting of 'fedpeat'; allowed: ["),
    ("run -o case=two", "case must be an integer, got 'two'"),
    ("run -o num_adapter_layers=5", "num_adapter_layers must leave a middle block of the 10-block model: at most 4, got 5"),
    ("run --method fedpft -o keep_ratio=2", "keep_ratio must be in (0, 1], got 2.0"),
    ("run --method fltac --domain pydocs", "method 'fltac' trains one adapter per task: domains must name >= 2 tasks"),
    ("run --clients-per-round 0", "--clients-per-round must be a count in [1, 4] or a share in (0, 1], got '0'"),
    ("run --clients-per-round 1.5", "--clients-per-round must be a count in [1, 4] or a share in (0, 1], got '1.5'"),
    ("run --clients-per-round some", "--clients-per-round must be a count in [1, 4] or a share in (0, 1], got 'some'"),
    ("run --executor dask", "Invalid value for '--executor': executor must be one of ('local', 'ray'), got 'dask'"),
    ("run --ray-address auto", "--ray-address and --ray-workers apply to --executor ray only"),
    ("run --partition zipf", "Invalid value for '--partition': partition must be one of ('iid', 'dirichlet'), got 'zipf'"),
    ("run --partition dirichlet --alpha 0", "dirichlet_alpha must be > 0, got 0.0"),
    ("run --domain kjv", "domains must be tuning domains ('pydocs', 'licenses', 'docstrings')"),
    ("run --domain recipes", "domains must be tuning domains ('pydocs', 'licenses', 'docstrings')"),
    ("run --lora-rank 16", "lora_rank must be in [1, 8], got 16"),
    ("run --case 4", "case must be one of (1, 2, 3), got 4"),
    ("run --local-steps 0", "--local-steps must be >= 1, got 0"),
    ("run --block-size 4", "Invalid value for '--block-size': Input should be greater than or equal to 8"),
    ("run --seed -1", "--seed must be >= 0, got -1"),
    # numbers that parse as floats but are not finite: refused where they enter, named
    ("run --alpha nan", "Invalid value for '--alpha': must be a finite number, got 'nan'"),
    ("run --compression inf", "Invalid value for '--compression': must be a finite number, got 'inf'"),
    ("run --server-fraction half", "Invalid value for '--server-fraction': 'half' is not a number"),
    ("run --method fedpft -o keep_ratio=nan", "keep_ratio must be a finite number, got 'nan'"),
    ("compare --compression nan", "Invalid value for '--compression': must be a finite number, got 'nan'"),
    ("calibrate --levels 0 --levels nan", "Invalid value for '--levels': must be a finite number, got 'nan'"),
    ("train --hyperparams ent_coef:nan", "ent_coef must be a finite number, got nan"),
    ("train --env-option dirichlet_alpha=NaN", "dirichlet_alpha must be a finite number, got nan"),
    ('train --env-option channel={"max_distance_m":Infinity}', "channel: max_distance_m must be a finite number, got inf"),
    ('train --env-option reward={"latency":-Infinity}', "reward weight latency must be a finite number >= 0, got -inf"),
    ("benchmark --env-option target_perplexity=Infinity", "target_perplexity must be a finite number, got inf"),
    # compare
    ("compare --seeds 0", "--seeds must be >= 1, got 0"),
    ("compare --devices 0", "--devices must be >= 1, got 0"),
    ("compare --rounds 0", "--rounds must be >= 1, got 0"),
    ("compare --compression 0.99", "compression=0.99 keeps no middle block of 8; the largest allowed is 0.8750"),
    ("compare --method hetlora:nope=1", "method option 'nope' is not a setting of 'hetlora'; allowed: ["),
    ("compare --devices 5000", "--devices must be at most 1584, the training blocks of pydocs+licenses+docstrings"),
    ("compare --method fedpeat --devices 1000", "--devices must be at most 778, the training blocks of pydocs at 128 "
                                                "tokens; got 1000: use fewer devices or more --domain"),
    ("compare --ray-workers 2", "--ray-address and --ray-workers apply to --executor ray only"),
    # claims
    ("claims --devices 0", "devices must be >= 1, got 0"),
    ("claims --rounds ten", "Invalid value for '--rounds': {int}"),
    ("claims --agent {tmp}/missing", "agent must be a trained agent's directory (with config.json), got '{tmp}/missing'"),
    ("claims --agent {tmp}/agent", "{tmp}/agent is not a trained agent's directory (it needs config.json and model.zip)"),
    ("claims --agent {tmp}/agent --checkpoint worst", "checkpoint must be one of ('final', 'best'), got 'worst'"),
    ("claims --devices 5000", "--devices must be at most 778, the training blocks of pydocs"),
    ("claims --env-episodes 0", "env_episodes must be >= 1, got 0"),
    ("claims --ray-address auto", "--ray-address and --ray-workers apply to --executor ray only"),
    # calibrate
    ("calibrate --refit {tmp}/missing.json", "--refit must be a calibration file that stores its engine runs: "
                                             "calibration file {tmp}/missing.json not found"),
    ("calibrate --refit {tmp}/not-json.txt", "--refit must be a calibration file that stores its engine runs: "
                                             "calibration file {tmp}/not-json.txt is not JSON"),
    ("calibrate --refit {tmp}/agent/config.json", "--refit must be a calibration file that stores its engine runs: "
                                                  "calibration {tmp}/agent/config.json has format_version None"),
    ("calibrate --refit {tmp}", "--refit must be a calibration file that stores its engine runs: calibration file "
                                "{tmp} not found"),
    ("calibrate --levels 0.5", "levels must be >= 2 increasing compression ratios in [0, 1), got (0.5,)"),
    ("calibrate --levels 0 --levels 1.5", "levels must be >= 2 increasing compression ratios in [0, 1), got (0.0, 1.5)"),
    ("calibrate --levels 0 --levels 0.99", "compression=0.99 keeps no middle block of 8"),
    ("calibrate --rounds 0", "--rounds must be >= 1, got 0"),
    ("calibrate --add-runs {tmp}/missing.json", "--add-runs must be a JSON file of engine runs"),
    ("calibrate --workers 0", "--workers must be >= 1, got 0"),
    ("calibrate --ranks two", "--ranks must be comma-separated integers, got 'two'"),
    ("calibrate --executor dask", "Invalid value for '--executor': executor must be one of ('local', 'ray')"),
    ("calibrate --out {tmp}", "Invalid value for '--out': must be a file, got the directory '{tmp}'"),
    # train
    ("train --check-every 1000 --check-episodes 0", "check_episodes must be >= 1, got 0"),
    ("train --env-option num_devices=ten", "num_devices must be an integer, got 'ten' (str)"),
    ("train --env-option nope=1", "unknown FedPEAT env option(s) ['nope']; valid options: ["),
    ('train --env-option channel={"nope":1}', "channel has no setting(s) ['nope']; valid: ["),
    ("train --env-option compression_levels=[0.99]", "compression_levels cannot be realised by the 'gpt2-xl' model: "
                                                      "compression=0.99 keeps no middle block of 46"),
    ("train --env FedPEAT-Engine-v1 --env-option compression_levels=[0,0.95]",
     "compression_levels cannot be realised by the 'embedded' model: compression=0.95 keeps no middle block of 8"),
    ("train --env FedPEAT-Engine-v1 --env-option num_devices=5000", "num_devices must be at most 1584 in engine fidelity (the training blocks of pydocs+licenses+docstrings"),
    ("train --env-option calibration={tmp}/missing.json", "calibration file {tmp}/missing.json not found"),
    ("train --env-option num_devices", "--env-option must look like key=value, got 'num_devices'"),
    ("train --hyperparams nonsense_key:1", "unknown hyperparameter(s) ['nonsense_key'] for ppo; allowed: ["),
    ("train --hyperparams n_steps:ten", "n_steps must be an integer, got 'ten'"),
    ("train --hyperparams learning_rate:fast", "learning_rate must be a number or lin_<initial> with initial > 0, got 'fast'"),
    ("train --resume", "--resume: no checkpoint in {tmp}/out/checkpoints"),
    ("train --n-envs 0", "n_envs must be >= 1, got 0"),
    ("train --algo sac", "Invalid value for '--algo': algo must be one of ('ppo', 'a2c', 'maskable-ppo'), got 'sac'"),
    ("train --env Nope-v0", "--env must be a registered Gymnasium id (FedPEAT-v1, FedPEAT-Engine-v1, ...), got 'Nope-v0'"),
    ("train --policy cnn", "--policy must be one of ('mlp', 'device-set'), got 'cnn'"),
    ("train --timesteps 0", "timesteps must be >= 1, got 0"),
    ("train --checkpoint-every -1", "Invalid value for '--checkpoint-every': Input should be greater than or equal to 0"),
    # evaluate
    ("evaluate --policy {tmp}/missing/dir", "--policy must be a trained agent's directory or a baseline ('fixed-k',"),
    ("evaluate --policy {tmp}/a-file", "--policy must be a trained agent's directory or a baseline ('fixed-k',"),
    ("evaluate --policy {tmp}/agent", "{tmp}/agent is not a trained agent's directory (it needs config.json and "
                                      "model.zip)"),
    ("evaluate --policy nope", "--policy must be a trained agent's directory or a baseline ('fixed-k',"),
    ("evaluate --policy greedy --seeds 0", "--seeds must be >= 1, got 0"),
    ("evaluate --policy greedy --episodes 0", "--episodes must be >= 1, got 0"),
    ("evaluate --policy greedy --env-option horizon=0", "horizon must be >= 1, got 0"),
    ("evaluate --policy greedy --checkpoint worst", "--checkpoint must be one of ('final', 'best'), got 'worst'"),
    ("evaluate --policy greedy --env Nope-v0", "--env must be a registered Gymnasium id"),
    ("evaluate --policy greedy --env CartPole-v1", "--env must be a FedPEAT env (FedPEAT-v1, FedPEAT-Engine-v1), got "
                                                   "'CartPole-v1'"),
    ("evaluate", "Missing option '--policy'"),
    # benchmark
    ("benchmark --agent {tmp}/missing", "agent_dir must be a trained agent's directory (with config.json)"),
    ("benchmark --seeds 0", "seeds must be >= 1, got 0"),
    ("benchmark --baseline nope", "baseline must be one of ('fixed-k',"),
    ("benchmark --checkpoint best", "checkpoint 'best' needs check_every > 0"),
    ("benchmark --workers 0", "workers must be >= 1, got 0"),
    ("benchmark --check-every 1000 --check-episodes 0", "check_episodes must be >= 1, got 0"),
    ("benchmark --env-option num_devices=0", "num_devices must be >= 1, got 0"),
    ("benchmark --env-option compression_levels=[0.99]", "compression_levels cannot be realised by the 'gpt2-xl' model"),
    ("benchmark --hyperparams n_envs:0", "n_envs must be >= 1, got 0"),
    ("benchmark --executor ray --train-seeds 2 --workers 2", "workers applies to executor 'local'"),
    # sim2real
    ("sim2real --agent {tmp}/missing", "{tmp}/missing is not a trained agent's directory"),
    ("sim2real --seeds 0", "--seeds must be >= 1, got 0"),
    ("sim2real --workers 0", "--workers must be >= 1, got 0"),
    ("sim2real --horizon 0", "--horizon must be >= 1, got 0"),
    ("sim2real --agent {tmp}/agent", "{tmp}/agent is not a trained agent's directory (it needs config.json and "
     "model.zip)"),
    ("sim2real --policy sarsa", "--policy: policy name must be one of"),
    ("sim2real --env-option availability=sometimes", "availability must be one of ('always', 'markov')"),
    ("sim2real --agent {tmp}/agent --checkpoint worst", "checkpoint must be one of ('final', 'best'), got 'worst'"),
    ("sim2real --agent {tmp}/agent --seeds two", "Invalid value for '--seeds': {int}"),
    # regime
    ("regime --devices 0", "devices must be >= 1, got 0"),
    ("regime --rounds ten", "Invalid value for '--rounds': {int}"),
    ("regime --local-steps 0", "local_steps must be >= 1, got 0"),
    ("regime --devices 5000", "--devices must be at most 778, the training blocks of pydocs"),
    # demo
    ("demo --algo sac", "Invalid value for '--algo': algo must be one of"),
    ("demo --timesteps 0", "timesteps must be >= 1, got 0"),
    ("demo --episodes 0", "episodes_per_seed must be >= 1, got 0"),
    ("demo --check-every -1", "check_every must be >= 0"),
    ("demo --check-episodes 0", "check_episodes must be >= 1, got 0"),
    # demo-federated
    ("demo-federated --rounds 0", "--rounds must be >= 1, got 0"),
    ("demo-federated --rounds ten", "Invalid value for '--rounds': {int}"),
    ("demo-federated --seed -1", "--seed must be >= 0, got -1"),
    # pretrain (an --out of its own: the default is the committed checkpoint)
    ("pretrain --steps 0", "--steps must be >= 1, got 0"),
    ("pretrain --steps ten", "Invalid value for '--steps': {int}"),
    ("pretrain --seed -1", "--seed must be >= 0, got -1"),
    # build-corpus (its only option is --out)
    ("build-corpus --out {tmp}/a-file", "Invalid value for '--out': must be a directory that can be created and "
                                        "written; '{tmp}/a-file' is not a directory"),
    ("build-corpus --out {tmp}/a-file/sub", "'{tmp}/a-file' is not a directory"),
    ("build-corpus --out {tmp}/out extra", "Got unexpected extra argument(s) (extra)"),
    # bench
    ("bench env --steps 0", "steps must be an integer >= 1, got 0"),
    ("bench env --num-envs 0", "num_envs must be an integer >= 1, got 0"),
    ("bench env --ppo-timesteps ten", "Invalid value for '--ppo-timesteps': {int}"),
    ("bench engine --steps 0", "--steps must be >= 1, got 0"),
    ("bench engine --batch-size 0", "--batch-size must be >= 1, got 0"),
    ("bench engine --steps ten", "Invalid value for '--steps': {int}"),
    ("bench executors --clients 0", "clients must be an integer >= 1, got 0"),
    ("bench executors --workers 0", "workers must be an integer >= 1, got 0"),
    ("bench executors --rounds 0", "rounds must be an integer >= 1, got 0"),
    ("bench devices --devices ten", "Invalid value for '--devices': {int}"),
    ("bench devices --steps 0", "steps must be an integer >= 10, got 0"),
    ("bench nope", "No such command 'nope'"),
]

NOT_AN_INTEGER = "Input should be a valid integer"


def _work_started(*args, **kwargs):
    raise AssertionError("work started (a model loaded, an engine run or an agent built) before the bad input was refused")


def _tree(root) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("command", "fragment"), CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_refused_before_any_work(tmp_path, monkeypatch, command, fragment):
    (tmp_path / "not-json.txt").write_text("not json\n")
    (tmp_path / "a-file").write_text("a file, not a directory\n")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "config.json").write_text(json.dumps({"algo": "ppo"}))
    monkeypatch.chdir(tmp_path)
    for owner, name in ((PreTrainedModel, "from_pretrained"), (RoundRunner, "__init__"), (BaseAlgorithm, "__init__")):
        monkeypatch.setattr(owner, name, _work_started)  # a case that gets this far validated too late
    before = _tree(tmp_path)
    args = command.replace("{tmp}", str(tmp_path)).split()
    if args[0] in WITH_OUT_DIR and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if args[0] == "calibrate" and "--out" not in args:
        args += ["--out", str(tmp_path / "out.json")]

    result = runner.invoke(app, args)

    text = cli_text(result.output)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert fragment.replace("{tmp}", str(tmp_path)).replace("{int}", NOT_AN_INTEGER) in text, text
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before  # nothing written: no out dir, no runs/, no file
