"""The paper's experiments, built on the public API and the DDP hook (never on a backend directly).

    python -m experiments.mnist --quick      # 8-client MNIST, all compressors at 3 bits, < 2 min
    python -m experiments.mnist --sweep      # bits 2..5 x 3 seeds -> experiments/results/mnist/
    python -m experiments.grad_error         # why TNQ does not win there: error of the aggregated gradient
"""
