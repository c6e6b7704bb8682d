"""Bad input: one clear line on stderr, exit 2, no traceback. Does-not-fit: exit 1."""

import json

import pytest

from sharder.cli import main

BASE = ["estimate", "--model", "llama-2-7b", "--gpus", "A100-80"]

MALFORMED = [
    ["estimate", "--model", "llama-700b", "--gpus", "A100-80"],           # unknown model
    ["estimate", "--model", "/nope/config.json", "--gpus", "A100-80"],    # missing file
    ["estimate", "--model", "llama-2-7b", "--gpus", "4xA1000"],           # unknown GPU
    ["estimate", "--model", "llama-2-7b", "--gpus", "4x"],                # malformed spec
    ["estimate", "--model", "llama-2-7b", "--gpus", "0xA100-80"],         # zero GPUs
    ["estimate", "--model", "llama-2-7b", "--gpus", "100001xA100-80"],    # too many
    ["estimate", "--model", "llama-2-7b", "--gpus", "2.5xA100-80"],       # fractional
    ["estimate", "--model", "llama-2-7b"],                                # no pool
    ["estimate", "--gpus", "A100-80"],                                    # no model
    BASE + ["--tp", "3"],                                                 # tp does not divide pool
    ["estimate", "--model", "llama-2-7b", "--gpus", "4xA100-80", "--tp", "2", "--pp", "2", "--dp", "2"],
    ["estimate", "--model", "llama-70b", "--gpus", "3xA100-80", "--tp", "3"],  # heads not divisible
    BASE + ["--batch", "0"],
    BASE + ["--seq", "-5"],
    BASE + ["--batch", "abc"],
    BASE + ["--mode", "pretrain"],
    BASE + ["--precision", "fp8"],
    BASE + ["--zero", "4"],
    BASE + ["--sp"],                                                      # sp without tp
    BASE + ["--mode", "train", "--offload", "optimizer"],                 # torch has no optimizer offload
    BASE + ["--mode", "train", "--batch", "3", "--micro-batches", "2"],   # not divisible
    ["estimate", "--model", "llama-2-7b", "--gpus", "2xA100-80", "--pp", "2", "--split", "10,10"],
    ["estimate", "--model", "llama-2-7b", "--gpus", "2xA100-80", "--pp", "2", "--split", "a,b"],
    BASE + ["--quant", "nf4", "--mode", "train"],
    BASE + ["--lora-targets", "q_proj,foo"],
    BASE + ["--headroom", "1.5"],
    BASE + ["--context", "100", "--seq", "200"],
    ["estimate", "--model", "llama-2-7b", "--gpus", "2xA100-80", "--pp", "2", "--mode", "train", "--micro-batches", "1"],
    ["estimate", "/tmp/definitely-not-a-plan.json"],
    ["export", "/tmp/definitely-not-a-plan.json", "--to", "deepspeed"],
    ["frobnicate"],
    BASE + ["--layers", "0"],
]


@pytest.mark.parametrize("argv", MALFORMED, ids=[" ".join(a[1:])[:60] for a in MALFORMED])
def test_malformed_input_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sharder: error:"), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_not_a_plan_file(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    assert main(["estimate", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_does_not_fit_is_exit_1_with_advice(capsys):
    assert main(["plan", "--model", "llama-70b", "--gpus", "A100-80"]) == 1
    out = capsys.readouterr().out
    assert "no plan fits" in out and "fewest A100-80 that fit: 2" in out


def test_does_not_fit_json_still_one_object(capsys):
    assert main(["plan", "--model", "llama-70b", "--gpus", "A100-80", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False and data["fewest_gpus"] == 2
