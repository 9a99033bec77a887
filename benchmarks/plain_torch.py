"""Plain PyTorch VRNN and SRNN with the library's layer shapes, for ``speed.py``.

Each ``elbo(x, mask, beta)`` is the single-sample reparameterised ELBO that ``Trace_ELBO``
computes for the library's model/guide pair: ``sum_t mask_t [log p(x_t | .) - beta *
(log q(z_t | .) - log p(z_t | .))]`` with ``z_t`` sampled from q (a sampled KL, not analytic).
Every hidden unit is the library's default, the SRNN paper's leaky ReLU (slope 1/3) clamped to
[-3, 3], and log-variances are bounded softly as in ``pyro_seqvae.layers``. The recurrence is
run once (q and p read the same states); ``two_pass=True`` runs it a second
time for p, as a Pyro model/guide pair does, to measure the cost of that duplication alone.

Shapes (music size: ``Z=100, H=300, N=500``), as in ``pyro_seqvae.models`` and ``guides``:

- VRNN: ``phi_x`` 88->500, ``phi_z`` 100->500, GRUCell(1000, 300), prior 300->500->100 (x2),
  decoder 800->500->88, encoder (FilteringGuide head) 800->500->100 (x2);
- SRNN: GRU(88, 300) over ``x_{t-1}``, prior 400->500->100 (x2), decoder 400->500->88; smoothing
  guide: backward GRU(388, 300) within each length, head 400->500->100 (x2), Res_q mean.

``log_weights(x, mask, K)`` is the plain importance sampler of the same networks (``is_speed.py``):
``K`` particles per sequence drawn from the guide, all of them at once (leading dim ``K``), the
log weight ``sum_t mask_t [log p(x_t | .) + log p(z_t | .) - log q(z_t | .)]`` accumulated step by
step (emission included), written as one would by hand: no trace, no stored states.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class ClampedLeakyReLU(nn.Module):
    """The SRNN paper's hidden unit: leaky ReLU of slope 1/3, clamped to [-3, 3]."""

    def forward(self, x):
        return F.leaky_relu(x, 1.0 / 3.0).clamp(-3.0, 3.0)


def mlp(i, h, o=None):
    layers = [nn.Linear(i, h), ClampedLeakyReLU()]
    if o is not None:
        layers.append(nn.Linear(h, o))
    return nn.Sequential(*layers)


def bounded_logvar(v):
    """The library's soft bound of a log-variance to (LOGVAR_MIN, LOGVAR_MAX)."""
    return LOGVAR_MAX - F.softplus(LOGVAR_MAX - (LOGVAR_MIN + F.softplus(v - LOGVAR_MIN, beta=2.0)),
                                   beta=2.0)


class Head(nn.Module):
    """``loc = NN1(in)``, ``scale = exp(bound(NN2(in)) / 2)``."""

    def __init__(self, i, z, h):
        super().__init__()
        self.loc = mlp(i, h, z)
        self.logvar = mlp(i, h, z)

    def scale(self, inputs):
        return (0.5 * bounded_logvar(self.logvar(inputs))).exp()


def normal_log_prob(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - _HALF_LOG_2PI).sum(-1)


def bernoulli_log_prob(logits, x):
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def reverse_padded(x, lengths):
    T = x.shape[1]
    steps = torch.arange(T, device=x.device).expand(x.shape[0], T)
    lengths = lengths.unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def masked(value, real):
    return torch.where(real, value, value.new_zeros(()))


