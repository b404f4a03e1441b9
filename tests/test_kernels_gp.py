import math

import pytest
import torch

from bsatnp.tasks import batch_generator, eval_batches
from bsatnp.tasks.gp import sample_gp
from bsatnp.tasks.gp2d import GP2DTask
from bsatnp.tasks.kernels import KERNELS, distance, get_kernel
from bsatnp.tasks.oracle import gp_posterior
from bsatnp.tasks.priors import Beta, Fixed, LogUniform, Uniform, prior_from_config

HAND = {
    "rbf": lambda r, v, ls: v * math.exp(-0.5 * r**2 / ls**2),
    "matern12": lambda r, v, ls: v * math.exp(-r / ls),
    "matern32": lambda r, v, ls: v * (1 + math.sqrt(3) * r / ls) * math.exp(-math.sqrt(3) * r / ls),
    "matern52": lambda r, v, ls: (
        v * (1 + math.sqrt(5) * r / ls + 5 * r**2 / (3 * ls**2)) * math.exp(-math.sqrt(5) * r / ls)
    ),
    "periodic": lambda r, v, ls: v * math.exp(-2 * math.sin(math.pi * r / 1.0) ** 2 / ls**2),
}

X1 = [[0.0, 0.0], [1.0, 0.0]]
X2 = [[0.0, 0.0], [0.0, 2.0], [3.0, 4.0]]


def test_registry_lists_all_kernels():
    assert set(KERNELS) == set(HAND) | {"matern12_great_circle"}  # tests/test_tasks.py
    with pytest.raises(ValueError, match="unknown kernel"):
        get_kernel("nope")


@pytest.mark.parametrize("name", sorted(HAND))
def test_kernel_values_match_hand_formulas_per_task(name):
    x1 = torch.tensor([X1, X1], dtype=torch.float64)
    x2 = torch.tensor([X2, X2], dtype=torch.float64)
    var, ls = torch.tensor([1.0, 2.5]), torch.tensor([0.7, 1.9])
    out = KERNELS[name](x1, x2, var, ls)
    assert out.shape == (2, 2, 3) and out.dtype == torch.float64
    for b in range(2):
        for i, p in enumerate(X1):
            for j, q in enumerate(X2):
                r = math.dist(p, q)
                expected = HAND[name](r, float(var[b]), float(ls[b]))
                assert out[b, i, j].item() == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_periodic_uses_period():
    x = torch.tensor([[[0.0], [0.5], [2.0]]], dtype=torch.float64)
    out = KERNELS["periodic"](x, x, 1.0, 1.0, period=2.0)
    assert out[0, 0, 2].item() == pytest.approx(1.0)  # one full period apart
    assert out[0, 0, 1].item() == pytest.approx(math.exp(-2 * math.sin(math.pi / 4) ** 2))


def test_distance_is_exact_far_from_origin():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 20, 2, generator=g, dtype=torch.float64)
    near, far = distance(x, x), distance(x + 1e6, x + 1e6)
    assert torch.allclose(near, far, rtol=0, atol=1e-9)
    assert torch.allclose(
        KERNELS["rbf"](x, x, 1.0, 0.05), KERNELS["rbf"](x + 1e6, x + 1e6, 1.0, 0.05), atol=1e-8
    )


@pytest.mark.parametrize("name", sorted(HAND))
def test_kernel_matrices_are_psd(name):
    g = torch.Generator().manual_seed(1)
    dim = 1 if name == "periodic" else 2  # the periodic kernel is PSD on 1-D inputs
    x = 3 * torch.rand(2, 60, dim, generator=g, dtype=torch.float64)
    k = KERNELS[name](x, x, torch.tensor([1.0, 2.0]), torch.tensor([0.3, 1.0]))
    assert torch.allclose(k, k.mT)
    assert torch.linalg.eigvalsh(k).min() > -1e-9


