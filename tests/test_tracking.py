"""train.log_with: TensorBoard (read back from its event files) and W&B (offline run files)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.runstore import RunDir
from tests.helpers import FIT_BASE, write_yaml
from tests.plugins.fit_method import sample_png


def fit_config(tmp_path: Path, method: dict | None = None, **train) -> Path:
    raw = json.loads(json.dumps(FIT_BASE))
    raw["method"].update(method or {})
    raw["train"].update(train)
    return write_yaml(tmp_path / "fit.yaml", raw)


def the_run(runs: Path) -> RunDir:
    [path] = (runs / "train").iterdir()
    return RunDir(path)


def tensorboard(rd: RunDir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(rd.path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def f32(x: float) -> float:
    return float(np.float32(x))  # TensorBoard stores scalars as float32


def test_tensorboard_gets_the_metrics_the_samples_the_config_and_the_results(tmp_path):
    pytest.importorskip("tensorboard")
    from harness.train import main

    cfg = fit_config(tmp_path, {"samples": True}, log_with=["tensorboard"], sample_every=5)
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 0
    rd = the_run(tmp_path / "runs")
    rows = rd.read_metrics()
    assert [r["step"] for r in rows] == list(range(1, 21))
    acc = tensorboard(rd)
    for key in ("loss", "time"):
        assert scalars(acc, key) == [(r["step"], f32(r[key])) for r in rows]

    images = acc.Images("samples")
    assert [im.step for im in images] == [5, 10, 15, 20]
    for im in images:
        got = np.asarray(Image.open(io.BytesIO(im.encoded_image_string)).convert("RGB"))
        assert np.array_equal(got, np.asarray(sample_png(im.step)))

    [res] = rd.read_result()["results"]
    assert res["metrics"]
    for k, v in res["metrics"].items():
        assert scalars(acc, f"eval/{res['benchmark']}/{res['subset']}/{k}") == [(20, f32(v))]

    [text] = acc.Tensors("config/text_summary")
    logged = yaml.safe_load(text.tensor_proto.string_val[0].decode())  # a markdown code block of the YAML
    assert logged == yaml.safe_load(rd.config_path.read_text())
    assert logged["train"]["log_with"] == ["tensorboard"] and logged["method"]["samples"] is True


def test_a_resumed_run_continues_the_same_tensorboard_log_without_duplicate_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from harness.train import main

    marker = tmp_path / "FAIL"
    marker.write_text("")
    cfg = fit_config(tmp_path, {"fail_at_step": 17, "fail_if_file": str(marker)}, log_with=["tensorboard"])
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 1  # logged steps 1..17, checkpoint at 15
    rd = the_run(tmp_path / "runs")
    assert [s for s, _ in scalars(tensorboard(rd), "loss")] == list(range(1, 18))
    first_time = dict(scalars(tensorboard(rd), "time"))
    marker.unlink()
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 0  # resumes from 15

    assert len(list((rd.path / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one log, two processes
    rows = rd.read_metrics()
    assert [r["step"] for r in rows] == list(range(1, 21))
    acc = tensorboard(rd)
    for key in ("loss", "time"):
        assert scalars(acc, key) == [(r["step"], f32(r[key])) for r in rows]
    # steps 16 and 17 are the resumed process's (its clock started again), not the first one's
    shown = dict(scalars(acc, "time"))
    assert shown[15] == first_time[15] and shown[16] < first_time[16]


def test_a_failing_tracker_warns_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    from harness.tracking import TensorBoard
    from harness.train import main

    def broken(self, values, step):
        raise OSError("No space left on device")

    monkeypatch.setattr(TensorBoard, "log", broken)
    cfg = fit_config(tmp_path, log_with=["tensorboard"])
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs")]) == 0
    rd = the_run(tmp_path / "runs")
    assert rd.is_done() and len(rd.read_metrics()) == 20
    err = capsys.readouterr().err
    assert err.count("train.log_with tensorboard: OSError: No space left on device") == 1
    assert "training goes on" in err


@pytest.mark.parametrize("value, expected", [
    ("[mlflow]", "key 'train.log_with': got 'mlflow'; allowed: a list of tensorboard, wandb (or [] for none)"),
    ("[wandb]", "key 'train.log_with': wandb is not installed; pip install wandb"),
])
def test_train_log_with_refuses_an_unknown_or_missing_tracker_before_any_folder(tmp_path, capsys, monkeypatch,
                                                                                value, expected):
    import importlib.util

    from harness.train import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = fit_config(tmp_path)
    assert main([str(cfg), f"train.log_with={value}", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: command-line override: {expected}")
    assert not (tmp_path / "runs").exists()


def test_wandb_offline_names_groups_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from harness.train import main
    from harness.tracking import wandb_run_id

    for k in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    secret = "0123456789abcdef" * 2 + "secret42"  # the 40-character form of a W&B key
    monkeypatch.setenv("WANDB_API_KEY", secret)
    marker = tmp_path / "FAIL"
    marker.write_text("")
    cfg = fit_config(tmp_path, {"fail_at_step": 7, "fail_if_file": str(marker)}, steps=10, log_with=["wandb"],
                     wandb_project="proj")
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs"), "--group", "sweepA"]) == 1
    marker.unlink()
    assert main([str(cfg), "--runs-dir", str(tmp_path / "runs"), "--group", "sweepA"]) == 0
    rd = RunDir(next((tmp_path / "runs" / "sweepA").iterdir()))
    run_id = wandb_run_id(rd)
    assert run_id == f"sweepA-{rd.id}"
    offline = sorted((rd.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline)  # both processes: one W&B run
    history = {}
    for folder in offline:
        meta = wandb_records(folder / f"run-{run_id}.wandb")
        assert meta["run"]["project"] == "proj" and meta["run"]["display_name"] == rd.id
        assert meta["run"]["run_group"] == "sweepA"
        history.update(meta["history"])
    assert not [p for p in rd.path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    rows = rd.read_metrics()
    assert {s: v["loss"] for s, v in history.items() if "loss" in v} == {r["step"]: r["loss"] for r in rows}


def wandb_records(path: Path) -> dict:
    """The run record and the logged history ({step: {key: value}}) of an offline .wandb file: a
    LevelDB-style log (7-byte file header, 32 KiB blocks of chunks with a 7-byte header each) of
    wandb's protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk
            records.append(buf)
            buf = b""
    out: dict = {"run": {}, "history": {}}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"project": rec.run.project, "display_name": rec.run.display_name,
                          "run_group": rec.run.run_group}
        elif kind == "history":
            items = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item}
            out["history"].setdefault(int(items.get("_step", rec.history.step.num)), {}).update(items)
    return out
