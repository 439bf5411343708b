"""The ``fedpeat`` command line through typer's runner (same entry point as the console script)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments import cli
from experiments.cli import app
from tests.helpers import cli_runner, cli_text

runner = cli_runner()
cli.console.width = 200  # the round table must not wrap or truncate numbers


def test_run_writes_round_table_csv_and_json(tmp_path):
    args = ["run", "--method", "fedpeat", "--devices", "2", "--rounds", "2", "--seed", "3", "--local-steps", "2",
            "--compression", "0.5", "--compression", "0.75", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["full_perplexity"] > 0).all()
    for value in (*rounds["full_perplexity"], *rounds["emulator_perplexity"]):  # the printed table
        assert f"{value:.1f}" in result.output
    devices = pd.read_csv(tmp_path / "devices.csv")
    assert sorted(devices.loc[devices["round"] == 1, "kept_blocks"]) == [4, 6]
    messages = pd.read_csv(tmp_path / "messages.csv")
    assert messages["bytes"].sum() == rounds["bytes_down"].sum() + rounds["bytes_up"].sum()
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["seed"] == 3 and len(record["rounds"]) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = events.Scalars("fed/full_perplexity")  # grouped under fed/ in tensorboard
    assert [e.step for e in logged] == list(rounds["round"])
    assert [e.value for e in logged] == pytest.approx(list(rounds["full_perplexity"]), rel=1e-6)
    assert "fed/bytes_up" in events.Tags()["scalars"]
    again = runner.invoke(app, args[:-1] + [str(tmp_path / "again")])
    assert again.exit_code == 0
    same = pd.read_csv(tmp_path / "again" / "rounds.csv").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(same, rounds.drop(columns="wall_time_s"))


def test_run_rejects_bad_input_with_one_clear_error(tmp_path):
    cases = [
        (["--method", "fedx"], "method must be one of"),
        (["--devices", "3", "--compression", "0.5", "--compression", "0.5"], "one per device"),
        (["--compression", "1.0"], "compression must be in [0, 1)"),
        (["--method", "fed-ft", "--case", "2"], "applies to method 'fedpeat' only"),
        (["--method", "fedpetuning", "--distill-steps", "5"], "applies to methods 'fedpeat', 'fedot' and 'fedpft' only"),
        (["--lora-aggregation", "mean"], "lora_aggregation must be one of"),
        (["--lora-rank", "2", "--lora-rank", "4", "--lora-rank", "8"], "lora_rank takes 1 value or one per device"),
        (["--rounds", "0"], "rounds must be >= 1"),
        (["--latency-aggregation", "mean"], "latency_aggregation must be one of ('sum', 'max')"),
    ]
    for extra, message in cases:
        out = tmp_path / "never"
        result = runner.invoke(app, ["run", "--devices", "2", "--local-steps", "1", *extra, "--out", str(out)])
        assert result.exit_code == 2, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
        assert not out.exists()


@pytest.mark.slow  # end to end: several engine runs through the CLI
def test_demo_federated_prints_the_round_table():
    result = runner.invoke(app, ["demo-federated", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert "lower) after 1 rounds" in " ".join(result.output.split())


def test_run_hetlora_with_per_device_ranks_and_exact_aggregation(tmp_path):
    args = ["run", "--method", "hetlora", "--devices", "2", "--rounds", "1", "--local-steps", "1",
            "--lora-rank", "2", "--lora-rank", "8", "--out", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    up = pd.read_csv(tmp_path / "messages.csv").query("direction == 'up'").sort_values("device")
    assert list(up["bytes"] // up["bytes"].min()) == [1, 4]
    exact = runner.invoke(app, ["run", "--method", "fedpeat", "--devices", "2", "--rounds", "1", "--local-steps", "1",
                                "--lora-aggregation", "exact"])
    assert exact.exit_code == 0, exact.output


@pytest.mark.slow  # end to end: engine runs or many episodes through the CLI
def test_compare_writes_one_table_for_all_methods(tmp_path):
    args = ["compare", "--method", "fedpetuning", "--method", "fedpeat", "--rounds", "1", "--seeds", "2",
            "--devices", "2", "--local-steps", "1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "compare.csv")
    assert set(summary["method"]) == {"fedpetuning", "fedpeat"}
    assert (summary["CI low"] <= summary["final perplexity"]).all()
    runs = pd.read_csv(tmp_path / "compare_runs.csv")
    assert len(runs) == 4 and (runs["final perplexity"] < runs["initial perplexity"]).all()
    by_method = summary.set_index("method")
    assert by_method.loc["fedpeat", "peak device memory (MB)"] < by_method.loc["fedpetuning", "peak device memory (MB)"]
    assert (tmp_path / "compare.md").read_text().startswith("| method |")
    bad = runner.invoke(app, ["compare", "--method", "fedx"])
    assert bad.exit_code == 2 and "method must be one of" in bad.output


@pytest.mark.slow  # end to end: engine runs or many episodes through the CLI
def test_run_takes_method_options_and_prints_method_metrics(tmp_path):
    args = ["run", "--method", "fedpft", "-o", "keep_ratio=0.5", "-o", "refresh_every=1", "--distill-steps", "2",
            "--devices", "2", "--rounds", "2", "--local-steps", "1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    # 8 pruned blocks keep 256 of 512 neurons; before round 2 half of them (128 per block) are distilled
    assert list(rounds["distilled_neurons"]) == [0, 8 * 128]
    assert "fedpft metrics" in result.output and "distilled_neurons" in result.output
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["method_config"]["keep_ratio"] == 0.5
    cases = [
        (["--method", "fedpft", "-o", "keepratio=0.5"], "method option 'keepratio' is not a setting of 'fedpft'"),
        (["--method", "fedpft", "-o", "keep_ratio=half"], "keep_ratio must be a finite number"),
        (["--method", "fedpft", "-o", "keep_ratio"], "method option must look like key=value"),
        (["--method", "hetlora", "-o", "aggregation=mean"], "aggregation must be one of"),
        (["--method", "fed-ft", "--distill-steps", "3"], "--distill-steps applies to methods"),
        (["--method", "fltac", "--domain", "pydocs"], "domains must name >= 2 tasks"),
    ]
    for extra, message in cases:
        bad = runner.invoke(app, ["run", "--rounds", "1", "--devices", "2", *extra])
        assert bad.exit_code == 2, (extra, bad.output)
        assert message in " ".join(bad.output.split()), (extra, bad.output)


@pytest.mark.slow  # end to end: several engine runs through the CLI
def test_compare_method_variants_and_claims(tmp_path):
    args = ["compare", "--method", "hetlora:ranks=2,8", "--method", "hetlora:ranks=2,8:aggregation=zero-pad",
            "--rounds", "1", "--seeds", "2", "--devices", "2", "--local-steps", "1", "--out", str(tmp_path / "cmp")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(summary["method"]) == {"hetlora:ranks=2,8", "hetlora:ranks=2,8:aggregation=zero-pad"}
    runs = pd.read_csv(tmp_path / "cmp" / "compare_runs.csv")
    assert (runs["bytes up (MB)"] == runs["bytes up (MB)"].iloc[0]).all()  # same ranks → same bytes, other aggregation
    assert runs.groupby("seed")["final perplexity"].nunique().eq(2).all()



@pytest.mark.slow  # end to end: several engine runs through the CLI
def test_claims_verdicts_follow_from_their_runs(tmp_path):
    from agents.stats import bootstrap_ci, paired_difference
    from experiments.claims import paired_verdict, verdict

    claims = ["claims", "--claim", "fltac", "--claim", "emulator", "--claim", "control", "--rounds", "1", "--seeds", "2",
              "--devices", "2", "--local-steps", "1", "--env-seeds", "2", "--env-episodes", "1",
              "--static-episodes", "8", "--out", str(tmp_path / "claims")]
    result = runner.invoke(app, claims)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "claims" / "claims.csv")
    runs = pd.read_csv(tmp_path / "claims" / "claims_runs.csv")
    assert list(table["claim"]) == ["emulator"] + ["control"] * 5 + ["fltac"]
    control = table[table["claim"] == "control"]
    assert list(control["method"])[:2] == ["mpc", "mpc"] and list(control["baseline"])[0] == "best-static"
    assert list(control["method"])[2] == "greedy (clairvoyant: an upper bound)"  # labelled as what it is
    assert (tmp_path / "claims" / "claims.md").read_text().startswith("# Papers' claims")

    fltac, tac_runs = table.set_index("claim").loc["fltac"], runs[runs["claim"] == "fltac"]
    assert len(tac_runs) == 4 and (tac_runs["final perplexity"] < tac_runs["initial perplexity"]).all()
    sides = {name: tac_runs.loc[tac_runs["method"] == name, "final perplexity"].to_numpy() for name in ("fltac", "fedpetuning")}
    expected = verdict(sides["fltac"].mean(), bootstrap_ci(sides["fltac"]), sides["fedpetuning"].mean(),
                       bootstrap_ci(sides["fedpetuning"]))
    assert fltac["verdict"] == expected and fltac["method value"] == pytest.approx(sides["fltac"].mean())
    accuracy = tac_runs.loc[tac_runs["method"] == "fltac", "clustering_accuracy"].mean()
    assert fltac["clustering accuracy"] == pytest.approx(accuracy)

    ladder = runs[runs["claim"] == "emulator"].sort_values("ε")["zero-shot perplexity"].to_numpy()
    rises = bool((ladder[1:] > ladder[:-1]).all())
    assert table.loc[0, "verdict"].startswith("reproduces" if rises else "does not reproduce")
    assert table.loc[0, "baseline value"] == pytest.approx(ladder[0]) and table.loc[0, "method value"] == pytest.approx(ladder[-1])

    episodes = runs[runs["claim"] == "control"]
    for _, row in table[table["claim"] == "control"].iterrows():
        scenario = "unlimited memory" if row["detail"].startswith("unlimited") else "benchmark scenario"
        def side(name, scenario=scenario):
            if name == "fed-ft":
                wanted = "Fed-FT" + (", unlimited memory" if scenario == "unlimited memory" else "")
                return episodes[(episodes["method"] == "full-model") & (episodes["scenario"] == wanted)]
            return episodes[(episodes["method"] == name) & (episodes["scenario"] == scenario)]
        m, b = side(row["method"].split(" (")[0]), side(row["baseline"])
        assert len(m) == len(b) == 2 and row["method value"] == pytest.approx(m["return"].mean())
        assert row["verdict"] == paired_verdict(paired_difference(m, b))
    fixed = episodes[(episodes["scenario"] == "benchmark scenario") & episodes["method"].str.startswith("fixed-")]
    assert table.loc[2, "baseline"] == fixed.groupby("method")["return"].mean().idxmax()  # the best fixed ε

    for extra, message in [(["--claim", "fedx"], "claim must be one of"), (["--seeds", "1"], "seeds >= 2"),
                           (["--agent", str(tmp_path)], "agent must be a trained agent's directory")]:
        bad = runner.invoke(app, ["claims", *extra])
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), bad.output


@pytest.mark.slow  # end to end: engine runs or many episodes through the CLI
def test_claims_control_with_an_agents_best_checkpoint(tmp_path):
    from agents.evaluate import evaluate
    from agents.train import TrainConfig, load_policy, train
    from experiments.benchmark import EVAL_SEED_OFFSET

    agent = tmp_path / "ppo"
    train(TrainConfig(algo="ppo", timesteps=64, n_envs=8, out_dir=str(agent), check_every=32, check_episodes=2,
                      algo_kwargs={"n_steps": 8, "batch_size": 16, "n_epochs": 1}), progress=False)
    result = runner.invoke(app, ["claims", "--claim", "control", "--env-seeds", "2", "--env-episodes", "1",
                                 "--static-episodes", "8", "--agent", str(agent), "--checkpoint", "best",
                                 "--out", str(tmp_path / "claims")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "claims" / "claims.csv")
    rows = table.set_index("method").loc["ppo agent"]
    assert list(rows["baseline"])[0] == "best-static"
    best = evaluate(load_policy(agent, checkpoint="best"), seeds=[EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1])
    assert rows["method value"].tolist() == pytest.approx([best["return"].mean()] * 2)
    assert f"--agent {agent} --checkpoint best" in (tmp_path / "claims" / "claims.md").read_text()
    # the verdict under each reward weight × 0.5 and × 2, recomputed from the episodes
    from experiments.claims import WEIGHT_SETTINGS

    runs = pd.read_csv(tmp_path / "claims" / "claims_runs.csv")
    held = 0
    for name, factor in WEIGHT_SETTINGS:
        scenario = runs[runs["scenario"] == f"reward {name} × {factor:g}"]
        means = scenario.groupby("method")["return"].mean()
        held += means["ppo"] > means["best-static"] > means["fixed-1"]
    sensitivity = table.set_index("method").loc["ppo agent, reward weights × 0.5 / × 2"]
    assert sensitivity["method value"] == held and sensitivity["baseline value"] == len(WEIGHT_SETTINGS) == 14
    assert sensitivity["verdict"].startswith(f"ranking agent > best-static > fixed-1 holds in {held} of 14 settings")


def test_claim_verdicts():
    from experiments.claims import verdict

    assert verdict(10.0, (9.0, 11.0), 20.0, (19.0, 21.0)) == "reproduces (CIs separate)"
    assert verdict(10.0, (9.0, 15.0), 12.0, (11.0, 13.0)) == "holds in the mean; CIs overlap"
    assert verdict(20.0, (19.0, 21.0), 10.0, (9.0, 11.0)) == "does not reproduce (baseline better, CIs separate)"
    assert verdict(12.0, (11.0, 13.0), 10.0, (9.0, 15.0)) == "does not reproduce in the mean; CIs overlap"
    from experiments.claims import paired_verdict

    assert paired_verdict({"mean": 1.0, "CI low": 0.2, "CI high": 2.0}) == "reproduces (paired CI above 0)"
    assert paired_verdict({"mean": 1.0, "CI low": -0.2, "CI high": 2.0}) == "holds in the mean; paired CI includes 0"
    assert paired_verdict({"mean": -1.0, "CI low": -2.0, "CI high": -0.1}) == "does not reproduce (paired CI below 0)"
    assert paired_verdict({"mean": -1.0, "CI low": -2.0, "CI high": 0.1}) == "does not reproduce in the mean; paired CI includes 0"


def test_calibrate_refits_the_committed_runs_and_reports_every_parameter(tmp_path):
    from fedpeat_env.surrogate import DEFAULT_CALIBRATION, Calibration

    out = tmp_path / "cal.json"
    result = runner.invoke(app, ["calibrate", "--refit", str(DEFAULT_CALIBRATION), "--out", str(out)])
    assert result.exit_code == 0, result.output
    committed, refit = Calibration.load(DEFAULT_CALIBRATION), Calibration.load(out)
    # a least-squares refit promises its solution to a tolerance, not the last bits of one CPU's BLAS
    for name, p in committed.parameters.items():
        assert refit.parameters[name]["value"] == pytest.approx(p["value"], rel=1e-3, abs=1e-5), name
    assert refit.fit_error["heldout"]["rollout"] == pytest.approx(committed.fit_error["heldout"]["rollout"], rel=1e-3)
    assert refit.best_perplexity == committed.best_perplexity and refit.covered == committed.covered  # measured: exact
    text = " ".join(result.output.split())
    for name in committed.parameters:
        assert name in text
    for condition, row in committed.fit_error["heldout"]["by_condition"].items():  # held-out errors per condition
        assert condition in text and f"{100 * row['rollout']:.1f}%" in text
    bad = runner.invoke(app, ["calibrate", "--ranks", "8,4", "--out", str(tmp_path / "never.json")])
    assert bad.exit_code == 2 and "--ranks must be increasing integers" in " ".join(bad.output.split())
    assert not (tmp_path / "never.json").exists()


def test_calibrate_adds_engine_episodes_to_the_fit(tmp_path):
    from fedpeat_env.surrogate import DEFAULT_CALIBRATION, Calibration

    committed = Calibration.load(DEFAULT_CALIBRATION)
    episodes = [{**run, "spec": {**run["spec"], "condition": "policy"}} for run in committed.meta["heldout_runs"][:2]]
    (tmp_path / "engine_runs.json").write_text(json.dumps(episodes))
    out = tmp_path / "cal.json"
    result = runner.invoke(app, ["calibrate", "--refit", str(DEFAULT_CALIBRATION), "--add-runs",
                                 str(tmp_path / "engine_runs.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    refit = Calibration.load(out)
    assert len(refit.meta["fit_runs"]) == len(committed.meta["fit_runs"]) + 2
    committed_policy_runs = committed.fit_error["fit"]["by_condition"].get("policy", {}).get("runs", 0)
    assert refit.fit_error["fit"]["by_condition"]["policy"]["runs"] == committed_policy_runs + 2
    (tmp_path / "broken.json").write_text("[{}]")
    bad = runner.invoke(app, ["calibrate", "--refit", str(DEFAULT_CALIBRATION), "--add-runs",
                              str(tmp_path / "broken.json"), "--out", str(tmp_path / "never.json")])
    assert bad.exit_code == 2 and "--add-runs must be a JSON file of engine runs" in " ".join(bad.output.split())
    assert not (tmp_path / "never.json").exists()


@pytest.mark.slow  # end to end: several engine runs through the CLI
def test_regime_reports_the_unigram_reference_and_the_plugin_rows(tmp_path):
    result = runner.invoke(app, ["regime", "--devices", "2", "--rounds", "1", "--local-steps", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "regime.csv")
    unigram = table.loc[table["setting"].str.startswith("unigram"), "full-model ppl"].iloc[0]
    zero_shot = table.loc[table["setting"] == "zero-shot", "full-model ppl"].iloc[0]
    plugin = table[table["setting"] == "federated FedPEAT (plug-in)"].set_index("ε")["full-model ppl"]
    assert list(plugin.index) == [0.0, 0.25, 0.5, 0.75] and (plugin < zero_shot).all()  # one round already helps
    assert zero_shot < unigram  # the pretrained model knows more than token counts of the domain
    emulators = table[table["setting"] == "zero-shot emulator"].set_index("ε")["emulator ppl"]
    assert emulators.is_monotonic_increasing and emulators.iloc[0] > zero_shot  # the emulator ladder
    assert table.loc[table["setting"].str.startswith("centralised full"), "× unigram"].iloc[0] < 1
    assert "0.5 × unigram" in result.output


@pytest.mark.parametrize("command", [["run"], ["compare"], ["train"], ["benchmark"], ["claims"], ["regime"], ["sim2real"],
                                     ["demo"], ["pretrain"], ["calibrate"]])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = runner.invoke(app, [*command, "--out", str(blocker / "sub")])
    assert result.exit_code == 2, result.output
    text = cli_text(result.output)
    assert "Invalid value for '--out'" in text and f"{str(blocker)!r} is not a directory" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written
    if Path("/proc").is_dir():  # a directory whose permission bits allow writing (to root) but that refuses it
        forbidden = runner.invoke(app, [*command, "--out", "/proc/forbidden/x"])
        text = cli_text(forbidden.output)
        assert forbidden.exit_code == 2 and "Traceback" not in forbidden.output, forbidden.output
        assert "Invalid value for '--out'" in text and "'/proc' is not writable" in text, text


def test_the_block_size_shrinks_only_when_the_devices_need_more_blocks():
    from experiments.run import fitting_block_size

    assert fitting_block_size(778) == 128 and fitting_block_size(1000) == 64


@pytest.mark.slow
def test_a_thousand_devices_ten_per_round(tmp_path):
    result = runner.invoke(app, ["run", "--devices", "1000", "--clients-per-round", "10", "--rounds", "3",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "block size 64: blocks of 128 tokens are too few for 1000 devices" in result.output
    devices = pd.read_csv(tmp_path / "devices.csv")
    assert len(devices) == 3000 and devices.groupby("round")["selected"].sum().tolist() == [10, 10, 10]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["block_size"] == 64