def test_sampler_covariance_matches_kernel():
    n = 4000
    x = torch.tensor([[[0.0], [0.3], [0.7], [2.0]]] * 2, dtype=torch.float64)
    var, ls = torch.tensor([1.5, 0.5]), torch.tensor([0.5, 2.0])
    g = torch.Generator().manual_seed(123)
    f = sample_gp(x, "rbf", var, ls, jitter=0.0, generator=g, n_draws=n)  # [2, 4, n]
    assert f.shape == (2, 4, n)
    k = KERNELS["rbf"](x, x, var, ls)
    emp = f @ f.mT / n
    # Var of the empirical covariance of zero-mean Gaussians: (K_ii K_jj + K_ij^2) / n.
    se = (
        (k.diagonal(dim1=1, dim2=2)[:, :, None] * k.diagonal(dim1=1, dim2=2)[:, None] + k**2) / n
    ).sqrt()
    assert ((emp - k).abs() < 4 * se).all()
    mean_se = (k.diagonal(dim1=1, dim2=2) / n).sqrt()
    assert (f.mean(-1).abs() < 4 * mean_se).all()


def test_sampler_reproducible_and_dtype():
    x = torch.rand(2, 10, 2)

    def draw(seed):
        return sample_gp(x, "matern32", 1.0, 0.5, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (2, 10, 1) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------- priors
def test_priors_ranges_moments_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    n = 20000
    assert torch.equal(Fixed(1.5).sample(3, g), torch.full((3,), 1.5, dtype=torch.float64))
    u = Uniform(1.0, 3.0).sample(n, g)
    assert u.min() >= 1.0 and u.max() < 3.0 and abs(u.mean().item() - 2.0) < 0.02
    lu = LogUniform(0.01, 1.0).sample(n, g)
    assert lu.min() >= 0.01 and lu.max() < 1.0
    assert abs(lu.log().mean().item() - 0.5 * math.log(0.01)) < 0.05
    beta = Beta(3.0, 7.0).sample(n, g)
    sd = math.sqrt(21 / (100 * 11))
    assert 0 < beta.min() and beta.max() < 1
    assert abs(beta.mean().item() - 0.3) < 5 * sd / math.sqrt(n)
    assert abs(beta.std().item() - sd) < 0.01
    small = Beta(0.5, 0.5).sample(n, g)
    assert abs(small.mean().item() - 0.5) < 5 * math.sqrt(0.125 / n)
    for prior in (Uniform(0, 1), LogUniform(0.1, 1), Beta(3, 7)):
        a = prior.sample(5, torch.Generator().manual_seed(7))
        b = prior.sample(5, torch.Generator().manual_seed(7))
        assert torch.equal(a, b)


def test_prior_from_config():
    assert prior_from_config({"beta": [3, 7]}) == Beta(3.0, 7.0)
    assert prior_from_config({"fixed": 1.0}) == Fixed(1.0)
    assert prior_from_config({"uniform": (0.1, 2)}) == Uniform(0.1, 2.0)
    assert prior_from_config({"loguniform": [0.01, 1]}) == LogUniform(0.01, 1.0)


@pytest.mark.parametrize(
    "config",
    [
        {},
        [3, 7],
        {"weibull": [1, 2]},
        {"gamma": [0, 2]},
        {"invgamma": [3]},
        {"beta": [3]},
        {"beta": "37"},
        {"beta": [0, 1]},
        {"fixed": "a"},
        {"fixed": [1.0]},
        {"uniform": [2, 1]},
        {"loguniform": [0, 1]},
        {"fixed": 1.0, "beta": [1, 2]},
    ],
)
def test_bad_prior_config_raises(config):
    with pytest.raises(ValueError):
        prior_from_config(config)


# ---------------------------------------------------------------------------- 2D GP
@pytest.fixture(scope="module")
def sampled():
    return GP2DTask().draw(torch.Generator().manual_seed(0))


def test_gp2d_shapes_masks_and_params(sampled):
    batch, params = sampled
    batch.validate(required_roles=("s",), need_f_test=True)
    assert batch.s_ctx.shape == (8, 512, 2) and batch.f_ctx.shape == (8, 512, 1)
    assert batch.s_test.shape == (8, 1024, 2) and batch.f_test.shape == (8, 1024, 1)
    assert batch.mask_ctx.shape == (8, 512) and batch.mask_ctx.dtype == torch.bool
    for t in (batch.s_ctx, batch.f_ctx, batch.s_test, batch.f_test):
        assert t.dtype == torch.float32
    counts = batch.mask_ctx.sum(1)
    assert ((counts >= 128) & (counts <= 511)).all()
    prefix = torch.arange(512)[None] < counts[:, None]
    assert torch.equal(batch.mask_ctx, prefix)  # valid slots come first
    s_all = torch.cat([batch.s_ctx, batch.s_test], 1)
    assert s_all.min() >= -2 and s_all.max() <= 2
    # Locations are shared by the tasks, each task with its own permutation.
    keyed = s_all[..., 0] * 10 + s_all[..., 1]
    assert torch.equal(keyed.sort(1).values, keyed[:1].sort(1).values.expand(8, -1))
    assert not torch.equal(s_all[0], s_all[1])
    assert params.kernel == "rbf" and params.noise == 0.1
    assert params.var.shape == (8,) and torch.equal(params.var, torch.ones(8, dtype=torch.float64))
    assert params.lengthscale.shape == (8,) and (params.lengthscale == params.lengthscale[0]).all()
    assert 0 < params.lengthscale[0] < 1


def test_gp2d_valid_counts_cover_range():
    task = GP2DTask(batch_size=64, n_ctx=8, n_test=4, min_ctx=2, max_ctx=7)
    g = torch.Generator().manual_seed(0)
    counts = torch.cat([task.sample(g).mask_ctx.sum(1) for _ in range(5)])
    assert counts.min() == 2 and counts.max() == 7


def test_gp2d_noise_only_on_context():
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    clean = GP2DTask(noise_std=0.0).sample(g0)
    noisy = GP2DTask().sample(g1)
    assert torch.equal(clean.s_ctx, noisy.s_ctx) and torch.equal(clean.s_test, noisy.s_test)
    assert torch.equal(clean.f_test, noisy.f_test)
    diff = noisy.f_ctx - clean.f_ctx
    assert abs(diff.std().item() - 0.1) < 0.005 and abs(diff.mean().item()) < 0.005


def test_shifted_and_scaled_domains():
    task = GP2DTask().domain("shifted")
    assert (task.box, task.n_ctx, task.n_test, task.min_ctx, task.max_ctx) == (
        (8.0, 12.0),
        512,
        1024,
        128,
        511,
    )
    batch = task.sample(torch.Generator().manual_seed(0))
    s_all = torch.cat([batch.s_ctx, batch.s_test], 1)
    assert s_all.min() >= 8 and s_all.max() <= 12 and s_all.shape == (8, 1536, 2)
    big = GP2DTask(scaled_min_ctx=492).domain("scaled")
    assert (big.box, big.n_ctx, big.n_test, big.min_ctx, big.max_ctx, big.n_points) == (
        (-4.0, 4.0),
        2048,
        4096,
        492,  # PROTOCOLS §1
        2047,
        6144,
    )
    # Sampling the full scaled domain takes seconds; check the box with fewer points.
    small = GP2DTask(n_ctx=16, n_test=32, min_ctx=4, max_ctx=15).domain("scaled")
    assert (small.n_ctx, small.n_test, small.min_ctx, small.max_ctx) == (64, 128, 16, 63)
    batch = small.sample(torch.Generator().manual_seed(0))
    s_all = torch.cat([batch.s_ctx, batch.s_test], 1)
    assert s_all.min() >= -4 and s_all.max() <= 4 and s_all.abs().max() > 2


def test_eval_batches_reproducible():
    task = GP2DTask(n_ctx=32, n_test=64, min_ctx=8, max_ctx=31)

    def collect(seed):
        return [task.draw(batch_generator(seed, i)) for i in range(2)]

    torch.manual_seed(0)
    a = collect(5)
    torch.manual_seed(1)
    torch.rand(10)
    b = collect(5)
    c = collect(6)
    assert len(a) == 2
    for (ba, pa), (bb, pb) in zip(a, b, strict=True):
        for name in ("s_ctx", "f_ctx", "mask_ctx", "s_test", "f_test"):
            assert torch.equal(getattr(ba, name), getattr(bb, name))
        assert torch.equal(pa.lengthscale, pb.lengthscale)
    assert not torch.equal(a[0][0].f_test, c[0][0].f_test)
    assert not torch.equal(a[0][0].f_test, a[1][0].f_test)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_ctx": 0},
        {"max_ctx": 513},
        {"min_ctx": 300, "max_ctx": 200},
        {"box": (1.0, 1.0)},
        {"kernel": "nope"},
        {"noise_std": -0.1},
    ],
)
def test_gp2d_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        GP2DTask(**kwargs)


