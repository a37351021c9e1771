"""Published checkpoint layouts of the seeds, as declarative, invertible key maps.

Each format is a `KeyMap`: an ordered list of rules between a *seed* key (as the seed's code saves it)
and *our* key (`VPRModel.state_dict()`), plus the seed keys we drop and the container the seed writes.
Rules are written once, as two templates, and read both ways:
    to_ours(seed_state, model_state)  used by `load_weights(model, path, "<format>")`
    to_seed(our_state)                used by tests (and exports) to write a file in the seed's layout
Templates are literal text with placeholders: `{name}` one dotted segment, `{name:int}` digits,
`{name:path}` the rest of the key (dots included), `{name+1}` / `{name-1}` an integer with an offset.
The first rule that matches a key wins, in both directions.

A seed key no rule maps is kept under its own name, so the strict loader reports it as unexpected
(next to the model key it failed to fill, reported as missing); shapes are checked there too.

Formats: dinov2_pretrain, selavpr, vitgal, xcit, netvlad_pth_tar, timm_vit (see each KEYMAP below).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from vpr_core.models.weights import CHECKPOINT_FORMATS, CheckpointError, MappedState, unwrap_state_dict

State = Dict[str, torch.Tensor]

# ---- templates ------------------------------------------------------------------------------------

_KINDS = {"": r"[^.]+", "int": r"\d+", "path": r".+"}
_FIELD = re.compile(r"\{(\w+)(?::(\w+))?([+-]\d+)?\}")


class Template:
    """`blocks.{i:int}.mlp.w12.{p}`: match a key into field values, or format field values into a key."""

    def __init__(self, text: str, kinds: Optional[Mapping[str, str]] = None) -> None:
        """`kinds`: field kinds declared by the paired template (a field's kind is written once)."""
        self.text = text
        self.fields: Dict[str, Tuple[str, int]] = {}
        pattern, pos = "", 0
        for m in _FIELD.finditer(text):
            name, kind, offset = m.group(1), m.group(2) or "", int(m.group(3) or 0)
            if kind not in _KINDS:
                raise ValueError(f"template '{text}': unknown field kind '{kind}'")
            if offset:
                kind = "int"
            kind = kind or (kinds or {}).get(name, "")
            if name in self.fields:
                raise ValueError(f"template '{text}': field '{name}' appears twice")
            self.fields[name] = (kind, offset)
            pattern += re.escape(text[pos:m.start()]) + f"(?P<{name}>{_KINDS[kind]})"
            pos = m.end()
        self.regex = re.compile(pattern + re.escape(text[pos:]))

    @property
    def kinds(self) -> Dict[str, str]:
        return {name: kind for name, (kind, _) in self.fields.items() if kind}

    def match(self, key: str) -> Optional[Dict[str, str]]:
        m = self.regex.fullmatch(key)
        if m is None:
            return None
        values = {}
        for name, (_, offset) in self.fields.items():
            value = m.group(name)
            if offset:
                index = int(value) - offset
                if index < 0:
                    return None
                value = str(index)
            values[name] = value
        return values

    def format(self, values: Mapping[str, str]) -> str:
        def sub(m: "re.Match[str]") -> str:
            offset = int(m.group(3) or 0)
            value = values[m.group(1)]
            return str(int(value) + offset) if offset else value
        return _FIELD.sub(sub, self.text)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _pair(seed: str, *ours: str) -> Tuple[Template, Tuple[Template, ...]]:
    """Compile a seed template and its partner(s); a field's kind may be declared in either of them."""
    kinds: Dict[str, str] = {}
    for text in (seed, *ours):
        for name, kind in Template(text).kinds.items():
            if kinds.setdefault(name, kind) != kind:
                raise ValueError(f"templates {seed!r} / {ours!r}: field '{name}' is '{kinds[name]}' and '{kind}'")
    return Template(seed, kinds), tuple(Template(t, kinds) for t in ours)


# ---- rules ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rename:
    """One seed tensor is one of ours. `seed_shape`: the seed stores it with this shape (e.g. (1,) for a
    scalar of ours); loading reshapes it to the model's shape when the element counts agree.
    `seed_when`: use this rule for writing the seed layout only when it holds for our state (a seed with
    two spellings for one of our keys, e.g. DINOv2's SwiGLU `w12` vs MLP `fc1`)."""
    seed: str
    ours: str
    seed_shape: Optional[Tuple[int, ...]] = None
    seed_when: Optional[Callable[[Mapping[str, torch.Tensor]], bool]] = None

    def __post_init__(self) -> None:
        seed, (ours,) = _pair(self.seed, self.ours)
        object.__setattr__(self, "_s", seed)
        object.__setattr__(self, "_o", ours)


@dataclass(frozen=True)
class Split:
    """One seed tensor is several of ours concatenated along `dim` (e.g. a fused qkv projection)."""
    seed: str
    ours: Tuple[str, ...]
    dim: int = 0

    def __post_init__(self) -> None:
        seed, ours = _pair(self.seed, *self.ours)
        object.__setattr__(self, "_s", seed)
        object.__setattr__(self, "_o", ours)


@dataclass(frozen=True)
class Drop:
    """Seed keys we do not load (`why` says why). `example(our_state)` gives what the seed file holds
    there, so `to_seed` writes a complete seed-layout file."""
    seed: str
    why: str
    example: Optional[Callable[[Mapping[str, torch.Tensor]], State]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_s", Template(self.seed))


Rule = Union[Rename, Split]


@dataclass(frozen=True)
class KeyMap:
    name: str
    rules: Tuple[Rule, ...]
    covers: str = ""  # our key prefix the checkpoint must fill completely ("" = whole model)
    drops: Tuple[Drop, ...] = ()
    aliases: Tuple[Tuple[str, str], ...] = ()  # (other seed spelling, canonical seed spelling): load only
    keep_model: Tuple[str, ...] = ()  # our keys the seed never holds: keep the model's values (fresh adapters)
    fill: Tuple[Tuple[str, Callable[[], torch.Tensor]], ...] = ()  # our keys the seed never holds: set these
    optional: Tuple[str, ...] = ()  # our prefixes: mapped keys are dropped when the model has none there
    pre_ours: Optional[Callable[[State], State]] = None  # whole-state step on seed keys before the rules
    post_seed: Optional[Callable[[State], State]] = None  # its inverse, after the rules
    container: Callable[[State], Any] = field(default=lambda state: state)  # the object the seed saves
    doc: str = ""

    # ---- seed -> ours ----
    def to_ours(self, seed_state: Mapping[str, torch.Tensor],
                model_state: Optional[Mapping[str, torch.Tensor]] = None) -> State:
        state = self._canonical(seed_state)
        if self.pre_ours is not None:
            state = self.pre_ours(state)
        out: State = {}
        source: Dict[str, str] = {}

        def put(key: str, value: torch.Tensor, seed_key: str) -> None:
            if key in out:
                raise CheckpointError(f"{self.name}: checkpoint keys '{source[key]}' and '{seed_key}' both map "
                                      f"to '{key}'")
            out[key], source[key] = value, seed_key

        for key, value in state.items():
            if any(d._s.match(key) is not None for d in self.drops):
                continue
            for rule in self.rules:
                values = rule._s.match(key)
                if values is None:
                    continue
                if isinstance(rule, Rename):
                    ours = rule._o.format(values)
                    target = model_state.get(ours) if model_state is not None else None
                    if (rule.seed_shape is not None and target is not None and target.shape != value.shape
                            and target.numel() == value.numel()):
                        value = value.reshape(target.shape)
                    put(ours, value, key)
                else:
                    parts = len(rule._o)
                    if value.shape[rule.dim] % parts:
                        raise CheckpointError(f"{self.name}: checkpoint key '{key}' {tuple(value.shape)} cannot be "
                                              f"split into {parts} equal parts along dim {rule.dim}")
                    for template, part in zip(rule._o, value.chunk(parts, dim=rule.dim)):
                        put(template.format(values), part.contiguous(), key)
                break
            else:  # no rule: keep the seed name, the loader reports it as unexpected
                put(key, value, key)
        if model_state is not None:
            keep = [Template(t) for t in self.keep_model]
            for key, value in model_state.items():
                if key not in out and any(t.match(key) is not None for t in keep):
                    out[key] = value
            for key, make in self.fill:
                if key in model_state and key not in out:
                    out[key] = make()
            for prefix in self.optional:
                if not any(k.startswith(prefix) for k in model_state):
                    out = {k: v for k, v in out.items() if not k.startswith(prefix)}
        return out

    def _canonical(self, seed_state: Mapping[str, torch.Tensor]) -> State:
        aliases = [(alt, canon) for alt, (canon,) in (_pair(a, b) for a, b in self.aliases)]
        out: State = {}
        for key, value in seed_state.items():
            for alt, canonical in aliases:
                values = alt.match(key)
                if values is not None:
                    key = canonical.format(values)
                    break
            if key in out:
                raise CheckpointError(f"{self.name}: checkpoint holds '{key}' twice (under two spellings)")
            out[key] = value
        return out

    # ---- ours -> seed ----
    def to_seed(self, our_state: Mapping[str, torch.Tensor]) -> State:
        """Our state (e.g. `model.state_dict()`) in the seed's key layout, dropped seed keys included."""
        keep = [Template(t) for t in self.keep_model]
        filled = {key for key, _ in self.fill}
        out: State = {}
        pending: Dict[Tuple[int, str], Dict[int, torch.Tensor]] = {}
        for key, value in our_state.items():
            if not key.startswith(self.covers) or key in filled or any(t.match(key) is not None for t in keep):
                continue
            for index, rule in enumerate(self.rules):
                if isinstance(rule, Rename):
                    if rule.seed_when is not None and not rule.seed_when(our_state):
                        continue
                    values = rule._o.match(key)
                    if values is None:
                        continue
                    out[rule._s.format(values)] = value.reshape(rule.seed_shape) if rule.seed_shape else value
                    break
                hit = next(((j, v) for j, t in enumerate(rule._o) if (v := t.match(key)) is not None), None)
                if hit is not None:
                    pending.setdefault((index, rule._s.format(hit[1])), {})[hit[0]] = value
                    break
            else:
                raise CheckpointError(f"{self.name}: our key '{key}' has no name in the seed layout")
        for (index, seed_key), parts in pending.items():
            rule = self.rules[index]
            if len(parts) != len(rule._o):
                raise CheckpointError(f"{self.name}: '{seed_key}' needs {len(rule._o)} parts, model has {len(parts)}")
            out[seed_key] = torch.cat([parts[j] for j in range(len(rule._o))], dim=rule.dim)
        if self.post_seed is not None:
            out = self.post_seed(out)
        for drop in self.drops:
            if drop.example is not None:
                out.update(drop.example(our_state))
        return out

    def seed_file(self, our_state: Mapping[str, torch.Tensor]) -> Any:
        """The object the seed's code would `torch.save` for these weights."""
        return self.container(self.to_seed(our_state))


KEYMAPS: Dict[str, KeyMap] = {}


def register(keymap: KeyMap) -> KeyMap:
    """Make `keymap` a checkpoint format of `load_weights` (and findable in KEYMAPS)."""
    KEYMAPS[keymap.name] = keymap

    def load(obj: Any, model: nn.Module) -> MappedState:
        state = unwrap_state_dict(obj)
        return MappedState(keymap.to_ours(state, model.state_dict()), covers=keymap.covers)

    load.__doc__ = keymap.doc
    CHECKPOINT_FORMATS.register(keymap.name)(load)
    return keymap


def _module_prefixed(container_key: Optional[str], **extra: Any) -> Callable[[State], Any]:
    """A DataParallel model saved as {container_key: {'module.<key>': ...}, **extra}."""
    def pack(state: State) -> Any:
        wrapped = {f"module.{k}": v for k, v in state.items()}
        return {container_key: wrapped, **extra} if container_key else wrapped
    return pack


# ---- DINOv2 (facebookresearch/dinov2 `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`) -> timm names --------

def _swiglu(state: Mapping[str, torch.Tensor]) -> bool:
    """ViT-g/14 uses a fused SwiGLU MLP: its first layer is twice as wide as the second one's input."""
    for key, value in state.items():
        if key.endswith("blocks.0.mlp.fc1.weight"):
            fc2 = state.get(key[:-len("fc1.weight")] + "fc2.weight")
            return fc2 is not None and value.shape[0] == 2 * fc2.shape[1]
    return False


def _dinov2_rules(seed: str, ours: str) -> Tuple[Rule, ...]:
    """DINOv2 reference names under `seed` -> timm VisionTransformer names under `ours`."""
    return (
        Rename(seed + "cls_token", ours + "cls_token"),
        Rename(seed + "register_tokens", ours + "reg_token"),
        Rename(seed + "pos_embed", ours + "pos_embed"),
        Rename(seed + "patch_embed.proj.{p}", ours + "patch_embed.proj.{p}"),
        # ViT-g: SwiGLUFFNFused(w12 = [gate; value] packed, w3) == timm GluMlp(fc1 packed the same way, fc2)
        Rename(seed + "blocks.{i:int}.mlp.w12.{p}", ours + "blocks.{i}.mlp.fc1.{p}", seed_when=_swiglu),
        Rename(seed + "blocks.{i:int}.mlp.w3.{p}", ours + "blocks.{i}.mlp.fc2.{p}", seed_when=_swiglu),
        # norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1/fc2, ls2.gamma: the same names in timm
        Rename(seed + "blocks.{i:int}.{rest:path}", ours + "blocks.{i}.{rest}"),
        Rename(seed + "norm.{p}", ours + "norm.{p}"),
    )


def _dinov2_registers(seed: str) -> Tuple[Callable[[State], State], Callable[[State], State]]:
    """DINOv2-with-registers adds the class token's position embedding to it and keeps the patch grid
    in `pos_embed` (timm's `no_embed_class` layout); writing back puts a zero class position first."""
    cls, pos, reg = seed + "cls_token", seed + "pos_embed", seed + "register_tokens"

    def to_ours(state: State) -> State:
        if reg not in state or cls not in state or pos not in state:
            return state
        state = dict(state)
        state[cls] = state[cls] + state[pos][:, :1]
        state[pos] = state[pos][:, 1:]
        return state

    def to_seed(state: State) -> State:
        if reg not in state or pos not in state:
            return state
        state = dict(state)
        state[pos] = torch.cat([torch.zeros_like(state[pos][:, :1]), state[pos]], dim=1)
        return state
    return to_ours, to_seed


def _mask_token(prefix: str, key: str) -> Callable[[Mapping[str, torch.Tensor]], State]:
    """DINOv2's iBOT mask token (1, C): training only."""
    def example(state: Mapping[str, torch.Tensor]) -> State:
        width = state[prefix + "cls_token"].shape[-1]
        return {key: torch.zeros(1, width)}
    return example


_BB = "backbone.model."
_pre, _post = _dinov2_registers("")
DINOV2_PRETRAIN = register(KeyMap(
    name="dinov2_pretrain",
    doc="facebookresearch/dinov2 `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` (bare state dict) -> the timm "
        "`vit_*_patch14[_reg4]_dinov2` backbone of families dinov2 / dinov2_adapter (adapters keep their "
        "fresh values). Covers the backbone only.",
    rules=_dinov2_rules("", _BB),
    covers="backbone.",
    drops=(Drop("mask_token", "iBOT masked-image-modelling token, training only", _mask_token(_BB, "mask_token")),),
    # FSDP-chunked layout (block_chunks > 0) spells blocks as blocks.<chunk>.<index>
    aliases=(("blocks.{c:int}.{i:int}.{rest:path}", "blocks.{i}.{rest}"),),
    keep_model=(_BB + "blocks.{i:int}.adapter{n:int}.{rest:path}",),
    pre_ours=_pre, post_seed=_post,
))

# ---- SelaVPR (Lu-Feng/SelaVPR `SelaVPR_msls.pth`, `SelaVPR_pitts30k.pth`) ---------------------------------
# Layout read from the published training code (network.GeoLocalizationNet wrapped in DataParallel,
# saved as {"model_state_dict": ..., "epoch_num", "optimizer_state_dict", "best_r5", "not_improved_num"}):
#   module.backbone.<DINOv2 ViT-L/14 names, block_chunks=0>     (incl. mask_token, unused)
#   module.backbone.blocks.N.adapter{1,2}.D_fc{1,2}.{weight,bias}   (adapters, hidden = 0.5 * dim)
#   module.aggregation.1.p    (1,)  GeM exponent (aggregation = L2Norm, GeM, Flatten)
#   module.LocalAdapt.upconv{1,2}.{weight,bias}   (ConvTranspose2d 1024->256->128, the local head)
# The released .pth files themselves could not be opened here (no downloads): the names come from the
# code, not from the files; a mismatch is reported key by key on load.
_pre, _post = _dinov2_registers("backbone.")
SELAVPR = register(KeyMap(
    name="selavpr",
    doc="SelaVPR fine-tuned checkpoint -> dinov2_adapter backbone + GeM aggregator (aggregator.p) + local head "
        "(local_head.upconv1/upconv2). Covers the whole model; the local head is skipped when the model has none.",
    rules=(
        Rename("backbone.blocks.{i:int}.adapter{n:int}.D_fc{j:int}.{p}", _BB + "blocks.{i}.adapter{n}.fc{j}.{p}"),
        *_dinov2_rules("backbone.", _BB),
        Rename("aggregation.1.p", "aggregator.p", seed_shape=(1,)),
        Rename("LocalAdapt.{rest:path}", "local_head.{rest}"),
    ),
    drops=(Drop("backbone.mask_token", "DINOv2 iBOT mask token, training only",
                _mask_token(_BB, "backbone.mask_token")),),
    optional=("local_head.",),
    pre_ours=_pre, post_seed=_post,
    container=_module_prefixed("model_state_dict", epoch_num=1, best_r5=0.0, not_improved_num=0),
))

# ---- XCiT (facebookresearch/xcit ImageNet `xcit_small_12_p16_224.pth` ...) and ViTGaL ----------------------

def _qkv(seed: str, ours: str) -> Split:
    """The reference class attention has a fused qkv projection; timm's has separate q, k, v."""
    return Split(seed + "cls_attn_blocks.{i:int}.attn.qkv.{p}",
                 tuple(ours + "cls_attn_blocks.{i}.attn." + part + ".{p}" for part in "qkv"))


XCIT = register(KeyMap(
    name="xcit",
    doc="facebookresearch/xcit ImageNet checkpoint ({'model': ...}) -> the timm XCiT backbone (family xcit). "
        "Covers the backbone only; the classifier is dropped.",
    rules=(
        _qkv("", _BB),
        Rename("pos_embeder.{rest:path}", _BB + "pos_embed.{rest}"),
        Rename("{rest:path}", _BB + "{rest}"),
    ),
    covers="backbone.",
    drops=(Drop("head.{p}", "ImageNet classifier"),),
    container=lambda state: {"model": state},
))

# ViTGaL (PXThanhLam/ViTGaL `model_checkpoint/xcit_retrievalv2_small_{12,24}_p16_reduction_ae/checkpoint.pth`),
# layout read from its published code: {'model': XCiTRetrievalLocalReductionAE.state_dict(), 'optimizer',
# 'lr_scheduler', 'epoch', 'args'}:
#   retrieval_back_bone.<XCiT names, pos_embeder, one CA block, local_atrous.*>   -> our vitgal backbone
#   whitening_layer (C -> 128, the local-descriptor reduction), ae_decoder_layer (128 -> C), cls_token,
#   cls_attn_blocks.0 (its attention over the decoded patches scores keypoints), norm -> our local head
#   head.* (training classifier; ViTGaL's own loader deletes it)                   -> dropped
VITGAL = register(KeyMap(
    name="vitgal",
    doc="ViTGaL XCiT + autoencoder checkpoint -> vitgal backbone (+ cls aggregator, no parameters) + local head "
        "(local_head.whitening_layer / ae_decoder_layer / cls_token / cls_attn_blocks.N with q,k,v / norm). "
        "Covers the whole model; the local head (or its attention scorer) is skipped when the model has none.",
    rules=(
        _qkv("retrieval_back_bone.", _BB),
        Rename("retrieval_back_bone.pos_embeder.{rest:path}", _BB + "pos_embed.{rest}"),
        Rename("retrieval_back_bone.{rest:path}", _BB + "{rest}"),
        _qkv("", "local_head."),
        Rename("cls_attn_blocks.{rest:path}", "local_head.cls_attn_blocks.{rest}"),
        Rename("whitening_layer.{p}", "local_head.whitening_layer.{p}"),
        Rename("ae_decoder_layer.{p}", "local_head.ae_decoder_layer.{p}"),
        Rename("cls_token", "local_head.cls_token"),
        Rename("norm.{p}", "local_head.norm.{p}"),
    ),
    drops=(Drop("head.{p}", "autoencoder training classifier"),
           Drop("retrieval_back_bone.head.{p}", "ArcFace training classifier")),
    # no local head: all of it skipped; a patch_tokens head built with `attention: false`: the scorer skipped
    optional=("local_head.", "local_head.cls_token", "local_head.cls_attn_blocks.", "local_head.norm."),
    container=lambda state: {"model": state, "epoch": 0},
))

# ---- NetVLAD / ClusVPR (OpenIBL-style `.pth.tar`) ----------------------------------------------------------
# OpenIBL (and ClusVPR, built on it) save {'state_dict': DataParallel(EmbedNet).state_dict(), 'epoch',
# 'best_recall5'}; EmbedNet = base_model (VGG16 `base` = torchvision features[:-2], conv5_3 before ReLU)
# + net_vlad (NetVLAD: centroids (K, C), conv.weight (K, C, 1, 1), no bias; ClusVPR's published layer adds
# linear1, GeM_pool.p and a vit_layer transformer). Every net_vlad tensor goes to `aggregator.` under its own
# name, which is our `netvlad` aggregator's name for centroids / conv.* / attention.* / reduction.*; tensors
# it does not have (ClusVPR's linear1, GeM_pool, vit_layer) are reported by name on load. Centres from a
# checkpoint count as initialised (`aggregator.initialised`).
NETVLAD_PTH_TAR = register(KeyMap(
    name="netvlad_pth_tar",
    doc="OpenIBL / ClusVPR NetVLAD checkpoint -> vgg backbone (features.0..28) + netvlad aggregator (same names "
        "under aggregator.). Covers the whole model.",
    rules=(
        Rename("base_model.base.{i:int}.{p}", _BB + "features.{i}.{p}"),
        Rename("net_vlad.{rest:path}", "aggregator.{rest}"),
    ),
    aliases=(("base_model.features.{i:int}.{p}", "base_model.base.{i}.{p}"),),
    fill=(("aggregator.initialised", lambda: torch.tensor(True)),),
    container=_module_prefixed("state_dict", epoch=0, best_recall5=0.0),
))

# ---- timm-layout ViTs (DeiT / CaiT official files, timm files, VisionTransformerVPR's backbones) ------------
# DeiT and CaiT official checkpoints ({'model': ...}) use timm's names; VisionTransformerVPR's own ViT uses
# them too (cls_token, dist_token, pos_embed, patch_embed.proj, blocks.N..., norm, head/head_dist). PiT's
# official files (naver-ai/pit) keep the poolings apart: pools.N.* = timm transformers.(N+1).pool.*.
TIMM_VIT = register(KeyMap(
    name="timm_vit",
    doc="timm-layout ViT / DeiT / CaiT / PiT state dict (bare, {'model': ...} or 'model.'-prefixed) -> "
        "backbone.model.*; classifier heads are dropped. Covers the backbone only.",
    rules=(
        Rename("pools.{i:int}.{rest:path}", _BB + "transformers.{i+1}.pool.{rest}"),
        Rename("{rest:path}", _BB + "{rest}"),
    ),
    covers="backbone.",
    drops=(Drop("head.{rest:path}", "classifier"), Drop("head_dist.{rest:path}", "distillation classifier")),
    aliases=(("model.{rest:path}", "{rest}"),),
    container=lambda state: {"model": state},
))


def keymap(name: str) -> KeyMap:
    try:
        return KEYMAPS[name]
    except KeyError:
        raise KeyError(f"no key map '{name}'; known: {', '.join(sorted(KEYMAPS))}") from None


__all__ = ["KEYMAPS", "KeyMap", "Rename", "Split", "Drop", "Template", "keymap", "register"]
