"""The training loop: FP phase, switch, QAT phase; evals, checkpoints, metrics, resume.

At every step boundary `s` (steps completed):

1. at `s == plan.fp_steps` (FP phase, a QAT phase ahead): evaluate (FP, PTQ) and save the
   switch checkpoint, then switch: fake quant on, learnable quantizers initialised from the
   current weights (`init_quantizers`), optimizer moments kept or reset, step recompiled;
2. at `s == join_at` (`--grid-first-fraction`): the weights join (`optim.py`);
3. stop at `s == plan.total_steps`;
4. run step `s` at `plan.lr_at(s)` on `batch(s·A) … batch(s·A + A − 1)` (pure functions of
   the step), with the RNG re-seeded to `seed·1000003 + s`;
5. log, evaluate every `eval_every` steps and at the end, save every `save_every` steps
   and at the end.

Evaluations: the periodic ones read the same `eval_batches` validation batches each time; the
final one a larger sample (`final_eval_batches`, by default the whole split: the PTQ gap of a
small model is a few hundredths of a nat, so 16 batches leave a few % of noise in it), then the
same on the held-out test split (`result["test"]`): reported, never used for a choice. Data
prepared before the test split existed has none (said, not fatal; `result["test"]` None).

Several processes (`mlx.launch`; `dist.py`): rank 0 alone checks the run directory, reads the
checkpoint it continues (the others receive its state), writes and logs.

Everything the next step depends on — weights, quantizer parameters, optimizer moments and
step count, phase — is in the checkpoint; the LR, the batch and the RNG are functions of the
step. A resumed run therefore continues bit for bit (see tests/test_train_resume.py). A
non-finite loss or gradient norm stops the run (`TrainingDiverged`) before anything is
saved, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from ..checkpoint import latest_checkpoint, list_checkpoints, remove_stale_tmp, save_checkpoint
from ..data import resolve
from ..data.batches import TokenBatches, eval_batches
from ..eval_modes import format_triple
from ..fileio import atomic_write_text, ensure_writable_dir
from ..model_source import float_model_dir
from ..models.build import make_model
from ..prepare import init_quantizers, prepare, set_fake_quant
from . import optim, resume
from .basin import basin_monitor_for, basin_reference_bytes
from .callbacks import TrainingCallback, load_callback_states
from .config import TrainConfig
from .dist import Group
from .distill import make_loss, run_teacher, teacher_bytes
from .memory import check_model_memory
from .metrics import MetricsWriter, NullMetrics
from .phase_plan import PhasePlan, plan_for_model
from .report import reporter_for
from .result import pretrained_baseline, run_result
from .step import make_step
from .trs import QATUpdates

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last checkpoint is the last good one."""


