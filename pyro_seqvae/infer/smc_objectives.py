"""Training objectives built on SMC (:mod:`pyro_seqvae.infer.smc`): FIVO and NASMC.

Both are :class:`pyro.infer.ELBO` subclasses with ``loss`` and
``loss_and_grads(model, guide, x, mask, beta=1.0)``, so they go straight into
``SVI(model, guide, ClippedAdam(...), loss)`` and the :class:`~pyro_seqvae.training.Trainer`.
They run the model's and guide's ``@pyro_method`` s and register every parameter of both with
``pyro.param``, so SVI's ``poutine.trace(param_only=True)`` captures them and the optimizer
steps both. The loss is ``-sum_b log Z-hat_b``, in nats per batch like Pyro's ELBO losses.

**KL annealing.** ``beta`` tempers the latent part of each incremental weight,
``log p(x_t|.) + beta * (log p(z_t|.) - log q(z_t|.))``: with one particle this is exactly
the annealed ELBO (``poutine.scale(beta)`` on the ``z_t`` sites), and ``beta = 1`` is the
FIVO bound proper. The weights that decide resampling are tempered too. For the untempered
bound throughout, train with ``beta_start=1, beta_increment=0``.
"""

from __future__ import annotations

from pyro.infer import ELBO

from ..errors import ConfigError
from .smc import RESAMPLING, check_smc_options, run_smc


class _SMCObjective(ELBO):
    def __init__(self, num_particles: int = 4, *, resampling: str = "systematic",
                 threshold: float = 0.5):
        check_smc_options(num_particles, resampling, threshold)
        super().__init__(num_particles=num_particles, max_plate_nesting=1)
        self.resampling = resampling
        self.threshold = threshold

    def _run(self, model, guide, x, mask, beta, **kwargs):
        return run_smc(model, guide, x, mask, num_particles=self.num_particles,
                       resampling=self.resampling, threshold=self.threshold, beta=beta,
                       **kwargs)

    def loss(self, model, guide, x, mask, beta=1.0):
        """``-sum_b log Z-hat_b`` without gradients (a float)."""
        import torch

        with torch.no_grad():
            return -float(self._run(model, guide, x, mask, beta).log_z.sum())

    def differentiable_loss(self, model, guide, x, mask, beta=1.0):
        raise NotImplementedError(f"{type(self).__name__} provides loss_and_grads only")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} runs SMC, not Pyro traces")


class FIVO(_SMCObjective):
    """The filtering variational objective (Maddison et al. 2017): ``E[log Z-hat]`` of SMC.

    Gradients flow through the reparameterised draws and the weights; resampling is treated as
    non-differentiable (ancestors drawn without gradient, no score-function term), as FIVO does.
    ``K = 1`` is the single-sample ELBO; ``resampling="never"`` is IWAE.

    :param int num_particles: ``K`` (FIVO's Table 1: 4).
    :param str resampling: ``systematic`` (default), ``multinomial`` or ``never``.
    :param float threshold: resample when ESS ``< threshold * K`` (0.5).

    Example::

        svi = SVI(model, guide, ClippedAdam({"lr": 1e-3}), FIVO(4))
        svi.step(batch.x, batch.mask)
    """

    def loss_and_grads(self, model, guide, x, mask, beta=1.0):
        family = getattr(model, "latent_family", "gaussian")
        if family != "gaussian":
            raise ConfigError(f"{type(model).__name__}'s {family} latents cannot be "
                              "reparameterised, which FIVO's gradient needs: train them with "
                              "nasmc, not fivo")
        loss = -self._run(model, guide, x, mask, beta).log_z.sum()
        loss.backward()
        return float(loss.detach())


class NASMC(_SMCObjective):
    """Neural adaptive SMC (Gu, Ghahramani & Turner 2015).

    - The proposal (the guide's own parameters) follows the inclusive-KL gradient
      ``sum_t sum_k w~_t^k grad log q(z_t^k | .)``, with the SMC particles and their normalised
      filtering weights ``w~_t`` held fixed (Gu et al. eq. 9);
    - the model follows the gradient of the SMC log-likelihood ``log Z-hat`` with the particles
      and the proposal held fixed (Gu et al. sec. 4).

    The two gradients go to disjoint parameter sets: a network the guide borrows from the model
    (the VRNN's recurrence, Res_q's ``NN1_p``) is trained by the model's gradient only.
    Latents need not be reparameterisable. Options as :class:`FIVO`.
    """

    def loss_and_grads(self, model, guide, x, mask, beta=1.0):
        result = self._run(model, guide, x, mask, beta, nasmc=True)
        loss = -result.log_z.sum()
        model_params = [p for p in model.parameters() if p.requires_grad]
        guide_params = [p for p in guide.parameters() if p.requires_grad]
        loss.backward(inputs=model_params, retain_graph=True)
        (-result.proposal_objective.sum()).backward(inputs=guide_params)
        return float(loss.detach())


__all__ = ["FIVO", "NASMC", "RESAMPLING"]
