from .hpatches_mma import HPatchesMMAMetric, match_errors, mutual_nearest_neighbours, summarize
from .sparsity_metric import SparsityMetric

__all__ = ['SparsityMetric', 'HPatchesMMAMetric', 'match_errors', 'mutual_nearest_neighbours',
           'summarize']
