"""``handpose-info``: a checkpoint's model, training, held-out figures and inference settings."""

from __future__ import annotations

import json

from handpose_core.checkpoint import update_meta
from handpose_core.checkpoint_info import main
from handpose_core.pipelines.depth import save_untrained
from handpose_core.pipelines.rgb import save_untrained as save_untrained_rgb


def test_packaged_weights_show_their_training_command_and_recorded_figures(capsys):
    for name, model, figure in (("default:depth", "deep_prior_res", "mean_error_mm"),
                                ("default:rgb", "cpm_light", "pck@0.2")):
        assert main([name]) == 0
        out = capsys.readouterr().out
        assert f"model      {model} (" in out and "21 joints (wrist, thumb_cmc" in out
        assert "python -m training.train_" in out and f" {figure} " in out and "measured by: python -m training." in out
        # the packaged DeepPrior votes its joints from the dense head (the recipe's default since 2026-12-07)
        assert ("dense head 16x16" in out) == (name == "default:depth")


def test_figures_are_rounded_nested_keys_flattened_and_a_missing_record_said(tmp_path, capsys):
    path = save_untrained(tmp_path / "dp.pt")
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "held out   none recorded" in out and "input      128x128 depth crop of a 300 mm cube" in out
    update_meta(path, held_out={"mean_error_mm": 12.3456789, "sequences": {"tracked": {"mean_error_mm": 9.87654}},
                                "command": "python -m training.evaluate_deep_prior --record"})
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "held out   mean_error_mm 12.3457, sequences.tracked.mean_error_mm 9.8765\n" in out
    assert "measured by: python -m training.evaluate_deep_prior --record" in out
    block = [line for line in out.splitlines() if line.startswith(("  held out", "  inference", " " * 13))]
    assert len(block) >= 3 and all(len(line) <= 102 for line in block if "python -m" not in line)


def test_a_resumed_run_lists_the_command_of_each_segment(tmp_path, capsys):
    path = save_untrained(tmp_path / "dp.pt")
    update_meta(path, provenance={"command": "train --resume"},
                training={"step": 300, "elapsed_s": 600.0,
                          "resumed_from": [{"step": 100, "elapsed_s": 120.0, "command": "train --steps 100"}]})
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert ("trained    300 steps, 10.0 min\n"
            "             steps 0-100 (to 2.0 min): train --steps 100\n"
            "             steps 100-300: train --resume\n") in out
    # a confidence head fitted afterwards (train_deep_prior --fit-confidence) says how, after the training
    update_meta(path, confidence={"steps": 2000, "seconds": 342.0, "command": "train --fit-confidence X"})
    assert main([str(path)]) == 0
    assert ("             steps 100-300: train --resume\n"
            "             then a confidence head (2,000 steps, 5.7 min; joints unchanged): train --fit-confidence X\n"
            ) in capsys.readouterr().out


def test_json_prints_the_whole_metadata(tmp_path, capsys):
    path = save_untrained_rgb(tmp_path / "rgb.pt", variant="cpm_tiny")
    assert main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["name"] == "cpm_tiny" and info["meta"]["modality"] == "rgb"
    assert info["meta"]["input"]["size"] == 64 and info["path"] == str(path)


def test_missing_or_foreign_files_give_one_line_and_status_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("handpose-info: error: checkpoint not found") and err.count("\n") == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "junk.pt")]) == 2
    assert "is not readable" in capsys.readouterr().err
