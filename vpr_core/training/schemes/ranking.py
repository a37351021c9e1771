"""Ranking (VisionTransformerVPR, ClusVPR, SelaVPR): pull an anchor's positive closer than its
negatives. Mining `cache`: hard negatives from a FAISS search over every training image's descriptor,
refreshed every N steps (NetVLAD-style); `batch`: positives and negatives mined inside the batch."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import faiss
import numpy as np
import torch

from vpr_core.training.data import ImageTable, training_table
from vpr_core.training.losses import LOSSES, multi_similarity_loss, triplet_margin_loss
from vpr_core.training.schemes import SCHEMES, Scheme, SchemeContext, SchemeError, chunk, epoch_order


@SCHEMES.register("ranking")
class RankingScheme(Scheme):
    def __init__(self, ctx: SchemeContext, loss: str = "triplet", margin: float = 0.1, mining: str = "cache",
                 negatives: int = 5, hard_pool: int = 50, refresh_every: int = 100, alpha: float = 1.0,
                 beta: float = 50.0, base: float = 0.0, mine_margin: float = 0.1) -> None:
        super().__init__(ctx)
        if loss not in ("triplet", "multi_similarity"):
            raise SchemeError(f"ranking: loss must be triplet or multi_similarity, got '{loss}'")
        LOSSES.get(loss)
        if mining not in ("cache", "batch"):
            raise SchemeError(f"ranking: mining must be cache (FAISS over all training images) or batch, got '{mining}'")
        if negatives < 1 or hard_pool < negatives or refresh_every < 1:
            raise SchemeError("ranking: need negatives >= 1, hard_pool >= negatives, refresh_every >= 1")
        self.loss_name, self.margin, self.mining = loss, float(margin), mining
        self.negatives, self.hard_pool, self.refresh_every = int(negatives), int(hard_pool), int(refresh_every)
        self.ms = dict(alpha=alpha, beta=beta, base=base, mine_margin=mine_margin)
        d = self.cfg.data
        self.table: ImageTable = training_table(d)
        self.positives = self.table.within(d.pos_radius)
        self.near = self.table.within(d.neg_radius)  # candidates too close to be negatives
        usable = np.array([len(p) > 0 for p in self.positives])
        if not usable.any():
            raise SchemeError(f"ranking: no training anchor has a positive within {d.pos_radius} {self.table.unit}(s)")
        self.usable = np.flatnonzero(usable)  # positions in table.anchors
        # mining cache: descriptors of every table image, float16 (half the memory and checkpoint; resume
        # restores exactly what the uninterrupted run mined with), and a FAISS index of the candidates
        self.desc: np.ndarray | None = None
        self.index: faiss.Index | None = None
        self.cache_step = -1

    def image_paths(self) -> List:
        return self.table.paths + super().image_paths()

    def batches(self, epoch: int) -> List[np.ndarray]:
        order = self.usable[epoch_order(len(self.usable), self.cfg.seed, epoch)]
        return chunk(order, self.cfg.batch_size, self.cfg.steps_per_epoch)

    # ---- mining cache ----------------------------------------------------------------------------
    def before_step(self, step: int) -> None:
        if self.mining == "cache" and (self.desc is None or step - self.cache_step >= self.refresh_every):
            self._set_cache(self.encoder.describe(self.table.paths, desc="mining cache").astype(np.float16))
            self.cache_step = step

    def _set_cache(self, desc: np.ndarray) -> None:
        self.desc = desc
        self.index = faiss.IndexFlatIP(desc.shape[1])
        self.index.add(np.ascontiguousarray(desc[self.table.candidates], dtype=np.float32))

    def _mine(self, rows: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Best positive (highest cached similarity) and the hardest negatives of each anchor row."""
        t = self.table
        cand = t.candidates
        anchors = t.anchors[rows]
        k = min(len(cand), self.hard_pool + max(len(self.near[r]) for r in rows) + 1)
        sims, found = self.index.search(np.ascontiguousarray(self.desc[anchors], dtype=np.float32), k)
        pos, neg = [], []
        for j, (r, a) in enumerate(zip(rows, anchors)):
            p = self.positives[r]
            pos.append(p[np.argmax(self.desc[p].astype(np.float32) @ self.desc[a].astype(np.float32))])
            hits = cand[found[j][found[j] >= 0]]
            hard = hits[~np.isin(hits, self.near[r]) & (hits != a)][:self.hard_pool]
            if len(hard) < self.negatives:  # tiny splits: fill with random far candidates
                far = cand[~np.isin(cand, self.near[r]) & (cand != a)]
                if not len(far):
                    raise SchemeError(f"ranking: anchor {t.paths[a]} has no candidate beyond neg_radius")
                hard = np.concatenate([hard, rng.choice(far, self.negatives - len(hard))])
            neg.append(hard[:self.negatives])
        return np.asarray(pos), np.stack(neg)

    def _in_batch(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.asarray([rng.choice(self.positives[r]) for r in rows])

    # ---- loss --------------------------------------------------------------------------------------
    def images(self, batch: np.ndarray, step: int) -> np.ndarray:
        """Table indices a batch reads: its anchors, their positives, then (cache mining) each anchor's
        `negatives` negatives, row-major; the same for a (seed, step) on every run."""
        rng = np.random.default_rng([self.cfg.seed, step, 7])
        anchors = self.table.anchors[batch]
        if self.mining == "cache":
            pos, neg = self._mine(batch, rng)
            return np.concatenate([anchors, pos, neg.ravel()])
        return np.concatenate([anchors, self._in_batch(batch, rng)])

    def loss(self, batch: np.ndarray, step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx = self.images(batch, step)
        desc = self.encoder([self.table.paths[i] for i in idx]).float()
        return self.ranking_loss(desc, idx, len(batch))

    def ranking_loss(self, desc: torch.Tensor, idx: np.ndarray, b: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The configured loss on the descriptors (len(idx), D) of `images`' indices for `b` anchors."""
        t = self.table
        if self.loss_name == "triplet" and self.mining == "cache":
            loss = triplet_margin_loss(desc[:b], desc[b:2 * b], desc[2 * b:].reshape(b, self.negatives, -1), self.margin)
        else:
            dist = t.distances(idx, idx)
            pos_m = torch.from_numpy(dist <= self.cfg.data.pos_radius).to(desc.device)
            neg_m = torch.from_numpy(dist > self.cfg.data.neg_radius).to(desc.device)
            if self.loss_name == "multi_similarity":
                loss = multi_similarity_loss(desc, pos_m, neg_m, **self.ms)
            else:  # batch-hard triplet over the batch's pairs
                d = torch.cdist(desc, desc)
                eye = torch.eye(len(desc), dtype=torch.bool, device=desc.device)
                hp = torch.where(pos_m & ~eye, d, torch.zeros_like(d)).max(1).values
                hn = torch.where(neg_m, d, torch.full_like(d, 1e4)).min(1).values
                loss = torch.relu(hp - hn + self.margin)[:b].mean()
        with torch.no_grad():
            cos_ap = (desc[:b] * desc[b:2 * b]).sum(-1).mean().item()
        return loss, {"cos_ap": cos_ap}

    def state_dict(self) -> Dict[str, Any]:
        return {"desc": None if self.desc is None else torch.from_numpy(self.desc.copy()), "cache_step": self.cache_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("desc") is not None:
            self._set_cache(state["desc"].numpy())
        self.cache_step = int(state.get("cache_step", -1))
