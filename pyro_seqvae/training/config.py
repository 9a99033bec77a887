"""Run-level configuration: one frozen :class:`TrainConfig`, written as JSON beside the results."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..guides import default_guide_name, make_guide
from ..guides.baselines import BASELINES
from ..infer.annealing import LinearKLSchedule
from ..infer.elbo import DIRECT_ELBOS, ELBO_PATHS, ELBOS
from ..models import make_model
from ..models.feedback_noise import DEFAULT_INPUT_FLIP, DEFAULT_INPUT_FLIP_MODELS, check_rate

#: The SRNN paper's KL-annealing increment per update (sec. 5).
PAPER_BETA_INCREMENT = 3e-4
#: Under JIT, batch lengths are padded to multiples of this: one compile (a few seconds) each,
#: 3 % padded steps on JSB (multiples of 32: 24 %).
JIT_PAD_MULTIPLE = 8
#: Settings of ``TrainConfig.validate``.
VALIDATE = ("first", "always", "never")
#: Settings of ``TrainConfig.valid_estimator``: the validation figure that selects checkpoints.
VALID_ESTIMATORS = ("elbo", "smc")


def _call(factory, what: str, *args, **kwargs):
    # a stored config from another library version may name arguments that no longer exist
    try:
        return factory(*args, **kwargs)
    except (TypeError, ConfigError) as exc:  # ConfigError: an argument this version lacks
        raise ConfigError(f"{what} does not fit this library version ({exc})") from exc


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (defaults: the SRNN paper's music setting).

    :param str data: ``jsb``, a benchmark pickle, a MIDI or WAV folder, or a stroke file.
    :param str data_kind: the reader (``auto`` detects it; see ``load_dataset``).
    :param dict data_options: options of the WAV or stroke reader (``frame_size``, ``seq_len``).
    :param str model: a name in :data:`~pyro_seqvae.models.MODELS`.
    :param str guide: ``filter``, ``smooth`` or ``none`` (``None``: the model's default).
    :param bool residual: the residual guide mean Res_q.
    :param str emission: ``bernoulli``, ``gauss``, ``gmm``, ``stroke``.
    :param dict emission_kwargs: e.g. ``{"num_components": 20}``.
    :param dict model_kwargs: extra model arguments (``z_dim``, ``rnn_dim``, ``hidden_dim`` ...).
    :param dict guide_kwargs: extra guide arguments.
    :param int epochs: passes over the training split.
    :param int batch_size: sequences per update.
    :param float lr: Adam learning rate (1e-3, the SRNN paper's TIMIT setting; stable with the
        paper's clamped networks, which bound the latent chain z_{t-1} -> z_t).
    :param float lr_decay: multiplicative learning-rate decay per update (ClippedAdam ``lrd``).
    :param float weight_decay: L2 penalty ``weight_decay * p`` added to every parameter's
        gradient (ClippedAdam's ``weight_decay``, as in ``torch.optim.Adam``: coupled, before
        the moment estimates). The losses are sums over the batch's sequences and steps, so
        the penalty's relative weight shrinks as the batch grows (default 0: none).
    :param float clip_norm: gradient-norm clipping.
    :param float beta_start: KL weight at update 0 (SRNN paper: 0.2).
    :param float beta_increment: added to the KL weight per update (SRNN paper: 1e-4 or 3e-4).
        ``None`` (the default): the paper's 3e-4, raised where needed so that beta reaches 1
        by the middle of the run (a short run would otherwise never see beta = 1).
    :param str elbo: ``meanfield`` (the default for Gaussian latents: ``TraceMeanField_ELBO``,
        the analytic KL per step given the previous sample, as the SRNN paper computes it; 0.42
        nats per step better validation ELBO than ``trace`` after the 20-epoch default run, at no
        extra cost per update), ``trace`` (the default for binary latents, TSBN), ``jit``,
        ``iwae``, ``fivo`` or ``nasmc`` (SMC objectives: ``beta`` tempers the latent part of
        their weights), ``downstream``, ``tracegraph`` or ``rws`` (reweighted wake-sleep,
        ``num_particles >= 2``, :mod:`~pyro_seqvae.infer.rws`; the training objective it reports
        is the IWAE bound). ``None``: the model's default.
    :param str elbo_path: how ``trace``, ``meanfield`` and ``rws`` are computed: ``auto`` (the
        default: :class:`~pyro_seqvae.infer.direct_elbo.DirectELBO`, the same loss and
        gradients on the step protocol, about 0.7x the time of a plain PyTorch step, for the
        library's models with Gaussian latents; Pyro's ELBO on traces for every other pair),
        ``direct`` (refuses the other pairs) or ``pyro`` (always Pyro's). ``rws`` has a direct
        path too (:func:`~pyro_seqvae.infer.rws.direct_log_densities`: models whose carry is
        ``z_{t-1}`` alone, TSBN, SRNN and DMM; 1.2x a plain PyTorch RWS step on the TSBN,
        against 2.1x on traces). The direct path runs no Pyro checks (``validate``). Other
        objectives always run on Pyro's traces.
    :param str baseline: score-function baseline of binary latents (TSBN): ``none``,
        ``decaying``, ``neural`` (NVIL's network) or ``nvil`` (NVIL's network, centring and
        variance normalisation, :mod:`~pyro_seqvae.guides.nvil`); ``Trace_ELBO`` ignores
        baselines, so with one ``elbo="trace"`` becomes ``downstream``
        (:class:`~pyro_seqvae.infer.downstream.DownstreamCostELBO`; ``nvil`` needs it).
    :param float discount: ``elbo="downstream"`` only: weight per step of the future terms in a
        binary latent's learning signal, in ``(0, 1]``; below 1 the guide's gradient is biased
        but far less noisy (:class:`~pyro_seqvae.infer.downstream.DownstreamCostELBO`).
    :param str validate: Pyro's distribution and trace checks during training: ``first`` (on
        the first update of each :meth:`Trainer.fit`, which catches a badly shaped model at
        once; then off, for speed), ``always`` or ``never``. A NaN loss is caught either way.
    :param int num_particles: samples per update (``iwae``, ``fivo``, ``nasmc``, ``rws``: the K).
    :param int seed: seeds torch, Pyro, NumPy and the data order.
    :param str device: ``cpu``, ``cuda``, ``cuda:1`` ...
    :param int patience: stop after this many epochs without a better validation figure
        (``valid_estimator``'s).
    :param str valid_estimator: the validation figure that picks the best checkpoint and drives
        ``patience``: ``elbo`` (the default: the ELBO per step) or ``smc`` (SMC's
        ``log Z-hat`` per step with ``num_particles`` particles and the guide as the proposal,
        :func:`~pyro_seqvae.infer.evaluation.smc_per_step`, seeded with ``seed`` at every
        epoch; the figure SMC-trained runs, ``nasmc`` and ``fivo``, optimise). The ELBO is
        recorded either way.
    :param bool bucket_by_length: batch sequences of similar length together.
    :param int pad_to_multiple: pad each batch's length to a multiple (JIT: one compile each;
        ``elbo="jit"`` pads to multiples of 8 unless told otherwise).
    :param int transpose: data augmentation: shift each training roll by a random number of
        semitones in ``[-transpose, transpose]`` (piano rolls only; 0 disables).
    :param int limit: use only this many chorales of ``jsb`` (quick runs and tests).
    :param bool init_output_bias: start a Bernoulli decoder's output bias at the training
        data's key log-odds (:func:`~pyro_seqvae.models.output_init.init_output_bias`); without
        it free-running samples collapse into half the keyboard (issue 12).
    :param float input_flip: models that read their notes back (``rnn``, ``srnn``, ``tsbn``:
        ``u_t = x_{t-1}``; ``vrnn``, ``storn``: the ``x_t`` into ``phi_x``): in training steps
        flip each key of that input with this probability
        (:mod:`~pyro_seqvae.models.feedback_noise`), so that sampled chords do not derail the
        recurrent state (issue 12); ``model_kwargs["input_flip"]`` overrides it, the DMM
        ignores it, and a checkpoint keeps the value it was
        trained with (0 before).
    """

    data: str = "jsb"
    data_kind: str = "auto"
    data_options: dict = field(default_factory=dict)
    model: str = "srnn"
    guide: str | None = None
    residual: bool = False
    emission: str = "bernoulli"
    emission_kwargs: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    guide_kwargs: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    lr_decay: float = 1.0
    weight_decay: float = 0.0
    clip_norm: float = 10.0
    beta_start: float = 0.2
    beta_increment: float | None = None
    elbo: str | None = None
    elbo_path: str = "auto"
    valid_estimator: str = "elbo"
    baseline: str = "none"
    discount: float = 1.0
    validate: str = "first"
    num_particles: int = 1
    seed: int = 0
    device: str = "cpu"
    patience: int | None = None
    bucket_by_length: bool = True
    pad_to_multiple: int | None = None
    transpose: int = 0
    limit: int | None = None
    init_output_bias: bool = True
    input_flip: float = DEFAULT_INPUT_FLIP

    def __post_init__(self):
        for name in ("epochs", "batch_size", "num_particles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if isinstance(self.weight_decay, bool) or not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be a finite number >= 0, got "
                              f"{self.weight_decay!r}")
        if not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive, got {self.clip_norm!r}")
        if self.elbo is None:  # the model's default: analytic KL where the latents allow it
            from ..models import MODELS

            family = getattr(MODELS.get(str(self.model).lower()), "latent_family", "gaussian")
            object.__setattr__(self, "elbo", "meanfield" if family == "gaussian" else "trace")
        if self.elbo not in ELBOS:
            raise ConfigError(f"unknown elbo {self.elbo!r}; expected one of {list(ELBOS)}")
        if self.elbo_path not in ELBO_PATHS:
            raise ConfigError(f"elbo_path must be one of {list(ELBO_PATHS)}, got "
                              f"{self.elbo_path!r}")
        if self.baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {list(BASELINES)}, got "
                              f"{self.baseline!r}")
        if self.baseline != "none":
            if self.elbo == "trace":  # Trace_ELBO ignores baselines
                object.__setattr__(self, "elbo", "downstream")
            elif self.elbo not in ("downstream", "tracegraph"):
                raise ConfigError(f"baseline={self.baseline!r} needs elbo 'trace', "
                                  f"'downstream' or 'tracegraph', got {self.elbo!r}")
            if self.baseline == "nvil" and self.elbo != "downstream":
                raise ConfigError(f"baseline='nvil' needs elbo 'trace' or 'downstream' "
                                  f"(TraceGraph_ELBO does not apply it), got {self.elbo!r}")
        if self.elbo == "rws" and self.num_particles < 2:
            raise ConfigError(f"elbo='rws' needs num_particles >= 2 (its weights are normalised "
                              f"over the particles), got {self.num_particles}")
        if not 0 < self.discount <= 1:
            raise ConfigError(f"discount must be in (0, 1], got {self.discount!r}")
        if self.discount != 1 and self.elbo != "downstream":
            if self.elbo == "trace" and self.baseline == "none":
                object.__setattr__(self, "elbo", "downstream")
            else:
                raise ConfigError(f"discount={self.discount!r} needs elbo 'downstream', got "
                                  f"{self.elbo!r}")
        if self.elbo_path == "direct" and self.elbo not in DIRECT_ELBOS:
            raise ConfigError(f"elbo_path 'direct' applies to the objectives "
                              f"{list(DIRECT_ELBOS)} only, got elbo {self.elbo!r}; use "
                              f"elbo_path 'auto' or 'pyro'")
        if self.valid_estimator not in VALID_ESTIMATORS:
            raise ConfigError(f"valid_estimator must be one of {list(VALID_ESTIMATORS)}, got "
                              f"{self.valid_estimator!r}")
        if self.valid_estimator == "smc" and self.num_particles < 2:
            raise ConfigError(f"valid_estimator 'smc' uses num_particles particles and needs at "
                              f"least 2, got num_particles={self.num_particles}")
        if self.validate not in VALIDATE:
            raise ConfigError(f"validate must be one of {list(VALIDATE)}, got {self.validate!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be a positive integer, got {self.patience!r}")
        if self.transpose < 0:
            raise ConfigError(f"transpose must be >= 0, got {self.transpose!r}")
        check_rate("input_flip", self.input_flip)
        if self.elbo == "jit" and self.pad_to_multiple is None:
            object.__setattr__(self, "pad_to_multiple", JIT_PAD_MULTIPLE)

    def build(self, x_dim: int, *, model_config=None, guide_config=None):
        """Build ``(model, guide)`` for data of width ``x_dim``.

        A checkpoint rebuilds its networks from the complete settings it stored
        (``model.config()``, ``guide.config()``), not from this config's explicit options alone,
        so a run keeps its architecture when the library's defaults change.

        :param int x_dim: ``D``.
        :param dict model_config: a stored ``model.config()``, used instead of this config's
            model options.
        :param dict guide_config: a stored ``guide.config()``, likewise.
        :raises ConfigError: unknown names or settings.
        :raises IncompatibleGuideError: an impossible model x guide pair.
        """
        if model_config is not None:
            stored = dict(model_config)
            if stored.pop("x_dim", x_dim) != x_dim:
                raise ConfigError(f"model_config has x_dim={model_config['x_dim']} but the data "
                                  f"has width {x_dim}")
            model = _call(make_model, "model_config", self.model, x_dim=x_dim, **stored)
        else:
            model_kwargs = dict(self.model_kwargs)
            if self.model.lower() in DEFAULT_INPUT_FLIP_MODELS:
                model_kwargs.setdefault("input_flip", self.input_flip)
            model = make_model(self.model, x_dim=x_dim, emission=self.emission,
                               emission_kwargs=self.emission_kwargs, **model_kwargs)
        if model.has_latents and model.latent_family != "gaussian" \
                and self.elbo in ("meanfield", "iwae"):
            raise ConfigError(f"elbo={self.elbo!r} needs reparameterised latents; "
                              f"{type(model).__name__}'s are {model.latent_family}: use 'trace' "
                              "or 'tracegraph'")
        if self.valid_estimator == "smc" and not model.has_latents:
            raise ConfigError(f"valid_estimator='smc' runs SMC over latent variables; "
                              f"{type(model).__name__} has none (use 'elbo')")
        if self.elbo == "rws" and not model.has_latents:
            raise ConfigError(f"elbo='rws' trains a guide of latent variables; "
                              f"{type(model).__name__} has none (use 'trace')")
        guide_name = self.guide if self.guide is not None else default_guide_name(model)
        if guide_config is not None:
            return model, _call(make_guide, "guide_config", guide_name, model, **guide_config)
        guide_kwargs = dict(self.guide_kwargs)
        if guide_name.lower() not in ("none", "empty"):
            guide_kwargs["residual"] = self.residual
            if self.baseline != "none":
                guide_kwargs["baseline"] = self.baseline
        elif self.residual:
            raise ConfigError("residual=True needs a latent model and a filter or smooth guide")
        return model, make_guide(guide_name, model, **guide_kwargs)

    def kl_schedule(self, updates_per_epoch: int):
        """The run's :class:`~pyro_seqvae.infer.LinearKLSchedule`."""
        increment = self.beta_increment
        if increment is None:
            total = max(1, self.epochs * updates_per_epoch)
            increment = max(PAPER_BETA_INCREMENT, (1.0 - self.beta_start) / (0.5 * total))
        return LinearKLSchedule(self.beta_start, increment)

    def load_data(self, *, cache_dir=None, progress=True, normalisation=None):
        """Load this run's data (with a checkpoint's ``normalisation`` where it has one)."""
        from ..data import load_dataset
        from ..data.support import check_emission_support

        options = dict(self.data_options)
        if normalisation is not None:
            options["normalisation"] = normalisation
        splits = load_dataset(self.data, kind=self.data_kind, limit=self.limit,
                              cache_dir=cache_dir, progress=progress, **options)
        check_emission_support(splits, self.emission, self.emission_kwargs)
        return splits

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}")
        return cls(**data)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