class PlainVRNN(nn.Module):
    def __init__(self, x_dim=88, *, z_dim=100, rnn_dim=300, hidden_dim=500):
        super().__init__()
        self.phi_x = mlp(x_dim, hidden_dim)
        self.phi_z = mlp(z_dim, hidden_dim)
        self.cell = nn.GRUCell(2 * hidden_dim, rnn_dim)
        self.prior = Head(rnn_dim, z_dim, hidden_dim)
        self.encoder = Head(hidden_dim + rnn_dim, z_dim, hidden_dim)
        self.decoder = mlp(hidden_dim + rnn_dim, hidden_dim, x_dim)
        self.rnn_dim = rnn_dim

    def elbo(self, x, mask, beta=1.0, *, two_pass=False):
        B, T, _ = x.shape
        px = self.phi_x(x)
        h = x.new_zeros(B, self.rnn_dim)
        hs, fz, log_q, log_p, zs = [], [], [], [], []
        for t in range(T):
            enc_in = torch.cat([px[:, t], h], -1)
            q_loc, q_scale = self.encoder.loc(enc_in), self.encoder.scale(enc_in)
            z = q_loc + q_scale * torch.randn_like(q_loc)
            log_q.append(normal_log_prob(z, q_loc, q_scale))
            if not two_pass:
                log_p.append(normal_log_prob(z, self.prior.loc(h), self.prior.scale(h)))
            hs.append(h)
            zs.append(z)
            f = self.phi_z(z)
            fz.append(f)
            h = self.cell(torch.cat([px[:, t], f], -1), h)
        if two_pass:  # the model's own pass over the guide's samples
            h = x.new_zeros(B, self.rnn_dim)
            hs, fz = [], []
            for t in range(T):
                z = zs[t]
                log_p.append(normal_log_prob(z, self.prior.loc(h), self.prior.scale(h)))
                hs.append(h)
                f = self.phi_z(z)
                fz.append(f)
                h = self.cell(torch.cat([px[:, t], f], -1), h)
        logits = self.decoder(torch.cat([torch.stack(fz, 1), torch.stack(hs, 1)], -1))
        kl = torch.stack(log_q, 1) - torch.stack(log_p, 1)
        return ((bernoulli_log_prob(logits, x) - beta * kl) * mask).sum()


    @torch.no_grad()
    def log_weights(self, x, mask, num_particles):
        """``[K, B]`` importance log weights with the VRNN encoder as proposal."""
        K, (B, T, _) = num_particles, x.shape
        px = self.phi_x(x)
        h = x.new_zeros(K, B, self.rnn_dim)
        log_w = x.new_zeros(K, B)
        for t in range(T):
            px_t = px[:, t].expand(K, B, px.shape[-1])
            enc_in = torch.cat([px_t, h], -1)
            q_loc, q_scale = self.encoder.loc(enc_in), self.encoder.scale(enc_in)
            z = q_loc + q_scale * torch.randn_like(q_loc)
            f = self.phi_z(z)
            logits = self.decoder(torch.cat([f, h], -1))
            step = (bernoulli_log_prob(logits, x[:, t].expand_as(logits))
                    + normal_log_prob(z, self.prior.loc(h), self.prior.scale(h))
                    - normal_log_prob(z, q_loc, q_scale))
            log_w += masked(step, mask[:, t])
            h = self.cell(torch.cat([px_t, f], -1).reshape(K * B, -1),
                          h.reshape(K * B, -1)).reshape(K, B, -1)
        return log_w


