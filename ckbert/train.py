"""`ckbert pretrain`: LMLM + CMRM pretraining from a YAML recipe (method.md; design.md, section 4).

    ckbert pretrain --config configs/pretrain/demo.yaml [--out DIR] [--resume] [key.sub=value ...]

Reading order: `PretrainForward` (one forward: both objectives' terms), `train_step` (the total
loss, backward, clipping, the non-finite guard, the optimizer step), `evaluate`, then `PretrainRun`
(build, restore, the step loop, held-out evaluation, checkpoints) and `run`, which strings them. Precision (autocast, gradient scaler) is applied here from
outside the model; process groups and DDP/FSDP2 wrapping belong to `ckbert.parallel` (issue 5),
which `wrap_for_world` calls when more than one process runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ckbert import checkpoint as ckpt_io
from ckbert.cmrm_samples import CMRM_STAT_KEYS
from ckbert.collator import PretrainCollator
from ckbert.config import to_dict
from ckbert.errors import UserError
from ckbert.evaluation import heldout
from ckbert.evaluation.heldout import heldout_start
from ckbert.model import CKBertForPreTraining
from ckbert.model_config import ModelConfig, load_model_config, model_config_from_dict, resolve_vocab_size
from ckbert.objectives import cmrm_loss, cmrm_scores, masked_mean_pool, mention_anchors
from ckbert.optim import build_optimizer, build_scheduler, ramped_accum
from ckbert.train_config import PretrainConfig, load_pretrain_config
from ckbert.world import World


class PretrainForward(nn.Module):
    """One call computes both objectives' terms, so DDP/FSDP2 can wrap a single forward.

    The model stays plain (encode / mlm_hidden); the weights of the terms are applied by
    `train_step`, not here.
    """

    def __init__(self, model: CKBertForPreTraining, cmrm_enabled: bool, temperature: float,
                 in_batch_negatives: bool = False):
        super().__init__()
        self.model = model
        self.cmrm_enabled = cmrm_enabled
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives

    def forward(self, batch: dict[str, torch.Tensor], detail: bool = False) -> dict[str, torch.Tensor]:
        """The terms {"mlm", "cmrm"}; with `detail` (evaluation), instead the MLM logits at the
        targets [M, V], the CMRM scores [N, 1+K] and the collapse signal (ckbert.evaluation.heldout)."""
        model = self.model
        if self.cmrm_enabled:  # CMRM's sample texts ride in the same encoder pass (`encode_packed`)
            hidden, sample_hidden = model.encode_packed([(batch["input_ids"], batch["attention_mask"]),
                                                         (batch["sample_input_ids"], batch["sample_attention_mask"])])
        else:
            hidden, sample_hidden = model.encode(batch["input_ids"], batch["attention_mask"]), None  # [B, L, H]
        if detail:
            return self._detail(batch, hidden, sample_hidden)
        terms = {"mlm": model.mlm_loss(hidden, batch["mlm_positions"], batch["mlm_labels"])}
        if not self.cmrm_enabled:
            terms["cmrm"] = hidden.sum() * 0.0
            return terms
        # CMRM (method.md, sec. 2): anchors from the MLM pass, samples [S, Ls, H] from the same pass
        # over their own rows. The pass includes the sample texts even for a batch without mentions
        # (S = 0), so that every rank makes the same encoder calls (under FSDP each call all-gathers).
        anchor, sample_emb, zero = self._cmrm_inputs(batch, hidden, sample_hidden)
        terms["cmrm"] = zero if anchor is None else cmrm_loss(anchor, sample_emb, batch["sample_index"],
                                                              self.temperature, self._exclude(batch))
        return terms

    def _exclude(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """In-batch negatives: which texts are not a mention's candidates (the collator's)."""
        return batch["sample_exclude"] if self.in_batch_negatives else None

    def _cmrm_inputs(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor, sample_hidden: torch.Tensor):
        """(mention anchors [N, H], pooled samples [S, H], a zero tied to both); the first two are
        None when the batch has no mention."""
        zero = hidden.sum() * 0.0 + sample_hidden.sum() * 0.0
        if batch["sample_index"].shape[0] == 0:
            return None, None, zero
        anchor = mention_anchors(hidden, batch["mention_index"], batch["mention_start"], batch["mention_end"])
        return anchor, masked_mean_pool(sample_hidden, batch["sample_pool_mask"]), zero

    def _detail(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor,
                sample_hidden: torch.Tensor | None) -> dict[str, torch.Tensor]:
        model = self.model
        out = {"mlm_logits": model.mlm_logits(hidden, batch["mlm_positions"]),
               "cosine": heldout.mean_pairwise_cosine(hidden, batch["attention_mask"])}
        if self.cmrm_enabled:
            anchor, sample_emb, _ = self._cmrm_inputs(batch, hidden, sample_hidden)
            if anchor is not None:
                out["cmrm_scores"] = cmrm_scores(anchor, sample_emb, batch["sample_index"], self.temperature,
                                                 self._exclude(batch))
        return out


@dataclass
class StepContext:
    """What a training step needs besides the batch (built once in `run`)."""

    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Any  # a callable returning the autocast context (or a null context for fp32)
    cmrm_weight: float
    clip_norm: float
    params: list[torch.nn.Parameter] = field(default_factory=list)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(ctx: StepContext, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """One optimizer step over `micro_batches` (gradient accumulation). Returns the logged values;
    `skipped` is 1.0 when the loss or the gradient norm was not finite and no update was made."""
    ctx.optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    sums = None  # [loss, mlm, cmrm] summed on the device: no synchronisation per micro-batch
    for batch in micro_batches:
        with ctx.autocast():
            terms = ctx.forward(batch)
            loss = terms["mlm"] + ctx.cmrm_weight * terms["cmrm"]  # the total: L_mlm + lambda * L_cmrm
        ctx.scaler.scale(loss / n).backward()
        part = torch.stack([loss.detach(), terms["mlm"].detach(), terms["cmrm"].detach()]).float() / n
        sums = part if sums is None else sums + part
    ctx.scaler.unscale_(ctx.optimizer)
    max_norm = ctx.clip_norm if ctx.clip_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(ctx.params, max_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a replicated DTensor
    # the step's one read from the device: the non-finite guard needs the loss and the norm
    loss_v, mlm_v, cmrm_v, grad_norm = torch.cat([sums, norm.detach().float().reshape(1).to(sums.device)]).tolist()
    finite = math.isfinite(loss_v) and math.isfinite(grad_norm)
    lr = ctx.optimizer.param_groups[0]["lr"]
    if finite:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:  # the non-finite guard: drop this update entirely; the caller counts it
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler.is_enabled():
            ctx.scaler.update(ctx.scaler.get_scale() / 2)
    return {"loss": loss_v, "mlm": mlm_v, "cmrm": cmrm_v, "grad_norm": grad_norm, "lr": lr,
            "skipped": 0.0 if finite else 1.0}


@torch.no_grad()
def evaluate(forward: PretrainForward, sets: dict[str, list[dict[str, torch.Tensor]]], unigram: torch.Tensor,
             autocast) -> dict[str, float]:
    """Held-out evaluation (ckbert.evaluation.heldout) over named sets of batches: "eval" (the objective's own
    masks, with CMRM) and "eval_rand" (random-token masks). Per set: MLM loss and top-1 beside the
    unigram baseline on the same targets; for "eval" also the CMRM loss, accuracy and chance; and the
    mean pairwise cosine of last-layer states (collapse)."""
    was_training = forward.training
    forward.eval()
    record: dict[str, float] = {}
    for name, batches in sets.items():
        sums: dict[str, float] = {}
        for batch in batches:
            with autocast():
                out = forward(batch, detail=True)
            if name == "eval_cosine":  # one batch: the first held-out rows (ckbert.evaluation.heldout.COSINE_ROWS)
                record[name] = float(out["cosine"])
                continue
            heldout.add(sums, heldout.mlm_counts(out["mlm_logits"], batch["mlm_labels"], unigram))
            if "cmrm_scores" in out:
                heldout.add(sums, heldout.cmrm_counts(out["cmrm_scores"]))
        if sums:
            record.update(heldout.summarise(sums, name))
            record.update({f"{name}_{k}": v for k, v in heldout.summarise_cmrm(sums).items()})
    forward.train(was_training)
    return record


def describe_eval(step: int, r: dict[str, float]) -> str:
    """One line: random-token masks first (the honest number), then the objective's, CMRM, cosine."""
    text = (f"[pretrain] step {step} held-out: random-token masks MLM {r['eval_rand_mlm']:.3f} "
            f"(unigram {r['eval_rand_unigram_mlm']:.3f}), top-1 {100 * r['eval_rand_top1']:.1f}% "
            f"(unigram {100 * r['eval_rand_unigram_top1']:.1f}%); objective's masks MLM {r['eval_mlm']:.3f} "
            f"(unigram {r['eval_unigram_mlm']:.3f})")
    if "eval_cmrm" in r:
        text += (f"; CMRM {r['eval_cmrm']:.3f}, positive first {100 * r['eval_cmrm_acc']:.1f}% "
                 f"(chance {100 * r['eval_cmrm_chance']:.1f}%)")
    return text + f"; cosine between positions {r['eval_cosine']:.2f}"


