"""The per-worker loop on a real world-size-1 DeepSpeed engine (gloo), without Ray."""

import dataclasses
import math
import shutil

import pytest

from analysis.records import LOSS, THROUGHPUT, Status
from experiments.planner import plan
from experiments.schedules import cosine
from experiments.spec import load_spec
from experiments.train_loop import WorkerContext, run_worker
from tests.conftest import MINIMAL_SPEC


@pytest.fixture
def trial(write_spec):
    spec, located = load_spec(write_spec(MINIMAL_SPEC.replace("tokens: [4096, 8192]", "tokens: [12800]")))
    smallest = min(plan(spec, located), key=lambda t: t.n_params)
    return dataclasses.replace(smallest, eval_steps=(10, 50, 100))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine(100, 100, 10, 0.1) == pytest.approx(0.1)
    values = [cosine(s, 100, 10, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert cosine(0, 100, 0, 0.0) == pytest.approx(1.0)


class Recorder:
    def __init__(self, stop_after: int | None = None, keep: str | None = None):
        self.reports, self.stop_after, self.keep = [], stop_after, keep

    def __call__(self, report, checkpoint_dir):
        self.reports.append((report, checkpoint_dir is not None))
        if self.stop_after is not None and len(self.reports) == self.stop_after:
            shutil.copytree(checkpoint_dir, self.keep)
            raise KeyboardInterrupt("simulated kill after a checkpoint")


def test_trains_reports_at_eval_points_and_counts_tokens(process_group, trial):
    rec = Recorder()
    final = run_worker(trial, WorkerContext(0, 1, rec))
    steps = [r.step for r, _ in rec.reports]
    assert steps == [10, 50, 100]
    assert [has_ckpt for _, has_ckpt in rec.reports] == [True, True, False]  # the end needs none
    assert final.status == Status.COMPLETED and final.done
    assert final.data_units == trial.data_units == 100 * 4 * 32
    assert final.flops == pytest.approx(trial.flops)
    losses = [r.loss for r, _ in rec.reports]
    assert losses[-1] < losses[0] < math.log(256) + 0.5
    assert final.metrics[THROUGHPUT] > 0 and final.flops_measured_per_unit > 0
    # the report's rows and columns are the contract's (analysis.records)
    rows = final.eval_rows(trial.trial_id)
    assert {r["metric"] for r in rows} == {"loss", "bits_per_token", "train_loss", "lr", "data_units_per_s"}
    assert final.final_columns()["final_loss"] == final.metrics[LOSS]


def test_resume_from_checkpoint_continues_where_it_stopped(process_group, trial, tmp_path):
    whole = run_worker(trial, WorkerContext(0, 1, Recorder()))
    saved = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_worker(trial, WorkerContext(0, 1, Recorder(stop_after=2, keep=str(saved))))
    rec = Recorder()
    resumed = run_worker(trial, WorkerContext(0, 1, rec, restore_dir=str(saved)))
    assert [r.step for r, _ in rec.reports] == [100]  # steps 1..50 were not trained again
    assert resumed.loss == pytest.approx(whole.loss, abs=1e-4)


def test_nan_loss_ends_the_trial_as_diverged(process_group, trial):
    blowup = dataclasses.replace(trial, training=dataclasses.replace(trial.training, lr=1e9, grad_clip=0.0))
    rec = Recorder()
    final = run_worker(blowup, WorkerContext(0, 1, rec))
    assert final.status == Status.DIVERGED and "loss is" in final.error
    assert final.step < trial.steps


def test_grad_clip_zero_turns_deepspeeds_default_clipping_off(trial):
    """Left out of the config, DeepSpeed clips the gradient norm at 1.0 on its own."""
    from experiments.train_loop import deepspeed_config

    off = dataclasses.replace(trial, training=dataclasses.replace(trial.training, grad_clip=0.0))
    assert deepspeed_config(off)["gradient_clipping"] == 0.0
    assert deepspeed_config(trial)["gradient_clipping"] == trial.training.grad_clip == 1.0


def test_engine_clips_gradients_as_torch_does(process_group, trial):
    """The engine's step (with its clipping replaced by torch's multi-tensor clip) updates
    the weights as a plain torch AdamW step after ``clip_grad_norm_`` does, and a clip this
    tight changes the update (so the test would see clipping skipped)."""
    import torch

    from experiments.data import train_batch
    from experiments.schedules import lr_multiplier
    from experiments.train_loop import TrialData, build_engine

    tight = dataclasses.replace(trial, training=dataclasses.replace(trial.training, grad_clip=1e-3))
    tr, data = tight.training, TrialData(tight)
    family, engine = build_engine(tight)

    def reference(clip: float):
        torch.manual_seed(tight.seed)
        model = family.build(tight.shape)
        params = list(model.parameters())
        opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": tr.weight_decay},
                                 {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                lr=tr.lr, betas=(tr.beta1, tr.beta2))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(tight))
        for step in range(3):
            family.loss(model, torch.from_numpy(train_batch(data.tokens.train, step, tr.batch_size, tr.seq_len))).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step(), sched.step(), opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in params])

    for step in range(3):
        family.train_step(engine, torch.from_numpy(data.batch(step, 0, 1)))
    trained = torch.cat([p.detach().flatten() for p in engine.module.parameters()])
    assert torch.allclose(trained, reference(tr.grad_clip), rtol=0, atol=1e-6)
    assert not torch.allclose(trained, reference(0.0), rtol=0, atol=1e-4)


def test_a_resumed_trial_checkpoints_again(process_group, trial, tmp_path):
    """The client state loaded back holds DeepSpeed's own metadata keys too; passing them to
    the next save_checkpoint raised KeyError (DeepSpeed 0.19.8), failing every resumed trial
    at its first checkpoint after the restart."""
    saved = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        run_worker(trial, WorkerContext(0, 1, Recorder(stop_after=1, keep=str(saved))))
    rec = Recorder()
    final = run_worker(trial, WorkerContext(0, 1, rec, restore_dir=str(saved)))
    assert [r.step for r, _ in rec.reports] == [50, 100] and final.status == Status.COMPLETED
    assert rec.reports[0][1]  # step 50 reported with a checkpoint
