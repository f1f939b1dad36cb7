"""Training configurations the benchmarks compare: the speed presets, and candidates given as
``NAME=PRESET,KEY=VALUE,...`` (a preset with some TrainConfig fields changed)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NoReturn

from medsingan.errors import ConfigError
from medsingan.runs import TRAINING_PRESETS, training_preset
from medsingan.train import TrainConfig

# TrainConfig overrides: each speed preset's, as configs/training.yaml gives them ("paper": the
# defaults), and "fast_amp": fast with bfloat16 convolutions.
PRESETS: dict[str, dict[str, Any]] = {name: training_preset(name) for name in TRAINING_PRESETS}
PRESETS["fast_amp"] = PRESETS["fast"] | {"amp": True}


def parse_candidate(text: str, taken: set[str], size: int) -> tuple[str, dict[str, Any]]:
    """``NAME=PRESET,KEY=VALUE,...`` -> (NAME, the preset's overrides with KEY set to VALUE,
    parsed as TrainConfig's field's type); a one-line SystemExit for anything else."""
    def refuse(why: str) -> NoReturn:
        raise SystemExit(f"--config {text!r}: {why}")

    name, _, spec = text.partition("=")
    base, *pairs = spec.split(",")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        refuse("NAME (a folder under --runs) must be letters, digits, '_' or '-'")
    if name in taken:
        refuse(f"{name!r} is given twice")
    if base not in PRESETS:
        refuse(f"expected NAME=PRESET,KEY=VALUE,... with PRESET one of {', '.join(PRESETS)}")
    defaults = TrainConfig()
    overrides = dict(PRESETS[base])
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            refuse(f"{pair!r} is not KEY=VALUE")
        if key in ("max_size", "device"):
            refuse(f"{key} is set by --size and the benchmark, not per candidate")
        default = getattr(defaults, key, None)
        if key not in {f.name for f in dataclasses.fields(TrainConfig)} or \
                not isinstance(default, (bool, int, float, str)):
            refuse(f"{key!r} is not a settable TrainConfig field")
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                overrides[key] = value.lower() == "true"
            elif isinstance(default, int):
                overrides[key] = int(value)
            else:
                overrides[key] = type(default)(value)
        except ValueError:
            kinds = {bool: "true or false", int: "an integer", float: "a number"}
            refuse(f"{key}={value!r}: expected {kinds[type(default)]}")
    try:
        TrainConfig(**(overrides | {"max_size": size})).validate()
    except (ConfigError, TypeError) as exc:
        refuse(str(exc))
    return name, overrides
