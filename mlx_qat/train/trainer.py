"""The training loop: FP phase, switch, QAT phase; evals, checkpoints, metrics, resume.

At every step boundary `s` (steps completed):

1. at `s == plan.fp_steps` (FP phase, a QAT phase ahead): evaluate (FP, PTQ) and save the
   switch checkpoint, then switch: fake quant on, learnable quantizers initialised from the
   current weights (`init_quantizers`), optimizer moments kept or reset, step recompiled;
2. stop at `s == plan.total_steps`;
3. run step `s` at `plan.lr_at(s)` on `batch(s·A) … batch(s·A + A − 1)` (pure functions of
   the step), with the RNG re-seeded to `seed·1000003 + s`;
4. log, evaluate every `eval_every` steps and at the end, save every `save_every` steps
   and at the end.

Everything the next step depends on — weights, quantizer parameters, optimizer moments and
step count, phase — is in the checkpoint; the LR, the batch and the RNG are functions of the
step. A resumed run therefore continues bit for bit (see tests/test_train_resume.py). A
non-finite loss or gradient norm stops the run (`TrainingDiverged`) before anything is
saved, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import mlx.core as mx

from ..checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    qat_config_of,
    remove_stale_tmp,
    save_checkpoint,
)
from ..data.resolve import copy_tokenizer, resolve_data
from ..fileio import atomic_write_json, atomic_write_text
from ..loss import eval_triple, format_triple
from ..models.build import make_model, qat_config
from ..prepare import init_quantizers, prepare, set_fake_quant
from .config import TrainConfig
from .metrics import MetricsWriter
from .optim import build_optimizer, load_optimizer_arrays, set_lr
from .plan import PhasePlan, plan_for_model
from .step import make_step

logger = logging.getLogger(__name__)

RESULT = "result.json"


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last checkpoint is the last good one."""


def _rng_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (1 << 63)


