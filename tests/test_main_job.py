"""The README's main job runs, checks itself and reports a table."""
import subprocess
import sys

from sepconv_gpu.__main__ import main


def test_main_job_small(capsys):
    assert main(["--backend", "numpy", "--batch", "2", "--size", "12", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK: worst error" in out and "conformer_sepconv1d" in out
    assert out.count("numpy") >= 7  # one row per layer names its backend


def test_main_job_float16_and_help():
    assert main(["--backend", "numpy", "--batch", "1", "--size", "9", "--dtype", "float16", "--repeats", "1"]) == 0
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--backend" in run.stdout and "--batch" in run.stdout


def test_main_job_rejects_bad_arguments():
    run = subprocess.run([sys.executable, "-m", "sepconv_gpu", "--batch", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "--batch must be positive" in run.stderr
