"""The key-map engine: a seed's checkpoint layout as a declarative, invertible map onto our keys.

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

`register(KeyMap(...))` makes a key map a checkpoint format (`CHECKPOINT_FORMATS`) and lists it in
`KEYMAPS`; the seeds' key maps live one per file beside this one (see the package docstring).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from vpr_core.models.formats.base import CHECKPOINT_FORMATS, CheckpointError, MappedState, unwrap_state_dict

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
        """Declared field kinds ({'i': 'int', ...}); the partner template inherits them."""
        return {name: kind for name, (kind, _) in self.fields.items() if kind}

    def match(self, key: str) -> Optional[Dict[str, str]]:
        """Field values of `key` (offsets undone), or None when the key does not fit the template."""
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
        """The key these field values spell (offsets applied): `match`'s inverse."""
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
    """One seed's checkpoint layout: rules, drops and container, read seed -> ours and ours -> seed."""
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
        """A seed state in our key names; with `model_state`, seed scalars take our shapes and the
        keep / fill / optional rules apply (what `load_weights` needs)."""
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
        """Seed keys with every alias spelling rewritten to the canonical one (a key twice is refused)."""
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


# our key prefix of the timm model inside every backbone (`VPRModel.backbone.model`)
BACKBONE_MODEL = "backbone.model."

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


def module_prefixed(container_key: Optional[str], **extra: Any) -> Callable[[State], Any]:
    """A DataParallel model saved as {container_key: {'module.<key>': ...}, **extra}."""
    def pack(state: State) -> Any:
        wrapped = {f"module.{k}": v for k, v in state.items()}
        return {container_key: wrapped, **extra} if container_key else wrapped
    return pack


def keymap(name: str) -> KeyMap:
    """The registered key map `name` (for tests and exports that write a seed's layout)."""
    try:
        return KEYMAPS[name]
    except KeyError:
        raise KeyError(f"no key map '{name}'; known: {', '.join(sorted(KEYMAPS))}") from None


__all__ = ["BACKBONE_MODEL", "KEYMAPS", "Drop", "KeyMap", "Rename", "Rule", "Split", "State", "Template", "keymap",
           "module_prefixed", "register"]