class PlainSRNN(nn.Module):
    def __init__(self, x_dim=88, *, z_dim=100, rnn_dim=300, hidden_dim=500):
        super().__init__()
        self.rnn = nn.GRU(x_dim, rnn_dim, batch_first=True)
        self.prior = Head(z_dim + rnn_dim, z_dim, hidden_dim)
        self.decoder = mlp(z_dim + rnn_dim, hidden_dim, x_dim)
        self.backward_rnn = nn.GRU(rnn_dim + x_dim, rnn_dim, batch_first=True)
        self.head = Head(rnn_dim + z_dim, z_dim, hidden_dim)
        self.z_dim = z_dim

    def elbo(self, x, mask, beta=1.0, *, two_pass=False):
        B, T, _ = x.shape
        u = torch.cat([x.new_zeros(B, 1, x.shape[-1]), x[:, :-1]], 1)
        d, _ = self.rnn(u)
        lengths = mask.sum(-1)
        a, _ = self.backward_rnn(reverse_padded(torch.cat([d, x], -1), lengths))
        a = reverse_padded(a, lengths)
        z_prev = x.new_zeros(B, self.z_dim)
        zs, log_q, log_p = [], [], []
        for t in range(T):
            p_in = torch.cat([z_prev, d[:, t]], -1)
            p_loc = self.prior.loc(p_in)
            q_in = torch.cat([a[:, t], z_prev], -1)
            q_loc, q_scale = self.head.loc(q_in) + p_loc, self.head.scale(q_in)
            z = q_loc + q_scale * torch.randn_like(q_loc)
            log_q.append(normal_log_prob(z, q_loc, q_scale))
            if not two_pass:
                log_p.append(normal_log_prob(z, p_loc, self.prior.scale(p_in)))
            zs.append(z)
            z_prev = z
        if two_pass:  # the model's own pass: d_t again, then the prior step by step
            d, _ = self.rnn(u)
            z_prev = x.new_zeros(B, self.z_dim)
            for t in range(T):
                p_in = torch.cat([z_prev, d[:, t]], -1)
                log_p.append(normal_log_prob(zs[t], self.prior.loc(p_in),
                                             self.prior.scale(p_in)))
                z_prev = zs[t]
        logits = self.decoder(torch.cat([torch.stack(zs, 1), d], -1))
        kl = torch.stack(log_q, 1) - torch.stack(log_p, 1)
        return ((bernoulli_log_prob(logits, x) - beta * kl) * mask).sum()

    @torch.no_grad()
    def log_weights(self, x, mask, num_particles):
        """``[K, B]`` importance log weights with the smoothing guide + Res_q as proposal."""
        K, (B, T, _) = num_particles, x.shape
        u = torch.cat([x.new_zeros(B, 1, x.shape[-1]), x[:, :-1]], 1)
        d, _ = self.rnn(u)
        lengths = mask.sum(-1)
        a, _ = self.backward_rnn(reverse_padded(torch.cat([d, x], -1), lengths))
        a = reverse_padded(a, lengths)
        z_prev = x.new_zeros(K, B, self.z_dim)
        log_w = x.new_zeros(K, B)
        for t in range(T):
            d_t = d[:, t].expand(K, B, d.shape[-1])
            p_in = torch.cat([z_prev, d_t], -1)
            p_loc = self.prior.loc(p_in)
            q_in = torch.cat([a[:, t].expand(K, B, a.shape[-1]), z_prev], -1)
            q_loc, q_scale = self.head.loc(q_in) + p_loc, self.head.scale(q_in)
            z = q_loc + q_scale * torch.randn_like(q_loc)
            logits = self.decoder(torch.cat([z, d_t], -1))
            step = (bernoulli_log_prob(logits, x[:, t].expand_as(logits))
                    + normal_log_prob(z, p_loc, self.prior.scale(p_in))
                    - normal_log_prob(z, q_loc, q_scale))
            log_w += masked(step, mask[:, t])
            z_prev = z
        return log_w


def copy_mlp(src, dst: nn.Sequential):
    """Copy a library ``MLP``'s linear layers into a plain ``nn.Sequential`` of the same shape."""
    src_linear = [m for m in src.layers if isinstance(m, nn.Linear)]
    dst_linear = [m for m in dst if isinstance(m, nn.Linear)]
    assert len(src_linear) == len(dst_linear)
    for a, b in zip(src_linear, dst_linear):
        b.load_state_dict(a.state_dict())


def copy_head(src, dst: Head):
    copy_mlp(src.loc_net, dst.loc)
    copy_mlp(src.logvar_net, dst.logvar)


def load_library_weights(plain, model, guide):
    """Copy the weights of the library's VRNN + FilteringGuide or SRNN + SmoothingGuide(Res_q)
    into their plain twin, so that both compute the same function."""
    if isinstance(plain, PlainVRNN):
        copy_mlp(model.phi_x, plain.phi_x)
        copy_mlp(model.phi_z, plain.phi_z)
        plain.cell.load_state_dict(model.cell.cell.state_dict())
        copy_head(model.prior_net, plain.prior)
        copy_head(guide.head, plain.encoder)
        copy_mlp(model.decoder, plain.decoder)
    else:
        plain.rnn.load_state_dict(model.rnn.rnn.state_dict())
        copy_head(model.prior_net, plain.prior)
        copy_mlp(model.decoder, plain.decoder)
        plain.backward_rnn.load_state_dict(guide.backward_rnn.rnn.state_dict())
        copy_head(guide.head, plain.head)
    return plain

