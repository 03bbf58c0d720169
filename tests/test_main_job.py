"""The README's main job runs, checks itself and reports a table."""
import subprocess
import sys

import pytest

from sepconv_gpu.__main__ import main


def test_main_job_small(capsys):
    assert main(["--backend", "numpy", "--batch", "2", "--size", "12", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK: worst error" in out and "conformer_sepconv1d" in out
    assert "block_bn_3_passes" in out and "block_bn_folded" in out  # the BatchNorm-folded block
    assert out.count("numpy") >= 7  # one row per layer names its backend


def test_main_job_fails_when_the_fold_is_wrong(monkeypatch, capsys):
    import sepconv_gpu as sg

    monkeypatch.setattr(sg, "fold_batch_norm", lambda layer, batch_norm, activation=None: layer)  # no BN, no ReLU
    assert main(["--backend", "numpy", "--batch", "1", "--size", "8", "--repeats", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_main_job_float16_and_help():
    assert main(["--backend", "numpy", "--batch", "1", "--size", "9", "--dtype", "float16", "--repeats", "1"]) == 0
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--backend" in run.stdout and "--batch" in run.stdout


def test_main_job_rejects_bad_arguments():
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu", "--batch", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "--batch must be positive" in run.stderr


def test_main_job_without_cuda_says_why_in_one_line(monkeypatch, capsys):
    """`--backend cuda` where CuPy does not import: one line on stderr saying what to
    install, exit status 2 as for the other argument errors (it was a 26-line traceback)."""
    import pytest

    from sepconv_gpu import backends

    reason = "CuPy is not importable (ModuleNotFoundError: No module named 'cupy')"
    monkeypatch.setattr(backends, "cuda_status", lambda: (False, reason))
    backends._cuda_ops.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        main(["--backend", "cuda", "--batch", "1", "--size", "8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("python -m sepconv_gpu: error: ") and reason in err
    assert "pip install 'sepconv_gpu[cuda13]'" in err and "--backend numpy" in err


def test_main_job_without_cuda_in_a_fresh_process():
    import pytest

    from sepconv_gpu.backends import cuda_available

    if cuda_available():
        pytest.skip("this machine runs the cuda backend")
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu", "--backend", "cuda"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "pip install" in run.stderr


@pytest.mark.parametrize("argv, environment, message", [
    (["--batch", str(10**12)], {}, "--batch 1000000000000 --size 56 needs 25690112000000000000 bytes"),
    (["--seed", "-1"], {}, "--seed must be non-negative; received -1"),
    (["--batch", "0"], {}, "--batch must be positive; received 0"),
    ([], {"SEPCONV_GPU_BACKEND": "gpu"},
     "environment variable SEPCONV_GPU_BACKEND must be one of ('auto', 'numpy', 'cuda'); received 'gpu'"),
])
def test_main_job_refuses_bad_values_in_one_line_before_any_work(monkeypatch, capsys, argv,
                                                                 environment, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    started = []
    monkeypatch.setattr("sepconv_gpu.__main__.build_stack", lambda args: started.append(args))
    with pytest.raises(SystemExit) as exit_info:
        main(["--repeats", "1", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not started
    assert err.count("\n") == 1 and err.startswith("python -m sepconv_gpu: error: ") and message in err
