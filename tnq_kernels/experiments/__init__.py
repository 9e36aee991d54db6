"""The paper's experiments, built on the public API and the DDP hook (never on a backend directly).

    python -m tnq_kernels.experiments.mnist --quick      # 8-client MNIST, all compressors at 3 bits, < 2 min
"""
