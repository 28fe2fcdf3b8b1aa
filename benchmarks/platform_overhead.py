"""Platform overhead: the same model, data and steps trained (a) by a bare PyTorch loop in
this process and (b) through the platform (CLI -> embedded Ray -> Tune trial -> DeepSpeed),
in one run. Prints tokens/s of each, their ratio, and the fixed start-up seconds.

    python benchmarks/platform_overhead.py                # ~60 s trial (d96, L2) on a CPU
    python benchmarks/platform_overhead.py --tokens 2e5   # a quick look

Both sides use one thread (the trial's ``cpus_per_worker: 1``), fp32, AdamW with the same
schedule and clipping, and the same batches from the stdlib source. The platform's
steady-state tokens/s counts training steps only (its one evaluation, at the end, is
excluded); its end-to-end figure divides by the whole command's wall time. Each platform
run is compared with the mean of a bare run just before and one just after it: on a shared
machine the speed drifts by several per cent within minutes (9% between the two bare runs
of one round, once), and a baseline on one side only would carry that drift into the ratio.
``--repeats R`` makes R such rounds and reports the median ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analysis.records import TRIALS  # noqa: E402
from experiments.data import load_tokens, train_batch  # noqa: E402
from experiments.planner import TrialConfig, plan  # noqa: E402
from experiments.schedules import lr_multiplier  # noqa: E402
from experiments.spec import load_spec  # noqa: E402

SPEC = """\
name: overhead
model:
  sizes: [{{d_model: {d_model}, n_layers: {n_layers}, n_heads: {n_heads}}}]
budgets: {{tokens: [{tokens}]}}
training: {{batch_size: 8, seq_len: 64}}
resources: {{cpus_per_worker: 1}}
evaluation: {{validation_tokens: 8192, points: 1}}
"""


def bare_loop(cfg: TrialConfig) -> dict:
    """The reference: plain PyTorch, no Ray, no DeepSpeed."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    family = cfg.model_family
    data = load_tokens(cfg.data, train_tokens=cfg.data_units + 1, validation_tokens=cfg.validation_units)
    torch.manual_seed(cfg.seed)
    model = family.build(cfg.shape)
    tr = cfg.training
    opt = torch.optim.AdamW(model.parameters(), lr=tr.lr, betas=(tr.beta1, tr.beta2),
                            weight_decay=tr.weight_decay, foreach=True)  # as the platform's
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(cfg))  # the platform's schedule
    setup_s = time.perf_counter() - started
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        batch = torch.from_numpy(train_batch(data.train, step, tr.batch_size, tr.seq_len))
        loss = family.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        opt.step()
        sched.step()
        loss.item()  # the platform reads the loss every step too (divergence check)
    train_s = time.perf_counter() - t0
    return {"tokens_per_s": cfg.data_units / train_s, "train_s": train_s, "setup_s": setup_s,
            "wall_s": time.perf_counter() - started}


def platform(spec_path: Path, storage: Path) -> dict:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "cluster.cli", "sweep", str(spec_path), "--storage", str(storage),
                          "--no-fit", "--no-report"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"platform run failed:\n{run.stderr[-3000:]}")
    row = pd.read_parquet(storage / TRIALS.file).iloc[0]
    return {"tokens_per_s": float(row[TRIALS.data_units_per_s]), "trial_wall_s": float(row[TRIALS.wall_s]),
            "trial_startup_s": float(row[TRIALS.startup_s]), "command_wall_s": wall,
            "cfg": TrialConfig.from_json(row[TRIALS.config])}


def rounds(spec: Path, out: Path, repeats: int) -> tuple[TrialConfig, list[dict], list[dict]]:
    """bare, platform, bare, platform, ..., bare: each platform run between two bare ones."""
    cfg = plan(*load_spec(spec))[0]
    bares, plats = [bare_loop(cfg)], []
    for r in range(repeats):
        plats.append(platform(spec, out / f"round-{r}"))
        if plats[-1].pop("cfg").steps != cfg.steps:
            raise SystemExit("the platform planned a different trial from the one the bare loop trained")
        bares.append(bare_loop(cfg))
    return cfg, bares, plats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, default=1.3e6)
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="platform runs, each between two bare ones; the "
                        "ratio reported is their median")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "overhead.yaml"
        spec.write_text(SPEC.format(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                                    tokens=args.tokens))
        cfg, bares, plats = rounds(spec, Path(tmp), max(1, args.repeats))
    ratios = [p["tokens_per_s"] / ((b0["tokens_per_s"] + b1["tokens_per_s"]) / 2)
              for p, b0, b1 in zip(plats, bares, bares[1:])]
    median = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]  # the median round
    plat, bare = plats[median], {k: (bares[median][k] + bares[median + 1][k]) / 2 for k in bares[0]}
    fixed = plat["command_wall_s"] - cfg.data_units / plat["tokens_per_s"]
    result = {
        "model": f"d{cfg.shape.d_model} L{cfg.shape.n_layers}", "n_params": cfg.n_params, "tokens": cfg.data_units,
        "steps": cfg.steps, "ratio": ratios[median], "ratios": ratios,
        "bare_tokens_per_s": [b["tokens_per_s"] for b in bares],
        "platform_tokens_per_s": [p["tokens_per_s"] for p in plats],
        "end_to_end_ratio": bare["wall_s"] / plat["command_wall_s"], "platform_command_wall_s": plat["command_wall_s"],
        "fixed_startup_s": fixed, "trial_startup_s": plat["trial_startup_s"],
    }
    if args.format == "json":
        print(json.dumps(result))
        return 0
    print(f"model d{cfg.shape.d_model} L{cfg.shape.n_layers} (N={cfg.n_params:,}), {cfg.data_units:,} tokens, "
          f"{cfg.steps} steps, 1 CPU thread")
    print("bare PyTorch loop, tokens/s:  " + ", ".join(f"{b['tokens_per_s']:,.0f}" for b in bares))
    print("platform (Tune->DS), tokens/s: " + ", ".join(f"{p['tokens_per_s']:,.0f}" for p in plats)
          + "   (each between the two bare runs around it)")
    rounds_text = ", ".join(f"{r:.3f}" for r in ratios)
    print(textwrap.dedent(f"""\
        ratio (steady state)   {result['ratio']:.3f}   (target >= 0.95; the median of the rounds' {rounds_text})
        end-to-end ratio       {result['end_to_end_ratio']:.3f}   (bare wall / platform command wall)
        fixed start-up         {fixed:.1f} s per sweep command (Ray start, Tune trial, data, DeepSpeed init, final eval)
                               of which {plat['trial_startup_s']:.1f} s inside the trial (data + engine)"""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
