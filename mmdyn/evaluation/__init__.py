from .sparsity_metric import SparsityMetric

__all__ = ['SparsityMetric']
