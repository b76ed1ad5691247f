"""The math of HesScale: pure tensor functions, one home per formula.

Every rule maps what an operation saw in its forward pass, the (approximate) diagonal of the
Hessian with respect to its output ``h_out``, and the gradient with respect to its output
``g_out`` to the diagonal with respect to its input (and to its parameters):

    h_in = diag(J^T diag(h_out) J) + sum_k g_out[k] * diag(d^2 out[k] / d in^2)

Passing ``g_out=None`` drops the second (curvature-of-the-operation) term, which gives the
Gauss-Newton variant HesScaleGN. For linear operations that term is zero anyway.

No rule knows about BackPACK or ``nn.Module``: adaptors extract the hyperparameters and call
these functions, so the formulas can be checked here against the paper, and reused.
"""