def _whitened_context_and_one_target(task: GP2DTask, n_batches: int, lengthscale: float):
    """``L⁻¹ [f_ctx; f_test[0]]`` per task, with ``L`` the Cholesky factor of the joint
    covariance these values have under the protocol (computed here from the kernel) for
    ``lengthscale``; ``[n_batches · B, Lc + 1]``."""
    kernel = get_kernel(task.kernel)
    out = []
    for batch, params in (task.draw(batch_generator(3, i)) for i in range(n_batches)):
        s = torch.cat([batch.s_ctx, batch.s_test[:, :1]], 1).double()
        cov = kernel(s, s, params.var, torch.full_like(params.lengthscale, lengthscale))
        cov = cov + task.jitter * torch.eye(s.shape[1], dtype=torch.float64)
        cov[:, : task.n_ctx, : task.n_ctx] += task.noise_std**2 * torch.eye(task.n_ctx)
        values = torch.cat([batch.f_ctx, batch.f_test[:, :1]], 1).double()
        out.append(torch.linalg.solve_triangular(torch.linalg.cholesky(cov), values,
                                                 upper=False)[..., 0])
    return torch.cat(out)


@pytest.mark.parametrize("targets", ["joint", "conditional"])
def test_context_and_each_test_target_have_the_protocol_joint_law(targets):
    # Whitened by the true joint covariance, (noisy context, one test target) must be
    # i.i.d. N(0, 1): the conditional draw keeps this law, which is why per-point metrics
    # keep their expectation. Negative control: the wrong lengthscale is detected.
    task = GP2DTask(n_ctx=4, n_test=2, min_ctx=4, max_ctx=4, box=(-1.0, 1.0),
                    var_prior=Fixed(1.3), lengthscale_prior=Fixed(0.7), noise_std=0.5,
                    targets=targets)
    z = _whitened_context_and_one_target(task, 400, lengthscale=0.7)  # 3200 tasks
    assert torch.allclose(z.T @ z / len(z), torch.eye(5, dtype=torch.float64), atol=0.1)
    assert z.mean(0).abs().max() < 0.1
    wrong = _whitened_context_and_one_target(task, 400, lengthscale=0.35)
    assert (wrong.T @ wrong / len(wrong) - torch.eye(5)).abs().max() > 0.2  # 2× the tolerance


