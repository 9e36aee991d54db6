"""Synthetic study folders (results.csv + runs.csv as experiments.mnist writes them) for the summary/docs tests."""
from experiments import mnist, report


def write_study(d, points, steps, task="text"):
    """d: a folder (pathlib.Path, created); points: (compressor, bits, seed, step, test_accuracy, test_loss) rows,
    one run per (compressor, bits, seed) of ``steps`` steps, momentum SGD lr 0.1, block 2048, IID."""
    d.mkdir()
    recs, runs = [], []
    for comp, bits, seed, step, acc, loss in points:
        recs.append({k: 0 for k in mnist.CSV_FIELDS} | {"compressor": comp, "bits": bits, "seed": seed, "step": step,
                                                        "test_accuracy": acc, "test_loss": loss})
    for comp, bits, seed in dict.fromkeys((p[0], p[1], p[2]) for p in points):
        runs.append({k: "" for k in report.RUN_FIELDS} | {
            "compressor": comp, "bits": bits, "seed": seed, "mode": "sim", "backend": "auto", "steps": steps,
            "seconds": 1.0, "ms_per_step": 10.0, "task": task, "optimizer": "sgdm", "lr": 0.1,
            "block_size": 2048, "per_tensor": 0, "partition": "iid"})
    mnist.write_csv(str(d / "results.csv"), recs)
    report.write_runs(str(d / "runs.csv"), runs)
