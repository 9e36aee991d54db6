"""The paper's experiments, built on the public API and the DDP hook (never on a backend directly).

    python -m tnq_kernels.experiments.mnist --quick      # 8-client MNIST, all compressors at 3 bits, < 2 min
    python -m tnq_kernels.experiments.mnist --sweep      # bits 2..5 x 3 seeds -> benchmarks/results/mnist/
    python -m tnq_kernels.experiments.grad_error         # why TNQ does not win there: error of the aggregated gradient
"""
