"""The filtering guide: ``q(z_t | z_{t-1}, x_{<=t})``."""

from __future__ import annotations

from ..layers import MLP, check_positive_int
from .base import SequenceGuide


class FilteringGuide(SequenceGuide):
    """Filtering guide: the summary ``a_t`` sees the data up to step ``t`` only.

    - SRNN: ``a_t = NN_a(d_t, x_t)`` (SRNN sec. 3, the filtering variant);
    - DMM: ``a_t = NN_a(x_t)``;
    - VRNN / STORN: ``a_t = phi_x(x_t)``, the model's own features, so that
      ``q(z_t | .) = N(phi_enc(phi_x(x_t), h_{t-1}))`` is exactly the VRNN encoder (VRNN eq. 9);
    - TSBN: ``a_t = NN_a(x_{t-1}, x_t)``; with ``hidden_layers=0`` no ``NN_a`` and a linear head,
      the paper's recognition model.

    :param model: a latent model.
    :param bool residual: Res_q (SRNN Algorithm 1).
    :param int hidden_dim: hidden width of every network of the guide (500).
    :param network: ``hidden_layers``, ``activation``, ``clip`` (see :class:`SequenceGuide`).
    :param int summary_dim: width of ``a_t`` when ``NN_a`` is used (300).

    Example::

        guide = FilteringGuide(SRNN(), residual=True)
    """

    name = "filter"

    def __init__(self, model, *, residual=False, hidden_dim=500, summary_dim=300, name=None,
                 **network):
        super().__init__(model, residual=residual, hidden_dim=hidden_dim, name=name, **network)
        self.summary_dim = check_positive_int("summary_dim", summary_dim)
        if model.features_are_learned or self.hidden_layers == 0:
            # hidden_layers=0: a linear head on the features themselves (a linear summary
            # before a linear head would only restrict its rank); for a TSBN this is the
            # paper's q(z_t | z_{t-1}, x_t, x_{t-1}) = Bernoulli(sigmoid(U1 z_{t-1} + U2 x_t
            # + U3 x_{t-1} + d))
            self.summary_net = None
            self._build_head(model.guide_feature_dim)
        else:
            self.summary_net = MLP(model.guide_feature_dim, self.hidden, summary_dim,
                                   **self.nn_kwargs)
            self._build_head(summary_dim)

    def config(self):
        return {**super().config(), "summary_dim": self.summary_dim}

    def summarise(self, x, mask, pre):
        features = self.model.guide_features(x, pre)
        return features if self.summary_net is None else self.summary_net(features)
