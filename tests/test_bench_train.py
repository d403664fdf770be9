"""ddnn bench train: its JSON lines, the PyTorch device flag and contenders that cannot run here.

Tiny runs (batch 8, 2 steps, 1 repeat): they check what is printed, never how fast anything is.
"""

import json
import statistics

import pytest

from ddnn_jax.benchmarks import train as bench
from ddnn_jax.benchmarks.train_contenders import resolve_torch_device
from ddnn_jax.common.errors import UsageError

torch = pytest.importorskip("torch")

TINY = ["--batch-size", "8", "--steps", "2", "--repeats", "1", "--torch-device", "cpu"]
ENVIRONMENT = ("backend", "device", "torch_version", "torch_device", "torch_device_name")
PRECISION = (
    "jax_default_matmul_precision",
    "torch_float32_matmul_precision",
    "torch_cudnn_allow_tf32",
    "torch_cudnn_benchmark",
)


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _throughput(lines: list[dict]) -> dict[str, dict]:
    return {line["contender"]: line for line in lines if line["measure"] == "train_throughput"}


def _over_best_torch(lines: list[dict]) -> dict[str, dict]:
    return {line["contender"]: line for line in lines if line.get("over") == "best_torch"}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_lines_name_every_contender_and_the_best_torch(capsys, monkeypatch):
    """Every CPU contender in one bench; CUDA graphs are skipped. torch.compile captures the
    step as it does on a GPU, but through its 'aot_eager' backend: inductor's C++ code for a CPU
    costs about 40 s of compiling on 2 cores, and a GPU runs Triton code instead anyway."""
    real_compile = torch.compile

    def aot_eager(function, **options):
        options.pop("mode")  # a mode is inductor's
        return real_compile(function, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", aot_eager)
    contenders = ("jax_epoch", "jax_epoch_bf16", "torch", "torch_compile", "torch_cudagraphs")
    bench.main([*TINY, "--contenders", ",".join(contenders)])
    lines = _lines(capsys)
    throughput = _throughput(lines)
    assert set(throughput) == set(contenders)
    for name in contenders[:4]:
        assert throughput[name]["images_per_s"] > 0 and len(throughput[name]["runs"]) == 1, name
    assert "CUDA" in throughput["torch_cudagraphs"]["skipped"]
    assert "images_per_s" not in throughput["torch_cudagraphs"]
    best = _over_best_torch(lines)
    assert set(best) == {"jax_epoch", "jax_epoch_bf16"}
    fastest = max(("torch", "torch_compile"), key=lambda name: throughput[name]["images_per_s"])
    assert best["jax_epoch"]["best_torch"] == fastest
    # the ratio over eager PyTorch (a baseline) is there too; both come from the medians (the
    # printed runs are rounded to 0.1 image/s)
    over_torch = next(x for x in lines if x.get("over") == "torch" and x["contender"] == "jax_epoch")
    rate = lambda name: statistics.median(throughput[name]["runs"])
    assert over_torch["ratio"] == pytest.approx(rate("jax_epoch") / rate("torch"), rel=0.01)
    assert best["jax_epoch"]["ratio"] == pytest.approx(rate("jax_epoch") / rate(fastest), rel=0.01)
    for line in lines:
        assert all(line[key] for key in ENVIRONMENT) and all(key in line for key in PRECISION), line
        # nothing switched on the CPU: PyTorch keeps full float32 products
        assert line["torch_float32_matmul_precision"] == "highest" and not line["torch_cudnn_benchmark"]
        assert line["batch_size"] == 8 and line["image_shape"] == [28, 28, 1]
        assert line["torch_device"] == "cpu" and line["torch_version"] == torch.__version__


def test_best_torch_is_the_fastest_pytorch_contender(capsys):
    rates = {"jax_epoch": [100.0, 120.0], "torch": [50.0, 70.0], "torch_compile": [80.0, 60.0]}
    bench._print_lines(rates, {"backend": "cpu"}, notes={})
    best = _over_best_torch(_lines(capsys))
    assert set(best) == {"jax_epoch"}
    line = best["jax_epoch"]
    # medians 110 / 70 (torch_compile's 70 beats torch's 60); per round 100/80 and 120/60
    assert line["best_torch"] == "torch_compile"
    assert line["ratio"] == round(110 / 70, 3)
    assert line["paired_ratio_median"] == round((100 / 80 + 120 / 60) / 2, 3)


def test_a_failing_compile_is_a_skipped_line(capsys, monkeypatch):
    def no_compiler(function, **options):
        def fail(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found\nlong details")

        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    bench.main([*TINY, "--contenders", "torch,torch_compile"])
    lines = _lines(capsys)
    throughput = _throughput(lines)
    reason = throughput["torch_compile"]["skipped"]
    assert reason == "torch.compile failed: RuntimeError: InductorError: no working C++ compiler found"
    assert throughput["torch"]["images_per_s"] > 0
    assert not any(line.get("contender") == "torch_compile" for line in lines if "ratio" in line)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_and_exit_2(capsys):
    from ddnn_jax import cli

    assert cli.main(["bench", "train", "--torch-device", "cuda", "--steps", "2"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ddnn: error: --torch-device cuda:"), lines[0]
    assert "sees no CUDA device" in lines[0] and "--torch-device cpu" in lines[0], lines[0]
    assert out == ""


@pytest.mark.parametrize(
    "requested, cuda, backend, expected",
    [
        ("auto", False, "gpu", "cpu"),
        ("auto", True, "cpu", "cpu"),  # JAX on the CPU: PyTorch there too, on the same device
        ("auto", True, "gpu", "cuda"),
        ("cpu", True, "gpu", "cpu"),
        ("cuda", True, "cpu", "cuda"),
    ],
)
def test_torch_device_resolution(monkeypatch, requested, cuda, backend, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_torch_device(requested, backend) == expected


def test_cuda_requested_without_cuda_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="--torch-device cuda: .* sees no CUDA device"):
        resolve_torch_device("cuda", "gpu")


def test_sweep_is_the_issue_grid():
    cases = bench.cases(bench._parse(["--sweep", "--steps", "5"]), "cpu")
    grid = {(case.batch_size, case.image_shape) for case in cases}
    assert grid == {(128, (28, 28, 1)), (128, (32, 32, 3)), (512, (28, 28, 1)), (512, (32, 32, 3))}
    assert len(cases) == 4 and all(case.steps == 5 and case.torch_device == "cpu" for case in cases)
    (single,) = bench.cases(bench._parse(["--batch-size", "64", "--image-shape", "32,32,3"]), "cpu")
    assert (single.batch_size, single.image_shape) == (64, (32, 32, 3))
