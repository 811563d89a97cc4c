"""Paper 1's limit: convex geometry, phase transitions, predicted and actual pruning limits, ``limit_report``.

Names are imported from their modules on first use.
"""
from .. import _install_lazy

__all__ = _install_lazy(__name__, {
    **dict.fromkeys(["statistical_dimension_l1", "statistical_dimension_group_l1", "statistical_dimension_mc",
                     "gaussian_width_mc", "project_l1_descent_cone", "project_group_l1_descent_cone"], ".geometry"),
    **dict.fromkeys(["sample_recovery_problems", "solve_l1_batched", "solve_group_l1_batched", "solve_l1_cvxpy",
                     "solve_group_l1_cvxpy", "phase_transition_grid", "transition_points",
                     "predicted_transition"], ".phase"),
    **dict.fromkeys(["MagnitudeRadius", "width_spectrum", "normalized_squared_width", "predicted_pruning_limit",
                     "width_curve", "kinematic_band", "loss_noise_epsilon", "ActualLimit", "actual_pruning_limit",
                     "train_with_l1"], ".pruning_limit"),
    **dict.fromkeys(["LimitReport", "limit_report"], ".report"),
    **dict.fromkeys(["GroupLeastSquares", "make_group_least_squares", "GroupLassoSolver", "ompr"], ".group_lasso"),
})
