"""The benchmark runs and reports every mode; compiled training runs both branches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from masksub_exp.bench import step as bench
from masksub_exp.train import train

from .conftest import compose_cfg, smoke_overrides


def test_bench_json_has_every_mode(capsys: pytest.CaptureFixture) -> None:
    bench.main(["--device", "cpu", "--models", "vit_s16,resnet50", "--img-size", "32", "--batch-size", "2",
                "--steps", "1", "--warmup", "1", "--json"])
    records = json.loads(capsys.readouterr().out)
    assert {(r["model"], r["mode"]) for r in records} == {
        (m, mode) for m in ("vit_s16", "resnet50") for mode in bench.MODES}
    assert all(r["img_per_s"] > 0 and r["peak_mem_mb"] is None for r in records)
    # FLOPs counted per model and sub-branch setting; no MFU on a CPU (no peak to divide by)
    flops = {(r["model"], r["mode"]): r["flops_per_img"] for r in records}
    assert all(r["flops_per_img"] > 0 and r["mfu"] is None for r in records)
    for m in ("vit_s16", "resnet50"):
        assert flops[(m, "baseline")] == flops[(m, "bare_baseline")] < flops[(m, "masksub")]


def test_bench_table_prints_ratios(capsys: pytest.CaptureFixture) -> None:
    bench.main(["--device", "cpu", "--models", "vit_s16", "--img-size", "32", "--batch-size", "2", "--steps", "1",
                "--warmup", "0"])
    out = capsys.readouterr().out
    assert "x speed" in out and "ours/bare" in out and out.count("vit_s16") == 4


def test_bench_rejects_unknown_models() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "vit_zz"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_compiled_training_runs_both_branches(mode: str, tmp_path: Path) -> None:
    summary = train(compose_cfg(smoke_overrides(train__max_steps=3, train__log_every=1, train__compile="true",
                                                train__compile_mode=mode), tmp_path / "run"))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 3 and all("loss_sub" in r for r in lines if r["kind"] == "train")
    # the compiled model computes what the eager one does: the first step's main loss (same weights, same
    # batch; the sub-branch's masks come from another RNG stream inside a compiled graph, so not that one)
    train(compose_cfg(smoke_overrides(train__max_steps=1, train__log_every=1), tmp_path / "eager"))
    eager = [json.loads(x) for x in (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in lines if r["kind"] == "train"][0]
    assert first["step"] == 1 and math.isfinite(first["loss_sub"])
    assert first["loss_main"] == pytest.approx(eager[0]["loss_main"], rel=1e-4)


@pytest.mark.slow
def test_gpu_loader_script_dry_run(tmp_path: Path) -> None:
    """benchmarks/gpu_loader.sh on the CPU at toy sizes: JPEGs, prepared copy, reference, runs, table, JSON."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(root / "benchmarks" / "gpu_loader.sh"), "--dry-run", "--work", str(tmp_path / "work"),
                           "--variants", "full,prepared,dali", "--images", "16"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (tmp_path / "out" / "gpu_loader.err").read_text()[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_loader.json").read_text())
    got = {(r["model"], r["mode"], r["variant"]) for r in result["rows"]}
    variants = {"full", "prepared"} | ({"dali"} if not result["skipped"] else set())
    assert got == {("vit_s16", mode, v) for mode in ("baseline", "masksub") for v in variants}
    assert all(r["img_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in result["rows"])
    assert all(r["synthetic_img_per_s"] > 0 for r in result["rows"])
    assert "vs synthetic" in proc.stdout and result["prepare"]["images"] == 16 + 8


def test_help_shows_every_mode(capsys: pytest.CaptureFixture) -> None:
    """`python -m masksub_exp.bench --help` (its __main__ calls main) names the step bench's options and the
    --loader / --train modes with theirs."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--models", "--modes", "--compile", "--set", "--loader", "--train", "--images", "--workers",
                 "--recipes", "--variants", "--resident", "--repeat", "--root"):
        assert flag in out, flag
    assert "experiment=NAME" in out


def test_counted_flops_match_an_analytic_count() -> None:
    """count_flops on an MLP (bias ignored, as FLOP counts do): forward 2B(in*h + h*out); backward 2x that except
    the first layer's input gradient (the input needs none)."""
    import torch

    b, d_in, h, d_out = 3, 8, 16, 4
    mlp = torch.nn.Sequential(torch.nn.Linear(d_in, h), torch.nn.ReLU(), torch.nn.Linear(h, d_out))
    x = torch.randn(b, d_in)
    assert bench.count_flops(lambda: mlp(x)) == 2 * b * (d_in * h + h * d_out)
    assert bench.count_flops(lambda: mlp(x).sum().backward()) == 4 * b * d_in * h + 6 * b * h * d_out


def test_masksub_step_flops_follow_the_masking_ratio() -> None:
    """A ViT's MaskSub step: the sub-branch at r = 0.5 keeps half the patch tokens (plus the class token), so its
    forward + backward cost about half the main branch's: 1.4-1.6x the baseline step."""
    import argparse

    import torch

    args = argparse.Namespace(img_size=32, batch_size=2, precision="fp32", device="cpu", compile=False,
                              compile_mode="model")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    base = bench.step_flops_per_img(bench.settings_for("vit_s16", args, False), x, y, None)
    sub = bench.step_flops_per_img(bench.settings_for("vit_s16", args, True), x, y, None)
    # ViT-S/16 at 32 px: 4 patches + 1 class token; forward ~2 x 21.7M block parameters per token, x3 with backward
    assert 0.55e9 < base < 0.7e9
    assert 1.4 < sub / base < 1.65


def test_peak_table_and_mfu() -> None:
    assert bench.peak_tflops("NVIDIA H200", "bf16") == 989
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "auto") == 989
    assert bench.peak_tflops("NVIDIA H100 PCIe", "fp16") == 756
    assert bench.peak_tflops("NVIDIA H200", "fp32") is None and bench.peak_tflops("Some GPU", "bf16") is None
    assert bench.mfu(2e9, 100_000.0, 400.0) == pytest.approx(0.5)
    assert bench.mfu(None, 100.0, 989.0) is None and bench.mfu(1e9, 100.0, None) is None


def test_bench_runs_a_presets_model_in_the_modes_asked(capsys: pytest.CaptureFixture) -> None:
    bench.main(["--device", "cpu", "--models", "deit3/vit_s_400ep", "--set", "model=vit_micro", "--modes",
                "baseline,masksub", "--img-size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("deit3/vit_s_400ep")]
    assert [r[1] for r in rows] == ["baseline", "masksub"] and "bare_" not in out
    assert rows[1][-1] == "speed" and rows[0][-1] == "-"  # masksub/baseline on the MaskSub row; no bare ratio
    assert all(r[6] == "-" for r in rows)  # the MFU column on a CPU


def _wheel(path: Path, package: str, payload: bytes) -> Path:
    """A minimal valid wheel: one package with a data file, metadata and RECORD."""
    import base64
    import hashlib
    import zipfile

    dist = f"{package}-1.0.dist-info"
    files = {f"{package}/__init__.py": b"VALUE = 42\n", f"{package}/blob.bin": payload,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + f"{dist}/RECORD,,\n"
    whl = path / f"{package}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_STORED) as zf:
        for name, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            zf.writestr(name, data)
    return whl


@pytest.mark.slow
def test_dali_parts_split_carry_join_and_install(tmp_path: Path) -> None:
    """benchmarks/dali_parts.sh without the download: pack splits the large wheel into transfer folders under the
    limit, check names the transfers still missing, install verifies, joins, installs; a bad part stops it."""
    import os
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "dir" / "py3.11" / "wheels"
    wheels.mkdir(parents=True)
    big = _wheel(wheels, "bigpkg", os.urandom(300_000))
    _wheel(wheels, "smallpkg", b"x" * 1000)
    env = {**os.environ, "PYVER": "3.11", "DIR": str(tmp_path / "dir"), "PART_SIZE": "100k", "CALL_KIB": "150",
           "PARTS": str(tmp_path / "parts"), "SITE": str(tmp_path / "site"), "PY": sys.executable}
    script = str(root / "benchmarks" / "dali_parts.sh")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=300)

    packed = run("pack")
    assert packed.returncode == 0, packed.stderr
    send = tmp_path / "dir" / "py3.11" / "send"
    calls = sorted((p for p in send.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert len(calls) == 3 and "3 transfers" in packed.stdout  # 3 parts of <= 100 KiB, at most 150 KiB a folder
    assert all(sum(f.stat().st_size for f in c.iterdir()) <= 150 * 1024 for c in calls)
    parts = sorted(f.name for c in calls for f in c.iterdir() if ".part-" in f.name)
    assert parts == [f"{big.name}.part-a{c}" for c in "abc"]
    (tmp_path / "parts").mkdir()
    for i, call in enumerate(calls):
        if i:
            missing = run("check")  # after transfer i: exactly the later ones are missing
            assert missing.returncode == 1
            assert f"transfers {' '.join(str(k) for k in range(i + 1, 4))}" in missing.stdout
        for f in call.iterdir():
            shutil.copy(f, tmp_path / "parts")
    installed = run("install")
    assert installed.returncode == 0, installed.stderr + installed.stdout
    probe = subprocess.run([sys.executable, "-c", "import bigpkg, smallpkg; print(bigpkg.__file__, bigpkg.VALUE, "
                            "len(open(bigpkg.__file__.replace('__init__.py', 'blob.bin'), 'rb').read()))"],
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True)
    assert probe.stdout.split() == [str(tmp_path / "site" / "bigpkg" / "__init__.py"), "42", "300000"]
    assert f"PYTHONPATH={tmp_path / 'site'}" in (tmp_path / "site" / "env.sh").read_text()
    # one flipped byte in a part: install refuses before joining
    part = tmp_path / "parts" / parts[1]
    data = bytearray(part.read_bytes())
    data[10] ^= 1
    part.write_bytes(bytes(data))
    broken = run("install")
    assert broken.returncode == 2 and "sha256" in broken.stderr and parts[1] in broken.stdout + broken.stderr


@pytest.mark.slow
def test_gpu_speed_script_dry_run(tmp_path: Path) -> None:
    """benchmarks/gpu_speed.sh --dry-run, narrowed to one preset and without the compiled rows (torch.compile on a
    shared 2-core CPU takes ~20 minutes; the full dry run, benchmarks/RESULTS.md, had them): the bench reference
    with GFLOP/img (no MFU on a CPU), the preset through train() from a resident batch and from DALI, one table."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MODELS": "vit_s16",
           "VARIANTS": "resident,dali", "COMPILED": "", "IMAGES": "16"}
    proc = subprocess.run([str(root / "benchmarks" / "gpu_speed.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, (out / "gpu_speed.err").read_text()[-3000:]
    result = json.loads((out / "gpu_speed.json").read_text())
    variants = {"resident"} | ({"dali"} if not result["skipped"] else set())
    assert {(r["model"], r["mode"], r["variant"]) for r in result["rows"]} == {
        ("vit_s16", m, v) for m in ("baseline", "masksub") for v in variants}
    assert {(r["model"], r["mode"]) for r in result["reference"]} == {("vit_s16", "baseline"), ("vit_s16", "masksub")}
    assert result["compiled"] == [] and all(r["flops_per_img"] > 0 and r["mfu"] is None for r in result["reference"])
    assert all(r["img_per_s"] > 0 and r["synthetic_img_per_s"] > 0 and r["cpu_cores_used"] > 0
               for r in result["rows"])
    table = (out / "gpu_speed.md").read_text()
    assert table.count("| deit3/vit_s_400ep |") == 2 and "compiled" not in table and "resident img/s" in table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| deit3/vit_s_400ep |")]
    assert all(float(r[3]) > 0 and r[4] == "-" for r in rows)  # GFLOP/img counted; no MFU on a CPU
    assert not result["unfinished"]  # every run started before the (dry run's) deadline
