import numpy as np
import pytest
from scipy.stats import spearmanr

from benchmarks.ranking import benchmark_against_choix, simulate_rankings
from cmr_assets.labels.plackett_luce import _PenalisedLikelihood, fit_plackett_luce


def planted(n_items: int, n_batches: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    true_scores = np.random.default_rng(seed).normal(scale=1.5, size=n_items)
    return true_scores, simulate_rankings(true_scores, n_batches, seed + 1)


def test_recovers_planted_ordering_with_noise():
    true_scores, rankings = planted(300, 450)
    fit = fit_plackett_luce(rankings, 300)
    assert fit.converged
    assert spearmanr(fit.scores, true_scores).statistic >= 0.95
    assert abs(fit.scores.mean()) < 1e-9


def test_score_increases_toward_the_apex():
    # item 0 always most basal, item 7 always most apical
    rankings = np.tile(np.arange(8), (20, 1))
    fit = fit_plackett_luce(rankings, 8)
    assert np.all(np.diff(fit.scores) > 0)


def test_agrees_with_choix_at_small_size():
    import choix

    true_scores, rankings = planted(200, 150, seed=3)
    ours = fit_plackett_luce(rankings, 200, alpha=0.01)
    theirs = -choix.ilsr_rankings(200, rankings.tolist(), alpha=0.01 / 200, tol=1e-8)
    assert spearmanr(ours.scores, theirs).statistic > 0.99


def test_benchmark_reports_both_fits_and_skips_choix_when_too_large():
    small = benchmark_against_choix(120, 60, seed=0)
    assert small["choix_seconds"] is not None and small["spearman_ours_vs_choix"] > 0.9
    assert small["ours_spearman_vs_truth"] > 0.8
    large = benchmark_against_choix(400, 100, seed=0, choix_max_items=300)
    assert large["choix_seconds"] is None and "dense" in large["choix_skipped_reason"]


def test_standard_errors_shrink_with_more_data():
    true_scores = np.random.default_rng(5).normal(size=200)
    few = fit_plackett_luce(simulate_rankings(true_scores, 75, 6), 200)
    many = fit_plackett_luce(simulate_rankings(true_scores, 600, 6), 200)
    ratio = np.median(few.standard_errors) / np.median(many.standard_errors)
    assert 2.0 < ratio < 3.5  # 8x the views: ~sqrt(8) = 2.8


def test_standard_errors_close_to_exact_inverse_hessian():
    true_scores, rankings = planted(150, 120, seed=7)
    fit = fit_plackett_luce(rankings, 150)
    _, hessian = _PenalisedLikelihood(rankings, 150, 0.01).gradient_and_hessian(-fit.scores)
    centring = np.eye(150) - 1 / 150  # the scores are centred: their covariance is C H^-1 C
    exact = np.sqrt(np.diag(centring @ np.linalg.inv(hessian.toarray()) @ centring))
    assert np.median(fit.standard_errors / exact) == pytest.approx(1.0, abs=0.06)


def test_gradient_matches_finite_differences():
    _, rankings = planted(30, 20, seed=2)
    likelihood = _PenalisedLikelihood(rankings, 30, 0.01)
    b = np.random.default_rng(0).normal(size=30)
    grad, hessian = likelihood.gradient_and_hessian(b)
    step = 1e-6
    numeric = np.array([(likelihood.objective(b + step * e) - likelihood.objective(b - step * e)) / (2 * step)
                        for e in np.eye(30)])
    np.testing.assert_allclose(grad, numeric, atol=1e-5)
    direction = np.random.default_rng(1).normal(size=30)
    grad_ahead, _ = likelihood.gradient_and_hessian(b + step * direction)
    np.testing.assert_allclose(hessian @ direction, (grad_ahead - grad) / step, atol=1e-4)


def test_hessian_product_and_diagonal_match_the_sparse_hessian():
    _, rankings = planted(40, 60, seed=4)
    likelihood = _PenalisedLikelihood(rankings, 45, 0.01)  # items 40-44 never ranked
    b = np.random.default_rng(2).normal(size=45)
    grad, hessian = likelihood.gradient_and_hessian(b)
    grad_op, operator, diagonal = likelihood.gradient_and_hessian_operator(b)
    np.testing.assert_allclose(grad_op, grad)
    np.testing.assert_allclose(diagonal, hessian.diagonal())
    v = np.random.default_rng(3).normal(size=45)
    np.testing.assert_allclose(operator @ v, hessian @ v, atol=1e-12)


def test_extreme_scores_stay_finite_and_unseen_items_get_prior_se():
    rankings = np.tile(np.arange(8), (200, 1))
    fit = fit_plackett_luce(rankings, 10, alpha=1e-4)
    assert np.all(np.isfinite(fit.scores)) and np.all(np.isfinite(fit.standard_errors))
    assert fit.standard_errors[9] == pytest.approx(1 / np.sqrt(1e-4))


@pytest.mark.parametrize(
    ("rankings", "message"),
    [
        (np.array([[0, 1, 1]]), "same item twice"),
        (np.array([[0, 1, 5]]), "outside"),
        (np.array([0, 1, 2]), "shape"),
        (np.array([[0.0, 1.0]]), "integer"),
    ],
)
def test_rejects_malformed_rankings(rankings, message):
    with pytest.raises(ValueError, match=message):
        fit_plackett_luce(rankings, 5)


@pytest.mark.slow
def test_biobank_size_fit_within_a_minute():
    result = benchmark_against_choix(100_000, 40_000, seed=0)
    assert result["ours_converged"] and result["ours_seconds"] <= 60
    assert result["choix_seconds"] is None
