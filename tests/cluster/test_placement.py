"""Placement before launch: memory per worker under each ZeRO stage, trials no node can hold,
the ZeRO-3 size rule and `precision: auto`."""

from __future__ import annotations


import pytest

from cluster.placement import NodeShape, launcher_node_types, memory_per_worker, placement_problems
from experiments.planner import plan
from experiments.spec import load_spec
from experiments.train_loop import resolve_precision
from tests.conftest import REPO

SPEC = """\
name: place
model:
  sizes:
    - {{d_model: 64, n_layers: 2, n_heads: 4}}
    - {{d_model: 256, n_layers: 4, n_heads: 8}}
budgets: {{tokens: [65536]}}
training: {{batch_size: 16, seq_len: 64}}
deepspeed: {deepspeed}
resources: {resources}
"""


def _plan(write_spec, deepspeed="{zero_stage: 0}", resources="{workers: 1}"):
    path = write_spec(SPEC.format(deepspeed=deepspeed, resources=resources))
    spec, located = load_spec(path)
    return plan(spec, located)


def test_model_states_follow_the_zero_paper(write_spec):
    fp32 = _plan(write_spec)[0]
    psi = fp32.total_params
    assert memory_per_worker(fp32)["model_states"] == 16 * psi
    for stage, expected in ((1, 2 * psi + 2 * psi + 12 * psi / 4), (2, 2 * psi + 14 * psi / 4), (3, 16 * psi / 4)):
        cfg = _plan(write_spec, deepspeed=f"{{zero_stage: {stage}, precision: bf16}}",
                    resources="{workers: 4, gpus_per_worker: 1}")[0]
        assert memory_per_worker(cfg)["model_states"] == pytest.approx(expected)
    # activations: 34·s·b·d per layer (×2 in fp32) plus fp32 logits
    shape = fp32.shape
    expected_act = shape.n_layers * 34 * 64 * 16 * shape.d_model * 2 + 4 * 64 * 16 * shape.vocab
    assert memory_per_worker(fp32)["activations"] == expected_act


def test_a_trial_larger_than_any_node_is_a_problem(write_spec):
    trials = _plan(write_spec, resources="{workers: 2, gpus_per_worker: 8, cpus_per_worker: 4}")
    nodes = [NodeShape("a", cpus=16, gpus=4), NodeShape("b", cpus=8, gpus=4)]
    problems = placement_problems(trials, nodes)
    assert set(problems) == {t.trial_id for t in trials}
    assert "needs 4 CPU and 8 GPU; the largest node (a) has 16 CPU and 4 GPU" in next(iter(problems.values()))
    # fits per worker, but three workers of 4 GPUs need three such nodes
    trials = _plan(write_spec, resources="{workers: 4, gpus_per_worker: 4, cpus_per_worker: 4}")
    problems = placement_problems(trials, nodes)
    assert problems and "the cluster holds at most 2" in next(iter(problems.values()))
    assert not placement_problems(trials, [NodeShape("type gpu", cpus=16, gpus=4, count=8)])


def test_gpu_memory_of_a_known_accelerator_is_checked(write_spec):
    big = _plan(write_spec, deepspeed="{zero_stage: 0, precision: bf16}", resources="{gpus_per_worker: 1}")
    tiny_gpu = [NodeShape("n", cpus=8, gpus=1, gpu_memory_gib=1e-4)]
    problems = placement_problems(big, tiny_gpu)
    assert problems and "raise zero_stage or workers" in next(iter(problems.values()))
    assert not placement_problems(big, [NodeShape("h100", cpus=8, gpus=1, gpu_memory_gib=80)])


def test_ray_config_node_types_are_read_with_their_resources():
    types = {n.name: n for n in launcher_node_types(REPO / "ray_config.yaml")}
    assert types["type gpu_worker"].gpus == 1 and types["type gpu_worker"].count == 8
    assert types["type head"].cpus == 0


def test_zero3_above_a_parameter_threshold(write_spec):
    trials = _plan(write_spec, deepspeed="{zero_stage: 1, zero3_above_params: 1e6}")
    stages = {t.shape.d_model: t.zero_stage for t in trials}
    assert stages == {64: 1, 256: 3}  # 256x4 has ~3.2M parameters


def test_precision_auto_is_fp32_on_cpu_trials_and_resolved_on_the_worker(write_spec):
    assert {t.precision for t in _plan(write_spec, deepspeed="{precision: auto}")} == {"fp32"}
    gpu = _plan(write_spec, deepspeed="{precision: auto}", resources="{gpus_per_worker: 1}")
    assert {t.precision for t in gpu} == {"auto"}
    assert resolve_precision("auto") == "fp32"  # no CUDA here
    assert resolve_precision("bf16") == "bf16"


def test_dry_run_against_a_cluster_config_refuses_a_trial_no_node_type_holds(write_spec, capsys):
    from cluster.cli import main

    path = write_spec(SPEC.format(deepspeed="{zero_stage: 2, precision: bf16}",
                                  resources="{workers: 1, gpus_per_worker: 2}"))
    assert main(["sweep", str(path), "--dry-run", "--cluster-config", str(REPO / "ray_config.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "2 of 2 trial(s) can never run on this cluster" in err
    assert "CANNOT RUN" in out and "memory per worker" in out
    ok = write_spec(SPEC.format(deepspeed="{zero_stage: 2}", resources="{workers: 1}"), name="ok.yaml")
    assert main(["sweep", str(ok), "--dry-run"]) == 0 and "MiB" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.slow
def test_a_trial_this_machine_can_never_hold_is_refused_before_launch(write_spec, tmp_path, scalinglab):
    path = write_spec(SPEC.format(deepspeed="{zero_stage: 0}", resources="{cpus_per_worker: 64}"))
    code, _, stderr = scalinglab("sweep", path, "--storage", tmp_path / "o")
    assert code == 2, stderr[-2000:]
    assert "can never run on this machine" in stderr and "needs 64 CPU" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "o" / "plan.json").exists()