# ---- data --------------------------------------------------------------------------------------
class KeyedRows(torch.utils.data.Dataset):
    """Rows of the prepared dataset addressed by (epoch, row index) keys, so that the collator can
    seed each row's masks from (seed, epoch, row) in any worker process."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[tuple[int, int, dict]]:
        cols = self.dataset[[int(r) for _, r in keys]]  # one Arrow read for the batch
        names = list(cols)
        return [(e, r, {n: cols[n][i] for n in names}) for i, (e, r) in enumerate(keys)]

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, dict]:
        return self.__getitems__([key])[0]


def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int, world: World) -> list[list[tuple[int, int]]]:
    """This rank's micro-batches of one epoch: a permutation fixed by (seed, epoch), cut into global
    micro-batches of batch_size x world.size rows, of which rank r takes the r-th slice. The rows
    before global micro-batch i are the same on any world size (docs/distributed.md, "Data")."""
    perm = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_rows)
    glob = batch_size * world.size
    starts = range(world.rank * batch_size, (n_rows // glob) * glob, glob)
    return [[(epoch, int(r)) for r in perm[s : s + batch_size]] for s in starts]


def wrap_for_world(module: nn.Module, world: World, cfg: PretrainConfig) -> nn.Module:
    """The one place where parallelism (`ckbert.parallel`) and compilation are applied; a single
    process without FSDP, activation checkpointing or compilation trains the module as is."""
    p = cfg.parallel
    if world.size > 1 or p.strategy == "fsdp" or p.activation_checkpointing != "none":
        from ckbert import parallel

        env = parallel.init_distributed(cfg.train.device)
        module = parallel.parallelize(module, p, env, cfg.train.precision)
    if cfg.train.compile != "none":
        # nn.Module.compile works in place: state-dict keys stay the HF names. dynamic=True because
        # batch lengths and the number of CMRM sample texts change from batch to batch.
        module.compile(backend=cfg.train.compile, dynamic=True)
    return module


def pick_device(requested: str, world: World) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def autocast_factory(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision fp16 needs a CUDA device (use bf16 on CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def build_model(cfg: PretrainConfig, tokenizer, resume_state: dict | None) -> tuple[CKBertForPreTraining, ModelConfig]:
    """From the trainer state when resuming, else from cfg.model (+ init_from)."""
    if resume_state is not None:
        mcfg = model_config_from_dict(resume_state["model_config"], source="trainer_state.json")
        return CKBertForPreTraining(mcfg), mcfg
    if cfg.init_from:
        from ckbert.hf_io import load_hf_pretraining_model  # model helper's HF import

        model = load_hf_pretraining_model(cfg.init_from, tokenizer)
        return model, model.config
    mcfg = resolve_vocab_size(load_model_config(cfg.model), len(tokenizer))
    return CKBertForPreTraining(mcfg), mcfg


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def keep_until(path: Path, step: int) -> None:
    """Drop the records after `step` (logged after the checkpoint a run resumes from, or a line cut
    by a kill), so that a resumed run's curve has one value per step."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


