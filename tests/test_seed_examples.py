"""Every code example of the seed blog post, reproduced with jaxmath.

Each test computes the example with jaxmath and with an independent reference
run here (SciPy, scikit-learn, PyTorch, NumPy), asserts they agree, and checks
the seed's printed output against the reference: where the seed is wrong the
test asserts that it is, and docs/errata.md gives the evidence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import log_loss, mean_squared_error
from sklearn.naive_bayes import GaussianNB as SkGaussianNB

import jaxmath as jm
from jaxmath.run import tour
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL

SEED_PRINT_TOL = 1e-4  # the seed prints 4 to 16 digits


def assert_close(ours, ref, rtol=F32_RTOL, atol=F32_ATOL):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=rtol, atol=atol)


def seed_is_right(printed, ref) -> bool:
    return bool(np.allclose(printed, ref, rtol=SEED_PRINT_TOL, atol=SEED_PRINT_TOL))


def test_bayes_disease_test():
    ref = (0.99 * 0.01) / (0.99 * 0.01 + 0.02 * (1 - 0.01))
    assert_close(jm.bayes_theorem(0.01, 0.99, 0.02), ref)
    assert seed_is_right(0.3333, ref)


def test_entropy_coins():
    assert_close(jm.entropy(jnp.array([0.5, 0.5])), scipy.stats.entropy([0.5, 0.5]))
    assert seed_is_right(0.6931471805599453, scipy.stats.entropy([0.5, 0.5]))
    ref = scipy.stats.entropy([0.9, 0.1])
    assert_close(jm.entropy(jnp.array([0.9, 0.1])), ref)
    # Erratum 1: the seed prints 0.4698716731013394, neither nats (0.3251) nor bits (0.4690).
    assert not seed_is_right(0.4698716731013394, ref)
    assert not seed_is_right(0.4698716731013394, scipy.stats.entropy([0.9, 0.1], base=2))
    assert_close(jm.entropy(jnp.array([0.9, 0.1]), base=2),
                 scipy.stats.entropy([0.9, 0.1], base=2))


def test_entropy_with_zero_probability():
    # Erratum 2: the seed's np.log(p, where=p > 0) leaves uninitialised memory where p = 0.
    assert_close(jm.entropy(jnp.array([0.0, 1.0])), 0.0)
    assert_close(jm.entropy(jnp.array([0.0, 0.5, 0.5])), scipy.stats.entropy([0.0, 0.5, 0.5]))


def test_gaussian_naive_bayes_example():
    X = np.array([[1, 2], [2, 3], [3, 4], [4, 5]], float)
    y = np.array([0, 0, 1, 1])
    sk = SkGaussianNB().fit(X, y)
    model = jm.GaussianNB.fit(X, y)
    x = np.array([[2.5, 3.5]])
    assert_close(model.predict_proba(x), sk.predict_proba(x), atol=F32_LOOSE)
    # Erratum 3: [2.5, 3.5] is equidistant from both class means: an exact tie
    # (probabilities 0.5 / 0.5); scikit-learn and jaxmath break it to class 0, the seed says [1].
    assert_close(sk.predict_proba(x), [[0.5, 0.5]])
    np.testing.assert_array_equal(sk.predict(x), [0])
    np.testing.assert_array_equal(model.predict(x), [0])
    # Off the tie, both agree with the seed's intent.
    np.testing.assert_array_equal(model.predict(np.array([[3.0, 4.0]])), [1])


def test_kl_divergence_example():
    ref = scipy.stats.entropy([0.7, 0.3], [0.5, 0.5])
    assert_close(jm.kl_divergence(jnp.array([0.7, 0.3]), jnp.array([0.5, 0.5])), ref)
    assert seed_is_right(0.08228287850505156, ref)


def test_binary_cross_entropy_example():
    y_true, y_pred = [1.0, 0.0, 1.0], [0.9, 0.1, 0.8]
    ref = log_loss(y_true, y_pred)
    torch_ref = torch.nn.functional.binary_cross_entropy(
        torch.tensor(y_pred, dtype=torch.float64), torch.tensor(y_true, dtype=torch.float64))
    assert_close(ref, torch_ref.item(), rtol=1e-12)
    assert_close(jm.binary_cross_entropy(jnp.array(y_true), jnp.array(y_pred)), ref)
    # Erratum 4: the seed prints 0.164252033486018; the mean is 0.144621527543287.
    assert not seed_is_right(0.164252033486018, ref)


def test_linear_map_example():
    A, x, b = np.array([[2, 1], [1, 3]]), np.array([1, 2]), np.array([0, 1])
    ref = A @ x + b
    assert_close(jm.linear(jnp.asarray(A, float), jnp.asarray(x, float), jnp.asarray(b, float)),
                 ref)
    # Erratum 5: the seed prints [4 7]; A x = [4, 7] and adding b = [0, 1] gives [4, 8].
    assert not seed_is_right([4, 7], ref)
    np.testing.assert_array_equal(ref, [4, 8])


def test_eigen_example():
    A = np.array([[4.0, 2.0], [1.0, 3.0]])
    w, v = jm.eig(jnp.asarray(A))
    ref_w = np.linalg.eigvals(A)
    assert_close(np.sort(np.asarray(w).real), np.sort(ref_w.real), atol=F32_LOOSE)
    # A v = λ v for every pair.
    assert_close(A @ np.asarray(v), np.asarray(v) * np.asarray(w)[None, :], atol=F32_LOOSE)


def test_svd_example():
    A = np.array([[1.0, 2], [3, 4], [5, 6]])
    U, S, Vt = jm.svd(jnp.asarray(A))
    assert (U.shape, S.shape, Vt.shape) == ((3, 3), (2,), (2, 2))
    assert_close(S, np.linalg.svd(A, compute_uv=False), rtol=F32_LOOSE)
    assert_close(np.asarray(U[:, :2]) * np.asarray(S) @ np.asarray(Vt), A, atol=F32_LOOSE)


def test_gradient_descent_example():
    X = np.array([[1.0, 1], [1, 2], [1, 3]])
    y = np.array([1.0, 2, 3])
    ref = tour.numpy_gradient_descent(X, y)
    assert_close(tour._gd_jaxmath(), ref, atol=F32_LOOSE)
    # Erratum 6: after 1000 steps at η = 0.01 the seed's loop has not converged to the
    # least-squares solution [0, 1]: the slow eigenvalue of XᵀX/m is 0.12, so the error
    # shrinks only by (1 - 0.0012)^1000 ≈ 0.30.
    np.testing.assert_allclose(np.linalg.lstsq(X, y, rcond=None)[0], [0, 1], atol=1e-12)
    assert not seed_is_right([0.0, 1.0], ref)
    assert_close(ref, [0.1107, 0.9513], atol=1e-4)


def test_backprop_example_matches_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid()).double()
    W0 = model[0].weight.detach().numpy().copy()
    b0 = model[0].bias.detach().numpy().copy()
    X = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    opt.zero_grad()
    loss = torch.nn.MSELoss()(model(X), y)
    loss.backward()
    opt.step()
    ref = tour._np_backprop_step(W0, b0, X.numpy(), y.numpy())
    assert_close(ref[0], loss.item(), rtol=1e-12)
    assert_close(ref[1], model[0].weight.detach().numpy(), rtol=1e-12)
    # jaxmath stores a dense layer's W as [in, out] (x @ W); torch stores [out, in].
    dW, db = jm.dense_sigmoid_mse_grads(jnp.asarray(W0.T), jnp.asarray(b0), X.numpy(), y.numpy())
    assert_close(W0 - 0.01 * np.asarray(dW).T, model[0].weight.detach().numpy())
    assert_close(b0 - 0.01 * np.asarray(db), model[0].bias.detach().numpy())


def test_mse_example():
    ref = mean_squared_error([1, 2, 3], [1.1, 1.9, 3.2])
    assert_close(jm.mse(jnp.array([1.0, 2, 3]), jnp.array([1.1, 1.9, 3.2])), ref)
    # Erratum 7: the squared errors are 0.01, 0.01 and 0.04: the mean is 0.02, not 0.01.
    assert not seed_is_right(0.01, ref)


def test_diffusion_forward_matches_torch():
    torch.manual_seed(0)
    x_0 = torch.tensor([1.0])
    alpha_t = 0.9
    noise = torch.randn_like(x_0)
    x_t = torch.sqrt(torch.tensor(alpha_t)) * x_0 + torch.sqrt(torch.tensor(1 - alpha_t)) * noise
    ours = jm.forward_diffuse(jnp.asarray(x_0.numpy()), alpha_t, jnp.asarray(noise.numpy()))
    assert_close(ours, x_t.numpy())


def test_conv2d_example_matches_torch():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, kernel_size=3)
    image = torch.randn(1, 1, 28, 28)
    ref = conv(image).detach().numpy()
    assert ref.shape == (1, 1, 26, 26)
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    out = jm.conv2d(image.numpy().transpose(0, 2, 3, 1), kernel)
    out = np.asarray(out) + conv.bias.detach().numpy()
    assert out.shape == (1, 26, 26, 1)
    assert_close(out.transpose(0, 3, 1, 2), ref, atol=F32_LOOSE)


def test_softmax_example():
    z = np.array([1.0, 2.0, 3.0])
    ref = torch.softmax(torch.tensor(z), dim=0).numpy()
    assert_close(jm.softmax(jnp.asarray(z)), ref)
    assert seed_is_right([0.09003057, 0.24472847, 0.66524096], ref)


def test_attention_example_matches_torch():
    Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    K = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    V = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    scores = Q @ K.T / torch.sqrt(torch.tensor(2.0))
    ref = torch.softmax(scores, dim=-1) @ V  # the seed's own function
    ours = jm.attention(jnp.asarray(Q.numpy()), jnp.asarray(K.numpy()), jnp.asarray(V.numpy()))
    assert_close(ours, ref.numpy())


@pytest.mark.parametrize("example", tour.EXAMPLES, ids=lambda e: e.name)
def test_tour_rows_agree_with_their_reference(example):
    assert tour.close(example.jaxmath(), example.reference())


def test_tour_runs(capsys):
    assert tour.main() == 0
    out = capsys.readouterr().out
    assert f"{len(tour.EXAMPLES)}/{len(tour.EXAMPLES)} examples agree" in out
    assert out.count("WRONG") == 6
    assert jax.devices()[0].platform in out