class Trainer:
    """One run: `t = Trainer(config); t.setup(); t.run()` (`train(config)` runs the whole job).
    Features plug in as `callbacks` (`callbacks.TrainingCallback`), after the built-in ones."""

    def __init__(self, config: TrainConfig, on_step=None, callbacks=()):
        self.cfg = config
        self.on_step = on_step  # test/tool hook: on_step(trainer, step) after each step
        self.extra_callbacks: list[TrainingCallback] = list(callbacks)
        self.run_dir = Path(config.out)
        self.step, self.phase, self.tokens_seen, self.elapsed = 0, "fp", 0, 0.0
        self.last_eval, self.last_eval_step, self.last_test = {}, -1, None
        self.tokens_per_s: list[float] = []
        self.rescheduled: dict = {}
        self.teacher = None  # the QAT phase's frozen float model, for kd/mix (distill.py)
        self.pretrained: dict | None = None  # a fine-tune's teacher and its RTN (the baseline)

    def setup(self) -> None:
        """Check all that can be checked without writing (settings, data, model, memory, output
        directory, the checkpoint to continue), then write."""
        cfg = self.cfg
        mx.set_cache_limit(max(mx.set_cache_limit(0), cfg.cache_limit_mb << 20))
        self.dist = dist = Group.init(cfg.dist_timeout)
        self.qcfg = cfg.qat_config()  # built once, when the config was checked
        with dist.agreed("checking the settings, the data and the checkpoint"):
            # a hub id's snapshot, resolved here (and again on resume): config.yaml keeps the id
            self.model_dir = float_model_dir(cfg.model, cfg.revision) if cfg.model else None
            dist.check_batch(cfg.batch_size)
            if dist.is_main:
                resume.check_out_dir(cfg)
            # prepared data of another tokenizer is refused
            self.bundle = resolve.open_prepared(cfg.data, self.model_dir)
            if self.bundle is None and dist.size > 1:
                raise ValueError(
                    f"--data {cfg.data}: several processes read prepared data: prepare it once "
                    "with mlx_qat.data --out DIR, give every machine the same DIR, pass --data DIR"
                )
            self._build(resolve.run_vocab_size(self.bundle, cfg.vocab_size, self.model_dir))
            for split in ("train", "val") if self.bundle else ():
                resolve.check_split(self.bundle, split, cfg.seq_len)
            self._features()
            ckpt = resume.find_resume(cfg, self.run_dir) if dist.is_main else None
            keep_lines = None
            if ckpt is not None:
                position, keep_lines = resume.restore_checkpoint(self, ckpt)
                self._continue_from(position)
        if dist.size > 1 and (position := resume.take_main_state(self)) is not None:
            self._continue_from(position)
        if self.phase == "qat":  # resumed in the QAT phase: its teacher (distill.py)
            self.teacher = run_teacher(self, at_switch=False)
        with dist.agreed("writing the run directory"):
            if dist.is_main:
                self._write_start(ckpt, keep_lines)
            else:
                self._open_batches()
                self.metrics = NullMetrics()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if self.rescheduled:
            self.metrics.write({"kind": "reschedule", "step": self.step, **self.rescheduled})
        self._compile()

    def _features(self) -> None:
        """The callbacks: QAT update (statistics, TRS), basin monitor, reporter, the caller's."""
        self.qat = QATUpdates()
        self.basin = basin_monitor_for(self.cfg, self.plan)
        report = reporter_for(self.cfg) if self.dist.is_main else None
        own = [self.qat, self.basin, report]
        self.callbacks = [cb for cb in own if cb is not None] + self.extra_callbacks

    def _continue_from(self, position: dict) -> None:
        """Take a checkpoint's (or rank 0's) position and hand each callback its state."""
        for k in resume.POSITION:
            setattr(self, k, position[k])
        load_callback_states(self.callbacks, position["callbacks"])

    def _write_start(self, ckpt, keep_lines: int | None) -> None:
        """Rank 0: the run directory, the data (raw text tokenized), tokenizer, config.yaml,
        the metrics file (truncated to the checkpoint's lines on resume)."""
        cfg = self.cfg
        ensure_writable_dir(self.run_dir, f"--out {self.run_dir}")
        if cfg.overwrite:
            logger.info(
                "overwrite: removed %s from %s", resume.clear_run(self.run_dir), self.run_dir
            )
        remove_stale_tmp(self.run_dir)
        if self.bundle is None:
            out = cfg.data_out or self.run_dir / resume.DATA
            self.bundle = resolve.prepare_run_data(
                cfg.data, out, cfg.vocab_size, cfg.seed, self.model_dir
            )
            for split in ("train", "val"):
                resolve.check_split(self.bundle, split, cfg.seq_len)
            if ckpt is not None:
                resume.check_data(ckpt, self.bundle)
        resolve.copy_tokenizer(self.bundle, self.run_dir)
        self._open_batches()
        # Written only once the checkpoint (if any) was accepted for this config.
        atomic_write_text(self.run_dir / "config.yaml", replace(cfg, overwrite=False).to_yaml())
        self.metrics = MetricsWriter(self.run_dir, keep_lines, self._on_record)

    def _on_record(self, record: dict) -> None:
        for cb in self.callbacks:
            cb.on_record(record)

    def _build(self, vocab_size: int) -> None:
        """Model, plan, optimizer; refuses a step that cannot fit in memory."""
        cfg = self.cfg
        self.model, self.model_config = make_model(cfg, vocab_size, self.model_dir)
        self.qcfg = optim.float32_masters(self.model, cfg, self.qcfg)  # a 16-bit --model: float32
        self.qcfg.check_overrides(self.model, "quant_overrides")
        prepare(self.model, self.qcfg, enabled=False)
        self.plan: PhasePlan = plan_for_model(cfg, self.model)
        if self.plan.warning:
            logger.warning("plan: %s", self.plan.warning)
        check_model_memory(
            cfg, self.model, self.model_config,
            teacher_bytes=teacher_bytes(cfg, self.model, self.plan),
            reference_bytes=basin_reference_bytes(cfg, self.model, self.plan),
        )  # fmt: skip
        # train=grid, and grid first until `join_at`: the grid and norms only (optim.py)
        self.held = optim.freeze_for_grid(self.model, cfg, self.plan)
        self.join_at = optim.join_step(cfg, self.plan)
        self.optimizer = optim.build_optimizer(self.model, cfg)

    def _open_batches(self) -> None:
        """The training stream (with its prompt mask), the periodic, final and test batches."""
        cfg, b = self.cfg, self.bundle
        final, shape = cfg.final_eval_batches or None, (cfg.batch_size, cfg.seq_len)
        mask = resolve.train_loss_mask(b, cfg.mask_prompt)
        self.batches = TokenBatches(b.train, *shape, cfg.seed, mask)
        self.val = list(eval_batches(b.val, *shape, cfg.eval_batches))
        self.final_val = eval_batches(b.val, *shape, final)
        self.bytes_per_token = float(b.bytes_per_token["val"])
        self.final_test = self.test_bytes_per_token = None
        try:
            resolve.check_split(b, "test", cfg.seq_len)
        except ValueError as e:  # no test split, or one too small for a window
            logger.warning("final evaluation on validation only: %s", e)
            return
        self.final_test = eval_batches(b.test, *shape, final)
        self.test_bytes_per_token = float(b.bytes_per_token["test"])

    def float_model(self):
        """A fresh float model with the `--model` weights as given (a fine-tune's teacher)."""
        vocab = int(self.model_config.get("vocab_size") or 0)
        return make_model(self.cfg, vocab, self.model_dir)[0]

    def _compile(self) -> None:
        cfg = self.cfg
        self.qat_update = self.qat.update_for(self)
        self.step_fn = make_step(
            self.model, self.optimizer, cfg.grad_clip, cfg.compile,
            group=self.dist.group, update=self.qat_update, loss=make_loss(self.teacher, cfg, self.model),
        )  # fmt: skip

    def evaluate(self, final: bool = False, split: str = "val") -> dict | None:
        """FP / QAT / PTQ on the periodic validation batches, or (`final`) on the final ones of
        `split` ("val" or "test"; None when the data has no test split)."""
        test = split == "test"
        batches = self.final_test if test else self.final_val if final else self.val
        if batches is None:
            return None
        bpt = self.test_bytes_per_token if test else self.bytes_per_token
        ready = self.phase == "qat" and not self.cfg.ablate_qat
        ev = self.dist.eval_triple(self.model, batches, bpt, ready, self.teacher)
        if test:
            self.last_test = ev
        else:
            self.last_eval, self.last_eval_step = ev, self.step
        kind = "test_eval" if test else "final_eval" if final else "eval"
        record = {"kind": kind, "step": self.step, "phase": self.phase, **ev}
        for cb in self.callbacks if kind == "eval" else ():
            record.update(cb.on_eval(self, self.step, ev) or {})
        self.metrics.write(record)
        logger.info("%s @ %d (%s): %s", kind, self.step, self.phase, format_triple(ev))
        return ev

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; the other ranks write nothing and return None)."""
        if not self.dist.is_main:
            return None
        cfg = self.cfg
        qat = {
            "qat_config": self.qcfg.to_dict(),
            "fake_quant": self.phase == "qat" and not cfg.ablate_qat,
            "phase": self.phase,
        }
        protect = (self.plan.switch_step, *cfg.save_steps)
        return save_checkpoint(
            self.run_dir, self.step, self.model, self.optimizer, resume.trainer_state(self),
            self.model_config, qat, keep=cfg.keep_checkpoints, protect=protect,
        )  # fmt: skip

    def switch(self) -> None:
        """FP → QAT: fake quant on, quantizers from the current weights, recompile."""
        if self.last_eval_step != self.step:
            self.evaluate()
        if self.step > 0 and not any(s == self.step for s, _ in list_checkpoints(self.run_dir)):
            self.save()
        self.teacher = run_teacher(self, at_switch=True)  # the float weights of the switch
        if not self.cfg.ablate_qat:
            set_fake_quant(self.model, True)
            init_quantizers(self.model)
        if self.cfg.optimizer_state_at_switch == "reset":
            self.optimizer = optim.build_optimizer(self.model, self.cfg)
        self.phase = "qat"
        mx.eval(self.model.parameters())
        self._compile()
        self.metrics.write({"kind": "switch", "step": self.step, "phase": "qat"})
        for cb in self.callbacks:
            cb.on_phase_switch(self)
        logger.info("switch to QAT at step %d", self.step)

    def join(self) -> None:
        """Grid first -> the weights join (`optim.py`), recompile."""
        optim.join_weights(self.model, self.optimizer, self.held)
        self.held = []
        self.qat.load_state_dict(self.qat.state_dict())  # the update's statistics continue
        self._compile()
        self.metrics.write({"kind": "weights_join", "step": self.step, "phase": self.phase,
                            "weight_lr_scale": self.cfg.weight_lr_scale})  # fmt: skip
        logger.info("weights join at step %d", self.step)

    def train_step(self) -> tuple[float, float, float]:
        cfg, s = self.cfg, self.step
        lr = self.plan.lr_at(s)
        optim.set_lr(self.optimizer, lr)
        mx.random.seed(resume.rng_seed(cfg.seed, s))
        a = cfg.grad_accum
        batches = [self.dist.rows(self.batches.batch(s * a + i)) for i in range(a)]
        with self.dist.collective(f"training step {s}"):
            loss, norm = self.step_fn(batches)
            extra = self.qat_update.state if self.qat_update else {}
            mx.eval(loss, norm, self.model.state, self.optimizer.state, extra)
        return loss.item(), norm.item(), lr

    def run(self) -> dict:
        """Train to the end of the plan; returns the result dict (also in result.json)."""
        cfg, plan = self.cfg, self.plan
        bar = _progress(plan.total_steps, self.step, cfg.quiet or not self.dist.is_main)
        try:
            while True:
                if self.step == plan.fp_steps and self.phase == "fp" and plan.qat_steps > 0:
                    self.switch()
                if self.step == self.join_at and self.held and self.step < plan.total_steps:
                    self.join()
                if self.step >= plan.total_steps:
                    break
                t0 = time.perf_counter()
                loss, norm, lr = self.train_step()
                dt = time.perf_counter() - t0
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    last = latest_checkpoint(self.run_dir) or "none (no checkpoint yet)"
                    msg = (
                        f"step {self.step}: loss {loss}, gradient norm {norm} (not finite); "
                        f"training stopped without saving. The last good checkpoint is {last}. "
                        "Lower --lr, lengthen the warmup or tighten --grad-clip, then continue "
                        "from it with --resume --reschedule (the new values apply from that "
                        "step on)"
                    )
                    self.metrics.write({"kind": "error", "step": self.step, "message": msg})
                    raise TrainingDiverged(msg)
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
                    self.evaluate(final=True, split="test")
                    self.pretrained = pretrained_baseline(self)
                periodic = cfg.save_every and self.step % cfg.save_every == 0
                if done or periodic or self.step in cfg.save_steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        return run_result(self)

    def _log_step(self, loss, norm, lr, dt, bar) -> None:
        cfg = self.cfg
        tps = cfg.tokens_per_step / dt if dt > 0 else 0.0
        if self.step > 2:  # the first steps include compilation
            self.tokens_per_s.append(tps)
        info = None
        if self.step % cfg.log_every == 0 or self.step == self.plan.total_steps:
            info = dict(
                kind="train", step=self.step, phase=self.phase, lr=lr, loss=loss, grad_norm=norm,
                tokens=self.tokens_seen, tokens_per_s=round(tps, 1), step_s=round(dt, 4),
                peak_memory_mb=round(mx.get_peak_memory() / 2**20, 1),
                epoch=round(self.batches.epochs_at(self.step * cfg.grad_accum), 4),
            )  # fmt: skip
        for cb in self.callbacks:
            extra = cb.on_step_end(self, self.step, info)
            if info is not None:
                info.update(extra or {})
        if info is not None:
            self.metrics.write(info)
        if bar is not None:
            bar.set_postfix_str(f"{self.phase} loss {loss:.3f} {tps:,.0f} tok/s", refresh=False)
            bar.update(1)


def _progress(total: int, initial: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
