"""The Docker image's file set, without a Docker engine: the repository filtered by
docker/Dockerfile.dockerignore (Docker's rules: `**` any number of directories, `*` within
one, a matched directory takes its contents, `!` re-includes, the last match wins) and
narrowed to the Dockerfile's COPY sources. Its GPU tests stage (`python -m
benchmarks.gpu_check.gpu_tests`) must find tests in exactly that tree."""
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
IGNORE = ROOT / "docker" / "Dockerfile.dockerignore"


def ignore_rules(text):
    """[(excluded, pattern components)] of a .dockerignore, in order."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excluded = not line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        rules.append((excluded, pattern.split("/")))
    return rules


def _matches(parts, pattern):
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def ignored(path, rules):
    """Whether the relative `path` (str, '/'-separated) stays out of the build context: the
    last rule matching it or a directory above it decides."""
    parts = path.split("/")
    verdict = False
    for excluded, pattern in rules:
        if any(_matches(parts[:n], pattern) for n in range(1, len(parts) + 1)):
            verdict = excluded
    return verdict


def copy_sources():
    """The sources of the Dockerfile's COPY lines (relative paths)."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().upper().startswith("COPY "):
            sources += [s for s in line.split()[1:-1] if not s.startswith("--")]
    return sources


def image_files():
    """Every file of the working tree the image receives (relative paths)."""
    rules, files = ignore_rules(IGNORE.read_text()), []
    for source in copy_sources():
        top = ROOT / source
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        files += [rel for rel in (p.relative_to(ROOT).as_posix() for p in paths)
                  if not ignored(rel, rules)]
    return files


def test_ignore_rules_follow_docker_s_matching():
    rules = ignore_rules("**/__pycache__\n**/*.pyc\nbenchmarks/results\n!benchmarks/results/keep.json\n")
    assert ignored("sepconv_gpu/__pycache__/x.cpython-311.pyc", rules)
    assert ignored("a/b/c.pyc", rules) and ignored("c.pyc", rules)
    assert ignored("benchmarks/results/cpu.json", rules)
    assert not ignored("benchmarks/results/keep.json", rules)
    assert not ignored("benchmarks/results.py", rules) and not ignored("tests/data/x.npz", rules)


def test_image_gets_what_its_gpu_tests_read(tmp_path):
    """The image's tree (copied here) holds the data tests/conftest.py reads on import, and
    its GPU tests stage collects tests there (it collected none with tests/data ignored)."""
    files = image_files()
    assert "tests/data/keras_golden/manifest.json" in files
    assert not any("__pycache__" in f for f in files)
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check.gpu_tests", "--dry-run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"passed": true' in result.stdout and '"collected": 0' not in result.stdout