def test_conditional_targets_come_with_their_oracle():
    task = GP2DTask(n_ctx=16, n_test=24, min_ctx=4, max_ctx=15, targets="conditional")
    batch, params = task.draw(torch.Generator().manual_seed(0))
    again, oracle = task.sample_with_oracle(torch.Generator().manual_seed(0))
    assert torch.equal(batch.f_test, again.f_test) and torch.equal(batch.f_ctx, again.f_ctx)
    recomputed = gp_posterior(batch, params)
    assert torch.equal(oracle.mean, recomputed.mean)
    z = (batch.f_test - oracle.mean) / oracle.stddev
    assert z.abs().max() < 6 and z.std() > 0.5  # drawn around the predictive, not on it
    with pytest.raises(ValueError, match="targets"):
        GP2DTask(targets="marginal")


def test_joint_sample_with_oracle_is_sample_plus_posterior():
    task = GP2DTask(n_ctx=16, n_test=24, min_ctx=4, max_ctx=15)
    batch, params = task.draw(torch.Generator().manual_seed(1))
    again, oracle = task.sample_with_oracle(torch.Generator().manual_seed(1))
    assert torch.equal(batch.f_test, again.f_test)
    assert torch.equal(oracle.stddev, gp_posterior(batch, params).stddev)


def test_each_evaluation_batch_has_its_own_seed():
    task = GP2DTask(n_ctx=16, n_test=24, min_ctx=4, max_ctx=15)
    three = list(eval_batches(task, 3, seed=7))
    five = list(eval_batches(task, 5, seed=7))
    for a, b in zip(three, five, strict=False):
        assert torch.equal(a.f_ctx, b.f_ctx)
    direct = task.sample(batch_generator(7, 2))
    assert torch.equal(direct.f_test, five[2].f_test)
    assert not torch.equal(five[0].f_ctx, five[1].f_ctx)
    other_seed = [b.f_ctx for b in eval_batches(task, 5, seed=8)]
    assert not any(torch.equal(b.f_ctx, o) for b, o in zip(five, other_seed, strict=True))
