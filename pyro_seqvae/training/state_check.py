"""Say which parameter of a checkpoint does not fit the rebuilt network, and how.

``load_state_dict`` stops at "Error(s) in loading state_dict for SRNN:" and lists the details
on the lines after it, which a one-line error drops. :func:`check_state_fits` compares names and
shapes first and names the first mismatch with both shapes.
"""

from __future__ import annotations

from ..errors import CheckpointError

__all__ = ["state_mismatch", "check_state_fits"]


def state_mismatch(module, state: dict) -> str | None:
    """One line describing how ``state`` differs from ``module.state_dict()``, or None.

    :param torch.nn.Module module: the rebuilt network.
    :param dict state: the stored ``state_dict``.
    """
    own = module.state_dict()
    name = type(module).__name__
    shapes = [(key, tuple(state[key].shape), tuple(value.shape)) for key, value in own.items()
              if key in state and hasattr(state[key], "shape")
              and tuple(state[key].shape) != tuple(value.shape)]
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    parts = []
    if shapes:
        key, stored, built = shapes[0]
        more = f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""
        parts.append(f"{name} parameter {key!r} has shape {list(stored)} in the checkpoint but "
                     f"{list(built)} in the network built from its config{more}")
    if missing:
        parts.append(f"{name} parameters missing from the checkpoint: {missing[:3]}"
                     + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if unexpected:
        parts.append(f"checkpoint entries that {name} does not have: {unexpected[:3]}"
                     + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
    return "; ".join(parts) or None


def check_state_fits(payload: dict, model, guide) -> None:
    """Raise :class:`CheckpointError` naming the first parameter of ``payload`` that does not
    fit ``model`` or ``guide`` (name and both shapes)."""
    for module, key in ((model, "model_state"), (guide, "guide_state")):
        state = payload.get(key)
        if not isinstance(state, dict):
            raise CheckpointError(f"{payload.get('path')}: {key} is not a state dict")
        problem = state_mismatch(module, state)
        if problem:
            raise CheckpointError(f"{payload.get('path')}: weights do not fit the model: "
                                  f"{problem}")