class Trainer:
    """One run: `t = Trainer(config); t.setup(); t.run()`. `mlx_qat.train.train(config)` runs
    the whole job (this, then the FP twin and the plot when the config asks for them)."""

    def __init__(self, config: TrainConfig, on_step=None):
        self.cfg = config
        self.on_step = on_step  # test/tool hook: on_step(trainer, step) after each step
        self.run_dir = Path(config.out)
        self.last_eval: dict = {}
        self.last_eval_step = -1
        self.tokens_per_s: list[float] = []

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        mx.set_cache_limit(max(mx.set_cache_limit(0), cfg.cache_limit_mb << 20))
        ckpt = self._find_resume()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.bundle = resolve_data(cfg.data, cfg.data_out, cfg.vocab_size, cfg.seed)
        copy_tokenizer(self.bundle, self.run_dir)
        self.model, self.model_config = make_model(cfg, self.bundle.vocab_size)
        self.qcfg = qat_config(cfg)
        prepare(self.model, self.qcfg, enabled=False)
        self.plan: PhasePlan = plan_for_model(cfg, self.model)
        if self.plan.warning:
            logger.warning("plan: %s", self.plan.warning)
        from ..data import TokenBatches, eval_batches

        self.batches = TokenBatches(self.bundle.train, cfg.batch_size, cfg.seq_len, cfg.seed)
        self.val = list(
            eval_batches(self.bundle.val, cfg.batch_size, cfg.seq_len, cfg.eval_batches)
        )
        # The result's numbers: a larger sample than the periodic evals (the PTQ gap of a small
        # model is a few hundredths of a nat, so 16 batches leave a few % of noise in it).
        self.final_val = eval_batches(
            self.bundle.val, cfg.batch_size, cfg.seq_len, cfg.final_eval_batches or None
        )
        self.bytes_per_token = float(self.bundle.bytes_per_token["val"])
        self.optimizer = build_optimizer(self.model, cfg)
        self.step, self.phase, self.tokens_seen, self.elapsed = 0, "fp", 0, 0.0
        keep_lines = None
        if ckpt is not None:
            keep_lines = self._restore(ckpt)
        # Written only once the checkpoint (if any) was accepted for this config.
        atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
        self.metrics = MetricsWriter(self.run_dir, keep_lines)
        self._compile()

    def _find_resume(self):
        cfg = self.cfg
        if cfg.branch_from:
            return load_checkpoint(cfg.branch_from)
        remove_stale_tmp(self.run_dir)
        found = list_checkpoints(self.run_dir)
        if found and not cfg.resume:
            raise ValueError(
                f"run directory {self.run_dir} already has checkpoints (last: {found[-1][1].name});"
                " pass --resume to continue it, or choose another --out"
            )
        if cfg.resume and found:
            return load_checkpoint(latest_checkpoint(self.run_dir))
        if cfg.resume:
            logger.info("resume: no checkpoint in %s yet; starting from step 0", self.run_dir)
        return None

    def _restore(self, ckpt) -> int | None:
        """Load weights, optimizer and position from `ckpt`; returns metrics lines to keep."""
        st, cfg = ckpt.state, self.cfg
        if cfg.branch_from:
            self._check_branch(ckpt)
        elif st.get("config_hash") != cfg.hash():
            raise CheckpointError(
                f"checkpoint {ckpt.path}: saved with config hash {st.get('config_hash')}, but "
                f"this config hashes to {cfg.hash()}: the settings that shape training changed. "
                f"Resume with the run's own config (--config {self.run_dir / 'config.yaml'}), "
                "or start a new run (another --out)"
            )
        shards = st.get("data", {}).get("shards")
        if shards and Path(shards).name != Path(self.bundle.path).name:
            raise CheckpointError(
                f"checkpoint {ckpt.path}: trained on the token shards {shards}, but this run "
                f"reads {self.bundle.path}; the batches would differ. Pass the same --data"
            )
        try:
            self.model.load_weights(list(ckpt.weights.items()), strict=True)
            load_optimizer_arrays(self.optimizer, ckpt.optimizer_state)
        except ValueError as e:
            raise CheckpointError(
                f"checkpoint {ckpt.path}: does not match this model ({e}); resume with the "
                "run's own config or start a new run"
            ) from None
        self.step, self.phase = int(st["step"]), st["phase"]
        self.tokens_seen = int(st.get("tokens_seen", self.step * cfg.tokens_per_step))
        self.elapsed = float(st.get("elapsed_s", 0.0))
        self.last_eval = st.get("eval") or {}
        self.last_eval_step = int(st.get("eval_step", -1))
        set_fake_quant(self.model, bool(ckpt.qat.get("fake_quant")))
        mx.eval(self.model.parameters(), self.optimizer.state)
        how = "branched from" if cfg.branch_from else "resumed from"
        logger.info("%s %s (step %d, phase %s)", how, ckpt.path, self.step, self.phase)
        return None if cfg.branch_from else int(st.get("metrics_lines", 0))

    def _check_branch(self, ckpt) -> None:
        st, plan, where = ckpt.state, self.plan, f"--branch-from {ckpt.path}"
        if ckpt.model_config.get("model_type") != self.model_config.get("model_type") or (
            qat_config_of(ckpt).to_dict() != self.qcfg.to_dict()
        ):
            raise CheckpointError(f"{where}: another model or QAT config than this run's")
        if st.get("tokens_per_step") != self.cfg.tokens_per_step:
            raise CheckpointError(f"{where}: its steps have another number of tokens")
        step = int(st["step"])
        if st["phase"] != "fp" or step > plan.fp_steps:
            raise CheckpointError(
                f"{where}: a branch must start in this run's FP phase (step <= "
                f"{plan.fp_steps}); the checkpoint is at step {step}, phase {st['phase']}"
            )
        if step and not math.isclose(st.get("lr", -1), plan.lr_at(step - 1), rel_tol=1e-6):
            raise CheckpointError(
                f"{where}: its LR at step {step - 1} was {st.get('lr')}, this run's schedule "
                f"gives {plan.lr_at(step - 1)}; branch only where the schedules agree"
            )

    def _compile(self) -> None:
        cfg = self.cfg
        self.step_fn = make_step(
            self.model, self.optimizer, cfg.grad_clip, cfg.grad_accum, cfg.compile
        )

    # -- events ---------------------------------------------------------------------------

    def evaluate(self, final: bool = False) -> dict:
        """FP / QAT / PTQ on the periodic eval batches, or (`final`) on the final ones."""
        ready = self.phase == "qat" and not self.cfg.ablate_qat
        batches = self.final_val if final else self.val
        ev = eval_triple(self.model, batches, self.bytes_per_token, quantizers_ready=ready)
        self.last_eval, self.last_eval_step = ev, self.step
        kind = "final_eval" if final else "eval"
        self.metrics.write({"kind": kind, "step": self.step, "phase": self.phase, **ev})
        logger.info("%s @ %d (%s): %s", kind, self.step, self.phase, format_triple(ev))
        return ev

    def save(self) -> Path:
        cfg, step = self.cfg, self.step
        state = {
            "step": step,
            "tokens_seen": self.tokens_seen,
            "tokens_per_step": cfg.tokens_per_step,
            "phase": self.phase,
            "lr": self.plan.lr_at(step - 1) if step else None,
            "data": {
                **self.batches.state(step * cfg.grad_accum),
                "grad_accum": cfg.grad_accum,
                "shards": str(Path(self.bundle.path).resolve()),
            },
            "rng": {"seed": cfg.seed, "next_step_seed": _rng_seed(cfg.seed, step)},
            "config_hash": cfg.hash(),
            "plan": {k: getattr(self.plan, k) for k in ("total_steps", "fp_steps", "qat_steps")},
            "eval": self.last_eval,
            "eval_step": self.last_eval_step,
            "metrics_lines": self.metrics.lines,
            "elapsed_s": self.elapsed,
        }
        qat = {
            "qat_config": self.qcfg.to_dict(),
            "fake_quant": self.phase == "qat" and not cfg.ablate_qat,
            "phase": self.phase,
        }
        protect = (self.plan.switch_step,)
        return save_checkpoint(
            self.run_dir, step, self.model, self.optimizer, state, self.model_config, qat,
            keep=cfg.keep_checkpoints, protect=protect,
        )  # fmt: skip

    def switch(self) -> None:
        """FP → QAT: fake quant on, quantizers from the current weights, recompile."""
        if self.last_eval_step != self.step:
            self.evaluate()
        if self.step > 0 and not any(s == self.step for s, _ in list_checkpoints(self.run_dir)):
            self.save()
        if not self.cfg.ablate_qat:
            set_fake_quant(self.model, True)
            init_quantizers(self.model)
        if self.cfg.optimizer_state_at_switch == "reset":
            self.optimizer = build_optimizer(self.model, self.cfg)
        self.phase = "qat"
        mx.eval(self.model.parameters())
        self._compile()
        self.metrics.write({"kind": "switch", "step": self.step, "phase": "qat"})
        logger.info("switch to QAT at step %d", self.step)

    # -- the loop -------------------------------------------------------------------------

    def train_step(self) -> tuple[float, float, float]:
        cfg, s = self.cfg, self.step
        lr = self.plan.lr_at(s)
        set_lr(self.optimizer, lr)
        mx.random.seed(_rng_seed(cfg.seed, s))
        a = cfg.grad_accum
        batches = [self.batches.batch(s * a + i) for i in range(a)]
        loss, norm = self.step_fn(batches)
        mx.eval(loss, norm, self.model.state, self.optimizer.state)
        return loss.item(), norm.item(), lr

    def run(self) -> dict:
        """Train to the end of the plan; returns the result dict (also in result.json)."""
        cfg, plan = self.cfg, self.plan
        bar = _progress(plan.total_steps, self.step, cfg.quiet)
        try:
            while True:
                if self.step == plan.fp_steps and self.phase == "fp" and plan.qat_steps > 0:
                    self.switch()
                if self.step >= plan.total_steps:
                    break
                t0 = time.perf_counter()
                loss, norm, lr = self.train_step()
                dt = time.perf_counter() - t0
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self._diverged(loss, norm)
                self.step += 1
                self.tokens_seen += cfg.tokens_per_step
                self.elapsed += dt
                self._log_step(loss, norm, lr, dt, bar)
                if self.on_step is not None:
                    self.on_step(self, self.step)
                done = self.step == plan.total_steps
                if done or (cfg.eval_every and self.step % cfg.eval_every == 0):
                    self.evaluate()
                if done:
                    self.evaluate(final=True)
                if done or (cfg.save_every and self.step % cfg.save_every == 0):
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        return self._result()

    def _log_step(self, loss, norm, lr, dt, bar) -> None:
        cfg = self.cfg
        tps = cfg.tokens_per_step / dt if dt > 0 else 0.0
        if self.step > 2:  # the first steps include compilation
            self.tokens_per_s.append(tps)
        if self.step % cfg.log_every == 0 or self.step == self.plan.total_steps:
            self.metrics.write(
                {
                    "kind": "train",
                    "step": self.step,
                    "phase": self.phase,
                    "lr": lr,
                    "loss": loss,
                    "grad_norm": norm,
                    "tokens": self.tokens_seen,
                    "tokens_per_s": round(tps, 1),
                    "step_s": round(dt, 4),
                    "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
                    "epoch": round(self.batches.epochs_at(self.step * cfg.grad_accum), 4),
                }
            )
        if bar is not None:
            bar.set_postfix_str(f"{self.phase} loss {loss:.3f} {tps:,.0f} tok/s", refresh=False)
            bar.update(1)

    def _diverged(self, loss: float, norm: float) -> None:
        last = latest_checkpoint(self.run_dir)
        msg = (
            f"step {self.step}: loss {loss}, gradient norm {norm} (not finite); training "
            f"stopped without saving. The last good checkpoint is "
            f"{last if last else 'none (no checkpoint yet)'}. Lower --lr, lengthen the warmup "
            "or tighten --grad-clip, then continue with --resume"
        )
        self.metrics.write({"kind": "error", "step": self.step, "message": msg})
        raise TrainingDiverged(msg)

    def _result(self) -> dict:
        tps = sorted(self.tokens_per_s)
        previous = self.run_dir / RESULT
        if not tps and previous.is_file():  # a finished run, resumed: keep its throughput
            old = json.loads(previous.read_text(encoding="utf-8"))
            tps = [old["tokens_per_s"]] if old.get("tokens_per_s") else []
        result = {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "tokens": self.tokens_seen,
            "plan": self.plan.to_dict(),
            "eval": self.last_eval,
            "tokens_per_s": tps[len(tps) // 2] if tps else None,
            "train_s": round(self.elapsed, 2),
            "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
            "config_hash": self.cfg.hash(),
        }
        atomic_write_json(self.run_dir / RESULT, result)
        return result


def _progress(total: int, initial: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
