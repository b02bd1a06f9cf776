"""Alignment objectives for the training loop: DPO family, ORPO, CPO/SimPO, KTO and reward models.

Each wraps a pure loss of :mod:`pyft.losses.preference` with the forward passes it needs. Chosen
and rejected sequences of a micro-batch run through the model as one batch. Step losses are means
over the step's pairs (or examples), so gradient accumulation equals one big batch; the NLL terms
of ORPO/CPO are means over the step's target tokens. Metrics use TRL's names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pyft.align.config import AlignSection
from pyft.align.reference import Reference
from pyft.data.sequences import KtoCollator, PreferenceCollator
from pyft.losses.forward import sequence_logps, target_masks
from pyft.losses.preference import cpo_loss, dpo_loss, kto_kl_estimate, kto_loss, orpo_loss, reward_model_loss

#: Per-pair metrics averaged over pairs.
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")


def _sum(t: torch.Tensor) -> float:
    return float(t.detach().float().sum())


def _with_rows(batch: dict[str, Any], rows, split: str) -> dict[str, Any]:
    """Tag a batch with its dataset rows and split (for precomputed reference log-probs)."""
    batch["rows"] = torch.tensor(list(rows), dtype=torch.int64)
    batch["split"] = split
    return batch


class _PairObjective:
    """Shared parts of the paired objectives (DPO, ORPO, CPO/SimPO)."""

    training = True  # set by the loop

    def __init__(self, align: AlignSection, pad_token_id: int, layout: str, chunk_tokens: int) -> None:
        self.align = align
        self.collator = PreferenceCollator(pad_token_id, layout)
        self.chunk_tokens = chunk_tokens

    def collate(self, items, rows, split):
        return _with_rows(self.collator(items), rows, split)

    def counts(self, batch):
        completion, whole = target_masks(batch)
        chosen = (batch["seq_ids"] >= 0) & (batch["seq_ids"] < batch["n_pairs"])
        return {"pairs": batch["n_pairs"], "tokens": int((batch["seq_ids"] >= 0).sum()),
                "chosen_tokens": int((completion & chosen).sum()), "rejected_tokens": int((completion & ~chosen).sum()),
                "chosen_all_tokens": int((whole & chosen).sum())}

    def _token_metrics(self, out, n_pairs: int) -> dict[str, float]:
        """``logits/*``, ``entropy`` and ``mean_token_accuracy`` sums over completion tokens."""
        chosen = (out.seq_ids >= 0) & (out.seq_ids < n_pairs) & out.completion
        rejected = (out.seq_ids >= n_pairs) & out.completion
        t = out.tokens
        return {"logits/chosen": _sum(t.mean_logits[chosen]), "logits/rejected": _sum(t.mean_logits[rejected]),
                "entropy": _sum(t.entropy[out.completion]), "mean_token_accuracy": _sum(t.top1[chosen])}

    def finalize(self, sums, totals):
        pairs = max(totals["pairs"], 1)
        out = {"loss": sums["loss"]}
        out.update({k: sums[k] / pairs for k in sums if k in PAIR_METRICS or k.startswith("log_odds")})
        out["logits/chosen"] = sums["logits/chosen"] / max(totals["chosen_tokens"], 1)
        out["logits/rejected"] = sums["logits/rejected"] / max(totals["rejected_tokens"], 1)
        out["entropy"] = sums["entropy"] / max(totals["chosen_tokens"] + totals["rejected_tokens"], 1)
        out["mean_token_accuracy"] = sums["mean_token_accuracy"] / max(totals["chosen_tokens"], 1)
        if "nll_loss" in sums:
            out["nll_loss"] = sums["nll_loss"] / max(totals[self._nll_tokens], 1)
        return out

    _nll_tokens = "chosen_tokens"

    def progress(self, record):
        if "rewards/margins" not in record:
            return ""
        return f"margin {record['rewards/margins']:.3f}  acc {record['rewards/accuracies']:.2f}"

    def _metrics(self, loss: torch.Tensor, per_pair: dict[str, torch.Tensor], out, n_pairs: int) -> dict[str, float]:
        sums = {"loss": float(loss.detach())}
        sums.update({k: _sum(v) for k, v in per_pair.items()})
        sums.update(self._token_metrics(out, n_pairs))
        return sums


class DpoObjective(_PairObjective):
    """DPO and its loss variants against a reference model (:class:`~pyft.align.reference.Reference`)."""

    def __init__(self, align: AlignSection, reference: Reference, pad_token_id: int, layout: str,
                 chunk_tokens: int) -> None:
        super().__init__(align, pad_token_id, layout, chunk_tokens)
        self.reference = reference
        types = align.loss_type or "sigmoid"
        self.loss_types = [types] if isinstance(types, str) else list(types)

    def loss(self, model, batch, totals):
        b = batch["n_pairs"]
        ref = self.reference.sequence_logps(model, batch).float()  # before the policy's graph exists
        out = sequence_logps(model, batch, self.chunk_tokens)
        ref = ref.to(out.logps)
        lengths = batch["completion_lengths"].to(out.logps)
        sft_nll = None
        if "sft" in self.loss_types:
            # The chosen completions' NLL as a mean over the step's chosen tokens, spread over the pairs.
            nll_sum = -out.logps[:b].sum()
            sft_nll = nll_sum / max(totals["chosen_tokens"], 1) * totals["pairs"] / b
        a = self.align
        losses, per_pair = dpo_loss(out.logps[:b], out.logps[b:], ref[:b], ref[b:], beta=a.beta,
                                    loss_type=self.loss_types, loss_weights=a.loss_weights,
                                    label_smoothing=a.label_smoothing, f_divergence=a.f_divergence, f_alpha=a.f_alpha,
                                    len_c=lengths[:b], len_r=lengths[b:], sft_nll=sft_nll)
        loss = losses.sum() / totals["pairs"]
        return loss, self._metrics(loss, per_pair, out, b)


class OrpoObjective(_PairObjective):
    """ORPO: chosen NLL over the whole prompt + response plus β × the odds-ratio term; no reference."""

    _nll_tokens = "chosen_all_tokens"

    def loss(self, model, batch, totals):
        b = batch["n_pairs"]
        _, whole = target_masks(batch)
        chosen_whole = whole & (batch["seq_ids"] < b)
        out = sequence_logps(model, batch, self.chunk_tokens, extra=chosen_whole)
        avg = out.logps / out.scored.clamp(min=1)
        losses, per_pair = orpo_loss(avg[:b], avg[b:], beta=self.align.beta)
        nll_sum = -(out.tokens.logps * chosen_whole[:, 1:]).sum()
        loss = nll_sum / max(totals["chosen_all_tokens"], 1) + losses.sum() / totals["pairs"]
        sums = self._metrics(loss, per_pair, out, b)
        sums["nll_loss"] = float(nll_sum.detach())
        return loss, sums


class CpoObjective(_PairObjective):
    """CPO (``sigmoid``/``hinge``/``ipo``) and SimPO (``simpo``): no reference model, plus
    ``cpo_alpha`` × the chosen completions' NLL."""

    def __init__(self, align: AlignSection, simpo: bool, pad_token_id: int, layout: str, chunk_tokens: int) -> None:
        super().__init__(align, pad_token_id, layout, chunk_tokens)
        self.loss_type = "simpo" if simpo else (align.loss_type or "sigmoid")
        self.cpo_alpha = align.cpo_alpha if align.cpo_alpha is not None else (0.0 if simpo else 1.0)

    def loss(self, model, batch, totals):
        b = batch["n_pairs"]
        out = sequence_logps(model, batch, self.chunk_tokens)
        logps = out.logps / out.scored.clamp(min=1) if self.loss_type in ("ipo", "simpo") else out.logps
        a = self.align
        losses, per_pair = cpo_loss(logps[:b], logps[b:], beta=a.beta, loss_type=self.loss_type,
                                    label_smoothing=a.label_smoothing, simpo_gamma=a.simpo_gamma, alpha=a.alphapo)
        loss = losses.sum() / totals["pairs"]
        nll_sum = -out.logps[:b].sum()
        if self.cpo_alpha:
            loss = loss + self.cpo_alpha * nll_sum / max(totals["chosen_tokens"], 1)
        sums = self._metrics(loss, per_pair, out, b)
        sums["nll_loss"] = float(nll_sum.detach())
        return loss, sums


class KtoObjective:
    """KTO on unpaired desirable/undesirable examples, with the batch KL estimate from mismatched
    pairs (completions rotated by one within each micro-batch), averaged over ranks."""

    training = True  # set by the loop

    def __init__(self, align: AlignSection, reference: Reference, pad_token_id: int, layout: str, chunk_tokens: int,
                 rank_mean: Callable[[float], float] = lambda x: x) -> None:
        self.align = align
        self.loss_type = align.loss_type or "kto"
        self.collator = KtoCollator(pad_token_id, layout, with_kl=self.loss_type == "kto")
        self.reference = reference
        self.chunk_tokens = chunk_tokens
        self.rank_mean = rank_mean

    def collate(self, items, rows, split):
        return _with_rows(self.collator(items), rows, split)

    def counts(self, batch):
        completion, _ = target_masks(batch)
        d = batch["desirable"]
        chosen_seq = d[batch["seq_ids"].clamp(min=0)] & (batch["seq_ids"] >= 0)
        return {"examples": len(d), "desirable": int(d.sum()), "undesirable": int((~d).sum()),
                "tokens": int((batch["seq_ids"] >= 0).sum()), "batches": 1,
                "chosen_tokens": int((completion & chosen_seq).sum()),
                "rejected_tokens": int((completion & ~chosen_seq & (batch["seq_ids"] >= 0)).sum())}

    def loss(self, model, batch, totals):
        a = self.align
        ref = self.reference.sequence_logps(model, batch).float()  # before the policy's graph exists
        kl = 0.0
        if self.loss_type == "kto":
            kl_batch = batch["kl"]
            kl_ref = self.reference.sequence_logps(model, kl_batch).float()
            with torch.no_grad():
                kl_logp = sequence_logps(model, kl_batch, self.chunk_tokens, stats=False).logps
            kl = float(kto_kl_estimate(kl_logp, kl_ref.to(kl_logp)))
            if self.training:  # averaged over ranks as TRL does (evaluation keeps each rank's own estimate)
                kl = self.rank_mean(kl)
        out = sequence_logps(model, batch, self.chunk_tokens)
        ref = ref.to(out.logps)
        losses, m = kto_loss(out.logps, ref, batch["desirable"].to(out.logps.device), kl, beta=a.beta,
                             desirable_weight=a.desirable_weight, undesirable_weight=a.undesirable_weight,
                             loss_type=self.loss_type)
        loss = losses.sum() / totals["examples"]
        d = m["desirable"]
        seq_d = d[out.seq_ids.clamp(min=0)] & (out.seq_ids >= 0) & out.completion
        seq_u = ~d[out.seq_ids.clamp(min=0)] & (out.seq_ids >= 0) & out.completion
        t = out.tokens
        sums = {"loss": float(loss.detach()), "kl": float(m["kl"]),
                "rewards/chosen": _sum(m["rewards"][d]), "rewards/rejected": _sum(m["rewards"][~d]),
                "logps/chosen": _sum(m["logps"][d]), "logps/rejected": _sum(m["logps"][~d]),
                "logits/chosen": _sum(t.mean_logits[seq_d]), "logits/rejected": _sum(t.mean_logits[seq_u]),
                "entropy": _sum(t.entropy[out.completion])}
        return loss, sums

    def finalize(self, sums, totals):
        out = {"loss": sums["loss"], "kl": sums["kl"] / max(totals["batches"], 1)}
        nd, nu = totals["desirable"], totals["undesirable"]
        if nd:
            out["rewards/chosen"] = sums["rewards/chosen"] / nd
            out["logps/chosen"] = sums["logps/chosen"] / nd
        if nu:
            out["rewards/rejected"] = sums["rewards/rejected"] / nu
            out["logps/rejected"] = sums["logps/rejected"] / nu
        if nd and nu:
            out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
        if totals["chosen_tokens"]:
            out["logits/chosen"] = sums["logits/chosen"] / totals["chosen_tokens"]
        if totals["rejected_tokens"]:
            out["logits/rejected"] = sums["logits/rejected"] / totals["rejected_tokens"]
        out["entropy"] = sums["entropy"] / max(totals["chosen_tokens"] + totals["rejected_tokens"], 1)
        return out

    def progress(self, record):
        parts = []
        if "rewards/margins" in record:
            parts.append(f"margin {record['rewards/margins']:.3f}")
        parts.append(f"kl {record.get('kl', 0.0):.3f}")
        return "  ".join(parts)


class RewardObjective:
    """Bradley-Terry reward model: a sequence-classification model with one label scores
    ``prompt + chosen`` above ``prompt + rejected``. Rows are right-padded with an attention mask,
    so the score is read at the last real token as transformers' classifier does at inference."""

    training = True  # set by the loop

    def __init__(self, align: AlignSection, pad_token_id: int) -> None:
        self.align = align
        self.collator = PreferenceCollator(pad_token_id, "padded")

    def collate(self, items, rows, split):
        return self.collator(items)

    def counts(self, batch):
        return {"pairs": batch["n_pairs"], "tokens": int(batch["attention_mask"].sum())}

    def rewards(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """``[2B]`` float32 rewards of the batch's sequences (chosen first)."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return out.logits[:, 0].float()

    def loss(self, model, batch, totals):
        b = batch["n_pairs"]
        r = self.rewards(model, batch)
        losses, m = reward_model_loss(r[:b], r[b:], center_rewards_coefficient=self.align.center_rewards_coefficient)
        loss = losses.sum() / totals["pairs"]
        return loss, {"loss": float(loss.detach()), **{k: _sum(v) for k, v in m.items()}}

    def finalize(self, sums, totals):
        pairs = max(totals["pairs"], 1)
        out = {"loss": sums["loss"]}
        out.update({k: sums[k] / pairs for k in ("accuracy", "margin", "rewards/chosen", "rewards/rejected")})
        out["mean_reward"] = (out["rewards/chosen"] + out["rewards/rejected"]) / 2
        return out

    def progress(self, record):
        return f"margin {record['margin']:.3f}  acc {record['accuracy']:.2f}"


def kto_weight_advice(n_desirable: int, n_undesirable: int, desirable_weight: float,
                      undesirable_weight: float) -> str | None:
    """A warning when KTO's class weights do not balance the data (KTO paper, Eq. 8: keep
    ``desirable_weight·n_d / (undesirable_weight·n_u)`` in ``[1, 4/3]``); None when they do."""
    if not n_desirable or not n_undesirable:
        return None
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    if 1.0 <= ratio <= 4 / 3:
        return None
    lo = n_undesirable * undesirable_weight / n_desirable
    return (f"KTO class weights do not balance the data ({n_desirable} desirable, {n_undesirable} undesirable): "
            f"desirable_weight * n_desirable / (undesirable_weight * n_undesirable) is {ratio:.2f}, recommended "
            f"1 to 1.33; set align.desirable_weight between {lo:.2f} and {lo * 4 / 3:.2f}")