class PlainTSBN(nn.Module):
    """The TSBN with the paper's linear recognition model, trained by reweighted wake-sleep,
    written by hand (``rws_speed.py``): the twin of ``TSBN(88, z_dim=100)`` +
    ``FilteringGuide(model, hidden_layers=0)`` + ``ReweightedWakeSleep(K)``.

    ``rws_losses(x, mask, K)`` draws ``K`` latent paths per sequence from ``q`` step by step
    without autograd, scores ``log q``, ``log p(z)`` and ``log p(x | z)`` in one batched call
    each, and returns the two losses of RWS: ``-sum_b L_K`` (the model's, IWAE with the samples
    fixed) and ``-sum_b sum_k w~_k log q(z^k)`` (the guide's, wake-phi).
    """

    def __init__(self, x_dim=88, *, z_dim=100):
        super().__init__()
        self.prior_z = nn.Linear(z_dim, z_dim, bias=False)  # W1
        self.prior_x = nn.Linear(x_dim, z_dim)  # W3, b
        self.decoder_z = nn.Linear(z_dim, x_dim)  # W2, c
        self.decoder_x = nn.Linear(x_dim, x_dim, bias=False)  # W4
        self.q_z = nn.Linear(z_dim, z_dim, bias=False)  # U1
        self.q_x = nn.Linear(2 * x_dim, z_dim)  # U3, U2, d on [x_{t-1}, x_t]

    def model_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("q_")]

    def guide_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith("q_")]

    def rws_losses(self, x, mask, K):
        B, T, _ = x.shape
        u = torch.cat([x.new_zeros(B, 1, x.shape[-1]), x[:, :-1]], dim=1)  # x_{t-1}
        static = self.q_x(torch.cat([u, x], dim=-1))  # [B, T, Z]
        with torch.no_grad():
            z_t = x.new_zeros(K, B, static.shape[-1])
            draws = []
            for t in range(T):
                z_t = torch.bernoulli(torch.sigmoid(static[:, t] + self.q_z(z_t)))
                draws.append(z_t)
        z = torch.stack(draws, dim=-2)  # [K, B, T, Z]
        z_prev = torch.cat([torch.zeros_like(z[..., :1, :]), z[..., :-1, :]], dim=-2)
        real = mask.to(x.dtype)
        log_q = (bernoulli_log_prob(static + self.q_z(z_prev), z) * real).sum(-1)
        log_z = (bernoulli_log_prob(self.prior_x(u) + self.prior_z(z_prev), z) * real).sum(-1)
        logits = self.decoder_z(z) + self.decoder_x(u)
        log_x = (bernoulli_log_prob(logits, x.expand_as(logits)) * real).sum(-1)
        log_w = log_z + log_x - log_q.detach()
        bound = torch.logsumexp(log_w, 0) - math.log(K)
        weights = torch.softmax(log_w.detach(), 0)
        return -bound.sum(), -(weights * log_q).sum()


def load_library_tsbn_weights(plain, model, guide):
    """Copy the weights of the library's ``TSBN`` + ``FilteringGuide(model, hidden_layers=0)``
    into ``PlainTSBN``: the guide's linear head reads ``[x_{t-1}, x_t, z_{t-1}]``."""
    with torch.no_grad():
        plain.prior_z.weight.copy_(model.prior_z[0].weight)
        plain.prior_x.load_state_dict(model.prior_x.state_dict())
        plain.decoder_z.load_state_dict(model.decoder_z.state_dict())
        plain.decoder_x.load_state_dict(model.decoder_x.state_dict())
        head = guide.head.logit_net.layers[0]
        split = plain.q_x.in_features
        plain.q_x.weight.copy_(head.weight[:, :split])
        plain.q_x.bias.copy_(head.bias)
        plain.q_z.weight.copy_(head.weight[:, split:])
    return plain
