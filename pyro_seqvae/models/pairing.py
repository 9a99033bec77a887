"""A guide runs only with the model it was built for: the check at call time.

``SequenceGuide.__init__`` checks that a guide *can* guide its model; nothing stops a script
from then pairing it with another one, ``SVI(model_b, guide_of_model_a, ...)``. The guide would
sample ``z_t`` from model A's networks, model B would be scored on those samples, and the loss
would look plausible (or fail deep in torch when the latent widths differ).

Every Pyro ELBO runs the guide first and then replays the model on the guide's trace
(``poutine.replay``), which copies each guide site's ``infer`` dict onto the model's site. The
guide therefore marks its first latent site ``z_1`` with ``infer={"seqvae_guide": guide}``, and
the model, before its loop, looks for a replay handler on Pyro's stack whose trace holds ``z_1``
and checks the mark: once per call, no work in the per-step loop. A model run on its own, or
replayed on a trace of a guide that is not a pyro-seqvae guide, is not affected (a foreign
guide's ``z_1`` is still checked for the latent width).
"""

from __future__ import annotations

from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _PYRO_STACK

from ..errors import IncompatibleGuideError

#: The ``infer`` key under which a guide names itself at its first latent site.
PAIRING_KEY = "seqvae_guide"
#: The site that carries the mark.
MARKED_SITE = "z_1"


def describe(module) -> str:
    """``SRNN 'SRNN' (z_dim=3) at 0x7f...``: class, Pyro root name, latent width and identity."""
    z_dim = getattr(module, "z_dim", None)
    return (f"{type(module).__name__} {getattr(module, '_pyro_name', '')!r}"
            + (f" (z_dim={z_dim})" if z_dim is not None else "") + f" at {id(module):#x}")


def check_guide_model(guide, model) -> None:
    """Raise :class:`IncompatibleGuideError` unless ``guide`` was built for this very ``model``."""
    if guide.model is not model:
        raise IncompatibleGuideError(
            f"{type(guide).__name__} was built for {describe(guide.model)} but is run with "
            f"{describe(model)}; build the guide from the model it guides, e.g. "
            f"{type(guide).__name__}(model)")


def check_replayed_guide(model) -> None:
    """Called by a latent model's ``forward``: refuse a guide trace made for another model.

    :raises IncompatibleGuideError: naming both models (and the guide), or the latent widths.
    """
    for frame in reversed(_PYRO_STACK):
        if not isinstance(frame, ReplayMessenger) or frame.trace is None:
            continue
        node = frame.trace.nodes.get(MARKED_SITE)
        if node is None:
            continue
        guide = (node.get("infer") or {}).get(PAIRING_KEY)
        if guide is not None:
            check_guide_model(guide, model)
        width = node["value"].shape[-1] if node.get("value") is not None else None
        if width is not None and width != model.z_dim:
            raise IncompatibleGuideError(
                f"the guide's latent {MARKED_SITE} has width {width} but {describe(model)} "
                f"expects z_dim={model.z_dim}; the guide was not built for this model")
        return