class MetricsLog:
    """metrics.jsonl (one JSON object per line), TensorBoard when installed, rank 0 only."""

    def __init__(self, out: Path, enabled: bool, resume: bool, resume_step: int = 0):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.jsonl"
        if resume and path.exists():
            keep_until(path, resume_step)
        self.file = open(path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def say(world: World, message: str) -> None:
    if world.is_main:
        print(message, file=sys.stderr, flush=True)


# ---- the run -----------------------------------------------------------------------------------
class PretrainRun:
    """One pretraining run, in the order it happens: `__init__` builds it (data, collators, model,
    optimizer, schedule, held-out sets), `restore` resumes a checkpoint, `train` is the step loop,
    `evaluate_heldout` and `save` are what the loop calls on its schedule."""

    def __init__(self, cfg: PretrainConfig, resume: bool, world: World):
        from ckbert.data_prep.dataset import open_prepared

        self.cfg, self.world = cfg, world
        self.out = out = Path(cfg.out)
        self.resume_from = ckpt_io.latest_checkpoint(out) if resume else None
        if resume and self.resume_from is None:
            raise UserError("--resume: no checkpoint found", path=out / "checkpoints")
        if not resume and (out / "checkpoints" / "latest").exists():
            raise UserError("output folder already holds checkpoints: pass --resume or choose another --out", path=out)
        self.state = ckpt_io.load_trainer_state(self.resume_from) if self.resume_from else None

        self.device = device = pick_device(cfg.train.device, world)
        self.autocast = autocast_factory(cfg.train.precision, device)  # checks the precision before any work
        self.manifest, self.dataset, kg, self.tokenizer = open_prepared(cfg.data.prepared)
        if self.state is not None and self.state["tokenizer_fingerprint"] != self.manifest["tokenizer"]["fingerprint"]:
            raise UserError("the prepared dataset's tokenizer differs from the one this checkpoint was trained with",
                            path=cfg.data.prepared)
        self.n_train = heldout_start(len(self.dataset), cfg.data.eval_rows)
        if self.n_train // world.size < cfg.train.batch_size:
            raise UserError(f"{self.n_train} training rows are fewer than one batch of {cfg.train.batch_size} "
                            "per rank", path=cfg.data.prepared)
        max_length = cfg.data.max_length or int(self.manifest["seq_len"]) + 2
        self.collator = PretrainCollator(self.tokenizer, self.manifest, kg if cfg.cmrm.enabled else None,
                                         cfg.masking, cfg.cmrm, max_length, cfg.seed, cfg.data.pad_to_multiple_of)
        say(world, f"[pretrain] {len(self.dataset)} rows ({self.n_train} train, {len(self.dataset) - self.n_train} "
                   f"held out), masking mode {self.manifest['masking_mode']}, CMRM {'on' if cfg.cmrm.enabled else 'off'}")
        self._build_model()
        self.global_micro = cfg.train.batch_size * world.size  # rows per micro-step, all ranks together
        say(world, f"[pretrain] world size {world.size}, strategy {cfg.parallel.strategy}: global batch "
                   f"{self.global_micro * cfg.train.grad_accum} = micro-batch {cfg.train.batch_size} x accumulation "
                   f"{cfg.train.grad_accum} x world {world.size}"
                   + (f", ramped up from one micro-batch over {cfg.train.batch_ramp:.0%} of the budget"
                      if cfg.train.batch_ramp else ""))
        self.eval_sets = self._heldout_sets(max_length)
        self.step, self.epoch, self.pos = 0, 0, 0
        self.last: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.warned_collapse = False

    def _build_model(self) -> None:
        from ckbert.parallel import DistEnv
        from ckbert.plan import peak_flops

        cfg, world = self.cfg, self.world
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model, self.mcfg = model, mcfg = build_model(cfg, self.tokenizer, self.state)
        if mcfg.vocab_size < len(self.tokenizer):
            raise UserError(f"model vocab_size {mcfg.vocab_size} < tokenizer size {len(self.tokenizer)}")
        self.unigram = heldout.unigram_log_probs(self.dataset, self.n_train, mcfg.vocab_size)  # every eval's baseline
        if cfg.train.unigram_decoder_bias and self.state is None and not cfg.init_from:
            with torch.no_grad():
                model.decoder_bias.copy_(self.unigram)
        if cfg.train.dropout is not None:
            model.set_dropout(cfg.train.dropout)
        model.to(self.device)
        self.forward = wrap_for_world(
            PretrainForward(model, cfg.cmrm.enabled, cfg.cmrm.temperature, cfg.cmrm.in_batch_negatives), world, cfg)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim.warmup_ratio, cfg.train.max_steps,
                                         60.0 * cfg.train.max_minutes, cfg.train.max_tokens)
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.ctx = StepContext(self.forward, self.optimizer, scaler, self.autocast, cfg.cmrm.weight,
                               cfg.optim.clip_norm, [p for p in model.parameters() if p.requires_grad])
        say(world, f"[pretrain] model {mcfg.num_hidden_layers}x{mcfg.hidden_size} ({mcfg.layout}), "
                   f"{sum(p.numel() for p in model.parameters()):,} parameters, device {self.device}, "
                   f"precision {cfg.train.precision}, kernels {model.backend}, optimizer {cfg.optim.name}")
        self.peak_flops = peak_flops(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None
        self.env = DistEnv(world.rank, world.size, world.local_rank, self.device)
        self.sharded = cfg.parallel.strategy == "fsdp"

    def _heldout_sets(self, max_length: int) -> dict[str, list[dict[str, torch.Tensor]]]:
        """The validation half of the held-out rows (`heldout.split_rows`; the test half is never
        looked at during a run), twice: with the objective's masks (and CMRM samples) and with
        random-token masks; plus the first rows for the collapse signal."""
        cfg = self.cfg
        rand = PretrainCollator(self.tokenizer, self.manifest, None, heldout.RANDOM_TOKEN_EVAL,
                                dataclasses.replace(cfg.cmrm, enabled=False), max_length, cfg.seed,
                                cfg.data.pad_to_multiple_of)
        validation = heldout.split_rows(len(self.dataset), cfg.data.eval_rows, "validation")
        self.eval_keys = keys = [(0, r) for r in validation]
        rows = KeyedRows(self.dataset)
        bs = cfg.train.batch_size
        sets = {name: [to_device(col(rows.__getitems__(keys[i : i + bs])), self.device)
                       for i in range(0, len(keys), bs)]
                for name, col in (("eval", self.collator), ("eval_rand", rand))}
        sets["eval_cosine"] = [to_device(rand(rows.__getitems__(keys[: heldout.COSINE_ROWS])), self.device)]
        return sets

    def restore(self) -> None:
        """Weights, optimizer, schedule (its clock), RNG and the data position of the checkpoint."""
        state, ckpt = self.state, self.resume_from
        if ckpt is None:
            if self.world.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                self.tokenizer.save_pretrained(str(self.out / "tokenizer"))  # export reads it from here
            return
        if (ckpt / "sharded").is_dir():
            from ckbert.dist_checkpoint import load_sharded

            load_sharded(ckpt, self.model, self.optimizer, self.env)  # any saved world size; RNG of this rank
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.model.load_state_dict(ckpt_io.load_model_state(ckpt))
            self.optimizer.load_state_dict(ckpt_io.load_torch_file(ckpt, "optimizer.pt"))
            self.scheduler.load_state_dict(ckpt_io.load_torch_file(ckpt, "scheduler.pt"))
            set_rng_state(ckpt_io.load_torch_file(ckpt, "rng.pt"))
        # The data position is kept in samples, so a run may resume on another world size.
        done = state.get("samples_in_epoch", state["batch_in_epoch"] * self.global_micro)
        if done % self.global_micro:
            raise UserError(f"the checkpoint is {done} rows into epoch {state['epoch']}, not a whole number of "
                            f"global micro-batches of {self.global_micro} (batch_size x world size)", path=ckpt)
        self.step, self.epoch, self.pos = state["step"], state["epoch"], done // self.global_micro
        say(self.world, f"[pretrain] resumed from {ckpt} at step {self.step} (epoch {self.epoch}, batch {self.pos})")

    def save(self, reason: str) -> None:
        world = self.world
        if not world.is_main and not self.sharded:  # a sharded checkpoint is written by every rank
            return
        trainer_state = {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.pos, "reason": reason,
            "samples_in_epoch": self.pos * self.global_micro, "world_size": world.size,
            "config": to_dict(self.cfg), "model_config": to_dict(self.mcfg),
            "tokenizer_fingerprint": self.manifest["tokenizer"]["fingerprint"],
            "kg_fingerprint": self.manifest["kg"]["fingerprint"], "masking_mode": self.manifest["masking_mode"],
            "tokenizer_dir": "../../tokenizer",
            "heldout": {"rows": len(self.dataset), "train_rows": self.n_train},  # the split (ckbert_split)
            # measured numbers for the model card (ckbert export): the last logged step and eval
            "metrics": {**{f"train_{k}": round(v, 4) for k, v in self.last.items() if k in ("loss", "mlm", "cmrm")},
                        **{k: round(v, 4) for k, v in self.last_eval.items()}},
        }
        keep = self.cfg.train.keep_checkpoints
        if self.sharded:
            from ckbert.dist_checkpoint import save_sharded

            path = save_sharded(self.out / "checkpoints", self.step, self.model, self.optimizer,
                                {**trainer_state, "scheduler": self.scheduler.state_dict()}, self.env, keep=keep)
        else:
            path = ckpt_io.save_checkpoint(self.out, self.step, ckpt_io.model_state_for_saving(self.model),
                                           self.optimizer.state_dict(), self.scheduler.state_dict(), rng_state(),
                                           trainer_state, keep=keep)
        say(world, f"[pretrain] checkpoint {path}")

    def evaluate_heldout(self) -> None:
        self.last_eval = r = evaluate(self.forward, self.eval_sets, self.unigram, self.autocast)
        self.log.write({"step": self.step, "tokens": self.scheduler.tokens, "elapsed_s": self.scheduler.elapsed_s, **r})
        say(self.world, describe_eval(self.step, r))
        if (not self.warned_collapse and r["eval_cosine"] > heldout.COLLAPSE_COSINE
                and self.scheduler.progress() >= self.cfg.optim.warmup_ratio):
            self.warned_collapse = True
            say(self.world, f"[pretrain] warning: last-layer states are nearly one vector (mean cosine between "
                            f"positions {r['eval_cosine']:.2f} > {heldout.COLLAPSE_COSINE}): the model has "
                            "collapsed to the unigram plateau, and CMRM gets almost no gradient")

    def _log_window(self, window: list[dict[str, float]], tokens: int, seconds: float, cmrm_counts: np.ndarray,
                    skipped_total: int, lr: float) -> None:
        from ckbert.parallel import all_reduce_sum
        from ckbert.plan import mfu

        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        for key in ("loss", "mlm", "cmrm", "grad_norm"):
            record[key] = sum(m[key] for m in window) / len(window)
        record["lr"] = lr
        # job-wide: every rank's tokens of the window (docs/distributed.md, "Logging")
        tokens_job = int(all_reduce_sum(torch.tensor([tokens], device=self.device), self.env).item())
        record["tokens_per_s"] = tokens_job / max(seconds, 1e-9)
        if self.peak_flops:
            record["mfu"] = mfu(record["tokens_per_s"], self.mcfg, self.collator.max_length, self.world.size,
                                self.peak_flops)
        record.update({f"cmrm_{k}": int(v) for k, v in zip(CMRM_STAT_KEYS, cmrm_counts, strict=False)})
        record["skipped_steps"] = skipped_total
        record["elapsed_s"] = self.scheduler.elapsed_s
        record["tokens"] = self.scheduler.tokens
        self.log.write(record)
        if self.bar is None:
            say(self.world, f"[pretrain] step {self.step}/{self.cfg.train.max_steps} loss {record['loss']:.4f} "
                            f"(mlm {record['mlm']:.4f}, cmrm {record['cmrm']:.4f}) lr {record['lr']:.2e} "
                            f"{record['tokens_per_s']:.0f} tok/s")

    def train(self) -> dict[str, Any]:
        """The step loop: batches in the epoch order, a step every (ramped) grad_accum micro-batches,
        the budget's clock, logging, held-out evaluation and checkpoints on their schedules."""
        from ckbert.parallel import all_reduce_sum

        cfg, world, scheduler = self.cfg, self.world, self.scheduler
        self.log = MetricsLog(self.out, world.is_main, self.resume_from is not None, self.step)
        if self.step == 0 and self.eval_keys:
            self.evaluate_heldout()
        self.bar = None
        if world.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="pretrain", dynamic_ncols=True)
        t_window, tokens_window = time.perf_counter(), 0
        t_last, tokens_step = time.perf_counter(), 0
        budgets_shared = world.size > 1 and (cfg.train.max_minutes > 0 or cfg.train.max_tokens > 0)
        window: list[dict[str, float]] = []
        cmrm_counts = np.zeros(len(CMRM_STAT_KEYS), dtype=np.int64)
        bad_in_a_row = skipped_total = 0
        loader_gen = torch.Generator().manual_seed(cfg.seed)  # keeps the DataLoader off the global RNG
        micro: list[dict[str, torch.Tensor]] = []
        stop = scheduler.done()
        self.forward.train()
        while not stop:
            batches = epoch_batches(self.n_train, cfg.train.batch_size, cfg.seed, self.epoch, world)
            loader = torch.utils.data.DataLoader(KeyedRows(self.dataset), batch_sampler=batches[self.pos:],
                                                 collate_fn=self.collator, num_workers=cfg.data.num_workers,
                                                 generator=loader_gen, pin_memory=self.device.type == "cuda")
            for batch in loader:
                self.pos += 1
                n_tokens = int(batch["attention_mask"].sum())
                tokens_window += n_tokens
                tokens_step += n_tokens
                cmrm_counts += batch.pop("cmrm_stats").numpy()
                batch.pop("mlm_sources")
                micro.append(to_device(batch, self.device))
                if len(micro) < ramped_accum(cfg.train.grad_accum, cfg.train.batch_ramp, scheduler.progress()):
                    continue
                metrics = train_step(self.ctx, micro)
                micro = []
                if metrics["skipped"]:
                    bad_in_a_row += 1
                    skipped_total += 1
                    say(world, f"[pretrain] step {self.step + 1}: non-finite loss or gradient, update skipped "
                               f"({bad_in_a_row} in a row)")
                    if bad_in_a_row >= cfg.train.max_bad_steps:
                        self.log.close()
                        raise UserError(f"{bad_in_a_row} non-finite steps in a row at step {self.step + 1}; "
                                        "lower optim.lr or use bf16/fp32")
                    continue
                bad_in_a_row = 0
                self.step += 1
                now = time.perf_counter()  # a skipped step's time and tokens are charged to the next one
                spent = torch.tensor([now - t_last, float(tokens_step)])
                t_last, tokens_step = now, 0
                if budgets_shared:  # every rank must see the same progress, hence the same lr
                    spent = all_reduce_sum(spent.to(self.device), self.env).cpu() / torch.tensor([world.size, 1.0])
                scheduler.advance(float(spent[0]), int(spent[1]))
                stop = scheduler.done()
                self.last = metrics
                window.append(metrics)
                if self.bar is not None:
                    self.bar.update(1)
                    self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", mlm=f"{metrics['mlm']:.3f}")
                if self.step % cfg.train.log_every == 0 or stop:
                    self._log_window(window, tokens_window, time.perf_counter() - t_window, cmrm_counts,
                                     skipped_total, metrics["lr"])
                    window, tokens_window, t_window = [], 0, time.perf_counter()
                    cmrm_counts[:] = 0
                if self.eval_keys and ((cfg.train.eval_every and self.step % cfg.train.eval_every == 0) or stop):
                    self.evaluate_heldout()
                if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or stop:
                    self.save("budget spent" if stop else "scheduled")
                if stop:
                    if self.step < cfg.train.max_steps:
                        say(world, f"[pretrain] stopping at step {self.step}: the time or token budget is spent "
                                   f"({scheduler.elapsed_s / 60:.1f} min, {scheduler.tokens:,} tokens)")
                    break
            else:
                self.epoch, self.pos = self.epoch + 1, 0
        if self.bar is not None:
            self.bar.close()
        self.log.close()
        return {"step": self.step, "last": self.last, "eval": self.last_eval, "out": str(self.out),
                "skipped_steps": skipped_total}


def run(cfg: PretrainConfig, resume: bool = False, world: World | None = None) -> dict[str, Any]:
    """Train as `cfg` says; returns a summary (steps, last losses, eval losses, paths)."""
    job = PretrainRun(cfg, resume, world or World.from_env())
    job.restore()
    return job.train()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ckbert pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="pretraining recipe (YAML), e.g. configs/pretrain/demo.yaml")
    parser.add_argument("--out", help="output folder (overrides `out` in the config)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=50")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    cfg = load_pretrain_config(args.config, overrides)
    summary = run(cfg, resume=args.resume)
    if World.from_env().is_main:
        print(json.dumps({k: summary[k] for k in ("step", "eval", "out", "skipped_steps")}))
    return 0
